"""DragDiffusion on the host (Shi et al., arXiv 2306.14435): latent optimisation of z_t with motion supervision
on decoder features captured by core.host, then a DDIM denoising pass with the source's self-attention K/V.

Grids: the supervision map F(z_t) is the output of diffusers' `up_blocks[k]` (default the
second-to-last, SD1.5's up_blocks[2], which is at latent resolution) bilinearly resized to the *supervision grid*;
r_m, r_p and the stop threshold are in its cells. The reference sizes that grid at half the image resolution,
which on SD1.5 (VAE factor 8) is 4 cells per latent cell = 4 cells per cell of the default feature map (64 -> 256
at 512 px). The pack defines the grid by that ratio, SUPERVISION_PER_LATENT = 4 cells per latent cell, so that
r_m = 1, r_p = 3 and the 2.0 threshold mean what they mean in the reference relative to the features on any VAE
factor: identical to the reference on SD1.x/SD2.x/SDXL (factor 8); on the shapes demo model (factor 2, 32 px image,
16x16 latent) the grid is 64x64 = 2 cells per image pixel, where "half the image" would be the feature map
itself (every motion step a whole feature cell, r_m / r_p / threshold 4x coarser than the reference's).
The image size comes from the DRAG instructions, or latent size x 8.
The optimisation runs in the VP latent z_t = sqrt(ᾱ_t)·x (as the reference, so its lr applies unchanged).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from . import host
from . import inversion as inv
from .geometry import Grid, GeometryError
from .motion import DragResult, IterationCallback, optimize_latent
from .schedule import from_z, to_z

__all__ = ["DragSettings", "OptimizeOutcome", "feature_block_index", "feature_grid", "editable_mask", "optimize",
           "reference_layers", "reference_kv_model", "denoise", "run", "points_on_grid", "cells_to_image",
           "VAE_FACTOR", "KV_DTYPE", "GeometryError", "SUPERVISION_PER_LATENT"]

VAE_FACTOR = 8
KV_DTYPE = torch.float16         # the source K/V recorded for the reference-latent control
SUPERVISION_PER_LATENT = 4       # supervision cells per latent cell (reference: H/2 over H/8 on SD1.5)


@dataclass
class DragSettings:
    """DragDiffusion's knobs (the paper's defaults); r_m, r_p and threshold in supervision-grid cells
    (SUPERVISION_PER_LATENT per latent cell, as the reference on SD1.5)."""
    iterations: int = 80
    lr: float = 0.01
    r_m: int = 1
    r_p: int = 3
    lam: float = 0.1
    feature_block: int = -2          # diffusers up_blocks[k]; negative counts from the last (-2 = SD1.5's [2])
    threshold: float = 2.0
    half_precision: bool = False     # autocast the UNet calls (fp16 on CUDA, bf16 on CPU); z_t and Adam stay fp32
    truncate: bool = True            # stop the UNet after the feature block when no mask is drawn (off: benchmarks)


@dataclass
class OptimizeOutcome:
    """What `optimize` gives back: the optimised x_t as LATENT samples, the motion result and the grid used."""
    samples: torch.Tensor
    result: DragResult
    grid: Grid
    block: int
    masked: bool
    stats: dict = field(default_factory=dict)


def feature_block_index(model: Any, up_block: int) -> int:
    """Output-block index of diffusers' up_blocks[up_block] (negative counts from the last); ValueError if absent."""
    ups = host.up_block_outputs(model)
    k = int(up_block)
    if not -len(ups) <= k < len(ups):
        raise ValueError(f"up block {k} does not exist: this UNet has {len(ups)} up blocks "
                         f"(use 0..{len(ups) - 1}, or -1..-{len(ups)} counting from the last)")
    return ups[k]


def feature_grid(latent_hw: Sequence[int], image_size: Optional[Sequence[int]] = None,
                 factor: int = VAE_FACTOR) -> Grid:
    """The supervision grid: SUPERVISION_PER_LATENT cells per latent cell over the image rectangle the latent
    covers (= half the image resolution at VAE factor 8, the reference's sup_res; 2 cells per pixel on the shapes
    demo's 2x VAE).

    With image_size (W, H) the VAE factor is `factor` when the latent fits it, else W // latent width (a model
    with another VAE, e.g. the shapes demo's 2x); GeometryError when the latent cannot belong to that image."""
    lh, lw = int(latent_hw[0]), int(latent_hw[1])
    if image_size is None:
        image_size = (lw * factor, lh * factor)
    W, H = int(image_size[0]), int(image_size[1])
    f = factor if (H // factor, W // factor) == (lh, lw) else max(W // max(lw, 1), 1)
    lat = Grid.latent((W, H), f, hw=(lh, lw))
    k = SUPERVISION_PER_LATENT
    return lat.resized((lh * k, lw * k))


def editable_mask(mask: Optional[torch.Tensor], grid: Grid, latent_hw: Sequence[int]) -> Optional[torch.Tensor]:
    """The user's editable mask (image size, 1 = may change) cropped to the latent's image rectangle, binarised and
    nearest-resized to the latent [1, 1, h, w]; None when it constrains nothing (all editable, or empty as the
    reference treats an empty mask), so the forward can stop after the feature block."""
    if mask is None:
        return None
    m = torch.as_tensor(mask).detach().float().cpu()
    while m.ndim > 2:
        if m.shape[0] != 1:
            raise ValueError(f"mask: expected one mask, got shape {tuple(mask.shape)}")
        m = m[0]
    W, H = grid.image_size
    if tuple(m.shape) == (H, W):
        ox, oy = int(grid.offset[0]), int(grid.offset[1])
        cw, ch = round(grid.hw[1] * grid.scale[0]), round(grid.hw[0] * grid.scale[1])
        m = m[oy:oy + ch, ox:ox + cw]
    m = F.interpolate((m > 0).float()[None, None], size=(int(latent_hw[0]), int(latent_hw[1])), mode="nearest")
    total = float(m.sum())
    if total == 0.0 or total == m.numel():
        return None
    return m


def _autocast(device: torch.device, enabled: bool):
    """Autocast context for the UNet calls (fp16 on CUDA, bf16 elsewhere), or a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    dt = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dt)


def optimize(model: Any, positive: Any, samples: torch.Tensor, sigmas: torch.Tensor, handles: torch.Tensor,
             targets: torch.Tensor, grid: Grid, settings: DragSettings, mask: Optional[torch.Tensor] = None,
             on_iteration: Optional[IterationCallback] = None) -> OptimizeOutcome:
    """DragDiffusion latent optimisation of x_t = LATENT `samples` (noisy, at sigmas[0]) inside a host session.

    handles/targets: [N, 2] whole cells (x, y) of `grid`. F(z_t) = cond-half output of the feature block resized to
    grid.hw; F0 is computed once. Without a mask the UNet stops after the feature block (fs.truncate); with one,
    the call runs to the end for x_{t-1} = DDIM step to sigmas[1] (the mask term, in z space). cfg is 1 (the
    reference's real-image mode). Returns the optimised x_t as LATENT samples and the DragResult."""
    block = feature_block_index(model, settings.feature_block)
    sig = [float(s) for s in torch.as_tensor(sigmas).reshape(-1)[:2].tolist()]
    if len(sig) < 2 or sig[0] <= 0.0:
        raise ValueError("optimisation needs a noisy start: sigmas must hold sigma_t > 0 and the next sigma")
    s, s1 = sig
    m_lat = editable_mask(mask, grid, samples.shape[-2:])
    run = host.clone(model)
    fs = host.FeatureStore()
    host.patch_feature_capture(run, fs, [block])
    holder: dict = {}

    def loop(den: host.Denoiser, x: torch.Tensor, _sig: torch.Tensor) -> torch.Tensor:
        with host.grad_enabled(den):
            z_t = to_z(host.grad_input(x).detach(), s)

            def features_fn(zz: torch.Tensor):
                xx = from_z(zz, s)
                fs.truncate = m_lat is None and settings.truncate
                try:
                    with _autocast(xx.device, settings.half_precision):
                        x0 = den.x0(xx, s)
                    f = fs.half(block, 0)
                finally:
                    fs.truncate = False
                    fs.clear()
                # in the UNet's dtype (fp16 halves the map); losses and tracking upcast their small crops
                f = F.interpolate(f, size=grid.hw, mode="bilinear", align_corners=False)
                if m_lat is None:
                    return f, None
                eps = (xx - x0.float()) / s
                return f, to_z(xx + (s1 - s) * eps, s1)

            res = optimize_latent(z_t, features_fn, handles, targets, iterations=settings.iterations, lr=settings.lr,
                                  r_m=settings.r_m, r_p=settings.r_p, lam=settings.lam,
                                  mask=None if m_lat is None else m_lat.to(x.device),
                                  threshold=settings.threshold, on_iteration=on_iteration)
        holder["res"] = res
        holder["calls"] = den.calls
        return from_z(res.latent, s).to(x.dtype)

    with torch.inference_mode():
        out = host.session(run, positive, None, 1.0, samples, torch.tensor([s, s1]), loop)
    return OptimizeOutcome(samples=out, result=holder["res"], grid=grid, block=block, masked=m_lat is not None,
                           stats={"unet_calls": holder["calls"], "feature_calls": fs.calls})


def reference_layers(model: Any) -> list[host.AttnLayer]:
    """Decoder self-attention layers at the two highest resolutions that have attention (SD1.5: output blocks
    6-11, the reference's start_layer=10 of 16)."""
    dec = host.select_layers(model, part="output")
    levels = sorted({l.level for l in dec})[:2]
    return [l for l in dec if l.level in levels]


def reference_kv_model(model: Any, store: host.KVStore) -> Any:
    """A clone of `model` whose decoder self-attention (reference_layers) uses the source's K/V from `store`
    (replace mode, every step, both halves): the reference-latent control of the denoising pass."""
    run = host.clone(model)
    host.patch_kv_inject(run, host.KVInjection(store, mode="replace"), reference_layers(model))
    return run


def denoise(model: Any, positive: Any, negative: Any, cfg: float, samples: torch.Tensor, sigmas: torch.Tensor,
            on_step: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """DDIM from x_t = LATENT `samples` at sigmas[0] down to sigmas[-1] (= 0): the final LATENT samples."""
    sig = torch.as_tensor(sigmas).float()

    def loop(den: host.Denoiser, x: torch.Tensor, _s: torch.Tensor) -> torch.Tensor:
        return inv.sample(den, x, sig.to(x.device), on_step=on_step)

    with torch.inference_mode():
        return host.session(model, positive, negative, cfg if negative is not None else 1.0, samples, sig, loop)


def run(model: Any, positive: Any, negative: Any, cfg: float, samples: torch.Tensor, sigmas: torch.Tensor,
        handles: torch.Tensor, targets: torch.Tensor, grid: Grid, settings: DragSettings, *, steps: int,
        mask: Optional[torch.Tensor] = None, reference_kv: bool = True, kv_budget_bytes: int = 0,
        on_iteration: Optional[IterationCallback] = None, on_step: Optional[Callable[[int, int], None]] = None
        ) -> tuple[torch.Tensor, OptimizeOutcome]:
    """DragDiffusion's whole run (what the DragDiffusion node calls): DDIM inversion of the clean LATENT `samples`
    along `sigmas` (from a grid of `steps`; the source K/V recorded when reference_kv), motion supervision with
    point tracking on the inverted latent, then DDIM denoising (with the source's K/V in the decoder's two highest
    resolutions when reference_kv); the inversion is released afterwards. Returns (edited LATENT samples, the
    optimisation's outcome)."""
    x_t, inversion = inv.run(model, samples, positive, None, 1.0, sigmas, steps=steps,
                             kv_dtype=KV_DTYPE if reference_kv else None, kv_budget_bytes=kv_budget_bytes,
                             on_step=on_step)
    try:
        out = optimize(model, positive, x_t, sigmas, handles, targets, grid, settings, mask=mask,
                       on_iteration=on_iteration)
        den_model = reference_kv_model(model, inversion.kv) if reference_kv else model
        final = denoise(den_model, positive, negative, float(cfg), out.samples, sigmas, on_step=on_step)
    finally:
        inversion.release()
    return final, out


def points_on_grid(handles_px: torch.Tensor, targets_px: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Image px (x, y) -> the grid cells holding them, as float [N, 2] (DragDiffusion rounds to whole cells)."""
    return grid.cell_of(handles_px).float(), grid.cell_of(targets_px).float()


def cells_to_image(cells: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Grid cells (x, y) -> image px of their centres (float64 [N, 2])."""
    return grid.cell_center(cells.round().long())

