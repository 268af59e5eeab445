// Canvas view of the "Drag Instructions" editor: the image -> canvas transform, the editor's own zoom and pan,
// and pointer <-> image coordinates. Methods installed on DragEditor (drag_widget.js); they read the editor's
// canvas, imageSize() and the view fields zoom (1 = the whole image fits) and center (image point shown at the
// canvas centre while zoomed, or null), and write only zoom / center. Coordinates are image pixels at every zoom.
import { drawEditor } from "./drag_draw.js";

export const ZOOM_MAX = 16; // editor zoom, relative to "fit the image in the canvas"
export const ZOOM_STEP = 1.25; // one wheel notch / one +/- click
const HIT_RADIUS = 9; // screen px

export const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
export const dist2 = (a, b) => (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2;

export const viewMethods = {
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
  },

  /** Ctrl+wheel (a touchpad pinch too) over the canvas: zoom the view around the pointer. */
  onZoomWheel(e) {
    if (!this.imageSize()) return;
    const k = Math.exp(-clamp(e.deltaY, -100, 100) / 200);
    this.zoomBy(k, this.eventToImage(e));
  },

  /** Multiply the zoom by k around image point `at`. */
  zoomBy(k, at = null) {
    this.setZoom(this.zoom * k, at);
  },

  /** Move the view by (dx, dy) canvas layout px. */
  panBy(dx, dy) {
    if (this.zoom === 1) return;
    const v = this.view();
    this.center = [v.cx - dx / v.s, v.cy - dy / v.s];
    this.clampCenter();
    this.redraw();
  },

  /** Store the centre as view() shows it (so panning past an edge does not build up a hidden offset). */
  clampCenter() {
    const v = this.view();
    this.center = [v.cx, v.cy];
  },

  /** Show the zoom in the toolbar ("100%" = the whole image). */
  updateZoomLabel() {
    this.zoomLabel.textContent = `${Math.round(this.zoom * 100)}%`;
  },

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
  },

  /** Canvas layout px per screen px (the node may be scaled by the graph zoom). */
  screenScale() {
    const r = this.canvas.getBoundingClientRect();
    return r.width > 0 ? this.canvas.clientWidth / r.width : 1;
  },

  /** Image pixel coordinates of a pointer event. */
  eventToImage(e) {
    const r = this.canvas.getBoundingClientRect();
    const kx = r.width > 0 ? this.canvas.clientWidth / r.width : 1;
    const ky = r.height > 0 ? this.canvas.clientHeight / r.height : 1;
    const v = this.view();
    return [((e.clientX - r.left) * kx - v.ox) / v.s, ((e.clientY - r.top) * ky - v.oy) / v.s];
  },

  /** Client (page) coordinates of an image point: for tests and tooling. */
  imageToClient(x, y) {
    const r = this.canvas.getBoundingClientRect();
    const v = this.view();
    const kx = r.width / Math.max(1, this.canvas.clientWidth);
    const ky = r.height / Math.max(1, this.canvas.clientHeight);
    return { x: r.left + (v.ox + x * v.s) * kx, y: r.top + (v.oy + y * v.s) * ky };
  },

  /** Hit radius in image pixels. */
  hitRadius() {
    return (HIT_RADIUS * this.screenScale()) / this.view().s;
  },

  /** p moved inside [0, W] x [0, H]. */
  clampToImage(p) {
    const size = this.imageSize();
    return [clamp(p[0], 0, size[0]), clamp(p[1], 0, size[1])];
  },

  /** True when p lies on the image (with half a hit radius of slack). */
  insideImage(p) {
    const size = this.imageSize();
    const tol = this.hitRadius() / 2;
    return p[0] >= -tol && p[1] >= -tol && p[0] <= size[0] + tol && p[1] <= size[1] + tol;
  },

  /** Draw on the next animation frame (many requests, one draw). */
  redraw() {
    if (this.destroyed || this._frame) return;
    this._frame = requestAnimationFrame(() => {
      this._frame = 0;
      this.draw();
    });
  },

  /** Draw now (drag_draw.js). */
  draw() {
    drawEditor(this);
  },
};
