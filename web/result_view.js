// Double-click a node's image (Preview Image, Save Image, any node that shows images on the canvas) to see it large:
// an overlay with the image scaled to fit the window, whole-number steps and no smoothing for small images (the
// shapes demo's 32 px results), the node's title and the image size. Click, Escape or the close button closes it;
// the arrow keys step through a node's images. Classic (LiteGraph) rendering: a double-click on the node's images
// (a double-click on a value widget goes to the widget, on the title to the title editor, as before); "Nodes 2.0":
// a double-click on an image in a node.
import { app } from "../../scripts/app.js";

const OVERLAY_ID = "dragedit-result-view";

/** The images a node shows on the canvas (node.imgs: HTMLImageElements the frontend set from its outputs). */
function nodeImages(node) {
  return (node?.imgs || []).filter((im) => im && im.src);
}

/** The size an image of w x h gets in a window of W x H: fit 90 % of it; small images by a whole factor. */
export function fitSize(w, h, W, H) {
  const k = Math.min((0.9 * W) / w, (0.9 * H) / h);
  const s = k >= 1 ? Math.floor(k) : k;
  return [Math.max(1, Math.round(w * s)), Math.max(1, Math.round(h * s))];
}

/** Close the overlay if it is open. */
export function closeResultView() {
  const old = document.getElementById(OVERLAY_ID);
  if (old) old.remove();
}

/** Open the overlay on image `index` of `images` (HTMLImageElements or URLs); title names where they come from. */
export function openResultView(images, index = 0, title = "") {
  closeResultView();
  const srcs = images.map((im) => (typeof im === "string" ? im : im.src));
  let at = Math.min(Math.max(index, 0), srcs.length - 1);
  const box = document.createElement("div");
  box.id = OVERLAY_ID;
  box.tabIndex = -1;
  box.setAttribute("role", "dialog");
  box.setAttribute("aria-label", "Image, large");
  Object.assign(box.style, {
    position: "fixed", inset: "0", zIndex: "100000", background: "rgba(10, 10, 14, 0.88)", display: "flex",
    flexDirection: "column", alignItems: "center", justifyContent: "center", gap: "10px", cursor: "zoom-out",
  });
  const img = document.createElement("img");
  img.dataset.role = "result-view-image";
  Object.assign(img.style, { imageRendering: "pixelated", boxShadow: "0 4px 24px rgba(0,0,0,0.6)", background: "#222" });
  const caption = document.createElement("div");
  caption.dataset.role = "result-view-caption";
  Object.assign(caption.style, { color: "#ddd", font: "13px sans-serif", textAlign: "center" });
  const close = document.createElement("button");
  close.textContent = "\u00d7";
  close.title = "Close (Esc)";
  close.setAttribute("aria-label", "Close");
  Object.assign(close.style, {
    position: "absolute", top: "14px", right: "18px", font: "28px sans-serif", color: "#eee",
    background: "transparent", border: "none", cursor: "pointer",
  });
  box.append(img, caption, close);

  const show = () => {
    img.onload = () => {
      const [w, h] = fitSize(img.naturalWidth, img.naturalHeight, window.innerWidth, window.innerHeight - 60);
      img.style.width = `${w}px`;
      img.style.height = `${h}px`;
      const of = srcs.length > 1 ? ` \u00b7 ${at + 1} of ${srcs.length} (\u2190 \u2192)` : "";
      caption.textContent = `${title ? title + " \u00b7 " : ""}${img.naturalWidth} x ${img.naturalHeight} px, ` +
        `shown at ${Math.round((100 * w) / img.naturalWidth)} %${of} \u00b7 click or Esc to close`;
    };
    img.src = srcs[at];
  };
  const onKey = (e) => {
    if (!document.getElementById(OVERLAY_ID)) return document.removeEventListener("keydown", onKey, true);
    if (e.key === "Escape") closeResultView();
    else if (e.key === "ArrowRight" && srcs.length > 1) { at = (at + 1) % srcs.length; show(); }
    else if (e.key === "ArrowLeft" && srcs.length > 1) { at = (at + srcs.length - 1) % srcs.length; show(); }
    else return;
    e.preventDefault();
    e.stopPropagation();           // the canvas does not see the keys the overlay handles
  };
  document.addEventListener("keydown", onKey, true);
  box.addEventListener("click", (e) => { e.stopPropagation(); closeResultView(); });
  document.body.append(box);
  show();
  box.focus();
  return box;
}

/** The node under a mouse event on the canvas, with the point relative to the node (null when none). */
function nodeAt(canvas, e) {
  const ds = canvas.ds;
  const r = canvas.canvas.getBoundingClientRect();
  const x = (e.clientX - r.left) / ds.scale - ds.offset[0];
  const y = (e.clientY - r.top) / ds.scale - ds.offset[1];
  const node = canvas.graph?.getNodeOnPos(x, y, canvas.visible_nodes);
  return node ? { node, x, y, rel: [x - node.pos[0], y - node.pos[1]] } : null;
}

/** Double-click on the canvas: a node's body that shows images (not its title, not one of its value widgets). The
 * frontend draws a node's images with an internal widget ("$$canvas-image-preview") that takes the node's own
 * double-click, so the browser's dblclick event on the canvas element is where this is seen. */
function onCanvasDblClick(e) {
  const canvas = app.canvas;
  if (!canvas?.graph || e.button !== 0) return;
  const hit = nodeAt(canvas, e);
  if (!hit || hit.rel[1] < 0 || hit.node.flags?.collapsed) return;
  const images = nodeImages(hit.node);
  if (!images.length) return;
  const w = hit.node.getWidgetOnPos?.(hit.x, hit.y);
  if (w && !String(w.name || "").startsWith("$$")) return;      // a value widget: leave it to the widget
  const i = Number.isInteger(hit.node.imageIndex) ? hit.node.imageIndex : 0;
  openResultView(images, i, hit.node.title || "");
  e.preventDefault();
  e.stopPropagation();
}

/** Double-click on an image inside a "Nodes 2.0" (Vue) node: the node's images are <img> elements there (some
 * frontends lay a transparent element over them, so the image is found by the point, not by the event's target). */
function onNodeImageDblClick(e) {
  const nodeEl = e.target?.closest?.("[data-node-id]");
  if (!nodeEl || e.target.closest?.(`#${OVERLAY_ID}`)) return;
  const imgs = Array.from(nodeEl.querySelectorAll("img")).filter((im) => im.src && im.naturalWidth > 0);
  const inside = (im) => {
    const r = im.getBoundingClientRect();
    return e.clientX >= r.left && e.clientX <= r.right && e.clientY >= r.top && e.clientY <= r.bottom;
  };
  const img = imgs.find(inside);
  if (!img) return;
  const node = app.graph?.getNodeById?.(nodeEl.dataset.nodeId);
  openResultView(imgs, imgs.indexOf(img), node?.title || "");
  e.preventDefault();
  e.stopPropagation();
}

app.registerExtension({
  name: "DragEdit.ResultView",
  setup() {
    const el = app.canvas?.canvas ?? app.canvasEl;
    el?.addEventListener("dblclick", onCanvasDblClick);
    document.addEventListener("dblclick", onNodeImageDblClick, true);
  },
});
