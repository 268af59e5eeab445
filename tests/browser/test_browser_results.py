"""Results seen at a glance (issue 21 item 6), headless Chromium against the real server, classic and "Nodes 2.0"
rendering: after the RegionDrag example runs, a double-click on its 32 px Save Image or on the 8x preview opens the
image large (an overlay scaled to the window without smoothing); Escape closes it and the canvas did not take the key."""
from __future__ import annotations

import json

import pytest

from test_browser import WORKFLOWS, pages, server  # noqa: F401 (fixtures)
from tools.support import browser_util as bu, examples

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OVERLAY = "#dragedit-result-view"


def _node_by_title(cp: bu.ComfyPage, title: str) -> int:
    return cp.page.evaluate("(t) => app.graph.nodes.find(n => n.title === t)?.id ?? null", title)


def _dblclick_body(cp: bu.ComfyPage, node_id: int) -> None:
    """Double-click the lower part of a node's body (where the frontend draws its images)."""
    cp.show_node(node_id, scale=1.0)
    b = cp.node_box(node_id)
    cp.page.mouse.dblclick(b["x"] + b["width"] / 2, b["y"] + b["height"] * 0.7)
    cp.page.wait_for_timeout(300)


def _overlay(cp: bu.ComfyPage) -> dict:
    return cp.page.evaluate(
        """(sel) => { const o = document.querySelector(sel); if (!o) return null;
                      const im = o.querySelector('[data-role=result-view-image]'), r = im.getBoundingClientRect();
                      return {natural: [im.naturalWidth, im.naturalHeight], shown: [r.width, r.height],
                              rendering: getComputedStyle(im).imageRendering,
                              caption: o.querySelector('[data-role=result-view-caption]').textContent}; }""", OVERLAY)


def _check_result_view(cp: bu.ComfyPage, vue: bool) -> None:
    """Run the RegionDrag example, double-click its 32 px Save Image and its 8x preview: each opens large."""
    wf = json.loads((WORKFLOWS / examples.file_name("regiondrag")).read_text())
    res = cp.load_workflow(wf)
    assert not res["unknown"] and not res["missing"], res
    entry = cp.queue()
    assert entry["status"]["status_str"] == "success", entry["status"]
    big = _node_by_title(cp, "Result, 8x for viewing")
    small = next(n["id"] for n in wf["nodes"] if n["type"] == "SaveImage")
    for node_id, side in ((small, 32), (big, 256)):
        cp.show_node(node_id, scale=1.0)             # some frontends (1.27) set a node's images when they draw it
        if vue:
            img = cp.page.locator(f'[data-node-id="{node_id}"] img').first
            try:
                cp.page.wait_for_function(f"""() => {{ const im = document.querySelector('[data-node-id="{node_id}"] img');
                                              return !!(im && im.complete && im.naturalWidth > 0); }}""", timeout=30_000)
            except Exception:
                pytest.skip(f"frontend {bu.frontend_version()}: its Nodes 2.0 node shows no <img> for the result")
            b = img.bounding_box()
            cp.page.mouse.dblclick(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
            cp.page.wait_for_timeout(300)
        else:
            cp.page.wait_for_function("(id) => (app.graph.getNodeById(id).imgs || []).some("
                                      "im => im.complete && im.naturalWidth > 0)", arg=node_id, timeout=30_000)
            _dblclick_body(cp, node_id)
        got = _overlay(cp)
        assert got is not None, f"double-click on node {node_id} opened nothing"
        cp.page.wait_for_function(f"() => document.querySelector('{OVERLAY} img').naturalWidth > 0")
        got = _overlay(cp)
        assert got["natural"] == [side, side], got
        assert min(got["shown"]) >= 500, got                     # large: at least 500 px on a 1280 x 900 page
        assert got["rendering"] == "pixelated", got
        assert f"{side} x {side} px" in got["caption"], got
        bu.SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        cp.page.screenshot(path=str(bu.SCREENSHOTS / f"result_view_{side}px_{bu.frontend_version()}"
                                                     f"{'_nodes2' if vue else ''}.png"))
        before = cp.page.evaluate("() => app.graph.nodes.length")
        cp.page.keyboard.press("Escape")
        cp.page.wait_for_timeout(200)
        assert _overlay(cp) is None
        assert cp.page.evaluate("() => app.graph.nodes.length") == before
    ours = [e for e in cp.errors if "result_view" in e]
    assert not ours, ours


def test_double_click_opens_a_result_large(pages, server):
    _check_result_view(pages(False), vue=False)


def test_double_click_opens_a_result_large_nodes2(pages, server):
    _check_result_view(pages(True), vue=True)
