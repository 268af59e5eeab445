#!/bin/bash
# Install the ComfyUI frontend comfyui-frontend-package==VERSION into .frontends/VERSION (pip install --target;
# the venv's own frontend stays as it is). The test server serves it when DRAGEDIT_FRONTEND=VERSION is set
# (`make test FRONTEND=VERSION` does both); `make server FRONTEND=VERSION` runs the UI on it.
# usage: .ci/frontend.sh VERSION      e.g. .ci/frontend.sh 1.58.1
set -euo pipefail
version=${1:?usage: .ci/frontend.sh VERSION (a comfyui-frontend-package version, e.g. 1.58.1)}
cd "$(dirname "$0")/.."
dest=.frontends/$version
if [ -f "$dest/comfyui_frontend_package/static/index.html" ]; then
  echo "frontend $version: $dest/comfyui_frontend_package/static"
  exit 0
fi
rm -rf "$dest.partial"
.venv/bin/python -m pip install -q --no-deps --target "$dest.partial" "comfyui-frontend-package==$version"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "frontend $version: $dest/comfyui_frontend_package/static"
