#!/usr/bin/env bash
# Shapes v2 on a GPU (issue 12): the one prepared command. On the device machine (nothing else to install):
#     run(command="bash tools/train_v2_gpu.sh", carry=[".host/comfyui"], timeout_s=600)
# It needs python3 with torch, safetensors and Pillow (the device image has them) and ComfyUI's source
# (.host/comfyui, carried; torchsde is stubbed by tools/train_shapes.py when absent). A 120-step speed probe fixes
# the step count that fits TRAIN_BUDGET seconds (printed, and recorded in the weights' metadata, so the run can be
# repeated exactly with those numbers); then the run writes the fp16 EMA weights, its log and a sample grid to $OUT
# (the device tool brings that folder back) or out/train_v2. Check the result on the CPU:
#     python -m bench.shapes_gates --weights <dir>/shapes_v2-32.safetensors --name shapes_gates_v2
#     DRAGEDIT_SHAPES_WEIGHTS=<dir>/shapes_v2-32.safetensors python -m bench.shapesbench --name shapesbench_v2
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-v2-32}
BUDGET=${TRAIN_BUDGET:-390}
DEST=${OUT:-out/train_v2}
PY=${PY:-python3}
export COMFYUI_PATH=${COMFYUI_PATH:-.host/comfyui} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
mkdir -p "$DEST"
$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script trains on a GPU (on the CPU: make train-v2)')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
COMMON=(--arch "$ARCH" --device cuda --batch "${BATCH:-64}" --workers "${WORKERS:-12}" --threads 4 --feature-dc 0.1
        --lr 1e-3 --warmup 200 --ckpt-every 0 --seed 0)
probe=$(mktemp -d)
$PY -m tools.train_shapes "${COMMON[@]}" --steps 1000000 --stop-at 120 --log-every 20 --val-every 1000000 --grid 0 \
    --out "$probe" 2>&1 | grep -v '^WARNING' | tee "$DEST/probe.log"
sps=$(grep -o '[0-9.]* s/step' "$DEST/probe.log" | tail -n 3 | awk '{s += $1} END {print s / NR}')
steps=$($PY -c "print(max(500, int($BUDGET / max($sps, 1e-3)) // 500 * 500))")
echo "speed probe: $sps s/step -> $steps steps in $BUDGET s"
$PY -m tools.train_shapes "${COMMON[@]}" --steps "$steps" --time-budget $((BUDGET + 60)) --log-every 500 \
    --val-every 2000 --grid 1 --out "$DEST" 2>&1 | grep -v '^WARNING' | tee "$DEST/train.log"
