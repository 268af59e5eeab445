"""Load every example workflow in the real frontend (headless Chromium) and print, per node, its stored size and
the size the frontend computes for it (node.computeSize()), as JSON: {workflow: {node id: {stored, computed}}}.
Used when laying out example_workflows/ so that no node is smaller than its widgets (overlaps hide widgets).
    .venv/bin/python -m tools.measure_nodes > out/node_sizes.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from tools.support import browser_util as bu  # noqa: E402
from tools.support.comfy_server import ComfyServer  # noqa: E402

JS = """() => { const out = {};
  for (const n of app.graph.nodes) { const c = n.computeSize();
    out[n.id] = {type: n.type, stored: [n.size[0], n.size[1]], computed: [Math.ceil(c[0]), Math.ceil(c[1])]}; }
  return out; }"""


def main() -> None:
    files = sorted((ROOT / "example_workflows").glob("*.json"))
    srv = ComfyServer(extra_nodes=False).start()
    result = {}
    try:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as pw:
            b = bu.launch(pw)
            cp = bu.ComfyPage(b, srv).open()
            for f in files:
                cp.load_workflow(json.loads(f.read_text()))
                cp.page.wait_for_timeout(300)
                result[f.stem] = cp.page.evaluate(JS)
            cp.close()
            b.close()
    finally:
        srv.cleanup()
    json.dump(result, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
