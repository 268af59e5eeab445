"""Drag preview drawing: an image with the drag instructions on it (handle -> target arrows, region outlines, the
editable mask, tracked handles), for the "Drag Preview" node and the demo's before/after pictures.

Plain torch + PIL; knows nothing of node classes. Colours follow the editor: handles red, targets blue, arrows
yellow, tracked handles green; outside the editable mask the image is dimmed."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .drag_schema import DragInstructions

HANDLE = (235, 50, 50)
TARGET = (60, 130, 255)
ARROW = (255, 220, 0)
TRACKED = (40, 220, 90)
DIM = 0.4            # brightness kept outside the editable mask
MAX_FACTOR = 16      # most nearest-neighbour upscaling
MAX_OUTPUT_PIXELS = 1 << 24   # enlarged pixels of a whole batch (16.8 M: 192 MB as a float32 IMAGE)


def upscale_factor(size: Sequence[int], min_size: int, batch: int = 1) -> int:
    """Whole factor k >= 1 (at most MAX_FACTOR) so that k * max(W, H) >= min_size; 1 when min_size <= 0. The
    enlarged batch stays within MAX_OUTPUT_PIXELS (a batch of 64 images at 128 px asking for 4096 px would be
    3 GB): k is lowered until batch * W*k * H*k fits, never below 1 (the image's own size)."""
    W, H = max(int(size[0]), 1), max(int(size[1]), 1)
    longest = max(W, H)
    if min_size <= 0 or longest >= min_size:
        return 1
    k = min(MAX_FACTOR, int(math.ceil(min_size / longest)))
    fit = int(math.isqrt(MAX_OUTPUT_PIXELS // max(1, int(batch) * W * H)))
    return max(1, min(k, fit))


def dim_outside(image: torch.Tensor, mask: Optional[torch.Tensor], keep: float = DIM) -> torch.Tensor:
    """image [H, W, C] with pixels outside mask [H, W] (>0.5 = editable) scaled by `keep`; unchanged when no mask
    or an all-editable one."""
    if mask is None:
        return image
    m = (mask.to(image.device, torch.float32) > 0.5).float()
    if bool(m.all()):
        return image
    return image * (m + (1.0 - m) * keep)[..., None]


def _centroid(verts: Sequence[Sequence[float]]) -> tuple[float, float]:
    return sum(v[0] for v in verts) / len(verts), sum(v[1] for v in verts) / len(verts)


def _outline(region, which: str) -> list[tuple[float, float]]:
    """Closed outline (image px) of a region's handle or target shape."""
    if region.kind == "rect":
        x0, y0, x1, y1 = region.rect_box(which)
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return [tuple(v) for v in (region.handle if which == "handle" else region.target)]


class _Pen:
    """Draws in image pixel coordinates on a PIL image k times larger."""

    def __init__(self, pil_image, k: int):
        from PIL import ImageDraw
        self.d = ImageDraw.Draw(pil_image)
        self.k = k
        side = max(pil_image.size)
        self.w = max(2, side // 160)           # line width in output px
        self.r = max(3, int(self.w * 2.2))     # dot radius in output px

    def xy(self, p: Sequence[float]) -> tuple[float, float]:
        return float(p[0]) * self.k, float(p[1]) * self.k

    def dot(self, p, colour, filled: bool = True) -> None:
        x, y = self.xy(p)
        box = [x - self.r, y - self.r, x + self.r, y + self.r]
        if filled:
            self.d.ellipse(box, fill=colour, outline=(0, 0, 0), width=max(1, self.w // 2))
        else:
            self.d.ellipse(box, outline=colour, width=self.w)

    def arrow(self, a, b, colour, width: Optional[int] = None) -> None:
        (x0, y0), (x1, y1) = self.xy(a), self.xy(b)
        w = width or self.w
        vx, vy = x1 - x0, y1 - y0
        n = math.hypot(vx, vy)
        if n < 1e-6:
            return
        ux, uy = vx / n, vy / n
        head = min(4.0 * w + 4, 0.6 * n)
        bx, by = x1 - head * ux, y1 - head * uy
        self.d.line([(x0, y0), (bx, by)], fill=colour, width=w)
        self.d.polygon([(x1, y1), (bx + 0.5 * head * uy, by - 0.5 * head * ux),
                        (bx - 0.5 * head * uy, by + 0.5 * head * ux)], fill=colour)

    def polygon(self, verts, colour) -> None:
        pts = [self.xy(v) for v in verts]
        self.d.line(pts + [pts[0]], fill=colour, width=self.w, joint="curve")


def draw_preview(image: torch.Tensor, drag: DragInstructions, mask: Optional[torch.Tensor] = None,
                 tracked: Optional[DragInstructions] = None, min_size: int = 512) -> torch.Tensor:
    """One image [H, W, C] (0..1) with the instructions drawn on it, upscaled (nearest) by a whole factor until its
    longer side reaches min_size; returns [H*k, W*k, 3] float in 0..1 (see render for what is drawn)."""
    import numpy as np
    k = upscale_factor((int(image.shape[1]), int(image.shape[0])), min_size)
    pil = render(image, drag, mask=mask, tracked=tracked, k=k)
    return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).to(torch.float32) / 255.0


def render(image: torch.Tensor, drag: DragInstructions, mask: Optional[torch.Tensor] = None,
           tracked: Optional[DragInstructions] = None, k: int = 1):
    """One image [H, W, C] (0..1) enlarged k times (nearest) with the instructions drawn on it, as an RGB PIL
    image [W*k, H*k] (uint8: one image's pixels at a time, for callers that stream a batch).

    Draws the editable mask (outside dimmed; `mask`, else the one stored in `drag`), region pairs (handle outline
    red, target outline blue, an arrow between their centres, or the region's own point arrows), point pairs
    (red handle -> blue target, yellow arrow) and, when `tracked` is given (DragDiffusion's tracked DRAG), where
    each handle ended up (green, joined to its start). Coordinates are image pixels of `drag.image_size`, which
    must equal the image's size (see DragInstructions.fit_to)."""
    import numpy as np
    from PIL import Image

    H, W = int(image.shape[0]), int(image.shape[1])
    img = image[..., :3].detach().to("cpu", torch.float32).clamp(0, 1)
    if img.shape[-1] == 1:
        img = img.expand(H, W, 3)
    if mask is None:
        mask = drag.mask_tensor()
    img = dim_outside(img, mask)
    arr = (img * 255.0).round().to(torch.uint8).numpy()
    pil = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if k > 1:
        pil = pil.resize((W * k, H * k), Image.NEAREST)
    pen = _Pen(pil, k)

    for r in drag.regions:
        pen.polygon(_outline(r, "handle"), HANDLE)
        if r.target is not None:
            pen.polygon(_outline(r, "target"), TARGET)
            pen.arrow(_centroid(_outline(r, "handle")), _centroid(_outline(r, "target")), ARROW)
        for h, t in r.points:
            pen.arrow(h, t, ARROW)
            pen.dot(h, HANDLE)
            pen.dot(t, TARGET)
    moved = list(zip(drag.points, tracked.points)) if tracked is not None else []
    for h, t in drag.points:
        pen.arrow(h, t, ARROW)
    for (h0, _t0), (h1, _t1) in moved:          # the tracked path, thinner, over the arrow it usually follows
        pen.arrow(h0, h1, TRACKED, width=max(1, pen.w // 2))
    for h, t in drag.points:
        pen.dot(h, HANDLE)
        pen.dot(t, TARGET)
    for _p0, (h1, _t1) in moved:
        pen.dot(h1, TRACKED, filled=False)
    return pil
