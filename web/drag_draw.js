// Rendering of the "Drag Instructions" editor canvas: image, mask overlay, region pairs, point-pair arrows,
// the unfinished pair/region and the brush cursor. Reads the editor's state; draws text only with fillText.
import { centroid, shapeOutline } from "./drag_state.js";

export const COLORS = {
  handle: "#ff4d4d",
  target: "#3d9bff",
  arrow: "#ffd24d",
  regionHandle: "rgba(255, 77, 77, 0.22)",
  regionTarget: "rgba(61, 155, 255, 0.22)",
  mask: [80, 255, 120, 90],
  pending: "#ffffff",
};

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

/** Redraw the editor `ed` (a DragEditor) on its canvas at a resolution that follows the on-screen size. */
export function drawEditor(ed) {
  const c = ed.canvas;
  // Bitmap resolution follows the on-screen size (graph zoom, device pixels) so zooming in stays sharp.
  const k = clamp((window.devicePixelRatio || 1) / ed.screenScale(), 1, 3);
  const w = Math.max(1, Math.round(c.clientWidth * k));
  const h = Math.max(1, Math.round(c.clientHeight * k));
  if (c.width !== w || c.height !== h) {
    c.width = w;
    c.height = h;
  }
  ed.pixelRatio = w / Math.max(1, c.clientWidth);
  const ctx = c.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, c.width, c.height);
  ctx.setTransform(ed.pixelRatio, 0, 0, ed.pixelRatio, 0, 0);
  const size = ed.imageSize();
  const v = ed.view();
  const X = (p) => v.ox + p[0] * v.s;
  const Y = (p) => v.oy + p[1] * v.s;
  if (!size) {
    ctx.fillStyle = "#888";
    ctx.font = "12px sans-serif";
    ctx.textAlign = "center";
    ctx.fillText("No image: connect a Load Image node (or run once).", c.clientWidth / 2, c.clientHeight / 2);
    return;
  }
  // Magnified small images show crisp pixels (points are placed on image pixels).
  ctx.imageSmoothingEnabled = v.s < 2;
  if (ed.image) ctx.drawImage(ed.image, v.ox, v.oy, size[0] * v.s, size[1] * v.s);
  else {
    ctx.fillStyle = "#2a2a2a";
    ctx.fillRect(v.ox, v.oy, size[0] * v.s, size[1] * v.s);
  }
  if (ed.maskCanvas) {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(ed.maskCanvas, v.ox, v.oy, size[0] * v.s, size[1] * v.s);
    ctx.imageSmoothingEnabled = true;
  }
  const dot = (p, color, r = 5, selected = false) => {
    ctx.beginPath();
    ctx.arc(X(p), Y(p), selected ? r + 2 : r, 0, Math.PI * 2);
    ctx.fillStyle = color;
    ctx.fill();
    ctx.lineWidth = selected ? 2.5 : 1.5;
    ctx.strokeStyle = selected ? "#fff" : "#000";
    ctx.stroke();
  };
  const arrow = (a, b, color) => {
    const ax = X(a), ay = Y(a), bx = X(b), by = Y(b);
    const ang = Math.atan2(by - ay, bx - ax);
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(ax, ay);
    ctx.lineTo(bx - Math.cos(ang) * 6, by - Math.sin(ang) * 6);
    ctx.stroke();
    ctx.beginPath();
    ctx.moveTo(bx, by);
    ctx.lineTo(bx - Math.cos(ang - 0.45) * 12, by - Math.sin(ang - 0.45) * 12);
    ctx.lineTo(bx - Math.cos(ang + 0.45) * 12, by - Math.sin(ang + 0.45) * 12);
    ctx.closePath();
    ctx.fill();
  };
  const shape = (kind, verts, fill, stroke, dashed = false) => {
    const o = shapeOutline(kind, verts);
    ctx.beginPath();
    o.forEach((p, i) => (i ? ctx.lineTo(X(p), Y(p)) : ctx.moveTo(X(p), Y(p))));
    ctx.closePath();
    if (fill) {
      ctx.fillStyle = fill;
      ctx.fill();
    }
    ctx.setLineDash(dashed ? [5, 4] : []);
    ctx.lineWidth = 2;
    ctx.strokeStyle = stroke;
    ctx.stroke();
    ctx.setLineDash([]);
  };
  const label = (p, text) => {
    // above-right of the point; below it when the top edge would clip the text, left of it at the right edge
    ctx.font = "bold 11px sans-serif";
    ctx.textAlign = "left";
    const w = ctx.measureText(text).width;
    let x = X(p) + 7;
    let y = Y(p) - 7;
    if (y - 11 < 2) y = Y(p) + 18;
    if (x + w > c.clientWidth - 2) x = X(p) - 7 - w;
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#000";
    ctx.strokeText(text, x, y);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x, y);
  };
  const isSel = (info) => ed.selected && Object.keys(info).every((k) => ed.selected[k] === info[k]);

  ed.state.regions.forEach((rg, i) => {
    shape(rg.kind, rg.handle, COLORS.regionHandle, COLORS.handle);
    if (rg.target) {
      shape(rg.kind, rg.target, COLORS.regionTarget, COLORS.target);
      arrow(centroid(shapeOutline(rg.kind, rg.handle)), centroid(shapeOutline(rg.kind, rg.target)), COLORS.arrow);
      rg.target.forEach((p, k) => dot(p, COLORS.target, 4, isSel({ kind: "region", index: i, which: "target", vertex: k })));
    }
    rg.handle.forEach((p, k) => dot(p, COLORS.handle, 4, isSel({ kind: "region", index: i, which: "handle", vertex: k })));
    (rg.points || []).forEach((pp) => {
      arrow(pp.handle, pp.target, COLORS.arrow);
      dot(pp.handle, COLORS.handle, 4);
      dot(pp.target, COLORS.target, 4);
    });
    label(rg.handle[0], `R${i + 1}`);
  });
  ed.state.points.forEach((pp, i) => {
    arrow(pp.handle, pp.target, COLORS.arrow);
    dot(pp.handle, COLORS.handle, 5, isSel({ kind: "point", index: i, end: "handle" }));
    dot(pp.target, COLORS.target, 5, isSel({ kind: "point", index: i, end: "target" }));
    label(pp.handle, String(i + 1));
  });

  const p = ed.pending;
  const hv = ed.hover;
  if (p?.type === "point") {
    if (hv) {
      ctx.setLineDash([4, 4]);
      ctx.strokeStyle = COLORS.pending;
      ctx.beginPath();
      ctx.moveTo(X(p.handle), Y(p.handle));
      ctx.lineTo(X(hv), Y(hv));
      ctx.stroke();
      ctx.setLineDash([]);
    }
    dot(p.handle, COLORS.handle, 5, true);
  } else if (p?.type === "rect-target") {
    shape("rect", p.handle, COLORS.regionHandle, COLORS.handle, true);
  } else if (p?.type === "poly-handle") {
    ctx.beginPath();
    p.verts.forEach((q, i) => (i ? ctx.lineTo(X(q), Y(q)) : ctx.moveTo(X(q), Y(q))));
    if (hv) ctx.lineTo(X(hv), Y(hv));
    ctx.setLineDash([5, 4]);
    ctx.strokeStyle = COLORS.handle;
    ctx.lineWidth = 2;
    ctx.stroke();
    ctx.setLineDash([]);
    p.verts.forEach((q, i) => dot(q, COLORS.handle, i === 0 ? 6 : 4));
  } else if (p?.type === "poly-target") {
    shape("polygon", p.handle, COLORS.regionHandle, COLORS.handle, true);
    if (hv) {
      const c0 = centroid(p.handle);
      shape("polygon", p.handle.map((q) => [q[0] + hv[0] - c0[0], q[1] + hv[1] - c0[1]]), null, COLORS.target, true);
    }
  }
  if (ed.drag?.type === "rect") {
    shape("rect", [ed.drag.a, ed.drag.b], null, ed.pending ? COLORS.target : COLORS.handle, true);
  }
  if (hv && (ed.tool === "brush" || ed.tool === "eraser")) {
    ctx.beginPath();
    ctx.arc(X(hv), Y(hv), (ed.brush / 2) * v.s, 0, Math.PI * 2);
    ctx.strokeStyle = ed.tool === "brush" ? "#8f8" : "#f88";
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }
}
