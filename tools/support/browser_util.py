"""Drive the ComfyUI frontend in headless Debian Chromium (Python Playwright, no browser download) for the
browser tests: open the UI in classic or "Nodes 2.0" rendering, load UI-format workflows, talk to the
"Drag Instructions" editor widget, queue prompts and wait for their history entries."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from .comfy_server import frontend_version  # noqa: F401  (the frontend the test server serves)

CHROMIUM = Path(os.environ.get("DRAGEDIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 900}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"

# Settings that keep first-visit UI (templates dialog, tours) out of the way; the Nodes 2.0 switch is per page.
BASE_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Validation.Workflows": True,
                 "Comfy.Workflow.ShowMissingModelsWarning": False}
VUE_NODES_SETTING = "Comfy.VueNodes.Enabled"


def chromium_missing_reason() -> Optional[str]:
    """Why the browser tests cannot run here (None when they can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (install Debian's chromium package; Playwright must not download a browser)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python Playwright is not installed in this venv (pip install playwright; no browser download needed)"
    return None


def launch(playwright) -> Any:
    """Chromium from the system (never a Playwright-downloaded one)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)


def drag_node_type(server) -> str:
    """The registered id of the "Drag Instructions" node (found by its drag_data widget and DRAG output)."""
    info = server.get("/object_info")
    for name, spec in info.items():
        req = spec.get("input", {}).get("required", {})
        if "drag_data" in req and "image" in req and "DRAG" in spec.get("output", []):
            return name
    raise AssertionError("no node with a drag_data widget and a DRAG output is registered")


def host_noise(text: str, url: str = "") -> bool:
    """Console errors that come from the frontend/backend pair, not from the pack: a frontend newer than the
    backend (1.58 on ComfyUI 0.3.75) polls a jobs API the backend lacks (404 on /api/jobs and
    "[Jobs API] Error fetching jobs", "Failed to fetch queue: JobsApiError: ... 404")."""
    if "[Jobs API]" in text or "JobsApiError" in text:
        return True
    return "404" in text and ("/api/jobs" in url or "/api/jobs" in text)


class FeatureMissing(RuntimeError):
    """The frontend lacks something a test needs (e.g. an older one without "Nodes 2.0")."""


class ComfyPage:
    """One browser page on the ComfyUI frontend, with console errors collected."""

    def __init__(self, browser, server, vue_nodes: bool = False):
        self.server = server
        self.vue_nodes = vue_nodes
        self.errors: list[str] = []
        self.messages: list[str] = []      # every console message of the page ("type: text"), since it opened
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        # Dismiss the "Nodes 2.0" banner the way its close button does (a localStorage flag).
        self.context.add_init_script("try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}")
        self.page = self.context.new_page()
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def _on_console(self, m) -> None:
        self.messages.append(f"{m.type}: {m.text}")
        if m.type == "error" and not host_noise(m.text, m.location.get("url", "") if m.location else ""):
            self.errors.append(m.text)

    # ------------------------------------------------------------------ start-up
    def open(self, timeout_ms: int = 90_000) -> "ComfyPage":
        """Apply the settings, load the UI, wait for the app and the pack's extension, close first-visit UI."""
        for key, value in {**BASE_SETTINGS, VUE_NODES_SETTING: self.vue_nodes}.items():
            self.server.post(f"/settings/{key}", value)
        self.page.goto(self.server.url + "/", wait_until="domcontentloaded", timeout=timeout_ms)
        self.page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas && window.LiteGraph &&"
            " (window.app.extensions || []).some(e => e.name === 'DragEdit.DragEditor')",
            timeout=timeout_ms)
        self.close_first_visit_ui()
        actual = self.page.evaluate(f"() => app.extensionManager.setting.get('{VUE_NODES_SETTING}')")
        if bool(actual) != self.vue_nodes:
            version = frontend_version()
            self.close()
            raise FeatureMissing(f"frontend {version}: setting {VUE_NODES_SETTING} is {actual!r}, wanted "
                                 f"{self.vue_nodes} (no Nodes 2.0 rendering in this frontend?)")
        return self

    def reload(self, timeout_ms: int = 90_000) -> "ComfyPage":
        """Reload the page (F5) and wait as in open(): the frontend restores the workflow it kept for a reload."""
        self.page.reload(wait_until="domcontentloaded", timeout=timeout_ms)
        self.page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas && window.LiteGraph &&"
            " (window.app.extensions || []).some(e => e.name === 'DragEdit.DragEditor')",
            timeout=timeout_ms)
        self.close_first_visit_ui()
        return self

    def wait_stored(self, text: str, timeout_ms: int = 10_000) -> bool:
        """Wait until the browser storage (where the frontend keeps the workflow for a reload) holds `text` as a
        string value inside a JSON document; False when it never does."""
        try:
            self.page.wait_for_function(
                """(needle) => [localStorage, sessionStorage].some(s => {
                     for (let i = 0; i < s.length; i++) { const v = s.getItem(s.key(i)); if (v && v.includes(needle)) return true; }
                     return false; })""", arg=json.dumps(text)[1:-1], polling=100, timeout=timeout_ms)
            return True
        except Exception:
            return False

    def close_first_visit_ui(self) -> None:
        """Close the templates dialog and the Nodes 2.0 banner if they show up anyway."""
        page = self.page
        page.wait_for_timeout(300)
        for _ in range(3):
            dialogs = page.locator(".p-dialog:visible")
            if dialogs.count() == 0:
                break
            close = dialogs.first.locator("button[aria-label='Close'], .p-dialog-close-button, button:has(.pi-times)")
            if close.count():
                close.first.click()
            else:
                page.keyboard.press("Escape")
            page.wait_for_timeout(200)
        banner = page.get_by_text("Nodes 2.0", exact=False).locator("xpath=ancestor::div[contains(@class,'h-10')][1]")
        if banner.count() and banner.first.is_visible():
            btns = banner.first.locator("button")
            btns.nth(btns.count() - 1).click()

    def close(self) -> None:
        self.context.close()

    def forget_editor_prefs(self) -> None:
        """Drop the tool and brush size the editor remembers for this browser profile (localStorage)."""
        self.page.evaluate("() => localStorage.removeItem('DragEdit.editor')")

    # ------------------------------------------------------------------ graph
    def load_workflow(self, workflow: dict) -> dict:
        """app.loadGraphData(workflow) and report missing node types (from the afterConfigureGraph hook)."""
        self.errors.clear()
        result = self.page.evaluate(
            """async (wf) => {
                 if (!window.__dragEditProbe) {
                   window.__dragEditProbe = {missing: []};
                   app.registerExtension({name: 'DragEditTest.Probe',
                     afterConfigureGraph(missing) { window.__dragEditProbe.missing = (missing || []).map(
                       m => typeof m === 'string' ? m : m.type); }});
                 }
                 window.__dragEditProbe.missing = [];
                 const unknown = (wf.nodes || []).map(n => n.type).filter(t => !(t in LiteGraph.registered_node_types));
                 await app.loadGraphData(wf, true, true, null, {showMissingNodesDialog: false});
                 return {unknown, missing: window.__dragEditProbe.missing};
               }""", workflow)
        self.page.wait_for_timeout(150)
        return result

    def show_node(self, node_id: int, scale: float = 0.9) -> None:
        """Zoom the graph to `scale` and scroll so the node sits near the top-left corner."""
        self.page.evaluate(
            """([id, scale]) => {
                 const n = app.graph.getNodeById(id);
                 const ds = app.canvas.ds;
                 ds.scale = scale;
                 ds.offset[0] = 120 / scale - n.pos[0];
                 ds.offset[1] = 150 / scale - n.pos[1];
                 app.canvas.setDirty(true, true);
               }""", [node_id, scale])
        self.page.wait_for_timeout(400)

    def widget_value(self, node_id: int, name: str) -> Any:
        return self.page.evaluate(
            "([id, name]) => app.graph.getNodeById(id).widgets.find(w => w.name === name).value", [node_id, name])

    def queue(self, timeout: float = 240.0) -> dict:
        """Queue the current graph from the UI (app.queuePrompt) and return the new /history entry."""
        before = set(self.server.get("/history?max_items=1000"))
        self.page.evaluate("async () => { await app.queuePrompt(0, 1); }")
        t0 = time.time()
        while time.time() - t0 < timeout:
            hist = self.server.get("/history?max_items=1000")
            new = [k for k in hist if k not in before]
            if new:
                entry = hist[new[0]]
                if entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error":
                    return entry
            time.sleep(0.3)
        raise TimeoutError(f"the queued prompt did not finish in {timeout}s:\n{self.server.log()[-3000:]}")

    # ------------------------------------------------------------------ editor
    def editor(self, node_id: int) -> "EditorHandle":
        return EditorHandle(self, node_id)

    def node_box(self, node_id: int) -> dict:
        """Client-px box of a node with its title (the Vue element in Nodes 2.0, the graph rect otherwise)."""
        return self.page.evaluate(
            """(id) => {
                 const el = document.querySelector(`[data-node-id="${id}"]`);
                 if (el) { const r = el.getBoundingClientRect();
                           return {x: r.left, y: r.top, width: r.width, height: r.height}; }
                 const n = app.graph.getNodeById(id), ds = app.canvas.ds;
                 const c = app.canvas.canvas.getBoundingClientRect(), b = n.boundingRect;
                 return {x: c.left + (b[0] + ds.offset[0]) * ds.scale, y: c.top + (b[1] + ds.offset[1]) * ds.scale,
                         width: b[2] * ds.scale, height: b[3] * ds.scale};
               }""", node_id)

    def screenshot_clip(self, path: Path, box: dict, pad: tuple = (12, 26, 12, 12)) -> Path:
        """Save a screenshot of the page region `box` (client px) grown by pad (left, top, right, bottom)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        clip = {"x": max(0, box["x"] - pad[0]), "y": max(0, box["y"] - pad[1])}
        clip["width"] = min(VIEWPORT["width"] - clip["x"], box["width"] + pad[0] + pad[2])
        clip["height"] = min(VIEWPORT["height"] - clip["y"], box["height"] + pad[1] + pad[3])
        self.page.screenshot(path=str(path), clip=clip)
        return path


class EditorHandle:
    """The DragEditor object of one node, driven by real mouse and keyboard events."""

    def __init__(self, cp: ComfyPage, node_id: int):
        self.cp, self.page, self.id = cp, cp.page, node_id

    def eval(self, body: str, arg: Any = None) -> Any:
        """Evaluate `body` (a JS expression using `ed` and `arg`) against this node's editor."""
        return self.page.evaluate(
            f"([id, arg]) => {{ const ed = app.graph.getNodeById(id).dragEditor; return ({body}); }}", [self.id, arg])

    def wait_image(self, timeout_ms: int = 20_000) -> list[int]:
        """Wait until the editor shows an image; returns its (W, H). Raises FeatureMissing when the editor
        reports that the renderer never mounts it (Nodes 2.0 on frontends without DOM widgets in Vue nodes)."""
        self.page.wait_for_function(
            "(id) => { const ed = app.graph.getNodeById(id)?.dragEditor; return !!(ed && (ed.hostProblem || "
            "(ed.image && ed.canvas.clientWidth > 50 && ed.canvas.clientHeight > 50))); }",
            arg=self.id, timeout=timeout_ms)
        problem = self.eval("ed.hostProblem")
        if problem:
            raise FeatureMissing(f"frontend {frontend_version()}: {problem}")
        self.page.wait_for_timeout(100)
        return self.eval("ed.imageSize()")

    def host_note(self) -> str:
        """Text of the note the editor puts on its Vue node when it cannot be shown there ("" when none)."""
        return self.page.evaluate(
            """(id) => { const n = document.querySelector(`[data-node-id="${id}"] [data-role="host-note"]`);
                         return n && n.getClientRects().length ? n.textContent : ""; }""", self.id)

    def wait_stable(self, timeout_ms: int = 10_000) -> None:
        """Wait until the editor canvas stops moving on screen (after a zoom, pan or resize)."""
        self.page.wait_for_function(
            """(id) => { const ed = app.graph.getNodeById(id).dragEditor, r = ed.canvas.getBoundingClientRect();
                         const key = [r.left, r.top, r.width, r.height].map(Math.round).join(',');
                         const same = ed.__lastRect === key; ed.__lastRect = key; return same; }""",
            arg=self.id, polling=150, timeout=timeout_ms)

    def client(self, x: float, y: float) -> tuple[float, float]:
        p = self.eval("ed.imageToClient(arg[0], arg[1])", [x, y])
        return p["x"], p["y"]

    def image_at(self, cx: float, cy: float) -> tuple[float, float]:
        """Image point at client point (cx, cy) (the inverse of client())."""
        p = self.eval("ed.eventToImage({clientX: arg[0], clientY: arg[1]})", [cx, cy])
        return p[0], p[1]

    def click(self, x: float, y: float, button: str = "left") -> None:
        cx, cy = self.client(x, y)
        self.page.mouse.click(cx, cy, button=button)
        self.page.wait_for_timeout(30)

    def drag(self, a: tuple, b: tuple, steps: int = 6) -> None:
        ax, ay = self.client(*a)
        bx, by = self.client(*b)
        m = self.page.mouse
        m.move(ax, ay)
        m.down()
        m.move(bx, by, steps=steps)
        m.up()
        self.page.wait_for_timeout(30)

    def tool(self, name: str) -> None:
        self.root().locator(f"button[data-tool='{name}']").click()

    def action(self, name: str) -> None:
        self.root().locator(f"button[data-action='{name}']").click()

    def root(self):
        return self.page.locator(f"xpath=//*[@data-drag-edit-node='{self.id}']")

    def status(self) -> dict:
        return self.eval("({text: ed.status.textContent, error: ed.status.dataset.error === '1'})")

    def data(self) -> dict:
        return json.loads(self.cp.widget_value(self.id, "drag_data"))

    def box(self) -> dict:
        return self.eval("(() => { const r = ed.root.getBoundingClientRect(); "
                         "return {x: r.left, y: r.top, width: r.width, height: r.height}; })()")

    def pixel(self, x: float, y: float) -> list[int]:
        """RGBA of the editor canvas at image point (x, y)."""
        return self.eval("(() => { const v = ed.view(), k = ed.pixelRatio, c = ed.canvas.getContext('2d');"
                         " return Array.from(c.getImageData(Math.round((v.ox + arg[0] * v.s) * k),"
                         " Math.round((v.oy + arg[1] * v.s) * k), 1, 1).data); })()", [x, y])


# ---------------------------------------------------------------------- UI-format workflows
def ui_workflow(nodes: list[dict], links: list[tuple]) -> dict:
    """A minimal UI-format workflow. nodes: {id, type, pos, size, widgets_values, inputs: [(name, type)],
    outputs: [(name, type)]}; links: (link_id, from_id, from_slot, to_id, to_slot, type)."""
    out_nodes = []
    for order, n in enumerate(nodes):
        ins = [{"name": name, "type": t, "link": None} for name, t in n.get("inputs", [])]
        outs = [{"name": name, "type": t, "links": [], "slot_index": i} for i, (name, t) in enumerate(n.get("outputs", []))]
        for lid, a, a_slot, b, b_slot, _t in links:
            if b == n["id"]:
                ins[b_slot]["link"] = lid
            if a == n["id"]:
                outs[a_slot]["links"].append(lid)
        out_nodes.append({"id": n["id"], "type": n["type"], "pos": list(n.get("pos", [0, 0])),
                          "size": list(n.get("size", [300, 120])), "flags": {}, "order": order, "mode": 0,
                          "inputs": ins, "outputs": outs, "properties": {},
                          "widgets_values": list(n.get("widgets_values", []))})
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max([l[0] for l in links] or [0]),
            "nodes": out_nodes, "links": [list(l) for l in links], "groups": [], "config": {},
            "extra": {}, "version": 0.4}


def drag_workflow(drag_type: str, image_name: str, drag_data: str) -> dict:
    """LoadImage -> Drag Instructions -> (mask) MaskToImage -> SaveImage; node ids 1..4, editor on node 2."""
    nodes = [
        {"id": 1, "type": "LoadImage", "pos": [20, 120], "size": [300, 320], "widgets_values": [image_name, "image"],
         "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
        {"id": 2, "type": drag_type, "pos": [360, 120], "size": [460, 560], "widgets_values": [drag_data],
         "inputs": [("image", "IMAGE")], "outputs": [("drag", "DRAG"), ("mask", "MASK")]},
        {"id": 3, "type": "MaskToImage", "pos": [860, 120], "size": [220, 60],
         "inputs": [("mask", "MASK")], "outputs": [("IMAGE", "IMAGE")]},
        {"id": 4, "type": "SaveImage", "pos": [860, 240], "size": [260, 280], "widgets_values": ["dragedit_browser"],
         "inputs": [("images", "IMAGE")]},
    ]
    links = [(1, 1, 0, 2, 0, "IMAGE"), (2, 2, 1, 3, 0, "MASK"), (3, 3, 0, 4, 0, "IMAGE")]
    return ui_workflow(nodes, links)

