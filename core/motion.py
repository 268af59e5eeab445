"""DragDiffusion motion supervision and point tracking (Shi et al., arXiv 2306.14435), in plain torch.

Conventions:
- A feature map F is a tensor [1, C, h, w] on the *supervision grid* (DragDiffusion: the decoder features of
  `up_blocks[2]` bilinearly resized to half the image resolution, i.e. 4 cells per latent / feature cell on SD1.5;
  core/dragdiffusion.py keeps that ratio on every VAE factor). r_m, r_p and the 2.0 stop threshold are in
  cells of this grid.
- Points are tensors [N, 2] of **(x, y) in grid cells**: x = column, y = row, cell (x, y) is F[0, :, y, x]
  (cell centres at integer coordinates). Handles are normally whole cells (the image -> grid conversion rounds,
  tracking returns whole cells); windows are taken around int(p) = floor(p), as in the reference.
- Fractional samples use `grid_sample(align_corners=True, padding_mode="border")`, which matches the
  "centres at integers" convention; a shifted patch that pokes past the map edge reads the edge cell.
- Parity (tests/test_dragdiffusion_parity.py, a port of the official drag_utils.py on a diffusers twin): loss,
  gradient of z_t, tracked handles and the Adam-updated latent agree step by step to float tolerance. Chosen
  deviation: at the map edge the official `interpolate_feature_patch` slices past the border (wraps with negative
  indices or fails to broadcast); here the edge cell is read. Interior patches are identical.

The UNet is not known here: `optimize_latent` takes `features_fn(z) -> (F, x_prev or None)` from the caller
(the host module), so the forward can stop after the feature block when no mask is drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = [
    "FeaturesFn", "IterationCallback", "DragResult",
    "as_points", "check_points",
    "track_points", "motion_supervision_loss", "mask_loss", "resize_mask", "all_reached",
    "optimize_latent",
]

PointsLike = Union[torch.Tensor, Sequence[Sequence[float]]]
# features_fn(z_t) -> (F [1, C, h, w], x_{t-1} [1, c, H, W] or None); must be differentiable w.r.t. z_t.
FeaturesFn = Callable[[torch.Tensor], "tuple[torch.Tensor, Optional[torch.Tensor]]"]
# on_iteration(k, handles [N, 2], loss) after Adam step k (0-based); may raise to cancel.
IterationCallback = Callable[[int, torch.Tensor, float], None]


def as_points(points: PointsLike, name: str = "points") -> torch.Tensor:
    """Points as a float32 CPU tensor [N, 2] of (x, y); ValueError on a wrong shape or non-finite values."""
    p = torch.as_tensor(points, dtype=torch.float32).detach().cpu()
    if p.ndim == 1 and p.numel() == 2:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 1:
        raise ValueError(f"{name}: expected N >= 1 points as [N, 2] (x, y), got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all():
        raise ValueError(f"{name}: points must be finite numbers, got {p.tolist()}")
    return p.clone()


def check_points(points: torch.Tensor, grid_hw: tuple[int, int], name: str = "points") -> None:
    """ValueError naming the first point (x, y) that lies outside the grid [0, w-1] x [0, h-1]."""
    h, w = grid_hw
    for i, (x, y) in enumerate(points.tolist()):
        if not (0.0 <= x <= w - 1 and 0.0 <= y <= h - 1):
            raise ValueError(f"{name}[{i}] = ({x:g}, {y:g}) lies outside the {w}x{h} feature grid "
                             f"(x in [0, {w - 1}], y in [0, {h - 1}])")


def _check_map(feat: torch.Tensor, name: str) -> None:
    """ValueError unless feat is one feature map [1, C, h, w]."""
    if feat.ndim != 4 or feat.shape[0] != 1:
        raise ValueError(f"{name}: expected a feature map [1, C, h, w], got shape {tuple(feat.shape)}")


def _window(c: float, r: int, n: int) -> tuple[int, int]:
    """Inclusive-exclusive index range [int(c) - r, int(c) + r + 1) clipped to [0, n)."""
    i = int(math.floor(c))
    return max(0, i - r), min(n, i + r + 1)


@torch.no_grad()
def track_points(f0: torch.Tensor, f1: torch.Tensor, handles_init: PointsLike, handles_cur: PointsLike,
                 r_p: int = 3) -> torch.Tensor:
    """Point tracking: p_i <- argmin_{q in window(p_i, r_p)} ||F0[p_i^0] - F1[q]||_1 (L1 over channels).

    The reference feature is the *initial* handle's cell in F0; the (2r_p+1)^2 window around the current
    handle is clipped to the map; ties go to the first cell in row-major order. Returns whole cells [N, 2].
    """
    _check_map(f0, "F0")
    _check_map(f1, "F1")
    if f0.shape[1:] != f1.shape[1:]:
        raise ValueError(f"F0 {tuple(f0.shape)} and F1 {tuple(f1.shape)} must have the same shape")
    p0, pc = as_points(handles_init, "handles_init"), as_points(handles_cur, "handles_cur")
    if p0.shape != pc.shape:
        raise ValueError(f"handles_init has {p0.shape[0]} points but handles_cur has {pc.shape[0]}")
    h, w = f1.shape[-2:]
    check_points(p0, (h, w), "handles_init")
    check_points(pc, (h, w), "handles_cur")
    picks, windows = [], []
    for (x0, y0), (x, y) in zip(p0.tolist(), pc.tolist()):
        ref = f0[0, :, int(math.floor(y0)), int(math.floor(x0))].float()          # [C]
        ya, yb = _window(y, r_p, h)
        xa, xb = _window(x, r_p, w)
        dist = (f1[0, :, ya:yb, xa:xb].float() - ref[:, None, None]).abs().sum(0)  # [wy, wx]
        picks.append(dist.argmin())
        windows.append((xa, ya, xb - xa))
    out = torch.empty_like(pc)
    for i, (flat, (xa, ya, width)) in enumerate(zip(torch.stack(picks).tolist(), windows)):  # one sync
        row, col = divmod(flat, width)
        out[i, 0], out[i, 1] = xa + col, ya + row
    return out


def motion_supervision_loss(f1: torch.Tensor, handles: PointsLike, targets: PointsLike, r_m: int = 1,
                            threshold: float = 2.0) -> torch.Tensor:
    """L_ms = sum_i (2r_m+1)^2 * mean_{q in Omega_i, c} |sg(F1[q]) - F1[q + d_i]|, d_i = unit(g_i - p_i).

    Omega_i = (2r_m+1)^2 square around int(p_i), clipped to the map; handles with ||g_i - p_i|| < threshold
    are skipped; F1[q + d_i] is bilinear (fractional shift), sg = detach on the unshifted patch. Returns an
    fp32 scalar (a constant 0 without grad when every handle is skipped).
    """
    _check_map(f1, "F1")
    p, g = as_points(handles, "handles"), as_points(targets, "targets")
    if p.shape != g.shape:
        raise ValueError(f"handles has {p.shape[0]} points but targets has {g.shape[0]}")
    h, w = f1.shape[-2:]
    check_points(p, (h, w), "handles")
    scale = float((2 * r_m + 1) ** 2)
    loss = None
    for (px, py), (gx, gy) in zip(p.tolist(), g.tolist()):
        dist = math.hypot(gx - px, gy - py)
        if dist < threshold or dist == 0.0:
            continue
        dx, dy = (gx - px) / dist, (gy - py) / dist
        ya, yb = _window(py, r_m, h)
        xa, xb = _window(px, r_m, w)
        # Crop one cell beyond Omega (|d| <= 1) so the bilinear sample runs in fp32 on a small tensor;
        # where the crop meets the map edge, border padding = the map's own edge.
        cya, cyb, cxa, cxb = max(0, ya - 1), min(h, yb + 1), max(0, xa - 1), min(w, xb + 1)
        crop = f1[:, :, cya:cyb, cxa:cxb].float()
        ys = torch.arange(ya, yb, dtype=torch.float32, device=f1.device) + dy - cya
        xs = torch.arange(xa, xb, dtype=torch.float32, device=f1.device) + dx - cxa
        gy_, gx_ = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([2 * gx_ / max(cxb - cxa - 1, 1) - 1, 2 * gy_ / max(cyb - cya - 1, 1) - 1], dim=-1)
        shifted = F.grid_sample(crop, grid[None], mode="bilinear", padding_mode="border", align_corners=True)
        still = f1[:, :, ya:yb, xa:xb].detach().float()
        term = scale * (still - shifted).abs().mean()
        loss = term if loss is None else loss + term
    return loss if loss is not None else torch.zeros((), device=f1.device)


def resize_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """User mask (1 = editable; [H, W], [B, H, W] or [B, 1, H, W]) binarised (> 0) and nearest-resized to [1, 1, h, w]."""
    m = torch.as_tensor(mask).detach()
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[0] != 1 or m.shape[1] != 1:
        raise ValueError(f"mask: expected one mask [H, W], [1, H, W] or [1, 1, H, W], got shape {tuple(m.shape)}")
    m = (m > 0).float()
    return F.interpolate(m, size=tuple(hw), mode="nearest") if tuple(m.shape[-2:]) != tuple(hw) else m


def mask_loss(x_prev: torch.Tensor, x_prev_ref: torch.Tensor, mask: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """L_mask = lam * sum |(x_{t-1} - x_{t-1}^0) * (1 - M)| (L1 sum), M = editable mask nearest-resized to x_{t-1}."""
    if x_prev.shape != x_prev_ref.shape:
        raise ValueError(f"x_prev {tuple(x_prev.shape)} and x_prev_ref {tuple(x_prev_ref.shape)} differ in shape")
    keep = 1.0 - resize_mask(mask, tuple(x_prev.shape[-2:])).to(x_prev.device)
    return lam * ((x_prev.float() - x_prev_ref.float()) * keep).abs().sum()


def all_reached(handles: PointsLike, targets: PointsLike, threshold: float = 2.0) -> bool:
    """True when every handle is strictly closer than `threshold` grid cells (L2) to its target."""
    p, g = as_points(handles, "handles"), as_points(targets, "targets")
    if p.shape != g.shape:
        raise ValueError(f"handles has {p.shape[0]} points but targets has {g.shape[0]}")
    return bool(((p - g).norm(dim=1) < threshold).all())


@dataclass
class DragResult:
    """Outcome of `optimize_latent`: the optimised z_t and the tracked handles."""
    latent: torch.Tensor                 # optimised z_t (detached, same dtype/device as the input)
    handles: torch.Tensor                # last tracked handles [N, 2] (x, y) grid cells
    history: list[torch.Tensor] = field(default_factory=list)  # handles as used at each iteration (+ final)
    losses: list[float] = field(default_factory=list)          # total loss of each Adam step
    iterations: int = 0                  # Adam steps taken
    reached: bool = False                # every handle within the threshold of its target
    skipped: int = 0                     # steps skipped for a non-finite fp16 gradient (grad_scale backed off)


def _features(features_fn: FeaturesFn, z: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Call features_fn(z_t) and check it returned (F [1, C, h, w], x_{t-1} or None)."""
    out = features_fn(z)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("features_fn must return a pair (F, x_prev or None)")
    f, x_prev = out
    _check_map(f, "features_fn(z)[0]")
    return f, x_prev


def optimize_latent(z: torch.Tensor, features_fn: FeaturesFn, handles: PointsLike, targets: PointsLike, *,
                    iterations: int = 80, lr: float = 0.01, r_m: int = 1, r_p: int = 3, lam: float = 0.1,
                    mask: Optional[torch.Tensor] = None, threshold: float = 2.0,
                    f0: Optional[torch.Tensor] = None, x_prev_ref: Optional[torch.Tensor] = None,
                    track_final: bool = True, on_iteration: Optional[IterationCallback] = None,
                    grad_scale: Optional[float] = None) -> DragResult:
    """DragDiffusion latent optimisation of z_t: Adam on z_t only, motion supervision + point tracking (+ mask term).

    Per iteration k: F1, x_{t-1} = features_fn(z_t^k); track handles against F0 (skipped at k = 0); stop when all
    handles are within `threshold`; L = L_ms + (L_mask if a mask is given); Adam step. F0 and x_{t-1}^0 are
    computed once from the input z (no grad) unless passed in. `track_final` re-tracks once (no grad) after the
    last step so `handles` reflects the final latent. `mask` = editable region (1 = may change); without a mask
    features_fn may return x_prev None (truncated forward). The input z is never modified; a half-precision
    z is optimised in fp32 (features_fn then receives fp32) and returned in its own dtype.
    `grad_scale`: loss scale for fp16 UNets (the reference's GradScaler): the loss is multiplied before backward
    and z_t's gradient divided after; a step whose gradient overflows is skipped and the scale halved. None =
    2^16 when F0 is fp16, else 1.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if r_m < 0 or r_p < 0:
        raise ValueError(f"r_m and r_p must be >= 0, got r_m={r_m}, r_p={r_p}")
    if z.ndim != 4 or z.shape[0] != 1:
        raise ValueError(f"z: expected one latent [1, C, H, W], got shape {tuple(z.shape)}")
    p_init, g = as_points(handles, "handles"), as_points(targets, "targets")
    if p_init.shape != g.shape:
        raise ValueError(f"{p_init.shape[0]} handles but {g.shape[0]} targets: give one target per handle")

    z0 = z.detach()
    if f0 is None or (mask is not None and x_prev_ref is None):
        with torch.no_grad():
            f_ref, x_ref = _features(features_fn, z0)
        f0 = f_ref if f0 is None else f0
        x_prev_ref = x_ref if x_prev_ref is None else x_prev_ref
    f0 = f0.detach()
    _check_map(f0, "F0")
    grid_hw = tuple(f0.shape[-2:])
    check_points(p_init, grid_hw, "handles")
    check_points(g, grid_hw, "targets")
    if mask is not None:
        if x_prev_ref is None:
            raise ValueError("a mask was given but features_fn returned no x_prev: the mask term needs x_{t-1}")
        x_prev_ref = x_prev_ref.detach()

    # Adam state and updates in fp32 even for a half-precision latent (the reference casts z_t to fp32).
    scale = float(grad_scale) if grad_scale is not None else (2.0 ** 16 if f0.dtype == torch.float16 else 1.0)
    z_opt = z0.to(torch.float32 if z0.dtype in (torch.float16, torch.bfloat16) else z0.dtype).clone()
    z_opt.requires_grad_(True)
    opt = torch.optim.Adam([z_opt], lr=lr)
    cur = p_init.clone()
    res = DragResult(latent=z0, handles=cur.clone())
    for k in range(iterations):
        f1, x_prev = _features(features_fn, z_opt)
        if f1.shape[1:] != f0.shape[1:]:
            raise ValueError(f"features_fn returned {tuple(f1.shape)} but F0 is {tuple(f0.shape)}")
        if k > 0:
            cur = track_points(f0, f1.detach(), p_init, cur, r_p)
        res.history.append(cur.clone())
        if all_reached(cur, g, threshold):
            res.reached = True
            break
        loss = motion_supervision_loss(f1, cur, g, r_m, threshold)
        if mask is not None:
            if x_prev is None:
                raise ValueError("a mask was given but features_fn returned no x_prev")
            loss = loss + mask_loss(x_prev, x_prev_ref, mask, lam)
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            # grads for z_t only: no weight grads computed or accumulated
            (loss * scale if scale != 1.0 else loss).backward(inputs=[z_opt])
            if scale != 1.0:
                z_opt.grad.div_(scale)
            if scale == 1.0 or bool(torch.isfinite(z_opt.grad).all()):
                opt.step()
            else:                      # fp16 overflow: skip this step, retry with half the scale
                scale = max(scale / 2.0, 1.0)
                res.skipped += 1
        res.iterations += 1
        res.losses.append(float(loss.detach()))
        del f1, x_prev, loss
        if on_iteration is not None:
            on_iteration(k, cur.clone(), res.losses[-1])
    else:
        if track_final and iterations > 0:
            with torch.no_grad():
                f1, _ = _features(features_fn, z_opt.detach())
            cur = track_points(f0, f1, p_init, cur, r_p)
            res.history.append(cur.clone())
            res.reached = all_reached(cur, g, threshold)
        elif iterations == 0:
            res.reached = all_reached(cur, g, threshold)
    res.latent = z_opt.detach().to(z.dtype)
    res.handles = cur.clone()
    return res
