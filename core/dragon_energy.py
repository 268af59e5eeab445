"""DragonDiffusion energies (Mou et al., arXiv 2307.02421; DiffEditor, arXiv 2402.02583) and the mask split of ∂E/∂z_t.

Plain torch, no ComfyUI. Features are decoder block outputs (SD1.5: LDM output_blocks[5] and [8]) of the current
latent z_t (with grad) and of the inverted latent z_t^gud at the same timestep (no grad), each nearest-resized to a
common "energy grid" (2x the largest map; 128x128 for a 512x512 image, one cell = 4 px). Masks and points live on
that grid. Term shapes (DragonDiffusion, Mou et al. 2023): attract w/(1+4·S) (α=1, β=4), repel w·S, with S̃ = (cos+1)/2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

Features = Sequence[torch.Tensor]  # one [B, C_l, H, W] map per decoder scale, all on the energy grid

MODES = ("move", "drag", "appearance", "paste")


# --------------------------------------------------------------------------------------------------------------
# Energy grid, similarities, term shapes
# --------------------------------------------------------------------------------------------------------------

def energy_grid_size(features: Features, up_scale: int = 2) -> tuple[int, int]:
    """(H, W) of the energy grid: up_scale x the largest feature map (DragonDiffusion's `up_scale=2`)."""
    if not features:
        raise ValueError("energy_grid_size: no feature maps given.")
    h, w = max((tuple(f.shape[-2:]) for f in features), key=lambda s: s[0] * s[1])
    return int(h) * up_scale, int(w) * up_scale


def to_energy_grid(features: Features, size: tuple[int, int]) -> list[torch.Tensor]:
    """Nearest-resize every decoder map [B, C_l, h_l, w_l] to the common energy grid `size` (differentiable)."""
    out = []
    for i, f in enumerate(features):
        if f.ndim != 4:
            raise ValueError(f"to_energy_grid: feature map {i} must be [B, C, H, W], got shape {tuple(f.shape)}.")
        out.append(f if tuple(f.shape[-2:]) == tuple(size) else F.interpolate(f, size=tuple(size), mode="nearest"))
    return out


def cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over channels (dim 1) of [B, C, ...] tensors -> [B, ...]; half precision computed in fp32."""
    if a.dtype in (torch.float16, torch.bfloat16) or b.dtype in (torch.float16, torch.bfloat16):
        a, b = a.float(), b.float()
    return F.cosine_similarity(a, b, dim=1, eps=1e-8)


def center_features(features: Features) -> list[torch.Tensor]:
    """Each map minus its per-image mean feature (mean over the grid cells, per channel): F − mean_xy F.

    Not in the reference. On a small model a shared component dominates the decoder features (raw cosine 0.98-0.99
    between object and background); after centring the cosine separates them (review drag_quality.md, 3)."""
    return [f - f.mean(dim=(-2, -1), keepdim=True) for f in features]


def s_tilde(cos: torch.Tensor) -> torch.Tensor:
    """S̃ = (cos + 1) / 2, a similarity in [0, 1]."""
    return (cos + 1.0) / 2.0


def attract(w: float, s: torch.Tensor) -> torch.Tensor:
    """Attraction term w / (1 + 4·S): falls as the similarity S grows (α = 1, β = 4)."""
    return w / (1.0 + 4.0 * s)


def attract_raw_cos(w: float, cos: torch.Tensor) -> torch.Tensor:
    """w / (1 + 4·cos) on a *raw* cosine (move mode); cos is clamped at -0.2 to keep clear of the pole at -1/4."""
    return w / (1.0 + 4.0 * cos.clamp(min=-0.2))


def mask_to_latent(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Edit mask M at latent resolution: nearest resize of a grid mask, as float [1, 1, h, w] (1 = edit region)."""
    m = _squeeze_mask(mask, "edit_mask").float()[None, None]
    return (F.interpolate(m, size=tuple(int(s) for s in size), mode="nearest") > 0.5).float()


def point_patch(point_xy: Sequence[float], size: tuple[int, int], radius: int = 1) -> torch.Tensor:
    """Bool [H, W] mask of the (2r+1)² cells around an (x, y) grid point; centre clipped so the patch stays inside."""
    h, w = size
    x, y = float(point_xy[0]), float(point_xy[1])
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"point (x={x:g}, y={y:g}) lies outside the {w}x{h} energy grid.")
    if h < 2 * radius + 1 or w < 2 * radius + 1:
        raise ValueError(f"energy grid {w}x{h} is smaller than a {2 * radius + 1}x{2 * radius + 1} patch.")
    cy = min(max(int(y), radius), h - 1 - radius)
    cx = min(max(int(x), radius), w - 1 - radius)
    m = torch.zeros(h, w, dtype=torch.bool)
    m[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1] = True
    return m


# --------------------------------------------------------------------------------------------------------------
# Internal helpers
# --------------------------------------------------------------------------------------------------------------

def _squeeze_mask(mask: torch.Tensor, name: str) -> torch.Tensor:
    """A mask given as [H, W], [1, H, W] or [1, 1, H, W] (bool or float) -> bool [H, W]."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor mask, got {type(mask).__name__}.")
    m = mask
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a single [H, W] mask, got shape {tuple(mask.shape)}.")
    return m > 0.5 if m.dtype != torch.bool else m


def _grid_mask(mask: torch.Tensor, grid: tuple[int, int], name: str, *, nonempty: bool = True) -> torch.Tensor:
    """Bool [H, W] mask checked to lie on the energy grid (and to be non-empty)."""
    m = _squeeze_mask(mask, name)
    if tuple(m.shape) != tuple(grid):
        raise ValueError(f"{name}: mask is {m.shape[1]}x{m.shape[0]} but the energy grid is {grid[1]}x{grid[0]} "
                         "(resize the mask to the energy grid first).")
    if nonempty and not bool(m.any()):
        raise ValueError(f"{name}: the mask is empty.")
    return m


def _check_features(f_cur: Features, f_other: Features, other_name: str) -> tuple[int, int]:
    """Same number of scales, same [C, H, W] per scale, one common grid; returns the grid (H, W)."""
    if len(f_cur) == 0:
        raise ValueError("no feature maps given (need one per decoder scale).")
    if len(f_cur) != len(f_other):
        raise ValueError(f"{other_name}: {len(f_other)} feature maps but the current branch has {len(f_cur)}.")
    grid = tuple(f_cur[0].shape[-2:])
    for i, (a, b) in enumerate(zip(f_cur, f_other)):
        if a.ndim != 4 or b.ndim != 4:
            raise ValueError(f"feature maps must be [B, C, H, W] (scale {i}).")
        if tuple(a.shape[-2:]) != grid:
            raise ValueError(f"scale {i}: maps are not on one energy grid; call to_energy_grid first.")
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"{other_name}: scale {i} has shape {tuple(b.shape[1:])}, "
                             f"the current branch {tuple(a.shape[1:])}.")
    return int(grid[0]), int(grid[1])


def _layer_weights(weights: Sequence[float] | None, n: int, default: float) -> list[float]:
    """Per-scale weights λ_l (default: `default` for every scale); length must match the number of scales."""
    if weights is None:
        return [default] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"layer_weights has {len(weights)} entries for {n} feature scales.")
    return weights


def _idx(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Row-major flat indices of the True cells of a bool [H, W] mask."""
    return mask.reshape(-1).nonzero().squeeze(1).to(device)


def _take(f: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Feature vectors at flat cell indices: [B, C, H, W] -> [B, C, N]."""
    return f.flatten(2).index_select(2, idx)


def _zero(f: torch.Tensor) -> torch.Tensor:
    """A scalar zero energy on f's device/dtype."""
    return f.new_zeros(())


# --------------------------------------------------------------------------------------------------------------
# Content drag (guidance_drag)
# --------------------------------------------------------------------------------------------------------------

def drag_energy(f_cur: Features, f_gud: Features, handles: Sequence[Sequence[float]],
                targets: Sequence[Sequence[float]], user_mask: torch.Tensor, *, w_edit: float = 4.0,
                w_content: float = 6.0, w_inpaint: float = 0.2, layer_weights: Sequence[float] | None = None,
                radius: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Content drag energies (E_edit, E_content) for point pairs given as (x, y) energy-grid cells.

    Per scale l and pair k (m_h/m_g = 3x3 patches at handle/target):
    E_edit += w_edit/(1+4·mean S̃(F_cur[m_g], F_gud[m_h])) + w_inpaint·mean S̃(F_cur[m_h∖m_g], F_gud[m_h∖m_g]);
    E_content += w_content/(1+4·mean S̃(F_cur, F_gud) outside user_mask). λ_l defaults to 1/#scales
    (the code's /#layers) and E_edit is further divided by #points.
    """
    grid = _check_features(f_cur, f_gud, "f_gud")
    if len(handles) == 0:
        raise ValueError("drag_energy: no point pairs given.")
    if len(handles) != len(targets):
        raise ValueError(f"drag_energy: {len(handles)} handle points but {len(targets)} target points.")
    m_user = _grid_mask(user_mask, grid, "user_mask")
    lam = _layer_weights(layer_weights, len(f_cur), 1.0 / len(f_cur))
    dev = f_cur[0].device

    pairs = []
    for h_pt, t_pt in zip(handles, targets):
        m_h, m_g = point_patch(h_pt, grid, radius), point_patch(t_pt, grid, radius)
        pairs.append((_idx(m_h, dev), _idx(m_g, dev), _idx(m_h & ~m_g, dev)))
    other = _idx(~m_user, dev)

    e_edit, e_con = _zero(f_cur[0]), _zero(f_cur[0])
    for l, (fc, fg) in enumerate(zip(f_cur, f_gud)):
        for h_idx, g_idx, inp_idx in pairs:
            s = s_tilde(cos_sim(_take(fc, g_idx), _take(fg, h_idx))).mean(-1)
            term = attract(w_edit, s)
            if inp_idx.numel() > 0 and w_inpaint != 0:
                term = term + w_inpaint * s_tilde(cos_sim(_take(fc, inp_idx), _take(fg, inp_idx))).mean(-1)
            e_edit = e_edit + lam[l] * term.sum()
        if other.numel() > 0 and w_content != 0:
            s = s_tilde(cos_sim(_take(fc, other), _take(fg, other))).mean(-1)
            e_con = e_con + lam[l] * attract(w_content, s).sum()
    return e_edit / len(pairs), e_con


# --------------------------------------------------------------------------------------------------------------
# Object move / resize (guidance_move)
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MoveGeometry:
    """Masks of a move/resize on the energy grid, computed once per edit (bool [H, W] unless noted).

    src = object at its source; cur = object at its new place and size (m_cur); other = outside both;
    vacated = src ∖ cur; ref = optional region the vacated area should resemble (default: `other`);
    resized = (H', W') of the guidance features scaled by resize_scale; tar_idx / cur_idx = matching flat cell
    indices of the object in the resized guidance frame (m_tar) and on the grid (m_cur), one-to-one.
    """

    src: torch.Tensor
    cur: torch.Tensor
    other: torch.Tensor
    vacated: torch.Tensor
    ref: torch.Tensor
    resized: tuple[int, int]
    tar_idx: torch.Tensor
    cur_idx: torch.Tensor


def _bbox_centre(m: torch.Tensor) -> tuple[float, float]:
    """(cy, cx) of the bounding box of a non-empty bool [H, W] mask."""
    ys, xs = m.nonzero(as_tuple=True)
    return (float(ys.min() + ys.max()) / 2.0, float(xs.min() + xs.max()) / 2.0)


def move_geometry(object_mask: torch.Tensor, dx: float, dy: float, resize_scale: float = 1.0,
                  ref_mask: torch.Tensor | None = None) -> MoveGeometry:
    """Place the object: scale its mask by resize_scale about its bbox centre, then shift by (dx, dy) grid cells.

    Raises ValueError when the moved/resized object would leave the grid (DragonDiffusion's 'Resize out of
    bounds'); unlike the reference's torch.roll nothing wraps around the border.
    """
    src = _squeeze_mask(object_mask, "object_mask").cpu()
    h, w = int(src.shape[0]), int(src.shape[1])
    if not bool(src.any()):
        raise ValueError("object_mask: the mask is empty; mark the object to move.")
    if not resize_scale > 0:
        raise ValueError(f"resize_scale must be > 0, got {resize_scale}.")
    hr, wr = max(1, round(h * resize_scale)), max(1, round(w * resize_scale))
    tar = F.interpolate(src.float()[None, None], size=(hr, wr), mode="nearest")[0, 0] > 0.5
    if not bool(tar.any()):
        raise ValueError(f"resize_scale={resize_scale:g} shrinks the object below one grid cell.")
    (cy, cx), (ty, tx) = _bbox_centre(src), _bbox_centre(tar)
    sy, sx = round(cy + float(dy) - ty), round(cx + float(dx) - tx)
    ys, xs = tar.nonzero(as_tuple=True)
    ny, nx = ys + sy, xs + sx
    if bool((ny < 0).any() | (ny >= h).any() | (nx < 0).any() | (nx >= w).any()):
        raise ValueError(
            f"the moved object leaves the image: resize_scale={resize_scale:g} with offset (dx={dx:g}, dy={dy:g}) "
            f"grid cells puts part of it outside the {w}x{h} grid. Use a smaller resize_scale or a shorter move.")
    cur = torch.zeros(h, w, dtype=torch.bool)
    cur[ny, nx] = True
    other = ~(src | cur)
    vacated = src & ~cur
    if ref_mask is not None:
        ref = _grid_mask(ref_mask, (h, w), "ref_mask").cpu()
    else:
        ref = other
    return MoveGeometry(src=src, cur=cur, other=other, vacated=vacated, ref=ref, resized=(hr, wr),
                        tar_idx=ys * wr + xs, cur_idx=ny * w + nx)


def move_energy(f_cur: Features, f_gud: Features, geom: MoveGeometry, *, w_edit: float = 4.0,
                w_content: float = 6.0, w_contrast: float = 0.2, w_inpaint: float = 0.8,
                layer_weights: Sequence[float] | None = (0.5, 0.5)) -> tuple[torch.Tensor, torch.Tensor]:
    """Object move/resize energies (E_edit, E_content); f_gud is resized by geom's scale for the edit term.

    Per scale l (λ_l default 0.5): E_edit += λ_l·w_edit/(1+4·mean cos(F_cur[m_cur], F_gud_resized[m_tar]));
    E_content += λ_l·w_content/(1+4·mean cos(F_gud, F_cur) outside both masks)          (raw cos, as the code)
               + λ_l·w_contrast·mean S̃(F_cur[vacated], F_gud[vacated])                  (vacated area: not the object)
               + w_inpaint/(1+4·S̃(mean F_cur[vacated], mean F_gud[ref]))                (global term; no λ_l in the code).
    """
    grid = _check_features(f_cur, f_gud, "f_gud")
    if tuple(geom.src.shape) != grid:
        raise ValueError(f"move geometry is for a {geom.src.shape[1]}x{geom.src.shape[0]} grid, "
                         f"features are on {grid[1]}x{grid[0]}.")
    lam = _layer_weights(layer_weights, len(f_cur), 0.5)
    dev = f_cur[0].device
    tar_idx, cur_idx = geom.tar_idx.to(dev), geom.cur_idx.to(dev)
    other, vac, ref = _idx(geom.other, dev), _idx(geom.vacated, dev), _idx(geom.ref, dev)

    e_edit, e_con = _zero(f_cur[0]), _zero(f_cur[0])
    for l, (fc, fg) in enumerate(zip(f_cur, f_gud)):
        fg_res = fg if tuple(fg.shape[-2:]) == geom.resized else F.interpolate(fg, size=geom.resized, mode="nearest")
        c = cos_sim(_take(fc, cur_idx), _take(fg_res, tar_idx)).mean(-1)
        e_edit = e_edit + lam[l] * attract_raw_cos(w_edit, c).sum()
        if other.numel() > 0 and w_content != 0:
            c = cos_sim(_take(fg, other), _take(fc, other)).mean(-1)
            e_con = e_con + lam[l] * attract_raw_cos(w_content, c).sum()
        if vac.numel() > 0:
            fc_vac = _take(fc, vac)
            if w_contrast != 0:
                e_con = e_con + lam[l] * w_contrast * s_tilde(cos_sim(fc_vac, _take(fg, vac))).mean(-1).sum()
            if w_inpaint != 0 and ref.numel() > 0:
                s = s_tilde(cos_sim(fc_vac.mean(-1), _take(fg, ref).mean(-1)))
                e_con = e_con + attract(w_inpaint, s).sum()
    return e_edit, e_con


# --------------------------------------------------------------------------------------------------------------
# Appearance replace and object paste (guidance_appearance / guidance_paste)
# --------------------------------------------------------------------------------------------------------------

def _two_image_setup(f_cur: Features, f_base: Features, f_ref: Features | None, base_mask: torch.Tensor,
                     ref_mask: torch.Tensor, mode: str):
    """Shared checks for appearance/paste; returns (grid, base idx, outside-base idx, ref idx)."""
    if f_ref is None:
        raise ValueError(f"{mode}: the reference (second) image's features are missing.")
    grid = _check_features(f_cur, f_base, "f_base")
    _check_features(f_cur, f_ref, "f_ref")
    mb = _grid_mask(base_mask, grid, "base_mask")
    mr = _grid_mask(ref_mask, grid, "ref_mask")
    dev = f_cur[0].device
    return grid, _idx(mb, dev), _idx(~mb, dev), _idx(mr, dev)


def _base_content(fc: torch.Tensor, fb: torch.Tensor, out_idx: torch.Tensor, w_content: float) -> torch.Tensor:
    """w_content/(1+4·mean S̃(F_cur, F_base) outside the base mask), summed over the batch."""
    if out_idx.numel() == 0 or w_content == 0:
        return _zero(fc)
    return attract(w_content, s_tilde(cos_sim(_take(fc, out_idx), _take(fb, out_idx))).mean(-1)).sum()


def appearance_energy(f_cur: Features, f_base: Features, f_ref: Features | None, base_mask: torch.Tensor,
                      ref_mask: torch.Tensor, *, w_edit: float = 3.5, w_content: float = 5.0,
                      layer_weights: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Appearance replace energies (E_edit, E_content): a global (mean-pooled) edit term and base content term.

    Per scale l (λ_l default 1): E_edit += λ_l·w_edit/(1+4·S̃(mean F_cur[base_mask], mean F_ref[ref_mask]));
    E_content += λ_l·w_content/(1+4·mean S̃(F_cur, F_base) outside base_mask). Both masks on the energy grid.
    """
    _, base_idx, out_idx, ref_idx = _two_image_setup(f_cur, f_base, f_ref, base_mask, ref_mask, "appearance")
    lam = _layer_weights(layer_weights, len(f_cur), 1.0)
    e_edit, e_con = _zero(f_cur[0]), _zero(f_cur[0])
    for l, (fc, fb, fr) in enumerate(zip(f_cur, f_base, f_ref)):
        s = s_tilde(cos_sim(_take(fc, base_idx).mean(-1), _take(fr, ref_idx).mean(-1)))
        e_edit = e_edit + lam[l] * attract(w_edit, s).sum()
        e_con = e_con + lam[l] * _base_content(fc, fb, out_idx, w_content)
    return e_edit, e_con


def paste_energy(f_cur: Features, f_base: Features, f_ref: Features | None, base_mask: torch.Tensor,
                 ref_mask: torch.Tensor, *, w_edit: float = 4.0, w_content: float = 6.0,
                 layer_weights: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Object paste energies (E_edit, E_content): pointwise S̃ between F_cur[base_mask] and F_ref[ref_mask].

    ref_mask must be base_mask translated (same cell count; cells pair up in row-major order).
    Per scale l (λ_l default 1): E_edit += λ_l·w_edit/(1+4·mean S̃(F_cur[base], F_ref[ref])); content as appearance.
    """
    _, base_idx, out_idx, ref_idx = _two_image_setup(f_cur, f_base, f_ref, base_mask, ref_mask, "paste")
    if base_idx.numel() != ref_idx.numel():
        raise ValueError(f"paste: base_mask covers {base_idx.numel()} cells but ref_mask {ref_idx.numel()}; "
                         "the pasted region must have the same size and shape in both images.")
    lam = _layer_weights(layer_weights, len(f_cur), 1.0)
    e_edit, e_con = _zero(f_cur[0]), _zero(f_cur[0])
    for l, (fc, fb, fr) in enumerate(zip(f_cur, f_base, f_ref)):
        s = s_tilde(cos_sim(_take(fc, base_idx), _take(fr, ref_idx))).mean(-1)
        e_edit = e_edit + lam[l] * attract(w_edit, s).sum()
        e_con = e_con + lam[l] * _base_content(fc, fb, out_idx, w_content)
    return e_edit, e_con


# --------------------------------------------------------------------------------------------------------------
# Gradient split
# --------------------------------------------------------------------------------------------------------------

def guidance_gradient(e_edit: torch.Tensor, e_content: torch.Tensor, z: torch.Tensor, edit_mask: torch.Tensor,
                      scale_edit: float, scale_content: float, *, batched: bool = False) -> torch.Tensor:
    """Guidance g = ∇_z(scale_edit·E_edit)⊙M + ∇_z(scale_content·E_content)⊙(1−M), detached, shaped like z.

    scale = w·energy_scale·1e3 (w = 0.04, or 0.08 for move: DragonDefaults.gradient_scale); M = edit_mask at z's
    resolution. The two terms need two vector-Jacobian products of one graph (the mask split cannot be moved
    before the UNet's spatial mixing): retain_graph on the first, or one vmapped backward with batched=True.
    """
    m = mask_to_latent(edit_mask, z.shape[-2:]).to(device=z.device, dtype=z.dtype)
    need_e = isinstance(e_edit, torch.Tensor) and e_edit.requires_grad and scale_edit != 0 and bool(m.any())
    need_c = (isinstance(e_content, torch.Tensor) and e_content.requires_grad and scale_content != 0
              and not bool(m.all()))
    zero = torch.zeros_like(z)
    if need_e and need_c and batched:
        obj = torch.stack([e_edit * scale_edit, e_content * scale_content])
        eye = torch.eye(2, dtype=obj.dtype, device=obj.device)
        (gb,) = torch.autograd.grad(obj, z, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
        g_e, g_c = (zero, zero) if gb is None else (gb[0], gb[1])
    else:
        g_e = g_c = None
        if need_e:
            (g_e,) = torch.autograd.grad(e_edit * scale_edit, z, retain_graph=need_c, allow_unused=True)
        if need_c:
            (g_c,) = torch.autograd.grad(e_content * scale_content, z, allow_unused=True)
        g_e = zero if g_e is None else g_e
        g_c = zero if g_c is None else g_c
    return (g_e * m + g_c * (1.0 - m)).detach()


# --------------------------------------------------------------------------------------------------------------
# Defaults and step windows (the reference code's)
# --------------------------------------------------------------------------------------------------------------

REF_STEPS = 50  # the reference's NUM_DDIM_STEPS; step windows below are in these units, index 0 = noisiest


@dataclass(frozen=True)
class DragonDefaults:
    """Per-mode defaults of the reference demo; windows are [start, stop) step indices out of REF_STEPS."""

    mode: str
    cfg: float
    energy_scale: float          # slider value; the energy is multiplied by energy_scale·1e3
    w_edit: float
    w_content: float
    w_contrast: float
    w_inpaint: float
    sde_strength: float          # DiffEditor regional SDE η inside the edit mask
    ip_scale: float              # DiffEditor IP-Adapter scale (optional dependency)
    guidance_factor: float       # w in g = w·∇(s·E): 0.04, 0.08 for move
    kv_mode: str                 # memory-bank K/V injection: "replace" | "concat" | "mix"
    kv_window: tuple[int, int]   # steps with K/V injection
    guidance_window: tuple[int, int] = (0, 30)
    dense_guidance_until: int = 10   # D+ sparsification: every step before this, then even steps only
    sde_window: tuple[int, int] = (11, 20)
    time_travel_steps: tuple[int, ...] = (22, 24, 26, 28)
    time_travel_repeats: int = 3
    layer_weights: tuple[float, float] | None = None  # None = the energy function's own default

    @property
    def gradient_scale(self) -> float:
        """scale passed to guidance_gradient: guidance_factor·energy_scale·1e3."""
        return self.guidance_factor * self.energy_scale * 1e3


_DEFAULTS = {
    "move": DragonDefaults("move", cfg=4.0, energy_scale=0.5, w_edit=4.0, w_content=6.0, w_contrast=0.2,
                           w_inpaint=0.8, sde_strength=0.4, ip_scale=0.1, guidance_factor=0.08,
                           kv_mode="replace", kv_window=(5, REF_STEPS), layer_weights=(0.5, 0.5)),
    "drag": DragonDefaults("drag", cfg=4.0, energy_scale=2.0, w_edit=4.0, w_content=6.0, w_contrast=0.0,
                           w_inpaint=0.2, sde_strength=0.4, ip_scale=0.1, guidance_factor=0.04,
                           kv_mode="concat", kv_window=(5, REF_STEPS)),
    "appearance": DragonDefaults("appearance", cfg=5.0, energy_scale=2.0, w_edit=3.5, w_content=5.0,
                                 w_contrast=0.0, w_inpaint=0.0, sde_strength=0.4, ip_scale=0.1,
                                 guidance_factor=0.04, kv_mode="mix", kv_window=(0, 36)),
    "paste": DragonDefaults("paste", cfg=4.0, energy_scale=1.5, w_edit=4.0, w_content=6.0, w_contrast=0.0,
                            w_inpaint=0.0, sde_strength=0.4, ip_scale=0.1, guidance_factor=0.04,
                            kv_mode="mix", kv_window=(0, 36)),
}


def mode_defaults(mode: str) -> DragonDefaults:
    """The reference demo's defaults for one edit mode (move, drag, appearance, paste)."""
    try:
        return _DEFAULTS[mode]
    except KeyError:
        raise ValueError(f"unknown DragonDiffusion mode {mode!r}; expected one of {', '.join(MODES)}.") from None


def _scaled(step_ref: int, steps: int) -> int:
    """A step index in REF_STEPS units mapped onto a schedule of `steps` steps."""
    return round(step_ref * steps / REF_STEPS)


def in_window(step: int, steps: int, window: tuple[int, int]) -> bool:
    """Whether step index `step` (0 = noisiest) of `steps` lies in a [start, stop) window given in REF_STEPS units."""
    return _scaled(window[0], steps) <= step < _scaled(window[1], steps)


def guidance_active(step: int, steps: int, defaults: DragonDefaults, sparsify: bool = False) -> bool:
    """Energy guidance at this step? First 30 of 50 steps; with sparsify (DiffEditor 'D+') only even steps after 10."""
    if not in_window(step, steps, defaults.guidance_window):
        return False
    return not sparsify or step < _scaled(defaults.dense_guidance_until, steps) or step % 2 == 0


def kv_inject_active(step: int, steps: int, defaults: DragonDefaults) -> bool:
    """Memory-bank K/V injection at this step? (move/drag from step 5, appearance/paste steps 0-35 of 50)."""
    return in_window(step, steps, defaults.kv_window)
