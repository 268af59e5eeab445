#!/usr/bin/env bash
# Debian's chromium for the browser tests (Playwright never downloads a browser). Run by `make test` only; `make demo`
# and `make server` do not need a browser. Tried once: when apt-get cannot install it, the stamp
# .host/chromium-unavailable stops later runs from trying again (delete it to retry) and the browser tests skip,
# naming the missing browser. DRAGEDIT_NO_CHROMIUM=1 skips this step; DRAGEDIT_CHROMIUM=/path uses another binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
browser=${DRAGEDIT_CHROMIUM:-/usr/bin/chromium}
stamp=$root/.host/chromium-unavailable

[ -x "$browser" ] && exit 0
if [ "${DRAGEDIT_NO_CHROMIUM:-0}" = 1 ]; then
  echo "[chromium] DRAGEDIT_NO_CHROMIUM=1: not installing; the browser tests will skip"
  exit 0
fi
if [ -f "$stamp" ]; then
  echo "[chromium] $browser missing; install was tried before ($stamp): browser tests will skip (delete the stamp to retry)"
  exit 0
fi
mkdir -p "$root/.host"
if command -v apt-get >/dev/null 2>&1; then
  echo "[chromium] installing Debian's chromium for the browser tests"
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) && [ -x "$browser" ]; then
    exit 0
  fi
  echo "[chromium] apt-get could not install chromium: browser tests will skip"
else
  echo "[chromium] no apt-get here: install chromium yourself (or set DRAGEDIT_CHROMIUM); browser tests will skip"
fi
date -u +%FT%TZ > "$stamp"
