# The two commands of the README: `make demo` (main job) and `make test` (the suite). Both set up on first use.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test server bench bench-gpu clean

setup:
	@bash .ci/setup.sh

demo: setup
	$(PY) .ci/demo.py

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

server: setup
	cd .host/comfyui && ../../$(PY) main.py --cpu --listen 127.0.0.1 --port 8188 --disable-auto-launch \
		--base-directory ../base --database-url sqlite:///$(CURDIR)/.host/base/comfy.db

BENCHES := inversion regiondrag dragdiffusion dragondiffusion ledits shapesbench

bench: setup
	for b in $(BENCHES); do $(PY) bench/$$b.py || exit 1; done

# One prepared GPU run (CUDA required, fails loudly without it): every method at SD1.5 512² and SDXL 1024²,
# seconds per edit, peak VRAM, K/V RAM and transfer time -> out/bench/gpu.json (within 8 minutes on one GPU).
bench-gpu: setup
	DRAGEDIT_COMFY_GPU=1 $(PY) bench/gpu.py

clean:
	rm -rf .venv .host out
