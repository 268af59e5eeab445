// Tools of the "Drag Instructions" editor: point pairs, mask brush / eraser, rectangle and polygon region pairs,
// hit testing, the pointer and key handlers that drive them, and the brush size (relative to the image) with the
// per-user tool / brush memory. Methods installed on DragEditor (drag_widget.js): they edit this.state and end
// every finished edit with this.commit() (one undo step each).
import { LIMITS, centroid, countPairs, pointInPolygon, polygonProblem, rectCorners, shapeOutline } from "./drag_state.js";
import { COLORS } from "./drag_draw.js";
import { ZOOM_STEP, clamp, dist2 } from "./drag_view.js";

export const TOOLS = [
  ["point", "Point", "Click a handle, then its target. Drag a point to move it; right-click or Delete removes it."],
  ["brush", "Mask", "Paint the editable area (optional; none = the whole image)."],
  ["eraser", "Erase", "Erase the editable-area mask."],
  ["rect", "Rect", "Drag the handle rectangle, then drag (or click) the target rectangle."],
  ["polygon", "Polygon", "Click the handle polygon's vertices, close it on the first vertex (or Enter), then click where its copy (the target) goes; drag vertices to reshape."],
];

// ---------------------------------------------------------------- brush size and per-user memory
const PREFS_KEY = "DragEdit.editor"; // localStorage: {tool, brushFraction}
const NO_IMAGE_BRUSH = { min: 2, max: 256, value: 24 }; // before any image size is known

/** Slider range (image px) of the brush for an image of `size`: 1 px up to half the longer side. */
export function brushRange(size) {
  if (!size) return { min: NO_IMAGE_BRUSH.min, max: NO_IMAGE_BRUSH.max };
  return { min: 1, max: Math.max(8, Math.round(Math.max(size[0], size[1]) / 2)) };
}

/** Default brush diameter (image px): an eighth of the shorter side (24 px on 256x192, 4 px on 32x32). */
export function defaultBrush(size) {
  if (!size) return NO_IMAGE_BRUSH.value;
  return clamp(Math.round(Math.min(size[0], size[1]) / 8), 1, brushRange(size).max);
}

/** The user's remembered tool and brush ({tool, brushFraction}: brush diameter / shorter image side). */
export function loadPrefs() {
  try {
    const p = JSON.parse(localStorage.getItem(PREFS_KEY) || "{}");
    const tool = TOOLS.some((t) => t[0] === p.tool) ? p.tool : null;
    const f = Number(p.brushFraction);
    return { tool, brushFraction: Number.isFinite(f) && f > 0 && f <= 1 ? f : null };
  } catch (e) {
    return { tool: null, brushFraction: null };
  }
}

/** Remember part of the prefs (merged with the stored ones); storage errors (private mode, quota) are ignored. */
export function savePrefs(part) {
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify({ ...loadPrefs(), ...part }));
  } catch (e) {
    /* nothing to remember with */
  }
}

export const toolMethods = {
  /** Switch tool (point, brush, eraser, rect, polygon); drops an unfinished pair or region. */
  setTool(id, remember = true) {
    if (this.tool !== id) this.pending = null;
    this.tool = id;
    if (remember) savePrefs({ tool: id });
    for (const [k, b] of Object.entries(this.toolButtons)) {
      b.style.background = k === id ? "#4a6da8" : "#333";
      b.setAttribute("aria-pressed", k === id ? "true" : "false");
    }
    this.note = "";
    this.updateStatus();
    this.redraw();
  },

  /** Set the brush diameter (image px) and show it next to the slider; `remember` stores it relative to the image. */
  setBrush(px, remember = false) {
    const range = brushRange(this.imageSize());
    this.brush = clamp(Math.round(px) || 1, range.min, range.max);
    if (this.sizeInput.value !== String(this.brush)) this.sizeInput.value = String(this.brush);
    this.sizeValue.textContent = `${this.brush} px`;
    const size = this.imageSize();
    if (remember && size) savePrefs({ brushFraction: this.brush / Math.min(size[0], size[1]) });
    this.redraw();
  },

  /** Size the brush slider and value for the image shown (once per image size): the remembered fraction of the
   * shorter side, else the default. */
  fitBrush() {
    const size = this.imageSize();
    const key = size ? `${size[0]}x${size[1]}` : "";
    if (key === this.brushFor) return;
    this.brushFor = key;
    const range = brushRange(size);
    this.sizeInput.min = String(range.min);
    this.sizeInput.max = String(range.max);
    const frac = size ? loadPrefs().brushFraction : null;
    this.setBrush(frac ? frac * Math.min(size[0], size[1]) : defaultBrush(size));
  },

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
      this.maskCanvas = document.createElement("canvas");
      this.maskCanvas.width = W;
      this.maskCanvas.height = H;
    }
    this.paintMaskRect(0, 0, W, H);
  },

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
  },

  /** Set (1) or erase (0) a disc of the brush size at image point p; false when the image is too large to mask. */
  dab(p, value) {
    const size = this.state.imageSize;
    if (!size) return false;
    const [W, H] = size;
    if (!this.state.mask) {
      if (!value) return true;
      if (W * H > LIMITS.maxMaskPixels) return false;
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
    return true;
  },

  /** Dabs along the segment from the last stroke point to p. */
  strokeTo(p, value) {
    const last = this.drag.last;
    const step = Math.max(1, this.brush / 4);
    const n = Math.max(1, Math.ceil(Math.sqrt(dist2(last, p)) / step));
    for (let i = 1; i <= n; i++) this.dab([last[0] + ((p[0] - last[0]) * i) / n, last[1] + ((p[1] - last[1]) * i) / n], value);
    this.drag.last = p;
  },

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
  },

  /** The region whose handle or target shape contains p (for deleting by right-click), or null. */
  regionAt(p) {
    for (let i = this.state.regions.length - 1; i >= 0; i--) {
      const rg = this.state.regions[i];
      if (pointInPolygon(p, shapeOutline(rg.kind, rg.handle))) return { kind: "region", index: i };
      if (rg.target && pointInPolygon(p, shapeOutline(rg.kind, rg.target))) return { kind: "region", index: i };
    }
    return null;
  },

  /** Position of a hit point or vertex. */
  posOf(hit) {
    if (hit.kind === "point") return this.state.points[hit.index][hit.end];
    const rg = this.state.regions[hit.index];
    if (hit.which === "points") return rg.points[hit.vertex][hit.end];
    return rg[hit.which][hit.vertex];
  },

  /** Move a hit point or vertex to p. */
  setPos(hit, p) {
    if (hit.kind === "point") this.state.points[hit.index][hit.end] = p;
    else {
      const rg = this.state.regions[hit.index];
      if (hit.which === "points") rg.points[hit.vertex][hit.end] = p;
      else rg[hit.which][hit.vertex] = p;
    }
  },

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
  },

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
  },

  // ------------------------------------------------------------------ shape tools
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
  },

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
  },

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
  },

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
  },

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
  },

  // ------------------------------------------------------------------ pointer and keys
  /** Pointer, wheel and keyboard handlers of the canvas and the editor. Keys arrive at the editor's key input
   * (focusKeys), never at the graph: see onKey. */
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
    c.addEventListener("focus", () => this.focusKeys()); // keyboard navigation onto the canvas
    this.root.addEventListener("keydown", (e) => this.onKey(e));
    c.dragEditor = this; // for the page-level zoom and pan listeners (drag_editor.js)
    c.addEventListener("wheel", (e) => {
      // A plain wheel zooms the graph, as anywhere else on it (Ctrl+wheel zooms the editor: drag_editor.js).
      e.preventDefault();
      e.stopPropagation();
      this.host.graphWheel(e);
    }, { passive: false });
    this.root.addEventListener("keyup", (e) => {
      if (e.key === " ") this.spaceDown = false;
    });
    this.keys.addEventListener("blur", () => {
      this.spaceDown = false;
    });
  },

  /** Delete/Backspace removes the selection, Esc cancels, Enter closes a polygon, Ctrl+Z undoes (Ctrl+Y and
   * Ctrl+Shift+Z are taken too: the editor has no redo, and the workflow's undo history must not run). */
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
    } else if (ctrl && (k === "z" || k === "Z") && !e.shiftKey) {
      this.undo();
    } else if (ctrl && ((k === "z" || k === "Z") || k === "y" || k === "Y")) {
      this.note = "The editor has no redo (Undo only).";
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
  },

  /** Start a gesture: paint, move a point, draw a rect, add a point or polygon vertex; right button deletes. */
  onPointerDown(e) {
    if (e.button === 1 && this.zoom === 1) return; // middle button at 100%: the graph's (pan)
    e.stopPropagation();
    e.preventDefault();
    this.focusKeys();
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
      if (!this.dab(p, this.drag.value)) {
        this.undoStack.pop();
        this.drag = null;
        const [W, H] = this.state.imageSize;
        this.note = `The mask can be painted on images up to ${LIMITS.maxMaskPixels / 2 ** 20} Mpx; this one is ${W}x${H}.`;
        this.updateStatus();
      }
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
  },

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
  },

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
  },
};
