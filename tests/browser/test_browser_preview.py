"""The "Drag Instructions" editor gets its image before the method runs (headless Chromium against the real
server): with a generated image upstream (no Load Image), "Queue Selected Output Nodes" on the editor node runs
only the image's branch and the editor shows it; after a page reload, a fully cached run still brings it back."""
from __future__ import annotations

import time

import pytest

from tools.support import browser_util as bu

pytestmark = [pytest.mark.browser, pytest.mark.slow]

POINTS = '{"version": 1, "image_size": [32, 32], "points": [{"handle": [11, 8], "target": [19, 8]}], "regions": []}'


def _workflow(drag_type: str) -> dict:
    """Shapes Scene (a generated image, not Load Image) -> Drag Instructions -> mask -> Save Image."""
    nodes = [
        {"id": 1, "type": "DragEditShapesScene", "pos": [20, 120], "size": [260, 120], "widgets_values": [2, "fixed", "1"],
         "outputs": [("IMAGE", "IMAGE"), ("prompt", "STRING")]},
        {"id": 2, "type": drag_type, "pos": [320, 120], "size": [460, 560], "widgets_values": [POINTS],
         "inputs": [("image", "IMAGE")], "outputs": [("DRAG", "DRAG"), ("MASK", "MASK")]},
        {"id": 3, "type": "MaskToImage", "pos": [820, 120], "size": [220, 60],
         "inputs": [("mask", "MASK")], "outputs": [("IMAGE", "IMAGE")]},
        {"id": 4, "type": "SaveImage", "pos": [820, 240], "size": [260, 280], "widgets_values": ["dragedit_preview_path"],
         "inputs": [("images", "IMAGE")]},
    ]
    links = [(1, 1, 0, 2, 0, "IMAGE"), (2, 2, 1, 3, 0, "MASK"), (3, 3, 0, 4, 0, "IMAGE")]
    return bu.ui_workflow(nodes, links)


def _run(cp: bu.ComfyPage, js: str, timeout: float = 120.0) -> dict:
    """Evaluate `js` (which queues a prompt) and return the new /history entry once it has finished."""
    before = set(cp.server.get("/history?max_items=1000"))
    cp.page.evaluate(js)
    t0 = time.time()
    while time.time() - t0 < timeout:
        hist = cp.server.get("/history?max_items=1000")
        new = [k for k in hist if k not in before]
        if new and (hist[new[0]].get("status", {}).get("completed")
                    or hist[new[0]].get("status", {}).get("status_str") == "error"):
            return hist[new[0]]
        time.sleep(0.3)
    raise TimeoutError(cp.server.log()[-3000:])


def _open(browser, server, drag_type: str) -> tuple[bu.ComfyPage, bu.EditorHandle]:
    cp = bu.ComfyPage(browser, server).open()
    res = cp.load_workflow(_workflow(drag_type))
    assert not res["unknown"] and not res["missing"], res
    cp.show_node(2, scale=0.9)
    ed = cp.editor(2)
    cp.page.wait_for_timeout(500)
    return cp, ed


def test_editor_image_before_the_method_and_after_a_cached_run(browser, comfy_server):
    drag_type = bu.drag_node_type(comfy_server)
    cp, ed = _open(browser, comfy_server, drag_type)
    try:
        assert ed.eval("ed.image") is None
        assert "No image yet" in ed.status()["text"] and "Queue Selected Output Nodes" in ed.status()["text"]
        # The user's path: select the editor node, "Queue Selected Output Nodes" (its play button / menu command).
        entry = _run(cp, "async () => { app.canvas.deselectAll?.(); app.canvas.selectNode(app.graph.getNodeById(2));"
                         " await app.extensionManager.command.execute('Comfy.QueueSelectedOutputNodes'); }")
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert set(entry["outputs"]) == {"2"}, entry["outputs"]          # Save Image (downstream) did not run
        assert list(entry["prompt"][4]) == ["2"]                          # the one output queued: the editor node
        assert ed.wait_image() == [32, 32]
        assert "No image yet" not in ed.status()["text"]
        # The whole graph once (the mask branch runs; Drag Instructions comes from the cache).
        entry = _run(cp, "async () => { await app.queuePrompt(0, 1); }")
        assert entry["status"]["status_str"] == "success" and "4" in entry["outputs"], entry["status"]
        shot = cp.screenshot_clip(bu.SCREENSHOTS / "drag_editor_generated_image.png", cp.node_box(2))
        assert shot.stat().st_size > 5_000
    finally:
        cp.close()
    # Reload: the editor has no image again; a run where every node is cached still brings it back.
    cp, ed = _open(browser, comfy_server, drag_type)
    try:
        assert ed.eval("ed.image") is None
        entry = _run(cp, "async () => { await app.queuePrompt(0, 1); }")
        assert entry["status"]["status_str"] == "success"
        cached = [m for m in entry["status"]["messages"] if m[0] == "execution_cached"][0][1]["nodes"]
        assert {"1", "2", "3", "4"} <= set(cached), cached
        assert ed.wait_image() == [32, 32]
        assert ed.eval("ed.imageKey").find("type=temp") >= 0
        ours = [e for e in cp.errors if ("dragedit" in e.lower() or "drag_editor" in e.lower())
                and "api.comfy.org" not in e]          # the frontend's registry look-up of node ids is the host's
        assert not ours, ours
    finally:
        cp.close()
