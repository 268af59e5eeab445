"""Screenshots of the example workflows as the frontend draws them (headless Chromium, the whole graph fitted
into the view): to look at the layout, and the node-graph picture of the real-image workflows' thumbnails.
    .venv/bin/python -m tools.workflow_screens [names...]      -> out/screens/<name>.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from tools.support import browser_util as bu, examples  # noqa: E402
from tools.support.comfy_server import ComfyServer  # noqa: E402

FIT = """() => {
  const c = app.canvas, ns = app.graph.nodes, gs = app.graph._groups || app.graph.groups || [];
  let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
  for (const n of ns) { x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); }
  for (const g of gs) { const b = g._bounding || g.bounding; x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]);
    x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]); }
  const el = c.canvas, m = 70;
  const s = Math.min((el.width - 2 * m) / (x1 - x0), (el.height - 2 * m) / (y1 - y0));
  c.ds.scale = s; c.ds.offset[0] = m / s - x0; c.ds.offset[1] = m / s - y0;
  c.setDirty(true, true); c.draw(true, true);
  return [x0, y0, x1, y1, s];
}"""


def main() -> None:
    names = sys.argv[1:] or list(examples.EXAMPLES)
    out = ROOT / "out" / "screens"
    out.mkdir(parents=True, exist_ok=True)
    srv = ComfyServer(extra_nodes=False).start()
    try:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as pw:
            b = bu.launch(pw)
            cp = bu.ComfyPage(b, srv).open()
            cp.page.set_viewport_size({"width": 2400, "height": 1300})
            for name in names:
                cp.load_workflow(json.loads(examples.path(name).read_text()))
                cp.page.wait_for_timeout(500)
                cp.page.evaluate(FIT)
                cp.page.wait_for_timeout(300)
                canvas = cp.page.locator("#graph-canvas")
                canvas.screenshot(path=str(out / f"{name}.png"))
                print(f"out/screens/{name}.png")
            cp.close()
            b.close()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    main()
