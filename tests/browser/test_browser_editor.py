"""The "Drag Instructions" editor among the frontend's own machinery (headless Chromium against the real server,
classic and "Nodes 2.0" rendering): Ctrl+Z runs the editor's undo and not the workflow's, the last run's image and
the user's tool and brush come back after a reload or a workflow open, the no-image hint is true and not cut off,
the brush is sized to the image, no deprecated frontend API is read, and a JSON declaring a huge mask costs the
browser no memory per declared pixel."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from PIL import Image

from tools.support import browser_util as bu
from test_browser import IMAGE_NAME, W, H, _decode_mask, _load, drag_type, pages, server  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SMALL_IMAGE = "dragedit_browser_test_32.png"
FIGURES = Path(__file__).resolve().parents[2] / "out" / "bench" / os.environ.get("DRAGEDIT_FIGURES", "editor_mask_limit.json")


@pytest.fixture(scope="module")
def small_image(server):
    Image.new("RGB", (32, 32), (90, 40, 120)).save(server.base / "input" / SMALL_IMAGE)
    return SMALL_IMAGE


def _inverted_workflow(drag_type: str, drag_data: str = "") -> dict:
    """Load Image -> Invert Image -> Drag Instructions -> (mask) MaskToImage -> Save Image: the editor's image
    source (Invert Image) has nothing to show before a run, like a generated image."""
    nodes = [
        {"id": 1, "type": "LoadImage", "pos": [20, 120], "size": [300, 320], "widgets_values": [IMAGE_NAME, "image"],
         "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
        {"id": 5, "type": "ImageInvert", "pos": [20, 480], "size": [220, 60],
         "inputs": [("image", "IMAGE")], "outputs": [("IMAGE", "IMAGE")]},
        {"id": 2, "type": drag_type, "pos": [360, 120], "size": [460, 560], "widgets_values": [drag_data],
         "inputs": [("image", "IMAGE")], "outputs": [("drag", "DRAG"), ("mask", "MASK")]},
        {"id": 3, "type": "MaskToImage", "pos": [860, 120], "size": [220, 60],
         "inputs": [("mask", "MASK")], "outputs": [("IMAGE", "IMAGE")]},
        {"id": 4, "type": "SaveImage", "pos": [860, 240], "size": [260, 280], "widgets_values": ["dragedit_browser"],
         "inputs": [("images", "IMAGE")]},
    ]
    links = [(1, 1, 0, 5, 0, "IMAGE"), (4, 5, 0, 2, 0, "IMAGE"), (2, 2, 1, 3, 0, "MASK"), (3, 3, 0, 4, 0, "IMAGE")]
    return bu.ui_workflow(nodes, links)


def _load_inverted(cp: bu.ComfyPage, drag_type: str, drag_data: str = "") -> bu.EditorHandle:
    cp.forget_editor_prefs()
    res = cp.load_workflow(_inverted_workflow(drag_type, drag_data))
    assert not res["unknown"] and not res["missing"], res
    cp.show_node(2, scale=0.9)
    cp.page.wait_for_timeout(500)
    ed = cp.editor(2)
    if cp.vue_nodes and "Nodes 2.0" in ed.host_note():
        # Frontend 1.27.x: its Nodes 2.0 renderer mounts no DOM widgets; the node shows a note instead.
        pytest.skip(f"frontend {bu.frontend_version()}: its Nodes 2.0 renderer shows no DOM widgets")
    return ed


def _points(ed: bu.EditorHandle) -> list:
    """Point pairs in the drag_data widget ("" before the first edit: none)."""
    text = ed.cp.widget_value(ed.id, "drag_data")
    return json.loads(text)["points"] if text else []


def _mode(vue: bool) -> str:
    return "nodes2" if vue else "classic"


# ---------------------------------------------------------------------- item 1: keys stay in the editor
def _ctrl_z_is_the_editors_undo(cp: bu.ComfyPage, drag_type: str) -> None:
    ed = _load(cp, drag_type, "")
    for h, t in (((40, 40), (80, 60)), ((150, 120), (200, 100))):
        ed.click(*h)
        ed.click(*t)
    assert len(ed.data()["points"]) == 2
    cp.page.evaluate("() => { window.__dragEditNode = app.graph.getNodeById(2); }")
    for left in (1, 0):
        cp.page.keyboard.press("Control+z")
        cp.page.wait_for_timeout(400)     # the workflow undo, had the key reached it, acts on a later frame
        assert len(_points(ed)) == left
        assert len(ed.eval("ed.state.points")) == left
        assert "Undone" in ed.status()["text"], ed.status()
        # The workflow undo reloads the graph: the node object would be a new one and the editor without image.
        assert cp.page.evaluate("() => app.graph.getNodeById(2) === window.__dragEditNode")
        assert ed.eval("!!ed.image") and not ed.host_note() and not ed.eval("ed.hostProblem")
    # After the toolbar's Undo button the keys still go to the editor.
    ed.click(30, 30)
    ed.click(60, 60)
    ed.action("zoom-fit")
    cp.page.keyboard.press("Control+z")
    cp.page.wait_for_timeout(400)
    assert not _points(ed)
    assert cp.page.evaluate("() => app.graph.getNodeById(2) === window.__dragEditNode")
    assert cp.page.evaluate("() => document.activeElement?.dataset?.role") == "keys"


def test_ctrl_z_is_the_editors_undo(pages, drag_type):
    _ctrl_z_is_the_editors_undo(pages(False), drag_type)


# ---------------------------------------------------------------------- item 2: the image and the prefs come back
def _last_run_image_and_prefs_come_back(cp: bu.ComfyPage, drag_type: str) -> None:
    ed = _load_inverted(cp, drag_type)
    assert ed.eval("ed.image") is None and "No image yet" in ed.status()["text"]
    entry = cp.queue()
    assert entry["status"]["status_str"] == "success", entry["status"]
    cp.page.wait_for_function("() => { const ed = app.graph.getNodeById(2).dragEditor;"
                              " return ed.image && ed.imageKey.includes('type=temp'); }", timeout=20_000)
    ref = cp.page.evaluate("() => app.graph.serialize().nodes.find(n => n.id === 2).properties.dragedit_image")
    assert ref["type"] == "temp" and ref["filename"].endswith(".png") and set(ref) == {"filename", "subfolder", "type", "upstream"}
    # Tool and brush size are the user's: set them, then reload.
    ed.tool("brush")
    ed.root().locator("input[data-role='brush-size']").evaluate(
        "(e) => { e.value = '10'; e.dispatchEvent(new Event('input')); }")
    assert ed.eval("ed.brush") == 10
    assert cp.wait_stored(ref["filename"])
    cp.reload()
    cp.show_node(2, scale=0.9)
    ed = cp.editor(2)
    assert ed.wait_image() == [W, H]
    assert "type=temp" in ed.eval("ed.imageKey") and ref["filename"] in ed.eval("ed.imageKey")
    assert ed.eval("ed.tool") == "brush" and ed.eval("ed.brush") == 10
    cp.page.wait_for_timeout(200)
    r, g, b, _ = ed.pixel(70, 70)            # the inverted ellipse (yellow -> blue): the run's image, not a grey box
    assert b > 150 and r < 100, (r, g, b)
    # Opening the workflow again (as from a file or another tab) brings the image back too.
    wf = cp.page.evaluate("() => app.graph.serialize()")
    cp.load_workflow(wf)
    cp.show_node(2, scale=0.9)
    ed = cp.editor(2)
    assert ed.wait_image() == [W, H] and "type=temp" in ed.eval("ed.imageKey")
    shot = cp.screenshot_clip(bu.SCREENSHOTS / f"drag_editor_after_reload_{_mode(cp.vue_nodes)}.png", cp.node_box(2))
    assert shot.stat().st_size > 5_000


def test_last_run_image_and_prefs_come_back(pages, drag_type):
    _last_run_image_and_prefs_come_back(pages(False), drag_type)


# ---------------------------------------------------------------------- item 3: the hint
def _hint_fits_and_what_it_says_works(cp: bu.ComfyPage, drag_type: str) -> None:
    ed = _load_inverted(cp, drag_type)
    text = ed.status()["text"]
    assert "No image yet" in text and "Run Branch" in text and "Queue Selected Output Nodes" in text, text
    cut = ed.eval("ed.status.scrollHeight - ed.status.clientHeight")
    assert cut <= 1, (cut, text)
    # What it says works: select the node, click the play button of the selection toolbar above it; only the
    # branch feeding the editor runs, and the editor shows its image.
    box = cp.node_box(2)
    cp.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + 12)
    before = set(cp.server.get("/history?max_items=1000"))
    try:
        play = cp.page.wait_for_function(
            """([x0, x1, top]) => Array.from(document.querySelectorAll(".selection-toolbox button:has(i[class*='lucide--play'])")).find(b => {
                 const r = b.getBoundingClientRect();
                 return r.width > 0 && r.bottom <= top + 5 && r.top >= top - 120 && r.left >= x0 - 40 && r.right <= x1 + 40; })""",
            arg=[box["x"], box["x"] + box["width"], box["y"]], timeout=5_000).as_element()
        play.click()
    except PlaywrightTimeout:
        # frontends without the selection toolbar (1.27, ComfyUI 0.3.64): the hint's other name, the canvas menu's
        # "Queue Selected Output Nodes" command, with the editor node selected as the click above would
        cp.page.evaluate("""() => { const n = app.graph.getNodeById(2); app.canvas.deselectAllNodes?.();
                                   app.canvas.selectNode(n);
                                   return app.extensionManager.command.execute('Comfy.QueueSelectedOutputNodes'); }""")
    entry = _wait_new_entry(cp, before)
    assert entry["status"]["status_str"] == "success", entry["status"]
    # the editor's branch only: the one output queued is the editor node (history's "outputs" also lists cached
    # nodes' results on ComfyUI 0.3.64, so it is not the test)
    assert list(entry["prompt"][4]) == ["2"], entry["prompt"][4]
    assert "2" in entry["outputs"], entry["outputs"]
    assert ed.wait_image() == [W, H] and "No image yet" not in ed.status()["text"]


def _wait_new_entry(cp: bu.ComfyPage, before: set, timeout: float = 120.0) -> dict:
    """The first /history entry not in `before`, once it has finished."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        hist = cp.server.get("/history?max_items=1000")
        new = [k for k in hist if k not in before]
        if new and (hist[new[0]].get("status", {}).get("completed")
                    or hist[new[0]].get("status", {}).get("status_str") == "error"):
            return hist[new[0]]
        time.sleep(0.3)
    raise TimeoutError(cp.server.log()[-3000:])


def test_hint_fits_and_what_it_says_works(pages, drag_type):
    _hint_fits_and_what_it_says_works(pages(False), drag_type)


# ---------------------------------------------------------------------- item 4: brush sized to the image
def test_brush_is_sized_to_the_image(pages, drag_type, small_image):
    cp = pages(False)
    ed = _load(cp, drag_type, "", image=small_image)
    assert ed.eval("ed.imageSize()") == [32, 32]
    slider = ed.root().locator("input[data-role='brush-size']")
    assert ed.eval("ed.brush") == 4 and slider.get_attribute("min") == "1" and slider.get_attribute("max") == "16"
    assert ed.root().locator("[data-role='brush-size-value']").inner_text() == "4 px"
    ed.tool("brush")
    ed.click(16, 16)
    painted = _decode_mask(ed.data()["mask"]).mean()
    assert 0 < painted < 0.05, painted          # one click paints a dab, not the image
    ed = _load(cp, drag_type, "")
    assert ed.eval("ed.brush") == 24 and ed.root().locator("input[data-role='brush-size']").get_attribute("max") == "128"


# ---------------------------------------------------------------------- item 5: no deprecated API
def test_no_deprecated_frontend_api(pages, drag_type):
    """The frontend's deprecation hook (LiteGraph.onDeprecationWarning, 1.5x) records no warning raised from the
    pack's modules while the editor loads, polls and follows a link change."""
    cp = pages(False)
    hooked = cp.page.evaluate("""() => {
        const L = window.LiteGraph;
        if (!L || !Array.isArray(L.onDeprecationWarning)) return false;
        L.alwaysRepeatWarnings = true;
        window.__dragEditDeprecations = [];
        L.onDeprecationWarning.push((msg) => window.__dragEditDeprecations.push(`${msg}\\n${new Error().stack}`));
        return true; }""")
    ed = _load(cp, drag_type, "")
    cp.page.evaluate("() => { const n = app.graph.getNodeById(2); n.disconnectInput(0); }")
    cp.page.wait_for_timeout(1_000)             # two polls without the link
    assert ed.eval("ed.image") is None
    cp.page.evaluate("() => { app.graph.getNodeById(1).connect(0, app.graph.getNodeById(2), 0); }")
    ed.wait_image()
    if not hooked:
        pytest.skip(f"frontend {bu.frontend_version()} has no deprecation hook (LiteGraph.onDeprecationWarning)")
    warnings = cp.page.evaluate("() => window.__dragEditDeprecations")
    ours = [w for w in warnings if "/drag_" in w or "DragEdit" in w]
    assert not ours, ours[:3]


# ---------------------------------------------------------------------- a huge declared mask
def _heap(cdp) -> dict:
    """JS heap and ArrayBuffer backing stores (bytes) after a full garbage collection."""
    cdp.send("HeapProfiler.collectGarbage")
    u = cdp.send("Runtime.getHeapUsage")
    return {"heap": u["usedSize"], "buffers": u.get("backingStorageSize", 0), "embedder": u.get("embedderHeapUsedSize", 0)}


def test_huge_declared_mask_costs_no_memory_per_pixel(pages, drag_type, server):
    """A 300-byte JSON declaring a 16384x12288 mask, in an editor with no image yet (nothing to rescale it to):
    the editor says it does not show it and allocates nothing per declared pixel; the node still runs it."""
    w0, h0 = 16384, 12288                      # the test image's 4:3, so the node rescales it to the image
    band = (h0 // 2) * w0, 128 * w0            # 128 full rows from the middle down
    data = json.dumps({"version": 1, "image_size": [w0, h0], "points": [[100, 100, 400, 300]],
                       "mask": {"size": [w0, h0], "counts": [band[0], band[1], w0 * h0 - sum(band)]}})
    cp = pages(False)
    _load_inverted(cp, drag_type)
    cdp = cp.context.new_cdp_session(cp.page)
    cdp.send("HeapProfiler.enable")
    before = _heap(cdp)
    t0 = time.perf_counter()
    ed = _load_inverted(cp, drag_type, data)
    cp.page.wait_for_function("() => { const ed = app.graph.getNodeById(2).dragEditor;"
                              " return ed.status.dataset.error === '1' || !!ed.state.mask; }", timeout=120_000)
    seconds = time.perf_counter() - t0
    after = _heap(cdp)
    canvases = ed.eval("[ed.maskCanvas && ed.maskCanvas.width * ed.maskCanvas.height,"
                       " ...Array.from(document.querySelectorAll('canvas')).map(c => c.width * c.height)]")
    figures = {"declared": [w0, h0], "load_s": round(seconds, 2),
               "heap_mb_before": round(before["heap"] / 2 ** 20, 1), "heap_mb_after": round(after["heap"] / 2 ** 20, 1),
               "buffers_mb_before": round(before["buffers"] / 2 ** 20, 1),
               "buffers_mb_after": round(after["buffers"] / 2 ** 20, 1),
               "largest_canvas_px": max(c or 0 for c in canvases),
               "mask_entries": ed.eval("ed.state.mask ? ed.state.mask.length : 0")}
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=1))
    print("editor, 16384x12288 declared mask:", figures)
    st = ed.status()
    assert "16384x12288" in st["text"] and "still runs it" in st["text"], st
    assert figures["mask_entries"] == 0 and ed.eval("ed.maskCanvas") is None
    assert figures["largest_canvas_px"] <= 4096 * 4096
    grown = (after["heap"] + after["buffers"]) - (before["heap"] + before["buffers"])
    assert grown < 64 * 2 ** 20, figures
    assert cp.widget_value(2, "drag_data") == data          # kept as stored until the user edits
    # The node still runs it (the server resamples the mask to the image from the run lengths).
    entry = cp.queue()
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = server.output_images({"outputs": {"4": entry["outputs"]["4"]}})
    out = np.asarray(Image.open(saved[0]).convert("L")) > 127
    assert out.shape == (H, W) and out[96:98].all() and not out[:90].any()


# ---------------------------------------------------------------------- the same with "Nodes 2.0" (Vue nodes)
def test_ctrl_z_is_the_editors_undo_nodes2(pages, drag_type):
    _ctrl_z_is_the_editors_undo(pages(True), drag_type)


def test_last_run_image_and_prefs_come_back_nodes2(pages, drag_type):
    _last_run_image_and_prefs_come_back(pages(True), drag_type)


def test_hint_fits_and_what_it_says_works_nodes2(pages, drag_type):
    _hint_fits_and_what_it_says_works(pages(True), drag_type)
