// The "Drag Instructions" editor of one node: its DOM (toolbar, canvas, status line), the link between the
// editor state and the node's "drag_data" STRING widget (versioned JSON, schema in core/drag_schema.py; every
// edit rewrites it, one undo step each), and the image it shows (the connected Load Image before the first run,
// the node's last executed image after it; that image's reference is kept in the node's properties, so it comes
// back after a reload or when the workflow is opened again). Coordinates are image pixels whatever the node size
// or zoom. Text from workflows is only ever shown with textContent or drawn on the canvas, never parsed as HTML.
// ComfyUI itself is reached only through the `host` object the extension (drag_editor.js) passes in.
import { DragStateError, DragStateTooLarge, LIMITS, emptyState, isEmptyState, parseState, rescaleState, serializeState } from "./drag_state.js";
import { TOOLS, loadPrefs, toolMethods } from "./drag_tools.js";
import { ZOOM_STEP, viewMethods } from "./drag_view.js";

export const MIN_HEIGHT = 260;
export const RUN_IMAGE_PROPERTY = "dragedit_image"; // node property: {filename, subfolder, type, upstream}
const UNDO_LIMIT = 100;
const STATUS_LINES = 3;

/** A new element with inline style and attributes (never HTML from values). */
export function el(tag, style = {}, attrs = {}) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

/** {filename, subfolder, type} of a Load Image style widget value ("sub/name.png [input]"). */
export function parseImageValue(value) {
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

/** An {filename, subfolder, type} image reference as kept in the node properties, or null when it is not one. */
function imageRef(r) {
  if (!r || typeof r !== "object" || typeof r.filename !== "string" || !r.filename) return null;
  const type = ["input", "output", "temp"].includes(r.type) ? r.type : "temp";
  return { filename: r.filename, subfolder: typeof r.subfolder === "string" ? r.subfolder : "", type };
}

/** The editor of one node: owns the canvas, the tools and the undo history; the widget owns the data.
 * host: {viewUrl(ref), notifyChange(), graphWheel(event), inputConnected(node, name), inputNode(node, name)}. */
export class DragEditor {
  constructor(node, dataWidget, host) {
    this.node = node;
    this.dataWidget = dataWidget;
    this.host = host;
    this.state = emptyState();
    this.lastText = null; // widget text the state was built from / written to
    this.storedError = ""; // why the stored value could not be read
    this.note = ""; // transient information
    this.tool = "point";
    this.brush = 24; // brush diameter in image pixels (fitBrush sizes it for the image)
    this.brushFor = null; // image size the brush slider was last sized for
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
    this.execImage = null; // {url, upstream, failed} of the last run, from the node property
    this.runKey = null; // the property value execImage was built from
    this.maskCanvas = null;
    this.pixelRatio = 1; // canvas bitmap px per layout px
    this.destroyed = false;
    this.hostProblem = ""; // why the editor cannot be shown in this renderer ("" = it can; set by drag_editor.js)
    this.hostMisses = 0; // consecutive polls that found the Vue node without the editor
    this.hostNote = null; // the note element put on the Vue node instead of the editor
    this.buildDom();
  }

  // ------------------------------------------------------------------ DOM
  /** Toolbar (tools, brush size, Undo, Clear, zoom), canvas, status line and the key input. */
  buildDom() {
    this.root = el("div", {
      position: "relative",
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
    // Keys typed in the editor go to this input. The frontends' workflow undo (a window-level listener that runs
    // before any of the page's own) leaves keys alone while a text input has the focus, so Ctrl+Z here is the
    // editor's undo only; onKey keeps the keys it handles from bubbling on to the graph.
    this.keys = el("input", { position: "absolute", left: "0", top: "0", width: "1px", height: "1px", opacity: "0",
      border: "0", padding: "0", pointerEvents: "none" }, { type: "text", readonly: "", tabindex: "-1", "aria-label": "Drag editor keys" });
    this.keys.dataset.role = "keys";
    this.toolbar = el("div", { display: "flex", flexWrap: "wrap", gap: "3px", alignItems: "center" });
    this.toolButtons = {};
    for (const [id, label, tip] of TOOLS) {
      const b = this.button(label, tip, () => this.setTool(id));
      b.dataset.tool = id;
      this.toolButtons[id] = b;
    }
    // Brush size: a labelled slider with its value in image pixels (used by Mask and Erase), sized per image.
    const sizeTip = "Brush size of Mask and Erase: the diameter in image pixels (the slider spans 1 px to half the image)";
    this.sizeBox = el("label", { display: "inline-flex", alignItems: "center", gap: "3px", cursor: "default" }, { title: sizeTip });
    this.sizeBox.dataset.role = "brush-size-control";
    const sizeLabel = el("span");
    sizeLabel.textContent = "Brush";
    this.sizeInput = el("input", { width: "64px" }, { type: "range", min: "2", max: "256", step: "1", title: sizeTip, "aria-label": "Brush size (image pixels)" });
    this.sizeInput.value = String(this.brush);
    this.sizeInput.dataset.role = "brush-size";
    this.sizeValue = el("span", { minWidth: "40px", fontVariantNumeric: "tabular-nums" });
    this.sizeValue.dataset.role = "brush-size-value";
    this.sizeInput.addEventListener("input", () => this.setBrush(Number(this.sizeInput.value), true));
    this.sizeBox.append(sizeLabel, this.sizeInput, this.sizeValue);
    this.stopPointer(this.sizeBox);
    this.toolbar.appendChild(this.sizeBox);
    this.fitBrush();
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
    // Fixed height: a status text of another length must not move the image under the pointer. The first line
    // holds the counts, the next two the note or hint.
    this.status = el("div", { flex: "0 0 auto", height: `${14 * STATUS_LINES}px`, overflowY: "auto", whiteSpace: "pre-wrap", overflowWrap: "anywhere", lineHeight: "14px" });
    this.status.dataset.role = "status";
    this.root.append(this.keys, this.toolbar, this.canvas, this.status);
    this.bindEvents();
    this.setTool(loadPrefs().tool || "point", false);
    this.resizeObserver = new ResizeObserver(() => this.redraw());
    this.resizeObserver.observe(this.canvas);
  }

  /** A toolbar button (in `parent`, default the toolbar) that runs fn and hands the keyboard focus back to the editor. */
  button(label, tip, fn, parent = this.toolbar) {
    const b = el("button", { padding: "2px 6px", fontSize: "11px", borderRadius: "3px", border: "1px solid #555", background: "#333", color: "#ddd", cursor: "pointer" });
    b.type = "button";
    b.textContent = label;
    b.title = tip;
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      fn();
      this.focusKeys(); // keys (Delete, Ctrl+Z) go to the editor, not the graph
    });
    this.stopPointer(b);
    parent.appendChild(b);
    return b;
  }

  /** Give the keyboard focus to the editor's key input. */
  focusKeys() {
    if (document.activeElement !== this.keys) this.keys.focus({ preventScroll: true });
  }

  /** Keep pointer events on a control from reaching the node (Nodes 2.0 would drag it) or the graph canvas. */
  stopPointer(e) {
    for (const t of ["pointerdown", "pointermove", "pointerup", "mousedown", "contextmenu"]) {
      e.addEventListener(t, (ev) => ev.stopPropagation());
    }
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
      this.storedError = e instanceof DragStateTooLarge
        ? `Stored drag_data is not shown: ${msg}. The node still runs it; editing here replaces it (Undo brings it back).`
        : `Stored drag_data is invalid: ${msg}. Editing replaces it (Undo brings it back).`;
      this.state = emptyState(this.image ? [this.image.naturalWidth, this.image.naturalHeight] : null);
    }
    this.rebuildMaskCanvas();
    if (this.image && !this.storedError) this.adoptImageSize(true);
    this.fitBrush();
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
    this.host.notifyChange();
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

  // ------------------------------------------------------------------ status line
  /** Status line: errors in red, else the counts, then the last note or a hint. */
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
      text = `${counts}\n${this.note || this.hint()}`;
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
    // This node is an output node: running its branch alone runs only what feeds its image, not the method. The
    // selection toolbar's play button runs it on every frontend and renderer (1.3x: "Run Branch" in the Nodes 2.0
    // node menu; the command is "Queue Selected Output Nodes").
    const noImage = "No image yet: connect a Load Image, or select this node and click \u25B6 above it (Run Branch, Queue Selected Output Nodes).";
    if (!this.imageSize()) return noImage;
    if (!this.image && !this.pending) return noImage;
    const p = this.pending;
    if (p?.type === "point") return "Click the target of this handle (Esc cancels).";
    if (p?.type === "rect-target") return "Drag or click the target rectangle (Esc cancels).";
    if (p?.type === "poly-handle") return "Click vertices; click the first vertex or press Enter to close.";
    if (p?.type === "poly-target") return "Click where the target polygon goes.";
    return TOOLS.find((t) => t[0] === this.tool)[2];
  }

  /** True when the drag_json input is connected (it overrides drag_data in the node). */
  linkedJson() {
    return this.host.inputConnected(this.node, "drag_json");
  }

  // ------------------------------------------------------------------ image
  /** (W, H) of the shown image, else the stored image_size, else null. */
  imageSize() {
    if (this.image) return [this.image.naturalWidth, this.image.naturalHeight];
    return this.state.imageSize;
  }

  /** {url, label, key} of the image on the node feeding 'image' (a Load Image widget or a preview), or null.
   * key names the source (the widget value or the preview URL) so a last-run image can be matched to it. */
  upstreamRef() {
    const up = this.host.inputNode(this.node, "image");
    if (!up) return null;
    const w = (up.widgets || []).find((x) => x.name === "image" && typeof x.value === "string");
    const ref = w ? parseImageValue(w.value) : null;
    if (ref) return { url: this.host.viewUrl(ref), label: w.value, key: w.value };
    const src = up.imgs?.[0]?.src;
    return src ? { url: src, label: up.title || up.type, key: src } : null;
  }

  /** Rebuild execImage when the node's last-run image property changed (a run, a workflow loaded). */
  syncRunImage(force = false) {
    const stored = this.node.properties?.[RUN_IMAGE_PROPERTY];
    const ref = imageRef(stored);
    const key = ref ? JSON.stringify([ref, stored.upstream ?? ""]) : "";
    if (key === this.runKey && !force) return;
    this.runKey = key;
    this.execImage = ref ? { url: this.host.viewUrl(ref) + `&t=${Date.now()}`, upstream: String(stored.upstream ?? ""), failed: false } : null;
  }

  /** Pick the image to show: the last executed one while the upstream source is unchanged (or shows nothing
   * itself, e.g. a generated image after a reload), else the upstream one. */
  refreshImage() {
    this.syncRunImage();
    const linked = this.host.inputConnected(this.node, "image");
    const up = linked ? this.upstreamRef() : null;
    const run = this.execImage && !this.execImage.failed ? this.execImage : null;
    let want = null;
    if (run && linked && (!up || run.upstream === up.key)) want = { url: run.url, label: "of the last run", run: true };
    else if (up) want = up;
    const url = want ? want.url : "";
    if (url === this.imageKey) return;
    this.imageKey = url;
    if (!url) {
      this.image = null;
      this.imageError = this.execImage?.failed && linked
        ? "The image of the last run is gone (ComfyUI empties its temp folder when it restarts): run this node's branch again."
        : "";
      this.fitBrush();
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
      this.fitBrush();
      this.updateStatus();
      this.redraw();
    };
    img.onerror = () => {
      if (this.imageKey !== url || this.destroyed) return;
      if (want.run) {
        // The stored reference outlived its file: fall back to the upstream image (or say what to do).
        this.execImage.failed = true;
        this.imageKey = "";
        this.refreshImage();
        return;
      }
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
    if (s.mask && W * H > LIMITS.maxMaskPixels) {
      this.note = `The stored mask is kept as drawn: the editor paints masks on images up to ${LIMITS.maxMaskPixels / 2 ** 20} Mpx, this one is ${W}x${H}.`;
      return;
    }
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

  /** After a run: keep the reference of the image the node executed on (its "drag_image" UI output) with the
   * node and show it. */
  onExecuted(output) {
    const list = output?.drag_image || output?.images;
    const ref = imageRef(Array.isArray(list) ? list[0] : null);
    if (!ref) return;
    const up = this.host.inputConnected(this.node, "image") ? this.upstreamRef() : null;
    const value = { ...ref, upstream: up ? up.key : "" };
    const old = this.node.properties?.[RUN_IMAGE_PROPERTY];
    if (JSON.stringify(old) !== JSON.stringify(value)) {
      if (typeof this.node.setProperty === "function") this.node.setProperty(RUN_IMAGE_PROPERTY, value);
      else (this.node.properties ??= {})[RUN_IMAGE_PROPERTY] = value;
      this.host.notifyChange();
    }
    this.syncRunImage(true);
    this.refreshImage();
  }

  /** Periodic check for changes made outside the editor (links, the Load Image choice, the widget). */
  poll() {
    if (this.destroyed) return;
    this.root.dataset.dragEditNode = String(this.node.id);
    const text = this.dataWidget.value ?? "";
    if (text !== this.lastText) this.loadFromWidget();
    this.refreshImage();
    const k = Math.min(3, Math.max(1, (window.devicePixelRatio || 1) / this.screenScale()));
    if (Math.abs(k - this.pixelRatio) > 0.1 && this.canvas.isConnected) this.redraw(); // graph zoom changed
    const linked = this.linkedJson();
    if (linked !== this._linked) {
      this._linked = linked;
      this.updateStatus();
    }
  }

  /** Stop observers and drawing (the node was removed). */
  destroy() {
    this.destroyed = true;
    this.resizeObserver?.disconnect();
    if (this._frame) cancelAnimationFrame(this._frame);
  }
}

Object.assign(DragEditor.prototype, viewMethods, toolMethods);
