// "Drag Instructions" editor: a DOM widget with a <canvas> on the node. It shows the image (the connected
// Load Image before the first run, the node's last executed image after it), and edits handle -> target
// point pairs, region pairs (rect / polygon) and an editable-area mask. The state lives only in the node's
// "drag_data" STRING widget (versioned JSON, schema in core/drag_schema.py); every edit rewrites it.
// Coordinates are image pixels whatever the node size or canvas zoom. Text from workflows is only ever
// shown with textContent or drawn on the canvas, never parsed as HTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  DragStateError,
  LIMITS,
  centroid,
  countPairs,
  emptyState,
  isEmptyState,
  parseState,
  pointInPolygon,
  polygonProblem,
  rectCorners,
  rescaleState,
  serializeState,
  shapeOutline,
} from "./drag_state.js";
import { COLORS, drawEditor } from "./drag_draw.js";

const DATA_WIDGET = "drag_data";
const EDITOR_WIDGET = "drag_editor";
const HIT_RADIUS = 9; // screen px
const MIN_HEIGHT = 260;
const UNDO_LIMIT = 100;
const POLL_MS = 400;
const ZOOM_MAX = 16; // editor zoom, relative to "fit the image in the canvas"
const ZOOM_STEP = 1.25; // one wheel notch / one +/- click
// Shown on the node where a "Nodes 2.0" (Vue) renderer never mounts DOM widgets (frontend 1.27.x mounts only
// its built-in widget types there and drops the DOM-widget overlay; 1.32 mounts them).
const VUE_HOST_NOTE = "Drag editor unavailable: this ComfyUI frontend's Nodes 2.0 (Vue) renderer does not show " +
  "custom DOM widgets. Turn Nodes 2.0 off (or update the frontend) to draw; the stored drag_data is kept and still runs.";
const VUE_HOST_POLLS = 2; // consecutive polls without the editor in the Vue node before the note shows
const TOOLS = [
  ["point", "Point", "Click a handle, then its target. Drag a point to move it; right-click or Delete removes it."],
  ["brush", "Mask", "Paint the editable area (optional; none = the whole image)."],
  ["eraser", "Erase", "Erase the editable-area mask."],
  ["rect", "Rect", "Drag the handle rectangle, then drag (or click) the target rectangle."],
  ["polygon", "Polygon", "Click the handle polygon's vertices, close it on the first vertex (or Enter), then click where its copy (the target) goes; drag vertices to reshape."],
];

/** Is this node definition the pack's "Drag Instructions" node? (by its inputs/outputs, robust to renames) */
function isDragInstructionsDef(nodeData) {
  const req = nodeData?.input?.required || {};
  return !!req[DATA_WIDGET] && !!req.image && (nodeData.output || []).includes("DRAG");
}

/** {filename, subfolder, type} of a Load Image style widget value ("sub/name.png [input]"). */
function parseImageValue(value) {
  if (typeof value !== "string" || !value.trim()) return null;
  let v = value.trim();
  let type = "input";
  const m = v.match(/^(.*) \[(input|output|temp)\]$/);
  if (m) {
    v = m[1];
    type = m[2];
  }
  const cut = v.lastIndexOf("/");
  return { filename: cut >= 0 ? v.slice(cut + 1) : v, subfolder: cut >= 0 ? v.slice(0, cut) : "", type };
}

/** URL of ComfyUI's /view endpoint for an {filename, subfolder, type} image reference. */
function viewUrl(ref) {
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "input" });
  return api.apiURL(`/view?${q.toString()}`);
}

/** A new element with inline style and attributes (never HTML from values). */
function el(tag, style = {}, attrs = {}) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

/** Tell the frontend's change tracker that the graph changed. Its copy of the workflow is what a page reload
 * restores (and what undo, the "modified" mark and autosave use); the frontend refreshes it on its own only after
 * graph-canvas events, which the editor keeps for itself. The tracker is the active workflow's: reached through
 * app.extensionManager.workflow (frontends 1.2x .. 1.5x) or app.workflowManager (older ones); captureCanvasState
 * is 1.5x's name for the deprecated checkState. A frontend without either has nothing to tell. */
function notifyChangeTracker() {
  try {
    const wf = app.extensionManager?.workflow?.activeWorkflow ?? app.workflowManager?.activeWorkflow;
    const tracker = wf?.changeTracker;
    if (typeof tracker?.captureCanvasState === "function") tracker.captureCanvasState();
    else if (typeof tracker?.checkState === "function") tracker.checkState();
  } catch (e) {
    console.warn("DragEdit: could not tell the workflow change tracker about an edit", e);
  }
}

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const dist2 = (a, b) => (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2;

/** The editor of one node: owns the canvas, the tools and the undo history; the widget owns the data. */
class DragEditor {
  constructor(node, dataWidget) {
    this.node = node;
    this.dataWidget = dataWidget;
    this.state = emptyState();
    this.lastText = null; // widget text the state was built from / written to
    this.storedError = ""; // why the stored value could not be read
    this.note = ""; // transient information
    this.tool = "point";
    this.brush = 24; // brush diameter in image pixels
    this.zoom = 1; // editor zoom over "fit" (1 = the whole image); view only, never stored in drag_data
    this.center = null; // image point shown at the canvas centre while zoomed ([x, y] image px; null = middle)
    this.spaceDown = false; // Space held: left-drag pans
    this.pending = null; // unfinished pair / region
    this.selected = null; // {kind: "point"|"region", index, ...}
    this.drag = null; // active pointer gesture
    this.hover = null; // image coordinates under the pointer
    this.undoStack = [];
    this.image = null; // HTMLImageElement shown
    this.imageKey = ""; // url of the image shown (or being loaded)
    this.imageError = "";
    this.execImage = null; // {url, upstream} from the last execution
    this.maskCanvas = null;
    this.pixelRatio = 1; // canvas bitmap px per layout px
    this.destroyed = false;
    this.hostProblem = ""; // why the editor cannot be shown in this renderer ("" = it can)
    this.hostMisses = 0; // consecutive polls that found the Vue node without the editor
    this.hostNote = null; // the note element put on the Vue node instead of the editor
    this.buildDom();
  }

  // ------------------------------------------------------------------ DOM
  /** Toolbar (tools, brush size, Undo, Clear), canvas and status line. */
  buildDom() {
    this.root = el("div", {
      display: "flex",
      flexDirection: "column",
      gap: "4px",
      width: "100%",
      height: "100%",
      minHeight: `${MIN_HEIGHT}px`,
      boxSizing: "border-box",
      fontFamily: "sans-serif",
      fontSize: "11px",
      color: "#ddd",
    });
    this.root.className = "dragedit-editor widget-expands";
    this.toolbar = el("div", { display: "flex", flexWrap: "wrap", gap: "3px", alignItems: "center" });
    this.toolButtons = {};
    for (const [id, label, tip] of TOOLS) {
      const b = this.button(label, tip, () => this.setTool(id));
      b.dataset.tool = id;
      this.toolButtons[id] = b;
    }
    // Brush size: a labelled slider with its value in image pixels (used by Mask and Erase).
    const sizeTip = "Brush size of Mask and Erase: the diameter in image pixels";
    this.sizeBox = el("label", { display: "inline-flex", alignItems: "center", gap: "3px", cursor: "default" }, { title: sizeTip });
    this.sizeBox.dataset.role = "brush-size-control";
    const sizeLabel = el("span");
    sizeLabel.textContent = "Brush";
    this.sizeInput = el("input", { width: "64px" }, { type: "range", min: "2", max: "256", step: "1", title: sizeTip, "aria-label": "Brush size (image pixels)" });
    this.sizeInput.value = String(this.brush);
    this.sizeInput.dataset.role = "brush-size";
    this.sizeValue = el("span", { minWidth: "40px", fontVariantNumeric: "tabular-nums" });
    this.sizeValue.dataset.role = "brush-size-value";
    this.sizeInput.addEventListener("input", () => this.setBrush(Number(this.sizeInput.value)));
    this.sizeBox.append(sizeLabel, this.sizeInput, this.sizeValue);
    this.stopPointer(this.sizeBox);
    this.toolbar.appendChild(this.sizeBox);
    this.setBrush(this.brush);
    this.button("Undo", "Undo the last edit (Ctrl+Z)", () => this.undo()).dataset.action = "undo";
    this.button("Clear", "Remove all points, regions and the mask", () => this.clearAll()).dataset.action = "clear";
    // Zoom of the editor's own view (the graph zoom is separate); coordinates stay image pixels.
    const zoomBox = el("span", { display: "inline-flex", alignItems: "center", gap: "3px" });
    this.toolbar.appendChild(zoomBox);
    this.button("\u2212", "Zoom out (Ctrl+wheel over the image, or -)", () => this.zoomBy(1 / ZOOM_STEP), zoomBox).dataset.action = "zoom-out";
    this.zoomLabel = el("span", { minWidth: "36px", textAlign: "center", fontVariantNumeric: "tabular-nums" }, { title: "Editor zoom (100% = the whole image)" });
    this.zoomLabel.dataset.role = "zoom";
    zoomBox.appendChild(this.zoomLabel);
    this.button("+", "Zoom in (Ctrl+wheel over the image, or +); pan with the middle button or Space+drag", () => this.zoomBy(ZOOM_STEP), zoomBox).dataset.action = "zoom-in";
    this.button("Fit", "Show the whole image (0)", () => this.setZoom(1), zoomBox).dataset.action = "zoom-fit";
    this.updateZoomLabel();
    this.canvas = el("canvas", { flex: "1 1 auto", minHeight: "120px", width: "100%", display: "block", background: "#1b1b1b", borderRadius: "4px", outline: "none", cursor: "crosshair", touchAction: "none" });
    this.canvas.tabIndex = 0;
    this.canvas.dataset.role = "drag-canvas";
    // Fixed height: a status text of another length must not move the image under the pointer.
    this.status = el("div", { flex: "0 0 auto", height: "28px", overflowY: "auto", whiteSpace: "pre-wrap", overflowWrap: "anywhere", lineHeight: "14px" });
    this.status.dataset.role = "status";
    this.root.append(this.toolbar, this.canvas, this.status);
    this.bindEvents();
    this.setTool("point");
    this.resizeObserver = new ResizeObserver(() => this.redraw());
    this.resizeObserver.observe(this.canvas);
  }

  /** A toolbar button (in `parent`, default the toolbar) that runs fn and hands the keyboard focus back to the canvas. */
  button(label, tip, fn, parent = this.toolbar) {
    const b = el("button", { padding: "2px 6px", fontSize: "11px", borderRadius: "3px", border: "1px solid #555", background: "#333", color: "#ddd", cursor: "pointer" });
    b.type = "button";
    b.textContent = label;
    b.title = tip;
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      fn();
      this.canvas.focus({ preventScroll: true }); // keys (Delete, Ctrl+Z) go to the editor, not the graph
    });
    this.stopPointer(b);
    parent.appendChild(b);
    return b;
  }

  /** Keep pointer events on a control from reaching the node or the graph canvas. */
  stopPointer(e) {
    // Keep pointer events for ourselves: otherwise the node (Nodes 2.0) or the graph canvas would drag.
    for (const t of ["pointerdown", "pointermove", "pointerup", "mousedown", "contextmenu"]) {
      e.addEventListener(t, (ev) => ev.stopPropagation());
    }
  }

  /** Switch tool (point, brush, eraser, rect, polygon); drops an unfinished pair or region. */
  setTool(id) {
    if (this.tool !== id) this.pending = null;
    this.tool = id;
    for (const [k, b] of Object.entries(this.toolButtons)) {
      b.style.background = k === id ? "#4a6da8" : "#333";
      b.setAttribute("aria-pressed", k === id ? "true" : "false");
    }
    this.note = "";
    this.updateStatus();
    this.redraw();
  }

  /** Set the brush diameter (image px) and show it next to the slider. */
  setBrush(px) {
    this.brush = clamp(Math.round(px) || 1, 1, 256);
    if (this.sizeInput.value !== String(this.brush)) this.sizeInput.value = String(this.brush);
    this.sizeValue.textContent = `${this.brush} px`;
    this.redraw();
  }

  // ------------------------------------------------------------------ editor zoom / pan
  /** Set the editor zoom (1 = fit), keeping the image point `at` (default: the view centre) where it is on screen. */
  setZoom(z, at = null) {
    const size = this.imageSize();
    const zoom = clamp(z, 1, ZOOM_MAX);
    if (!size || zoom === 1) {
      this.zoom = 1;
      this.center = null;
    } else {
      const v = this.view();
      const cw = Math.max(1, this.canvas.clientWidth);
      const ch = Math.max(1, this.canvas.clientHeight);
      const p = at || [(cw / 2 - v.ox) / v.s, (ch / 2 - v.oy) / v.s];
      // Screen position of p stays: cw/2 + (p - c') * s' = ox + p * s, solved for the new centre c'.
      const s2 = v.fit * zoom;
      const sx = v.ox + p[0] * v.s;
      const sy = v.oy + p[1] * v.s;
      this.zoom = zoom;
      this.center = [p[0] - (sx - cw / 2) / s2, p[1] - (sy - ch / 2) / s2];
      this.clampCenter();
    }
    this.updateZoomLabel();
    this.redraw();
  }

  /** Ctrl+wheel (a touchpad pinch too) over the canvas: zoom the view around the pointer. */
  onZoomWheel(e) {
    if (!this.imageSize()) return;
    const k = Math.exp(-clamp(e.deltaY, -100, 100) / 200);
    this.zoomBy(k, this.eventToImage(e));
  }

  /** Multiply the zoom by k around image point `at`. */
  zoomBy(k, at = null) {
    this.setZoom(this.zoom * k, at);
  }

  /** Move the view by (dx, dy) canvas layout px. */
  panBy(dx, dy) {
    if (this.zoom === 1) return;
    const v = this.view();
    this.center = [v.cx - dx / v.s, v.cy - dy / v.s];
    this.clampCenter();
    this.redraw();
  }

  /** Store the centre as view() shows it (so panning past an edge does not build up a hidden offset). */
  clampCenter() {
    const v = this.view();
    this.center = [v.cx, v.cy];
  }

  updateZoomLabel() {
    this.zoomLabel.textContent = `${Math.round(this.zoom * 100)}%`;
  }

  // ------------------------------------------------------------------ state <-> widget
  /** Read the widget text into the editor (a workflow was loaded, or the value changed outside the editor). */
  loadFromWidget() {
    const text = this.dataWidget.value ?? "";
    this.lastText = text;
    this.pending = null;
    this.selected = null;
    this.note = "";
    try {
      this.state = parseState(String(text));
      this.storedError = "";
    } catch (e) {
      const msg = e instanceof DragStateError ? e.message : String(e && e.message ? e.message : e);
      this.storedError = `Stored drag_data is invalid: ${msg}. Editing replaces it (Undo brings it back).`;
      this.state = emptyState(this.image ? [this.image.naturalWidth, this.image.naturalHeight] : null);
    }
    this.rebuildMaskCanvas();
    if (this.image && !this.storedError) this.adoptImageSize(true);
    this.updateStatus();
    this.redraw();
  }

  /** Write the state to the widget (one edit); keeps the previous text for Undo. */
  commit(note = "") {
    const text = serializeState(this.state);
    if (new TextEncoder().encode(text).length > LIMITS.maxJsonBytes) {
      this.applyText(this.undoStack.pop() ?? this.lastText, false);
      this.note = `Not applied: the instructions would exceed ${LIMITS.maxJsonBytes / 1024} KiB (simplify the mask).`;
      this.updateStatus();
      return;
    }
    this.writeWidget(text);
    this.storedError = "";
    this.note = note;
    this.updateStatus();
    this.redraw();
  }

  /** Store text in the drag_data widget and tell the graph it changed. */
  writeWidget(text) {
    this.lastText = text;
    this.dataWidget.value = text;
    this.dataWidget.callback?.(text);
    this.node.setDirtyCanvas?.(true, true);
    this.node.graph?.change?.();
    notifyChangeTracker();
  }

  /** Remember the current widget text for Undo. */
  pushUndo() {
    this.undoStack.push(this.lastText ?? "");
    if (this.undoStack.length > UNDO_LIMIT) this.undoStack.shift();
  }

  /** Put text (optionally) in the widget and rebuild the editor from it. */
  applyText(text, write = true) {
    if (write) this.writeWidget(text);
    this.loadFromWidget();
  }

  /** Cancel the unfinished item, else restore the text before the last edit. */
  undo() {
    if (this.pending) {
      this.pending = null;
      this.redraw();
      return;
    }
    if (!this.undoStack.length) {
      this.note = "Nothing to undo.";
      this.updateStatus();
      return;
    }
    this.applyText(this.undoStack.pop());
    this.note = "Undone.";
    this.updateStatus();
  }

  /** Remove every point, region and the mask (one undoable edit). */
  clearAll() {
    this.pushUndo();
    this.pending = null;
    this.selected = null;
    this.state = emptyState(this.state.imageSize || this.imageSize());
    this.rebuildMaskCanvas();
    this.commit("Cleared.");
  }

  /** Status line: errors in red, else the last note or a hint, and the counts. */
  updateStatus() {
    let text = "";
    let color = "#aaa";
    const problems = [this.storedError, this.imageError].filter(Boolean);
    if (problems.length) {
      text = problems.join("\n");
      color = "#ff7b7b";
    } else {
      const s = this.state;
      const size = this.imageSize();
      const counts = `${s.points.length} point pair(s), ${s.regions.length} region pair(s)${s.mask ? ", mask" : ""}` +
        (size ? ` on ${size[0]}x${size[1]} px` : "");
      text = this.note ? `${this.note}  |  ${counts}` : `${counts}  |  ${this.hint()}`;
    }
    if (this.linkedJson()) {
      text += "\nThe drag_json input is connected: it replaces what is drawn here.";
    }
    this.status.textContent = text;
    this.status.style.color = color;
    this.status.dataset.error = problems.length ? "1" : "0";
  }

  /** What the current tool or unfinished item expects next. */
  hint() {
    // This node is an output node: queuing it alone runs only what feeds its image, not the method.
    const show = "select this node and Queue Selected Output Nodes (runs only its image's branch)";
    if (!this.imageSize()) return `No image yet: ${show}, or connect a Load Image.`;
    if (!this.image && !this.pending) return `No image yet: ${show}, or connect a Load Image.`;
    const p = this.pending;
    if (p?.type === "point") return "Click the target of this handle (Esc cancels).";
    if (p?.type === "rect-target") return "Drag or click the target rectangle (Esc cancels).";
    if (p?.type === "poly-handle") return "Click vertices; click the first vertex or press Enter to close.";
    if (p?.type === "poly-target") return "Click where the target polygon goes.";
    return TOOLS.find((t) => t[0] === this.tool)[2];
  }

  /** True when the drag_json input is connected (it overrides drag_data in the node). */
  linkedJson() {
    const inp = (this.node.inputs || []).find((i) => i.name === "drag_json");
    return !!(inp && inp.link != null);
  }

  // ------------------------------------------------------------------ image
  /** (W, H) of the shown image, else the stored image_size, else null. */
  imageSize() {
    if (this.image) return [this.image.naturalWidth, this.image.naturalHeight];
    return this.state.imageSize;
  }

  /** {url, label} of the image on the node feeding 'image' (a Load Image widget or a preview), or null. */
  upstreamRef() {
    const slot = (this.node.inputs || []).findIndex((i) => i.name === "image");
    if (slot < 0 || this.node.inputs[slot].link == null) return null;
    const up = this.node.getInputNode?.(slot);
    if (!up) return null;
    const w = (up.widgets || []).find((x) => x.name === "image" && typeof x.value === "string");
    const ref = w ? parseImageValue(w.value) : null;
    if (ref) return { url: viewUrl(ref), label: w.value };
    const src = up.imgs?.[0]?.src;
    return src ? { url: src, label: up.title || up.type } : null;
  }

  /** Pick the image to show: the last executed one while the upstream source is unchanged, else upstream. */
  refreshImage() {
    const up = this.upstreamRef();
    const upKey = up ? up.url : "";
    let want = null;
    if (this.execImage && this.execImage.upstream === upKey) want = { url: this.execImage.url, label: "last run" };
    else if (up) want = up;
    const url = want ? want.url : "";
    if (url === this.imageKey) return;
    this.imageKey = url;
    if (!url) {
      this.image = null;
      this.imageError = "";
      this.updateStatus();
      this.redraw();
      return;
    }
    const img = new Image();
    img.onload = () => {
      if (this.imageKey !== url || this.destroyed) return;
      this.image = img;
      this.imageError = "";
      this.adoptImageSize(true);
      this.updateStatus();
      this.redraw();
    };
    img.onerror = () => {
      if (this.imageKey !== url || this.destroyed) return;
      this.image = null;
      this.imageError = `Could not load the image ${want.label}.`;
      this.updateStatus();
      this.redraw();
    };
    img.src = url;
  }

  /** Align the state with the shown image's size; rescales instructions drawn on another size. */
  adoptImageSize(mayWrite) {
    const [W, H] = [this.image.naturalWidth, this.image.naturalHeight];
    if (this.center && (this.center[0] > W || this.center[1] > H)) this.setZoom(1);
    const s = this.state;
    if (s.imageSize && s.imageSize[0] === W && s.imageSize[1] === H) return;
    if (s.imageSize && !isEmptyState(s) && mayWrite && !this.storedError) {
      // Undo history is in the old pixels: it ends here (Undo would bring back the old size and rescale again).
      const [w0, h0] = s.imageSize;
      this.undoStack = [];
      this.state = rescaleState(s, W, H);
      this.rebuildMaskCanvas();
      this.commit(`The instructions were drawn on a ${w0}x${h0} image and were rescaled to ${W}x${H}.`);
      return;
    }
    s.imageSize = [W, H];
    if (s.mask && s.mask.length !== W * H) s.mask = null;
    this.rebuildMaskCanvas();
  }

  /** After a run: show the image the node executed on (its "drag_image" UI output). */
  onExecuted(output) {
    const list = output?.drag_image || output?.images;
    const ref = Array.isArray(list) ? list[0] : null;
    if (!ref || typeof ref.filename !== "string") return;
    const up = this.upstreamRef();
    this.execImage = { url: viewUrl(ref) + `&t=${Date.now()}`, upstream: up ? up.url : "" };
    this.refreshImage();
  }

  /** Periodic check for changes made outside the editor (links, the Load Image choice, the widget). */
  poll() {
    if (this.destroyed) return;
    this.root.dataset.dragEditNode = String(this.node.id);
    this.checkHost();
    const text = this.dataWidget.value ?? "";
    if (text !== this.lastText) this.loadFromWidget();
    this.refreshImage();
    const k = clamp((window.devicePixelRatio || 1) / this.screenScale(), 1, 3);
    if (Math.abs(k - this.pixelRatio) > 0.1 && this.canvas.isConnected) this.redraw(); // graph zoom changed
    const linked = this.linkedJson();
    if (linked !== this._linked) {
      this._linked = linked;
      this.updateStatus();
    }
  }

  /** Detect a "Nodes 2.0" (Vue) renderer that renders the node but never mounts the editor (frontend 1.27.x);
   * put a text note on the node there instead. Classic rendering always hosts the editor. */
  checkHost() {
    const vue = !!window.LiteGraph?.vueNodesMode;
    const vueEl = vue ? document.querySelector(`[data-node-id="${CSS.escape(String(this.node.id))}"]`) : null;
    if (!vue || (vueEl && vueEl.contains(this.root))) {
      this.hostMisses = 0;
      this.hostProblem = "";
      this.hostNote?.remove();
      return;
    }
    if (!vueEl || this.node.flags?.collapsed) {
      // Not rendered now (off screen) or collapsed (no widgets shown): nothing to decide, nothing to show.
      this.hostMisses = 0;
      this.hostNote?.remove();
      return;
    }
    this.hostMisses += 1;
    if (this.hostMisses < VUE_HOST_POLLS) return;
    this.hostProblem = VUE_HOST_NOTE;
    if (!this.hostNote) {
      this.hostNote = el("div", { padding: "6px 10px", margin: "4px 8px", border: "1px solid #a86", borderRadius: "4px",
        color: "#fc9", fontSize: "12px", lineHeight: "16px", whiteSpace: "normal", pointerEvents: "none" });
      this.hostNote.className = "dragedit-host-note";
      this.hostNote.dataset.role = "host-note";
      this.hostNote.textContent = VUE_HOST_NOTE;
    }
    if (this.hostNote.parentElement !== vueEl) vueEl.appendChild(this.hostNote);
  }

  // ------------------------------------------------------------------ mask
  /** Recreate the overlay bitmap of the mask at image size. */
  rebuildMaskCanvas() {
    const size = this.state.imageSize;
    if (!this.state.mask || !size) {
      this.maskCanvas = null;
      return;
    }
    const [W, H] = size;
    if (!this.maskCanvas || this.maskCanvas.width !== W || this.maskCanvas.height !== H) {
      this.maskCanvas = el("canvas");
      this.maskCanvas.width = W;
      this.maskCanvas.height = H;
    }
    this.paintMaskRect(0, 0, W, H);
  }

  /** Repaint the overlay in an image-pixel rectangle from the mask array. */
  paintMaskRect(x0, y0, x1, y1) {
    const [W] = this.state.imageSize;
    const w = x1 - x0;
    const h = y1 - y0;
    if (w <= 0 || h <= 0) return;
    const ctx = this.maskCanvas.getContext("2d");
    const data = ctx.createImageData(w, h);
    const [r, g, b, a] = COLORS.mask;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (this.state.mask[(y0 + y) * W + x0 + x]) {
          const o = (y * w + x) * 4;
          data.data[o] = r;
          data.data[o + 1] = g;
          data.data[o + 2] = b;
          data.data[o + 3] = a;
        }
      }
    }
    ctx.putImageData(data, x0, y0);
  }

  /** Set (1) or erase (0) a disc of the brush size at image point p. */
  dab(p, value) {
    const size = this.state.imageSize;
    if (!size) return;
    const [W, H] = size;
    if (!this.state.mask) {
      if (!value) return;
      this.state.mask = new Uint8Array(W * H);
      this.rebuildMaskCanvas();
    }
    const r = this.brush / 2;
    const x0 = clamp(Math.floor(p[0] - r), 0, W);
    const x1 = clamp(Math.ceil(p[0] + r), 0, W);
    const y0 = clamp(Math.floor(p[1] - r), 0, H);
    const y1 = clamp(Math.ceil(p[1] + r), 0, H);
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        if ((x + 0.5 - p[0]) ** 2 + (y + 0.5 - p[1]) ** 2 <= r * r) this.state.mask[y * W + x] = value;
      }
    }
    this.paintMaskRect(x0, y0, x1, y1);
  }

  /** Dabs along the segment from the last stroke point to p. */
  strokeTo(p, value) {
    const last = this.drag.last;
    const step = Math.max(1, this.brush / 4);
    const n = Math.max(1, Math.ceil(Math.sqrt(dist2(last, p)) / step));
    for (let i = 1; i <= n; i++) this.dab([last[0] + ((p[0] - last[0]) * i) / n, last[1] + ((p[1] - last[1]) * i) / n], value);
    this.drag.last = p;
  }

  // ------------------------------------------------------------------ view transform
  /** Image -> canvas layout px transform (layout px = bitmap px; the graph zoom scales both on screen). */
  view() {
    const size = this.imageSize() || [512, 512];
    const cw = Math.max(1, this.canvas.clientWidth);
    const ch = Math.max(1, this.canvas.clientHeight);
    const fit = Math.min(cw / size[0], ch / size[1]);
    const s = fit * this.zoom;
    // The image point at the canvas centre: the middle at zoom 1; while zoomed, kept so the image covers the
    // canvas along every axis where it is larger than the canvas (no panning off into the void).
    const axis = (c, len, view) => (len * s <= view ? len / 2 : clamp(c, view / (2 * s), len - view / (2 * s)));
    const c = this.center || [size[0] / 2, size[1] / 2];
    const cx = axis(c[0], size[0], cw);
    const cy = axis(c[1], size[1], ch);
    return { s, fit, cx, cy, ox: cw / 2 - cx * s, oy: ch / 2 - cy * s, size };
  }

  /** Canvas layout px per screen px (the node may be scaled by the graph zoom). */
  screenScale() {
    const r = this.canvas.getBoundingClientRect();
    return r.width > 0 ? this.canvas.clientWidth / r.width : 1;
  }

  /** Image pixel coordinates of a pointer event. */
  eventToImage(e) {
    const r = this.canvas.getBoundingClientRect();
    const kx = r.width > 0 ? this.canvas.clientWidth / r.width : 1;
    const ky = r.height > 0 ? this.canvas.clientHeight / r.height : 1;
    const v = this.view();
    return [((e.clientX - r.left) * kx - v.ox) / v.s, ((e.clientY - r.top) * ky - v.oy) / v.s];
  }

  /** Client (page) coordinates of an image point: for tests and tooling. */
  imageToClient(x, y) {
    const r = this.canvas.getBoundingClientRect();
    const v = this.view();
    const kx = r.width / Math.max(1, this.canvas.clientWidth);
    const ky = r.height / Math.max(1, this.canvas.clientHeight);
    return { x: r.left + (v.ox + x * v.s) * kx, y: r.top + (v.oy + y * v.s) * ky };
  }

  /** Hit radius in image pixels. */
  hitRadius() {
    return (HIT_RADIUS * this.screenScale()) / this.view().s;
  }

  /** p moved inside [0, W] x [0, H]. */
  clampToImage(p) {
    const size = this.imageSize();
    return [clamp(p[0], 0, size[0]), clamp(p[1], 0, size[1])];
  }

  // ------------------------------------------------------------------ hit testing
  /** The point or vertex under p: {kind, index, ...} or null (nearest within the hit radius). */
  hitTest(p) {
    const r2 = this.hitRadius() ** 2;
    let best = null;
    let bestD = r2;
    const consider = (pos, info) => {
      const d = dist2(pos, p);
      if (d <= bestD) {
        bestD = d;
        best = info;
      }
    };
    this.state.points.forEach((pp, i) => {
      consider(pp.handle, { kind: "point", index: i, end: "handle" });
      consider(pp.target, { kind: "point", index: i, end: "target" });
    });
    this.state.regions.forEach((rg, i) => {
      rg.handle.forEach((v, k) => consider(v, { kind: "region", index: i, which: "handle", vertex: k }));
      (rg.target || []).forEach((v, k) => consider(v, { kind: "region", index: i, which: "target", vertex: k }));
      (rg.points || []).forEach((pp, k) => {
        consider(pp.handle, { kind: "region", index: i, which: "points", vertex: k, end: "handle" });
        consider(pp.target, { kind: "region", index: i, which: "points", vertex: k, end: "target" });
      });
    });
    return best;
  }

  /** The region whose handle or target shape contains p (for deleting by right-click), or null. */
  regionAt(p) {
    for (let i = this.state.regions.length - 1; i >= 0; i--) {
      const rg = this.state.regions[i];
      if (pointInPolygon(p, shapeOutline(rg.kind, rg.handle))) return { kind: "region", index: i };
      if (rg.target && pointInPolygon(p, shapeOutline(rg.kind, rg.target))) return { kind: "region", index: i };
    }
    return null;
  }

  /** Position of a hit point or vertex. */
  posOf(hit) {
    if (hit.kind === "point") return this.state.points[hit.index][hit.end];
    const rg = this.state.regions[hit.index];
    if (hit.which === "points") return rg.points[hit.vertex][hit.end];
    return rg[hit.which][hit.vertex];
  }

  /** Move a hit point or vertex to p. */
  setPos(hit, p) {
    if (hit.kind === "point") this.state.points[hit.index][hit.end] = p;
    else {
      const rg = this.state.regions[hit.index];
      if (hit.which === "points") rg.points[hit.vertex][hit.end] = p;
      else rg[hit.which][hit.vertex] = p;
    }
  }

  /** Remove the pair or region a hit belongs to (one undoable edit). */
  deleteHit(hit) {
    if (!hit) return false;
    this.pushUndo();
    if (hit.kind === "point") this.state.points.splice(hit.index, 1);
    else if (hit.which === "points" && this.state.regions[hit.index].points.length > 1) this.state.regions[hit.index].points.splice(hit.vertex, 1);
    else this.state.regions.splice(hit.index, 1);
    this.selected = null;
    this.commit(hit.kind === "point" ? "Point pair removed." : "Region pair removed.");
    return true;
  }

  // ------------------------------------------------------------------ events
  /** Pointer, wheel and keyboard handlers of the canvas and the editor. */
  bindEvents() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    c.addEventListener("pointermove", (e) => this.onPointerMove(e));
    c.addEventListener("pointerup", (e) => this.onPointerUp(e));
    c.addEventListener("pointercancel", (e) => this.onPointerUp(e, true));
    c.addEventListener("pointerleave", () => {
      this.hover = null;
      this.redraw();
    });
    c.addEventListener("mousedown", (e) => e.stopPropagation());
    c.addEventListener("contextmenu", (e) => {
      e.preventDefault();
      e.stopPropagation();
    });
    c.addEventListener("dblclick", (e) => {
      e.stopPropagation();
      if (this.pending?.type === "poly-handle") this.closePolygon();
    });
    this.root.addEventListener("keydown", (e) => this.onKey(e));
    c.dragEditor = this; // for the page-level zoom-wheel listener (installZoomWheel)
    c.addEventListener("wheel", (e) => {
      // A plain wheel zooms the graph, as anywhere else on it (Ctrl+wheel: see installZoomWheel).
      e.preventDefault();
      e.stopPropagation();
      app.canvas?.processMouseWheel?.(e);
    }, { passive: false });
    this.root.addEventListener("keyup", (e) => {
      if (e.key === " ") this.spaceDown = false;
    });
    c.addEventListener("blur", () => {
      this.spaceDown = false;
    });
  }

  /** Delete/Backspace removes the selection, Esc cancels, Enter closes a polygon, Ctrl+Z undoes. */
  onKey(e) {
    const k = e.key;
    const ctrl = e.ctrlKey || e.metaKey;
    let handled = true;
    if (k === "Delete" || k === "Backspace") {
      if (this.pending) this.pending = null;
      else if (this.selected) this.deleteHit(this.selected);
    } else if (k === "Escape") {
      this.pending = null;
      this.drag = null;
    } else if (k === "Enter" && this.pending?.type === "poly-handle") {
      this.closePolygon();
    } else if (ctrl && (k === "z" || k === "Z")) {
      this.undo();
    } else if (k === " ") {
      this.spaceDown = true; // Space+drag pans
    } else if (!ctrl && (k === "+" || k === "=")) {
      this.zoomBy(ZOOM_STEP, this.hover);
    } else if (!ctrl && k === "-") {
      this.zoomBy(1 / ZOOM_STEP, this.hover);
    } else if (!ctrl && k === "0") {
      this.setZoom(1);
    } else {
      handled = false;
    }
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
      this.updateStatus();
      this.redraw();
    }
  }

  /** Start a gesture: paint, move a point, draw a rect, add a point or polygon vertex; right button deletes. */
  onPointerDown(e) {
    e.stopPropagation();
    e.preventDefault();
    this.canvas.focus({ preventScroll: true });
    if (!this.imageSize()) return;
    if (e.button === 1 || (e.button === 0 && this.spaceDown)) {
      // Middle button or Space+left drag: pan the zoomed view.
      try {
        this.canvas.setPointerCapture(e.pointerId);
      } catch (err) {
        /* synthetic events have no active pointer */
      }
      this.drag = { type: "pan", last: [e.clientX, e.clientY] };
      return;
    }
    const p = this.eventToImage(e);
    if (e.button === 2) {
      if (this.pending) {
        this.pending = null;
        this.updateStatus();
        this.redraw();
        return;
      }
      const hit = this.hitTest(p) || this.regionAt(p);
      if (hit && hit.kind === "region" && hit.which === undefined) {
        this.deleteHit({ kind: "region", index: hit.index, which: "handle" });
      } else this.deleteHit(hit);
      return;
    }
    if (e.button !== 0) return;
    try {
      this.canvas.setPointerCapture(e.pointerId);
    } catch (err) {
      /* synthetic events have no active pointer */
    }
    const inImage = this.insideImage(p);
    if (this.tool === "brush" || this.tool === "eraser") {
      if (!inImage) return;
      this.pushUndo();
      this.drag = { type: "paint", value: this.tool === "brush" ? 1 : 0, last: p };
      this.dab(p, this.drag.value);
      this.redraw();
      return;
    }
    const hit = this.pending?.type === "poly-handle" ? null : this.hitTest(p);
    if (hit) {
      this.selected = hit;
      this.drag = { type: "move", hit, start: this.posOf(hit).slice(), moved: false, startText: this.lastText };
      this.redraw();
      return;
    }
    if (!inImage) return;
    const q = this.clampToImage(p);
    if (this.tool === "point") this.clickPoint(q);
    else if (this.tool === "rect") this.drag = { type: "rect", a: q, b: q };
    else if (this.tool === "polygon") this.clickPolygon(q);
    this.updateStatus();
    this.redraw();
  }

  /** Continue the gesture (paint, move, rubber band) and track the hover position. */
  onPointerMove(e) {
    e.stopPropagation();
    const p = this.eventToImage(e);
    this.hover = p;
    const d = this.drag;
    if (d?.type === "pan") {
      const k = this.screenScale();
      this.panBy((e.clientX - d.last[0]) * k, (e.clientY - d.last[1]) * k);
      d.last = [e.clientX, e.clientY];
      return;
    }
    if (d?.type === "paint") this.strokeTo(p, d.value);
    else if (d?.type === "move") {
      this.setPos(d.hit, this.clampToImage(p));
      d.moved = true;
    } else if (d?.type === "rect") d.b = this.clampToImage(p);
    this.redraw();
  }

  /** Finish the gesture and commit it as one edit (moves that break a shape are reverted). */
  onPointerUp(e, cancelled = false) {
    e.stopPropagation();
    const d = this.drag;
    this.drag = null;
    if (!d || d.type === "pan") return;
    if (d.type === "paint") {
      this.commit(d.value ? "Mask painted." : "Mask erased.");
    } else if (d.type === "move") {
      if (!d.moved) return;
      if (cancelled || !this.movedShapeValid(d.hit)) {
        this.setPos(d.hit, d.start);
        this.note = cancelled ? "" : "Not moved: the shape would become invalid (zero size or self-crossing).";
        this.updateStatus();
        this.redraw();
        return;
      }
      this.undoStack.push(d.startText ?? "");
      this.commit("Moved.");
    } else if (d.type === "rect" && !cancelled) {
      this.finishRect(d.a, d.b);
    }
    this.updateStatus();
    this.redraw();
  }

  /** True when p lies on the image (with half a hit radius of slack). */
  insideImage(p) {
    const size = this.imageSize();
    const tol = this.hitRadius() / 2;
    return p[0] >= -tol && p[1] >= -tol && p[0] <= size[0] + tol && p[1] <= size[1] + tol;
  }

  /** False when moving this vertex left a rect without area or a polygon the node would reject. */
  movedShapeValid(hit) {
    if (hit.kind !== "region" || hit.which === "points") return true;
    const rg = this.state.regions[hit.index];
    const verts = rg[hit.which];
    if (rg.kind === "rect") {
      const [a, b] = rectCorners(verts);
      return b[0] - a[0] >= 1 && b[1] - a[1] >= 1;
    }
    return !polygonProblem(verts);
  }

  // ------------------------------------------------------------------ tools
  /** Point tool: first click = handle, second click = its target. */
  clickPoint(q) {
    if (this.pending?.type === "point") {
      if (countPairs(this.state) >= LIMITS.maxPoints) {
        this.note = `At most ${LIMITS.maxPoints} point pairs.`;
        this.pending = null;
        return;
      }
      this.pushUndo();
      this.state.points.push({ handle: this.pending.handle, target: q });
      this.pending = null;
      this.selected = { kind: "point", index: this.state.points.length - 1, end: "target" };
      this.commit("Point pair added.");
    } else {
      this.pending = { type: "point", handle: q };
      this.note = "";
    }
  }

  /** Rect tool: the first rectangle is the handle, the next (or a click: a copy) the target. */
  finishRect(a, b) {
    const [c0, c1] = rectCorners([a, b]);
    const big = c1[0] - c0[0] >= 2 && c1[1] - c0[1] >= 2;
    if (this.pending?.type === "rect-target") {
      let target;
      if (big) target = [c0, c1];
      else {
        // A click places a copy of the handle rectangle centred there.
        const [h0, h1] = this.pending.handle;
        const w = h1[0] - h0[0];
        const h = h1[1] - h0[1];
        const size = this.imageSize();
        const x = clamp(a[0] - w / 2, 0, size[0] - w);
        const y = clamp(a[1] - h / 2, 0, size[1] - h);
        target = [[x, y], [x + w, y + h]];
      }
      this.addRegion({ kind: "rect", handle: this.pending.handle, target, points: null });
    } else if (big) {
      this.pending = { type: "rect-target", handle: [c0, c1] };
      this.note = "";
    }
  }

  /** Append a finished region pair (one undoable edit). */
  addRegion(rg) {
    this.pending = null;
    if (this.state.regions.length >= LIMITS.maxRegions) {
      this.note = `At most ${LIMITS.maxRegions} regions.`;
      return;
    }
    this.pushUndo();
    this.state.regions.push(rg);
    this.selected = null;
    this.commit("Region pair added.");
  }

  /** Polygon tool: add a vertex, close on the first vertex, then place the target copy. */
  clickPolygon(q) {
    const p = this.pending;
    if (p?.type === "poly-target") {
      const c = centroid(p.handle);
      const size = this.imageSize();
      const xs = p.handle.map((v) => v[0]);
      const ys = p.handle.map((v) => v[1]);
      // Shift so the copy stays inside the image.
      const dx = clamp(q[0] - c[0], -Math.min(...xs), size[0] - Math.max(...xs));
      const dy = clamp(q[1] - c[1], -Math.min(...ys), size[1] - Math.max(...ys));
      this.addRegion({ kind: "polygon", handle: p.handle, target: p.handle.map((v) => [v[0] + dx, v[1] + dy]), points: null });
      return;
    }
    if (p?.type !== "poly-handle") {
      this.pending = { type: "poly-handle", verts: [q] };
      this.note = "";
      return;
    }
    if (p.verts.length >= 3 && dist2(q, p.verts[0]) <= this.hitRadius() ** 2) {
      this.closePolygon();
      return;
    }
    if (p.verts.length >= LIMITS.maxPolygon) {
      this.note = `A polygon has at most ${LIMITS.maxPolygon} vertices: closing it.`;
      this.closePolygon();
      return;
    }
    const last = p.verts[p.verts.length - 1];
    if (dist2(q, last) > 0) p.verts.push(q);
  }

  /** Close the handle polygon if the node would accept it; the target copy comes next. */
  closePolygon() {
    const p = this.pending;
    if (p?.type !== "poly-handle") return;
    if (p.verts.length < 3) {
      this.note = "A polygon needs at least 3 vertices.";
      return;
    }
    const why = polygonProblem(p.verts);
    if (why) {
      this.note = `The polygon ${why}; draw it again.`;
      this.pending = null;
      return;
    }
    this.pending = { type: "poly-target", handle: p.verts };
    this.note = "";
  }

  // ------------------------------------------------------------------ drawing
  /** Draw on the next animation frame (many requests, one draw). */
  redraw() {
    if (this.destroyed || this._frame) return;
    this._frame = requestAnimationFrame(() => {
      this._frame = 0;
      this.draw();
    });
  }

  /** Draw now (drag_draw.js). */
  draw() {
    drawEditor(this);
  }

  /** Stop observers and drawing (the node was removed). */
  destroy() {
    this.destroyed = true;
    this.resizeObserver?.disconnect();
    this.hostNote?.remove();
    if (this._frame) cancelAnimationFrame(this._frame);
  }
}

/** One page-level listener, in the capture phase, for Ctrl/Alt+wheel over an editor canvas: the Nodes 2.0 node
 * forwards Ctrl+wheel to the graph before it reaches the canvas, so the canvas' own listener would never see it. */
function installZoomWheel() {
  if (window.__dragEditZoomWheel) return;
  window.__dragEditZoomWheel = true;
  window.addEventListener("wheel", (e) => {
    const ed = e.target?.dragEditor;
    if (!ed || ed.destroyed || !(e.ctrlKey || e.metaKey || e.altKey)) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    ed.onZoomWheel(e);
  }, { capture: true, passive: false });
}

/** Hide a widget in the classic canvas and in Nodes 2.0 (Vue) rendering, keeping its value serialised. */
function hideWidget(w) {
  w.hidden = true;
  w.options = w.options || {};
  w.options.hidden = true;
  if (w.options.minNodeSize) delete w.options.minNodeSize;
  // The classic layout hands free space to every DOM widget, hidden or not: ask for none.
  w.computeLayoutSize = () => ({ minHeight: 0, maxHeight: 0, minWidth: 0 });
}

app.registerExtension({
  name: "DragEdit.DragEditor",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isDragInstructionsDef(nodeData)) return;
    installZoomWheel();

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const dataWidget = (this.widgets || []).find((w) => w.name === DATA_WIDGET);
      if (!dataWidget) return r;
      hideWidget(dataWidget);
      const editor = new DragEditor(this, dataWidget);
      this.dragEditor = editor;
      const widget = this.addDOMWidget(EDITOR_WIDGET, "dragedit-editor", editor.root, {
        serialize: false,
        hideOnZoom: false,
        getValue: () => "",
        setValue: () => {},
        getMinHeight: () => MIN_HEIGHT,
      });
      widget.serialize = false;
      editor.domWidget = widget;
      editor.loadFromWidget();
      editor.root.dataset.dragEditNode = String(this.id);
      editor.timer = setInterval(() => editor.poll(), POLL_MS);
      const [w, h] = this.size;
      this.setSize([Math.max(w, 420), Math.max(h, 470)]);
      return r;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      // A workflow was loaded: rebuild the editor from the stored JSON.
      if (this.dragEditor) {
        this.dragEditor.root.dataset.dragEditNode = String(this.id);
        this.dragEditor.loadFromWidget();
        this.dragEditor.refreshImage();
      }
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const r = onExecuted?.apply(this, arguments);
      this.dragEditor?.onExecuted(output);
      return r;
    };

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const r = onConnectionsChange?.apply(this, arguments);
      this.dragEditor?.refreshImage();
      this.dragEditor?.updateStatus();
      return r;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      const ed = this.dragEditor;
      if (ed) {
        clearInterval(ed.timer);
        ed.destroy();
      }
      return onRemoved?.apply(this, arguments);
    };
  },
});
