"""DragonDiffusion's all-in-one loop (Mou et al., arXiv 2307.02421) with DiffEditor's options (arXiv 2402.02583):
DDIM along an INVERSION's sigmas, the start-latent init (init_paste, vacate_noise), regional SDE and time travel.
The guidance and the memory bank act through the model's patches (core.dragondiffusion)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch

from . import dragon_energy as de
from . import host, regiondrag, seeds
from .inversion import DDIMInversion

if TYPE_CHECKING:
    from .dragondiffusion import EditSpec, FeatureGuidance



def ddim_eta_step(x0: torch.Tensor, eps: torch.Tensor, sigma: float, sigma_next: float, eta: torch.Tensor | float,
                  noise: torch.Tensor) -> torch.Tensor:
    """Stochastic DDIM (η, may be a per-pixel map) in sampler space: z_{t-1} = sqrt(ᾱ')x̂0 + sqrt(1−ᾱ'−σ_η²)ε̂ + σ_η·n
    with σ_η = η·sqrt((1−ᾱ')/(1−ᾱ))·sqrt(1−ᾱ/ᾱ'), divided by sqrt(ᾱ')."""
    ab, abn = 1.0 / (1.0 + sigma ** 2), 1.0 / (1.0 + sigma_next ** 2)
    eta = torch.as_tensor(eta, dtype=x0.dtype, device=x0.device)
    std = eta * math.sqrt((1.0 - abn) / (1.0 - ab) * (1.0 - ab / abn))
    dir_coef = torch.sqrt((1.0 - abn - std * std).clamp(min=0.0))
    return x0 + (dir_coef * eps + std * noise) / math.sqrt(abn)


@dataclass
class EditOptions:
    """DiffEditor additions (all off by default) and loop settings of the all-in-one edit."""
    regional_sde: bool = False
    sde_strength: float = 0.4          # η inside the edit mask
    sde_strength_outside: float = 0.0  # η outside
    time_travel: bool = False
    init_paste: bool = False           # DiffEditor: paste the object (move) / handle cells (drag) into the start latent
    vacate_noise: float = 0.0          # not in the reference: with init_paste, re-noise the vacated cells of the start
                                       # latent, z ← sqrt(1−α²)·z + α·n (RegionDrag's vacate), so the old object's
                                       # inverted latent does not come back as a ghost
    unguided_direction: bool = True    # DiffEditor: direction term with the unguided ε̂
    sparsify: bool = True              # DiffEditor 'D+' (the reference's default): guidance on every step before
                                       # step 10 of 50, then on even steps only (de.guidance_active)
    seed: int = 0


def edit_loop(den: host.Denoiser, x_start: torch.Tensor, inv: DDIMInversion, guidance: Optional[FeatureGuidance],
              defaults: de.DragonDefaults, opts: EditOptions, latent_mask: Optional[torch.Tensor] = None,
              on_step: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """DDIM from x_start (the inverted start) along inv.sigmas; guidance (if any) acts through den's post-CFG patch.

    With unguided_direction the step is x' = x̂0_guided + σ'·ε̂_unguided (DiffEditor); regional SDE uses η maps
    inside/outside `latent_mask` at the reference's steps 11-19 (of 50); time travel repeats steps 22-28 (even)
    three times, inverting back in between with ε of the plain cond UNet at the lower σ (no CFG, no K/V bank, no
    guidance: the reference's `iter_cur=-2` pass)."""
    sig = [float(s) for s in inv.sigmas]
    n = len(sig) - 1
    steps = int(inv.steps) or n
    offset = steps - n
    x = x_start
    seen: dict = {}

    def observe(s, x0_ung, _x0):
        seen[round(math.log(max(s, 1e-8)), 6)] = x0_ung

    if guidance is not None:
        guidance.observer = observe
    gen = seeds.generator(opts.seed)
    m = latent_mask
    travel = opts.time_travel and guidance is not None and guidance.enabled   # the reference: only with guidance
    try:
        for i in range(n):
            s, s_next = sig[i], sig[i + 1]
            gi = i + offset
            repeats = defaults.time_travel_repeats if (travel and gi in _scaled_steps(
                defaults.time_travel_steps, steps)) else 1
            for r in range(repeats):
                seen.clear()
                x0 = den.x0(x, s)
                x0_ung = seen.get(round(math.log(max(s, 1e-8)), 6), x0) if opts.unguided_direction else x0
                eps = (x - x0_ung) / s
                if s_next == 0:
                    x_next = x0
                elif opts.regional_sde and de.in_window(gi, steps, defaults.sde_window):
                    noise = torch.randn(x.shape, generator=gen).to(x)
                    if m is None:
                        eta: Any = float(opts.sde_strength)
                    else:
                        mm = m.to(x)
                        eta = mm * float(opts.sde_strength) + (1 - mm) * float(opts.sde_strength_outside)
                    x_next = ddim_eta_step(x0, eps, s, s_next, eta, noise)
                else:
                    x_next = x0 + s_next * eps
                if r < repeats - 1 and s_next > 0:   # time travel: invert back to σ and redo the step
                    # as the reference: ε of the plain cond UNet (no CFG, no K/V bank, no guidance) on z_{t-1} at
                    # t-1, then one DDIM inversion step t-1 -> t
                    e_back = (x_next - den.cond_x0(x_next, s_next)) / s_next
                    x = x_next + (s - s_next) * e_back
                else:
                    x = x_next
            if on_step is not None:
                on_step(i + 1, n)
    finally:
        if guidance is not None:
            guidance.observer = None
    return x


def sde_mask(spec: EditSpec) -> torch.Tensor:
    """Grid mask of the regional SDE (η inside): move = object at its source and at its new place (the reference's
    mask_x0 ∪ mask_cur); the other modes: the edit mask."""
    if spec.mode == "move" and spec.geom is not None:
        return spec.geom.src | spec.geom.cur
    return spec.edit_mask


def _scaled_steps(ref_steps: Sequence[int], steps: int) -> set:
    """Reference step indices (of 50) mapped onto a grid of `steps` steps."""
    return {round(s * steps / de.REF_STEPS) for s in ref_steps}


def vacated_cells(spec: EditSpec, hw: tuple[int, int]) -> torch.Tensor:
    """Bool [h, w] latent cells that init_latent leaves behind: move = the object's source cells its new place does
    not cover; drag = the handle cells no target patch covers; other modes: none."""
    h, w = int(hw[0]), int(hw[1])
    H, W = spec.grid
    if spec.mode == "move" and spec.geom is not None:
        vac = de.mask_to_latent(spec.geom.vacated, (h, w))[0, 0] > 0.5
        return vac & ~(de.mask_to_latent(spec.geom.cur, (h, w))[0, 0] > 0.5)
    out = torch.zeros(h, w, dtype=torch.bool)
    if spec.mode == "drag":
        src, dst = torch.zeros_like(out), torch.zeros_like(out)
        for (hx, hy), (tx, ty) in zip(spec.handles, spec.targets):
            hi, hj = min(int(hy * h / H), h - 1), min(int(hx * w / W), w - 1)
            ti, tj = min(int(ty * h / H), h - 1), min(int(tx * w / W), w - 1)
            src[max(hi - 1, 0):hi + 2, max(hj - 1, 0):hj + 2] = True
            dst[max(ti - 1, 0):ti + 2, max(tj - 1, 0):tj + 2] = True
        out = src & ~dst
    return out


def start_latent(x: torch.Tensor, spec: EditSpec, opts: EditOptions, sigma: float,
                 reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The loop's start latent at σ: with opts.init_paste, init_latent (paste: from the reference's start latent),
    then the vacated cells re-noised with opts.vacate_noise (RegionDrag's z ← sqrt(1−α²)·z + α·n, seeded from
    opts.seed); else x unchanged."""
    if not opts.init_paste:
        return x
    out = init_latent(x, spec, reference)
    if opts.vacate_noise > 0:
        gen = seeds.generator(opts.seed, 1)
        out = regiondrag.renoise(out, vacated_cells(spec, out.shape[-2:]), float(opts.vacate_noise), float(sigma), gen)
    return out


def paste_offset(spec: EditSpec, hw: tuple[int, int]) -> tuple[int, int]:
    """(dy, dx) latent cells from the reference mask to the base mask of a paste (their bounding boxes' corners on
    the grid, truncated toward zero in latent cells as the official int(dy / (W / w)))."""
    H, W = spec.grid
    h, w = int(hw[0]), int(hw[1])
    yb, xb = spec.base_mask.nonzero().min(0).values.tolist()
    yr, xr = spec.ref_mask.nonzero().min(0).values.tolist()
    return int((yb - yr) * h / H), int((xb - xr) * w / W)


def init_latent(x: torch.Tensor, spec: EditSpec, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DiffEditor's start-latent init: move pastes the object's start latent at its new place
    and size; drag copies the 3x3 latent cells around each handle to its target; paste composites the reference's
    start latent, shifted by the masks' offset, inside the base mask (nearest-resized to the latent), as the
    official run_paste. Appearance (and paste without a reference latent): unchanged."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    H, W = spec.grid
    ry, rx = H / h, W / w
    out = x.clone()
    if spec.mode == "paste" and reference is not None and spec.base_mask is not None:
        dy, dx = paste_offset(spec, (h, w))
        moved = torch.roll(reference.to(x), (dy, dx), (-2, -1))
        m = de.mask_to_latent(spec.base_mask, (h, w)).to(x)
        return x * (1 - m) + moved * m
    if spec.mode == "move" and spec.geom is not None:
        g = spec.geom
        hr, wr = g.resized
        cur_map = torch.full((H * W,), -1, dtype=torch.long)
        cur_map[g.cur_idx.cpu()] = g.tar_idx.cpu()
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        gy = ((ii.float() + 0.5) * ry).long().clamp(max=H - 1)
        gx = ((jj.float() + 0.5) * rx).long().clamp(max=W - 1)
        t = cur_map[(gy * W + gx).reshape(-1)]
        sel = t >= 0
        if bool(sel.any()):
            ty, tx = (t[sel] // wr).float(), (t[sel] % wr).float()
            si = (((ty + 0.5) * H / hr) / ry).long().clamp(0, h - 1)
            sj = (((tx + 0.5) * W / wr) / rx).long().clamp(0, w - 1)
            dst = sel.nonzero().squeeze(1)
            di, dj = dst // w, dst % w
            out[..., di.to(x.device), dj.to(x.device)] = x[..., si.to(x.device), sj.to(x.device)]
    elif spec.mode == "drag":
        for (hx, hy), (tx, ty) in zip(spec.handles, spec.targets):
            hi, hj = min(int(hy / ry), h - 1), min(int(hx / rx), w - 1)
            ti, tj = min(int(ty / ry), h - 1), min(int(tx / rx), w - 1)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a, b, c, d = hi + di, hj + dj, ti + di, tj + dj
                    if 0 <= a < h and 0 <= b < w and 0 <= c < h and 0 <= d < w:
                        out[..., c, d] = x[..., a, b]
    return out
