"""ShapesBench scoring (pure torch; no ComfyUI server here): the object classifier, the metrics of an edited image
against its case's ground truth (centroid error, PSNR / MAE outside the edit region, ghosting, classifier success)
and the cheap baselines ("no edit", "copy-paste"). The case set itself is bench/shapes_cases.py."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from bench.shapes_cases import (APPEARANCE, EDIT_DILATE, FG_THRESH, GEOMETRIC, GHOST_FLOOR, MIN_OBJECT_PX,
                                POINT_PATCH_RADIUS, PSNR_CAP, SIZE, Case, R, Scene, Shape, dilate, erode, gt_image,
                                rasterize_polygon, rect_mask)


# ======================================================================================================== classifier
def nearest_colour(rgb: Sequence[float]) -> str:
    """The palette colour nearest (Euclidean RGB) to a mean colour."""
    v = torch.tensor(list(rgb), dtype=torch.float32)
    return min(R.COLOURS, key=lambda c: float((torch.tensor(R.PALETTE[c]) - v).norm()))


def classify_object(image: torch.Tensor, region: torch.Tensor, background: Optional[torch.Tensor] = None
                    ) -> Optional[tuple[str, str]]:
    """(colour, kind) of the object inside `region` (bool [H, W]) of a scene image [3, H, W], or None when fewer
    than MIN_OBJECT_PX pixels there differ from the background by more than FG_THRESH.
    Colour: mean of the object's inner pixels (foreground eroded by 1 px) -> nearest palette colour.
    Kind: soft coverage α = |pixel − background| / (its median over the inner pixels), clipped to [0, 1] (robust to
    shading), compared by IoU with the ideal coverage of each kind at α's centroid and area."""
    img = image.float()
    bg = R.estimate_background(img) if background is None else background
    dist = (img - bg).norm(dim=0)
    fg = (dist > FG_THRESH) & region.bool()
    if float(fg.sum()) < MIN_OBJECT_PX:
        return None
    inner = erode(fg, 1)
    use = inner if float(inner.sum()) >= 3 else fg
    colour = nearest_colour(img[:, use].mean(1).tolist())
    core = float(dist[use].median())
    a = (dist / max(core, 1e-6)).clamp(0, 1) * (dilate(fg, 1) & dilate(region.bool(), 1)).float()
    tot = float(a.sum())
    h, w = a.shape
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    cx, cy = float((a.sum(0) * xs).sum() / tot), float((a.sum(1) * ys).sum() / tot)
    r = math.sqrt(tot / math.pi)
    k = SIZE / w
    best, best_iou = None, -1.0
    for kind in R.KINDS:
        cov = R.coverage(Shape(kind, colour, cx * k, cy * k, r * k), size=w)
        iou = float(torch.minimum(a, cov).sum() / torch.maximum(a, cov).sum().clamp_min(1e-6))
        if iou > best_iou:
            best, best_iou = kind, iou
    return colour, best


def visible_fraction(scene: Scene, index: int) -> float:
    """Share of shape `index`'s coverage not hidden by shapes drawn after it."""
    cov = R.coverage(scene.shapes[index], SIZE)
    vis = cov.clone()
    for s in scene.shapes[index + 1:]:
        vis = vis * (1 - R.coverage(s, SIZE))
    return float(vis.sum() / cov.sum().clamp_min(1e-6))


def object_region(shape: Shape, others: Sequence[Shape] = (), grow: int = 2) -> torch.Tensor:
    """Where to look for a shape: its covered pixels grown by `grow` px, minus the (1 px grown) pixels of the
    other shapes it does not cover itself."""
    own = R.coverage(shape, SIZE) > 1e-3
    reg = dilate(own, grow)
    for o in others:
        reg &= ~(dilate(R.coverage(o, SIZE) > 1e-3, 1) & ~own)
    return reg


# ======================================================================================================== metrics
def edit_region(case: Case) -> torch.Tensor:
    """Bool [H, W]: where the edit may change pixels: the object's old and new pixels, grown by EDIT_DILATE."""
    m = R.coverage(case.shape, SIZE) > 1e-3
    if case.new_shape is not None:
        m |= R.coverage(case.new_shape, SIZE) > 1e-3
    return dilate(m, EDIT_DILATE)


def psnr(a: torch.Tensor, b: torch.Tensor, where: Optional[torch.Tensor] = None) -> float:
    """PSNR (dB, peak 1) of a vs b over the pixels `where` (all when None), capped at PSNR_CAP."""
    d = (a.float() - b.float()) ** 2
    mse = float(d[:, where].mean()) if where is not None else float(d.mean())
    if mse <= 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(1.0 / mse))


def mae(a: torch.Tensor, b: torch.Tensor, where: Optional[torch.Tensor] = None) -> float:
    """Mean absolute error over the pixels `where` (all when None), in [0, 1] units."""
    d = (a.float() - b.float()).abs()
    return float(d[:, where].mean()) if where is not None else float(d.mean())


def residue(image: torch.Tensor, colour: str, where: torch.Tensor) -> Optional[float]:
    """Mean coverage of `colour` over the pixels `where` (coverage under GHOST_FLOOR counts as 0); None when
    `where` has fewer than 2 pixels."""
    if float(where.sum()) < 2:
        return None
    a = R.colour_alpha(image.float(), colour)
    a = torch.where(a < GHOST_FLOOR, torch.zeros_like(a), a)
    return float(a[where].mean())


def ghost_area(case: Case) -> torch.Tensor:
    """Bool [H, W] where the object's old colour must be gone: its old core (coverage >= 0.5) outside its new
    pixels (grown 1 px) for geometric kinds; the whole old core for recolour and remove."""
    old = R.coverage(case.shape, SIZE) >= 0.5
    if case.kind in GEOMETRIC:
        old &= ~dilate(R.coverage(case.new_shape, SIZE) > 1e-3, 1)
    for o in case.others("target"):
        old &= ~dilate(R.coverage(o, SIZE) > 1e-3, 1)
    return old


def case_metrics(case: Case, out: torch.Tensor, gt: Optional[torch.Tensor] = None) -> dict:
    """Metrics of one edited image [3, H, W] against the case's ground truth: psnr_out / mae_out (outside the edit
    region), centroid_err (px, geometric kinds; None = object lost), area_err (|area/area_gt − 1|), ghost (old
    colour left where it must be gone), kept (the object's colour and kind found at its new place), success
    (appearance and remove kinds: the edit happened and the other shapes are intact)."""
    gt = gt_image(case) if gt is None else gt
    out = out.float()
    outside = ~edit_region(case)
    m: dict = {"psnr_out": psnr(out, gt, outside), "mae_out": mae(out, gt, outside), "psnr_all": psnr(out, gt)}
    s = case.shape
    m["ghost"] = residue(out, s.colour, ghost_area(case))
    # the untouched shapes (those at least 80 % visible in the ground truth) keep their colour and kind
    others = [(i, o) for i, o in enumerate(case.target.shapes) if o is not case.new_shape]
    others_ok = all(classify_object(out, object_region(o, [case.new_shape] if case.new_shape else [])) ==
                    (o.colour, o.kind) for i, o in others if visible_fraction(case.target, i) >= 0.8)
    m["others_ok"] = others_ok
    if case.kind in GEOMETRIC:
        ns = case.new_shape
        c_gt = R.centroid(gt, ns.colour)
        c_out = R.centroid(out, ns.colour)
        m["centroid_gt"] = c_gt
        m["centroid_out"] = c_out
        m["centroid_err"] = None if (c_out is None or c_gt is None) else math.hypot(c_out[0] - c_gt[0],
                                                                                   c_out[1] - c_gt[1])
        a_gt, a_out = R.area(gt, ns.colour), R.area(out, ns.colour)
        m["area_err"] = abs(a_out / a_gt - 1.0) if a_gt > 0 else None
        m["kept"] = classify_object(out, object_region(ns, case.others("target"))) == (ns.colour, ns.kind)
    elif case.kind in APPEARANCE:
        ns = case.new_shape
        found = classify_object(out, object_region(ns, case.others("target")))
        m["found"] = list(found) if found else None
        m["success"] = found == (ns.colour, ns.kind) and others_ok
    elif case.kind == "concept_remove":
        found = classify_object(out, object_region(s, case.others("target")))
        m["found"] = list(found) if found else None
        m["success"] = found is None and others_ok
    return m


# ======================================================================================================== baselines
def _sample(img: torch.Tensor, src_xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of img [3, H, W] at pixel coordinates src_xy [N, 2] (centres at +0.5), border clamped."""
    _, h, w = img.shape
    g = torch.stack([2 * src_xy[:, 0] / w - 1, 2 * src_xy[:, 1] / h - 1], -1).float()[None, None]
    return F.grid_sample(img[None].float(), g, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0]


def _pixel_centres() -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    return torch.stack([xs, ys], -1).double()  # [H, W, 2]


def copy_paste(case: Case, img: torch.Tensor) -> Optional[torch.Tensor]:
    """The cheap baseline: move pixels of the input by the case's own instructions (point discs of radius
    POINT_PATCH_RADIUS, or the region box -> target box, bilinear for sub-pixel and scaled targets); the vacated
    handle area is filled with the robust background plane. Recolour: colour transfer from the reference box.
    None for the word-only kinds."""
    img = img.float()
    bg = R.estimate_background(img)
    out = img.clone()
    p = _pixel_centres()
    if case.kind == "point_drag":
        src_mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        dst = []
        for (hx, hy), (tx, ty) in case.points:
            src_mask |= ((p[..., 0] - hx) ** 2 + (p[..., 1] - hy) ** 2) <= POINT_PATCH_RADIUS ** 2
            dst.append((((p[..., 0] - tx) ** 2 + (p[..., 1] - ty) ** 2) <= POINT_PATCH_RADIUS ** 2, tx - hx, ty - hy))
        out[:, src_mask] = bg[:, src_mask]
        for m, dx, dy in dst:
            q = p[m] - torch.tensor([dx, dy], dtype=torch.float64)
            out[:, m] = _sample(img, q)
        return out
    if case.kind in ("region_drag", "move", "resize"):
        kind, hv, tv = case.region
        if kind == "polygon":
            src_mask = rasterize_polygon(list(hv), SIZE, SIZE)
            dst_mask = rasterize_polygon(list(tv), SIZE, SIZE)
            d = torch.tensor([tv[0][0] - hv[0][0], tv[0][1] - hv[0][1]], dtype=torch.float64)
            q = p[dst_mask] - d
        else:
            (hx0, hy0), (hx1, hy1) = hv
            (tx0, ty0), (tx1, ty1) = tv
            src_mask = rect_mask(hx0, hy0, hx1, hy1, SIZE, SIZE)
            dst_mask = rect_mask(tx0, ty0, tx1, ty1, SIZE, SIZE)
            t = p[dst_mask]
            sx, sy = (hx1 - hx0) / (tx1 - tx0), (hy1 - hy0) / (ty1 - ty0)
            q = torch.stack([hx0 + (t[:, 0] - tx0) * sx, hy0 + (t[:, 1] - ty0) * sy], -1)
        out[:, src_mask] = bg[:, src_mask]
        out[:, dst_mask] = _sample(img, q)
        return out
    if case.kind == "recolour":
        m, mr = case.handle_mask(), case.ref_mask()

        def obj_colour(region):
            fg = region & ((img - bg).norm(dim=0) > FG_THRESH)
            return img[:, fg].median(dim=1).values if fg.any() else None

        c_obj, c_ref = obj_colour(m), obj_colour(mr)
        if c_obj is None or c_ref is None:
            return out
        dcol = (c_obj[:, None, None] - bg)
        alpha = ((img - bg) * dcol).sum(0) / (dcol * dcol).sum(0).clamp_min(1e-6)
        alpha = alpha.clamp(0, 1)
        # inside the mask: background + α·(reference colour − background), α = coverage of the old colour
        return torch.where(m[None], bg + alpha[None] * (c_ref[:, None, None] - bg), img)
    return None


def no_edit(case: Case, img: torch.Tensor) -> torch.Tensor:
    """The 'no edit' baseline: the input unchanged."""
    return img.float().clone()
