"""The "Drag Instructions" editor in a real browser (headless Debian Chromium via Playwright) against the real
ComfyUI server: points, regions and mask placed by mouse, JSON in the widget, a queued prompt, malformed stored
values, both classic and "Nodes 2.0" rendering (the example workflows: test_browser_workflows.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tools.support import browser_util as bu

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = Path(os.environ.get("DRAGEDIT_WORKFLOWS", ROOT / "example_workflows"))   # override: check other folders
IMAGE_NAME = "dragedit_browser_test.png"
IMAGE_2X = "dragedit_browser_test_2x.png"
W, H = 256, 192          # not square, so letterboxing and the x/y scales are exercised
TOL = 1.0                # image px: mouse positions are whole screen px at a zoom below 1


@pytest.fixture(scope="module")
def server(comfy_server):
    """The shared server with the test image in its input folder."""
    img = Image.new("RGB", (W, H), (40, 60, 90))
    d = ImageDraw.Draw(img)
    d.ellipse([30, 30, 110, 110], fill=(230, 180, 40))
    d.rectangle([150, 100, 230, 170], fill=(200, 60, 60))
    img.save(comfy_server.base / "input" / IMAGE_NAME)
    img.resize((2 * W, 2 * H)).save(comfy_server.base / "input" / IMAGE_2X)
    # The real-image example workflows name the pack's example picture (the pack copied it into input/ when the
    # server loaded it) and the model files they were made for: give the combos those names (nothing loads the
    # placeholder files here): the SD checkpoints and every file a workflow's loader lists for download
    # (properties.models: name, directory).
    from tools.support import sd_checkpoints
    ckpts = comfy_server.base / "models" / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    for name in (sd_checkpoints.SD15_NAME, sd_checkpoints.SDXL_NAME):
        (ckpts / name).touch()
    for path in sorted(WORKFLOWS.glob("*.json")) if WORKFLOWS.is_dir() else []:
        for node in json.loads(path.read_text()).get("nodes", []):
            for m in (node.get("properties") or {}).get("models") or []:
                folder = comfy_server.base / "models" / m["directory"]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / m["name"]).touch()
    return comfy_server


@pytest.fixture(scope="module")
def drag_type(server):
    return bu.drag_node_type(server)


@pytest.fixture(scope="module")
def pages(browser, server):
    """One page per rendering mode, opened on first use and shared by the module's tests."""
    opened: dict = {}

    def get(vue: bool) -> bu.ComfyPage:
        # The Nodes 2.0 switch is a server-side user setting read at page load: open pages one at a time.
        if vue not in opened:
            for other in list(opened.values()):
                other.close()
            opened.clear()
            try:
                opened[vue] = bu.ComfyPage(browser, server, vue_nodes=vue).open()
            except bu.FeatureMissing as e:
                pytest.skip(str(e))
        return opened[vue]

    yield get
    for p in opened.values():
        p.close()
    server.post(f"/settings/{bu.VUE_NODES_SETTING}", False)


def _close(a, b, tol=TOL):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def _load(cp: bu.ComfyPage, drag_type: str, drag_data: str, image: str = IMAGE_NAME,
          fresh_prefs: bool = True) -> bu.EditorHandle:
    """Load the LoadImage -> Drag Instructions workflow and wait for the editor's image; fresh_prefs forgets the
    tool and brush the editor remembers (so it starts with its defaults)."""
    if fresh_prefs:
        cp.forget_editor_prefs()
    res = cp.load_workflow(bu.drag_workflow(drag_type, image, drag_data))
    assert not res["unknown"] and not res["missing"], res
    cp.show_node(2, scale=0.9)
    ed = cp.editor(2)
    try:
        size = ed.wait_image()
    except bu.FeatureMissing as e:
        # Frontend 1.27.x: its Nodes 2.0 renderer mounts no DOM widgets; the node shows a note instead.
        assert cp.vue_nodes and "Nodes 2.0" in ed.host_note(), (str(e), ed.host_note())
        pytest.skip(str(e))
    if image == IMAGE_NAME:
        assert size == [W, H]
    ed.wait_stable()
    return ed


def test_extension_registered_once(pages, server):
    """Issue 13 item 6: the pack's folder name (ComfyUI-DragEdit) differs from its project name
    (comfyui-dragedit); the server still serves the editor once and the page registers it once."""
    exts = server.get("/extensions")
    mine = [e for e in exts if e.endswith("/drag_editor.js")]
    assert len(mine) == 1, mine
    cp = pages(False)
    assert cp.page.evaluate("() => app.extensions.filter(e => e.name === 'DragEdit.DragEditor').length") == 1
    dup = [m for m in cp.messages if "already registered" in m and "DragEdit" in m]
    assert not dup, dup


# Tests run in file order: the classic-rendering tests first, the Nodes 2.0 ones last (two page loads in all).
def test_editor_by_mouse_then_queue(pages, server, drag_type):
    _editor_by_mouse_then_queue(pages(False), server, drag_type, vue=False)


def _editor_by_mouse_then_queue(cp: bu.ComfyPage, server, drag_type: str, vue: bool) -> None:
    """Place two point pairs, a region pair (rects, or polygons in Nodes 2.0) and a mask stroke by mouse; move,
    delete and undo; check the widget JSON; queue from the UI and check the prompt and its mask output."""
    ed = _load(cp, drag_type, "")
    assert cp.page.evaluate("() => app.graph.getNodeById(2).widgets.find(w => w.name === 'drag_data').hidden")
    assert not ed.host_note() and not ed.eval("ed.hostProblem")      # hosted: no "editor unavailable" note

    # Two point pairs (Point is the default tool): click handle, click target.
    pairs = [((60, 50), (100, 70)), ((200, 150), (180, 100))]
    for h, t in pairs:
        ed.click(*h)
        ed.click(*t)
    # A region pair: rectangles in classic mode, polygons in Nodes 2.0 mode.
    if not vue:
        ed.tool("rect")
        ed.drag((20, 120), (70, 170))
        ed.drag((140, 20), (200, 80))
    else:
        ed.tool("polygon")
        for v in [(20, 120), (70, 125), (60, 170), (25, 160)]:
            ed.click(*v)
        ed.click(20, 120)               # close on the first vertex
        ed.click(170, 50)               # place the target copy centred there
    # Mask brush stroke.
    ed.tool("brush")
    ed.drag((110, 40), (150, 40))

    data = ed.data()
    assert data["version"] == 1 and data["image_size"] == [W, H]
    assert len(data["points"]) == 2
    for (h, t), got in zip(pairs, data["points"]):
        assert _close(got["handle"], h) and _close(got["target"], t), (got, h, t)
    assert len(data["regions"]) == 1
    reg = data["regions"][0]
    if not vue:
        assert reg["kind"] == "rect"
        assert _close(reg["handle"][0], (20, 120)) and _close(reg["handle"][1], (70, 170)), reg
        assert _close(reg["target"][0], (140, 20)) and _close(reg["target"][1], (200, 80)), reg
    else:
        assert reg["kind"] == "polygon" and len(reg["handle"]) == 4 == len(reg["target"])
        assert _close(reg["handle"][1], (70, 125)), reg
        c = np.mean(np.array(reg["target"]), axis=0)
        assert _close(c, (170, 50)), reg
    mask = _decode_mask(data["mask"])
    assert mask[40, 130] and mask[40, 112] and not mask[150, 20] and not mask[100, 130]
    # A thinner eraser cuts the stroke in two.
    ed.root().locator("input[data-role='brush-size']").evaluate(
        "(e) => { e.value = '10'; e.dispatchEvent(new Event('input')); }")
    ed.tool("eraser")
    ed.drag((130, 25), (130, 55))
    mask = _decode_mask(ed.data()["mask"])
    assert not mask[40, 130] and mask[40, 112] and mask[40, 145]

    # Drag the first target to a new place; right-click removes a pair; Undo brings it back.
    ed.tool("point")
    ed.drag((100, 70), (110, 82))
    assert _close(ed.data()["points"][0]["target"], (110, 82))
    ed.click(200, 150, button="right")
    assert len(ed.data()["points"]) == 1
    assert cp.page.locator(".litecontextmenu:visible, .p-contextmenu:visible").count() == 0   # no graph menu
    ed.action("undo")
    assert len(ed.data()["points"]) == 2
    # Delete key removes the selected point's pair (the target just dragged is selected after a click on it).
    ed.click(110, 82)
    cp.page.keyboard.press("Delete")
    left = ed.data()["points"]
    assert len(left) == 1 and _close(left[0]["handle"], (200, 150)), left
    ed.action("undo")
    data = ed.data()
    assert len(data["points"]) == 2 and not ed.status()["error"]
    cp.page.keyboard.press("Delete")      # focus stays in the editor: nothing selected, the node survives
    assert cp.page.evaluate("() => !!app.graph.getNodeById(2)") and ed.data() == data
    ed.action("clear")
    cleared = ed.data()
    assert not cleared["points"] and not cleared["regions"] and "mask" not in cleared
    ed.action("undo")
    assert ed.data() == data

    shot = cp.screenshot_clip(bu.SCREENSHOTS / f"drag_editor_{'nodes2' if vue else 'classic'}.png",
                             cp.node_box(2))
    assert shot.stat().st_size > 10_000

    # Queue from the UI; the server receives exactly the widget JSON and the mask reaches the output.
    entry = cp.queue()
    assert entry["status"]["status_str"] == "success", entry["status"]
    prompt = entry["prompt"][2]
    assert json.loads(prompt["2"]["inputs"]["drag_data"]) == data
    saved = server.output_images({"outputs": {"4": entry["outputs"]["4"]}})
    out = np.asarray(Image.open(saved[0]).convert("L")) > 127
    assert out.shape == (H, W)
    assert (out == _decode_mask(data["mask"])).all()
    # After the run the editor shows the image the node executed on (its "drag_image" UI output).
    assert entry["outputs"]["2"]["drag_image"][0]["type"] == "temp"
    cp.page.wait_for_function("() => { const ed = app.graph.getNodeById(2).dragEditor;"
                              " return ed.image && ed.imageKey.includes('type=temp'); }", timeout=10_000)
    assert ed.eval("ed.imageSize()") == [W, H] and ed.data() == data
    assert not [e for e in cp.errors if "dragedit" in e.lower() or "drag_editor" in e.lower()], cp.errors


def test_drawing_survives_page_reload(pages, drag_type):
    _drawing_survives_page_reload(pages(False), drag_type)


def _drawing_survives_page_reload(cp: bu.ComfyPage, drag_type: str) -> None:
    """Issue 13 item 1: draw, touch nothing else, reload the page: the drawing is still there (every edit reaches
    the frontend's change tracker, which keeps the copy of the workflow a reload restores)."""
    ed = _load(cp, drag_type, "")
    ed.click(40, 40)
    ed.click(80, 60)
    ed.tool("brush")
    ed.drag((150, 120), (200, 120))
    data = ed.data()
    assert len(data["points"]) == 1 and "mask" in data, data
    text = cp.widget_value(2, "drag_data")
    stored = cp.wait_stored(text)
    cp.reload()
    assert cp.page.evaluate(f"() => app.graph.getNodeById(2)?.type") == drag_type
    after = cp.widget_value(2, "drag_data")
    assert after == text, f"stored copy updated before reload: {stored}; drag_data after reload: {after[:200]!r}"
    cp.show_node(2, scale=0.9)
    ed = cp.editor(2)
    ed.wait_image()
    ed.wait_stable()
    assert ed.data() == data and len(ed.eval("ed.state.points")) == 1
    cp.page.wait_for_timeout(200)
    r, g, b, _ = ed.pixel(80, 60)             # the target dot is drawn blue again
    assert b > 200 and r < 120, (r, g, b)


def test_editor_zoom_pan_and_brush_label(pages, drag_type):
    _editor_zoom_pan_and_brush_label(pages(False), drag_type)


def _editor_zoom_pan_and_brush_label(cp: bu.ComfyPage, drag_type: str) -> None:
    """Issue 13 item 7: a labelled brush size; the editor's own zoom (Ctrl+wheel, around the pointer) and pan
    (middle button), the graph zoom untouched, and coordinates that stay image pixels at every zoom."""
    ed = _load(cp, drag_type, "")
    size = ed.root().locator("[data-role='brush-size-control']")
    assert "Brush" in size.inner_text() and "24 px" in size.inner_text(), size.inner_text()
    ed.root().locator("input[data-role='brush-size']").evaluate(
        "(e) => { e.value = '40'; e.dispatchEvent(new Event('input')); }")
    assert ed.root().locator("[data-role='brush-size-value']").inner_text() == "40 px" and ed.eval("ed.brush") == 40
    assert ed.root().locator("[data-role='zoom']").inner_text() == "100%"

    fit = {p: ed.client(*p) for p in [(0, 0), (70, 70)]}
    graph_scale = cp.page.evaluate("() => app.canvas.ds.scale")
    # The pointer sits on a whole client pixel (the browser reports wheel events there), near image point (70, 70).
    cx, cy = round(fit[(70, 70)][0]), round(fit[(70, 70)][1])
    anchor = ed.image_at(cx, cy)
    cp.page.mouse.move(cx, cy)
    cp.page.keyboard.down("Control")
    for _ in range(2):
        cp.page.mouse.wheel(0, -100)
        cp.page.wait_for_timeout(50)
    cp.page.keyboard.up("Control")
    zoom = ed.eval("ed.zoom")
    assert zoom > 2, zoom
    assert ed.root().locator("[data-role='zoom']").inner_text() == f"{round(zoom * 100)}%"
    assert cp.page.evaluate("() => app.canvas.ds.scale") == graph_scale          # only the editor zoomed
    nx, ny = ed.client(*anchor)
    assert abs(nx - cx) <= 1 and abs(ny - cy) <= 1, ((cx, cy), (nx, ny))          # the point under the pointer stays
    a, b = ed.client(0, 0), ed.client(10, 0)
    assert (b[0] - a[0]) > 2 * (ed.client(10, 0)[0] - a[0]) / zoom * 0.99        # 10 image px are wider on screen
    cp.page.wait_for_timeout(100)
    # What is on screen at a point's client position is that image pixel: ellipse centre yellow, background blue.
    assert _screen_rgb(cp, *ed.client(70, 70))[0] > 180, _screen_rgb(cp, *ed.client(70, 70))
    bg = _screen_rgb(cp, *ed.client(128, 62))
    assert bg[2] > bg[0] + 30, bg

    # Points placed while zoomed are image pixels (finer than at fit: a screen px is a fraction of an image px).
    ed.click(60.5, 60.25)
    ed.click(75.25, 80.5)
    pt = ed.data()["points"][0]
    assert _close(pt["handle"], (60.5, 60.25), 0.5) and _close(pt["target"], (75.25, 80.5), 0.5), pt

    # Middle-button drag pans the zoomed view: the image follows the pointer, the graph stays where it is.
    before = ed.client(75, 80)
    graph_offset = cp.page.evaluate("() => Array.from(app.canvas.ds.offset)")
    center = ed.eval("ed.view().cx")
    m = cp.page.mouse
    m.move(before[0], before[1])
    m.down(button="middle")
    m.move(before[0] + 20, before[1] + 15, steps=4)
    m.up(button="middle")
    after = ed.client(75, 80)
    assert abs(after[0] - before[0] - 20) <= 1 and abs(after[1] - before[1] - 15) <= 1, (before, after)
    assert cp.page.evaluate("() => Array.from(app.canvas.ds.offset)") == graph_offset
    assert ed.eval("ed.view().cx") < center - 3
    assert len(ed.data()["points"]) == 1                  # panning is no edit
    cp.page.wait_for_timeout(100)
    cp.screenshot_clip(bu.SCREENSHOTS / f"drag_editor_zoomed_{'nodes2' if cp.vue_nodes else 'classic'}.png",
                       cp.node_box(2))
    # Fit shows the whole image again, exactly as before zooming.
    ed.action("zoom-fit")
    assert ed.eval("ed.zoom") == 1
    for p, xy in fit.items():
        assert _close(ed.client(*p), xy, 0.01), (p, xy, ed.client(*p))
    ed.action("zoom-in")
    assert ed.eval("ed.zoom") > 1
    ed.action("zoom-fit")


def _screen_rgb(cp: bu.ComfyPage, x: float, y: float) -> tuple:
    """RGB of the page as shown on screen at client point (x, y)."""
    import io
    png = cp.page.screenshot(clip={"x": int(x) - 1, "y": int(y) - 1, "width": 3, "height": 3})
    return Image.open(io.BytesIO(png)).convert("RGB").getpixel((1, 1))


def test_restore_from_workflow_and_draw(pages, drag_type):
    stored = {"version": 1, "image_size": [W, H],
              "points": [{"handle": [40, 40], "target": [90, 60]}, [200, 40, 230, 90]],
              "regions": [{"kind": "polygon", "handle": [[20, 120], [70, 120], [45, 170]],
                           "target": [[120, 120], [170, 120], [145, 170]]}],
              "mask": {"size": [W, H], "counts": [W * 10, W * 20, W * (H - 30)]}}
    cp = pages(False)
    ed = _load(cp, drag_type, json.dumps(stored))
    st = ed.eval("({points: ed.state.points, regions: ed.state.regions.length, mask: !!ed.state.mask})")
    assert st["points"][1] == {"handle": [200, 40], "target": [230, 90]} and st["regions"] == 1 and st["mask"]
    assert not ed.status()["error"], ed.status()
    cp.page.wait_for_timeout(200)
    r, g, b, _ = ed.pixel(90, 60)             # the first target dot is drawn blue
    assert b > 200 and r < 120, (r, g, b)
    # Loading alone does not rewrite the stored value, and only drag_data is saved with the workflow.
    assert json.loads(cp.widget_value(2, "drag_data")) == stored
    saved = cp.page.evaluate("() => app.graph.serialize().nodes.find(n => n.id === 2).widgets_values")
    assert len(saved) == 1 and json.loads(saved[0]) == stored
    # Choosing a larger image in Load Image shows it and rescales the instructions to its pixels.
    cp.page.evaluate(f"() => {{ app.graph.getNodeById(1).widgets.find(w => w.name === 'image').value = '{IMAGE_2X}'; }}")
    cp.page.wait_for_function("() => app.graph.getNodeById(2).dragEditor.imageSize()[0] === 512", timeout=10_000)
    cp.page.wait_for_timeout(100)
    data = ed.data()
    assert data["image_size"] == [2 * W, 2 * H] and data["points"][0] == {"handle": [80, 80], "target": [180, 120]}
    assert sum(data["mask"]["counts"][1::2]) == 4 * W * 20 and "rescaled" in ed.status()["text"]


def test_malformed_value_shows_error_and_canvas_still_works(pages, drag_type):
    cp = pages(False)
    ed = _load(cp, drag_type, '{"version": 1, "points": [{"handle": [1, 2]}]')
    st = ed.status()
    assert st["error"] and "not valid JSON" in st["text"], st
    # Error text is text, not markup.
    ed = _load(cp, drag_type, '{"version": 1, "points": [{"handle": [1, 2], "target": "<b>x</b>"}]}')
    st = ed.status()
    assert st["error"] and "points[0].target" in st["text"], st
    assert ed.root().locator("b").count() == 0
    # The canvas still edits (here at another zoom and node size): the first edit replaces the broken value.
    cp.page.evaluate("() => { app.graph.getNodeById(2).setSize([620, 640]); }")
    cp.show_node(2, scale=1.2)
    ed.wait_stable()
    ed.click(30, 30)
    ed.click(60, 40)
    data = ed.data()
    assert len(data["points"]) == 1 and _close(data["points"][0]["target"], (60, 40))
    assert not ed.status()["error"]
    ed.action("undo")
    assert ed.status()["error"]
    assert "<b>x</b>" in cp.widget_value(2, "drag_data")


_SAME = [
    [[10, 20, 30, 40], [0, 0, 64, 48]],
    {"version": 1, "image_size": [64, 48], "points": [],
     "regions": [{"kind": "rect", "handle": [[2, 2], [20, 2], [20, 10], [2, 10]], "target": [[30, 30], [40, 30], [40, 40], [30, 40]]},
                 {"kind": "polygon", "handle": [[1, 1], [10, 1], [5, 9]], "points": [{"handle": [5, 5], "target": [9, 9]}]}]},
    {"version": 1, "image_size": [4, 3], "mask": {"size": [4, 3], "counts": [0, 5, 3, 4]}, "ui": {"tool": "x"}},
    "",
]
_BAD = [
    {"points": [{"handle": [1, 2]}]},
    {"regions": [{"kind": "polygon", "handle": [[0, 0], [5, 5]], "target": [[1, 1], [6, 6]]}]},
    {"regions": [{"kind": "polygon", "handle": [[0, 0], [9, 9], [9, 0], [0, 9]], "target": [[0, 0], [9, 9], [9, 0], [0, 9]]}]},
    {"image_size": [4, 3], "mask": {"size": [4, 3], "counts": [1, 2]}},
    {"version": 2},
    {"image_size": [10, 10], "points": [[1, 1, 11, 5]]},
    {"points": [], "extra": 1},
]


def test_editor_state_module_agrees_with_python_schema(pages, server):
    """web/drag_state.js (the editor's parser/serialiser) and core/drag_schema.py accept and reject the same
    JSON, and what the editor writes parses in Python to the same instructions."""
    from dragedit.core.drag_schema import DragInstructions, DragSchemaError, rle_decode
    url = next(e for e in server.get("/extensions") if e.endswith("/drag_state.js"))
    cp = pages(False)
    res = cp.page.evaluate(
        """async ([url, same, bad]) => {
             const m = await import(url);
             const run = (t) => { try { return {json: m.serializeState(m.parseState(t))}; }
                                  catch (e) { return {error: e.message}; } };
             const mask = new Uint8Array(13 * 7).map((_, i) => (i * 7919) % 5 < 2 ? 1 : 0);
             return {same: same.map(run), bad: bad.map(run), rle: m.rleEncode(mask), mask: Array.from(mask)};
           }""", [url, [s if isinstance(s, str) else json.dumps(s) for s in _SAME], [json.dumps(b) for b in _BAD]])
    for src, got in zip(_SAME, res["same"]):
        assert "json" in got, (src, got)
        want = _canon(DragInstructions.from_json(src if isinstance(src, str) else json.dumps(src)))
        assert _canon(DragInstructions.from_json(got["json"])) == want, (src, got)
    for src, got in zip(_BAD, res["bad"]):
        assert "error" in got, (src, got)
        with pytest.raises(DragSchemaError):
            DragInstructions.from_json(json.dumps(src))
    decoded = rle_decode(res["rle"], (13, 7)).reshape(-1).tolist()
    assert decoded == [bool(v) for v in res["mask"]]


def _canon(drag) -> tuple:
    """Comparable form of DragInstructions; a rect is its box (2 or 4 vertices mean the same rectangle)."""
    regions = tuple((r.kind, r.rect_box("handle") if r.kind == "rect" else r.handle,
                     (r.rect_box("target") if r.kind == "rect" else r.target) if r.target is not None else None,
                     r.points) for r in drag.regions)
    return drag.points, regions, drag.image_size, drag.mask_counts


def _decode_mask(mask: dict) -> np.ndarray:
    w, h = mask["size"]
    flat = np.repeat(np.arange(len(mask["counts"])) % 2, mask["counts"]).astype(bool)
    assert flat.size == w * h
    return flat.reshape(h, w)


# ---------------------------------------------------------------------- the same with "Nodes 2.0" (Vue nodes)
def test_editor_by_mouse_then_queue_nodes2(pages, server, drag_type):
    _editor_by_mouse_then_queue(pages(True), server, drag_type, vue=True)


def test_drawing_survives_page_reload_nodes2(pages, drag_type):
    _drawing_survives_page_reload(pages(True), drag_type)


def test_editor_zoom_pan_and_brush_label_nodes2(pages, drag_type):
    _editor_zoom_pan_and_brush_label(pages(True), drag_type)



def test_switching_rendering_at_runtime_keeps_the_editor(pages, drag_type):
    """Turning Nodes 2.0 off and on again without a reload moves the same editor between renderers."""
    cp = pages(True)
    ed = _load(cp, drag_type, json.dumps({"version": 1, "points": [[20, 20, 40, 30]]}))
    for vue, pair in ((False, ((100, 100), (130, 90))), (True, ((200, 60), (220, 150)))):
        cp.page.evaluate(f"async () => {{ await app.extensionManager.setting.set('{bu.VUE_NODES_SETTING}', {str(vue).lower()}); }}")
        cp.page.wait_for_timeout(500)
        ed.wait_stable()
        in_vue = cp.page.evaluate("() => !!app.graph.getNodeById(2).dragEditor.root.closest('[data-node-id]')")
        assert in_vue == vue
        ed.click(*pair[0])
        ed.click(*pair[1])
        assert _close(ed.data()["points"][-1]["target"], pair[1]), ed.data()
    assert len(ed.data()["points"]) == 3
