# The two commands of the README: `make demo` (main job) and `make test` (the suite). Both set up on first use.
PY := .venv/bin/python
PYTEST_ARGS ?=
# FRONTEND=1.58.1: run the tests / the server on that comfyui-frontend-package (installed by .ci/frontend.sh into
# .frontends/, not into the venv); empty = the frontend the venv has (ComfyUI's pinned one).
FRONTEND ?=
FRONTEND_ROOT = $(CURDIR)/.frontends/$(FRONTEND)/comfyui_frontend_package/static

.PHONY: setup chromium constraints demo test test-fast fuzz server bench bench-gpu train-v2 train-v2-gpu clean frontend

setup:
	@bash .ci/setup.sh

# Debian's chromium for the browser tests only (apt-get, tried once; DRAGEDIT_NO_CHROMIUM=1 skips it).
chromium:
	@bash .ci/chromium.sh

# Rewrite .ci/constraints.txt (the pinned versions set-up installs) from the venv, on purpose. No `setup` first:
# that would put the venv back on the old pins.
constraints:
	@test -x $(PY) || { echo "no $(PY): run make setup first"; exit 2; }
	$(PY) -m tools.constraints

demo: setup
	$(PY) -m demo.run

test: setup chromium $(if $(FRONTEND),frontend)
	DRAGEDIT_FRONTEND=$(FRONTEND) OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# Unit + parity + host tests (no server, no browser, no slow tests): tests/unit, tests/parity, tests/host.
test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow and not browser" tests/unit tests/parity tests/host $(PYTEST_ARGS)

# The fuzzer's long profile (tests/host/test_fuzz.py): random seed, 10x the cases of the CI profile that `make test`
# runs, larger images; bad cases are recorded, not raised, and the tally goes to out/fuzz/report.json.
fuzz: setup
	DRAGEDIT_FUZZ_PROFILE=long DRAGEDIT_FUZZ_SURVEY=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/host/test_fuzz.py $(PYTEST_ARGS)

server: setup $(if $(FRONTEND),frontend)
	cd .host/comfyui && ../../$(PY) main.py --cpu --listen 127.0.0.1 --port 8188 --disable-auto-launch \
		--base-directory ../base --database-url sqlite:///$(CURDIR)/.host/base/comfy.db \
		$(if $(FRONTEND),--front-end-root $(FRONTEND_ROOT))

frontend:
	@test -n "$(FRONTEND)" || { echo "usage: make frontend FRONTEND=<comfyui-frontend-package version>"; exit 2; }
	bash .ci/frontend.sh $(FRONTEND)

BENCHES := inversion regiondrag dragdiffusion dragondiffusion ledits shapesbench

bench: setup
	for b in $(BENCHES); do $(PY) -m bench.$$b || exit 1; done

# One prepared GPU run (CUDA required, fails loudly without it): every method at SD1.5 512² and SDXL 1024²,
# seconds per edit, peak VRAM, K/V RAM and transfer time -> out/bench/gpu.json (within 8 minutes on one GPU).
bench-gpu: setup
	DRAGEDIT_COMFY_GPU=1 $(PY) -m bench.gpu
	DRAGEDIT_COMFY_GPU=1 $(PY) -m bench.gpu --families flux --json gpu_flux.json

# Shapes v2 (issue 12), one seeded command each. On the CPU (resumable: <out>/train_state.pt, or INIT=<weights> to
# continue from committed fp16 EMA weights): about 0.6 s per step on one core.
V2_OUT ?= out/train_v2
V2_STEPS ?= 3000
train-v2: setup
	OMP_NUM_THREADS=1 $(PY) -m tools.train_shapes --arch v2-32 --feature-dc 0.1 --steps $(V2_STEPS) --batch 16 \
		--warmup 100 --threads 1 --export-every 500 --val-every 250 --out $(V2_OUT) $(if $(INIT),--init-from $(INIT))

# On a GPU (the device machine: no venv needed, carry .host/comfyui): trains within TRAIN_BUDGET s (default 390).
train-v2-gpu:
	bash tools/train_v2_gpu.sh

clean:
	rm -rf .venv .host out .frontends
