"""DragonDiffusion guided editing (Mou et al., arXiv 2307.02421; DiffEditor, arXiv 2402.02583) on core.host.

Three pieces, each usable alone:
- `FeatureGuidance`: a post-CFG guidance (host.patch_post_cfg_guidance) that, at each guided call, runs one extra
  UNet pass on the current x truncated after the deepest feature block, compares its decoder features with those
  of the inverted latent z_t^gud at the same σ (no grad, cached for the run) through the mode's energy E, and
  returns x̂0' = x̂0 − σ·g_z with g_z = ∂(s·E)/∂z_t (mask-split): the reference's ε̂ + g in ComfyUI's x0 form.
- `patch_memory_bank`: the inversion's decoder self-attention K/V injected from a step on (replace / concat / the
  region mix of appearance and paste).
- `run`: the whole edit: both of the above on a clone and the DDIM loop along the INVERSION's sigmas with the
  DiffEditor options (core.dragon_loop: regional SDE, time travel, start-latent init; off by default).
Masks and points live on the energy grid (2x the largest feature map; 4 px per cell for SD).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from . import dragon_energy as de
from . import host
from .dragon_loop import (EditOptions, ddim_eta_step, edit_loop, init_latent, sde_mask, start_latent,  # noqa: F401
                          vacated_cells)
from .inversion import DDIMInversion, latent_hw

UP_SCALE = 2          # energy grid = UP_SCALE x the largest feature map (DragonDiffusion's up_scale)
CACHE_SIGMAS = 2      # guidance-branch features kept per run (σ repeats: time travel, 2nd-order samplers)


# --------------------------------------------------------------------------------------------------------------
# Feature blocks and the energy grid
# --------------------------------------------------------------------------------------------------------------

def feature_blocks(model: Any) -> list[int]:
    """Output blocks whose outputs are the guidance features: the last two up-blocks that end in an upsample
    (diffusers up_blocks[1], [2] of SD1.5 = LDM output_blocks 5, 8; SDXL: 2, 5); small UNets fall back to the last."""
    ups = host.up_block_outputs(model)
    last = len(host.decoder_blocks(model)) - 1
    with_upsample = [b for b in ups if b != last]
    picks = with_upsample[-2:] if len(with_upsample) >= 2 else (with_upsample + [last])[-2:]
    return sorted(set(picks))


def _map_size(latent_hw: Sequence[int], level: int) -> tuple[int, int]:
    """Spatial size of a feature map at downsample `level` (1 = latent) for a latent of latent_hw (rounding up)."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    lv = 1
    while lv < level:
        h, w, lv = (h + 1) // 2, (w + 1) // 2, lv * 2
    return h, w


def energy_grid(model: Any, latent_hw: Sequence[int], blocks: Optional[Sequence[int]] = None) -> tuple[int, int]:
    """(H, W) of the energy grid for a latent of latent_hw: UP_SCALE x the largest feature map."""
    blocks = feature_blocks(model) if blocks is None else blocks
    levels = {b.index: b.level for b in host.decoder_blocks(model)}
    sizes = [_map_size(latent_hw, levels[b]) for b in blocks]
    h, w = max(sizes, key=lambda s: s[0] * s[1])
    return h * UP_SCALE, w * UP_SCALE


# --------------------------------------------------------------------------------------------------------------
# The edit: everything the energy needs, fixed once per edit
# --------------------------------------------------------------------------------------------------------------

@dataclass
class EditSpec:
    """One edit on the energy grid: mode, masks/points, term weights and the two gradient scales.

    edit_mask is M of the gradient split (drag: user mask; move: the object at its new place; appearance/paste:
    the base mask). scale_* = guidance_factor·energy_scale·1e3 (DragonDefaults.gradient_scale) x a multiplier."""
    mode: str
    grid: tuple[int, int]
    edit_mask: torch.Tensor
    scale_edit: float
    scale_content: float
    w_edit: float
    w_content: float
    w_contrast: float = 0.0
    w_inpaint: float = 0.0
    layer_weights: Optional[tuple[float, ...]] = None
    handles: tuple = ()
    targets: tuple = ()
    geom: Optional[de.MoveGeometry] = None
    base_mask: Optional[torch.Tensor] = None
    ref_mask: Optional[torch.Tensor] = None
    center: bool = False

    @property
    def needs_reference(self) -> bool:
        """Appearance and paste compare with a second (reference) image."""
        return self.mode in ("appearance", "paste")

    def normal(self) -> "EditSpec":
        """A copy whose tensors are normal (not inference-mode) tensors, so autograd may save them; a spec built
        inside a node (inference mode) goes through this before it enters a differentiable pass."""
        def cp(t):
            return t.detach().clone() if isinstance(t, torch.Tensor) else t
        with torch.inference_mode(False):
            geom = None if self.geom is None else de.MoveGeometry(
                **{f: cp(getattr(self.geom, f)) for f in self.geom.__dataclass_fields__})
            return replace(self, edit_mask=cp(self.edit_mask), geom=geom, base_mask=cp(self.base_mask),
                           ref_mask=cp(self.ref_mask))


def default_drag_mask(grid: tuple[int, int], handles: Sequence, targets: Sequence, margin: Optional[int] = None
                      ) -> torch.Tensor:
    """Edit mask when the user gave none: per pair, the box spanning handle and target patches, dilated by
    `margin` cells (default max(3, side/16))."""
    h, w = grid
    m = max(3, min(h, w) // 16) if margin is None else int(margin)
    out = torch.zeros(h, w, dtype=torch.bool)
    for (hx, hy), (tx, ty) in zip(handles, targets):
        x0, x1 = int(min(hx, tx)) - 1 - m, int(max(hx, tx)) + 2 + m
        y0, y1 = int(min(hy, ty)) - 1 - m, int(max(hy, ty)) + 2 + m
        out[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)] = True
    return out


def make_spec(mode: str, grid: tuple[int, int], *, energy_scale: float = 1.0, mask: Optional[torch.Tensor] = None,
              handles: Sequence = (), targets: Sequence = (), offset: Optional[tuple[float, float]] = None,
              resize_scale: float = 1.0, ref_mask: Optional[torch.Tensor] = None,
              w_edit: Optional[float] = None, w_content: Optional[float] = None,
              w_contrast: Optional[float] = None, w_inpaint: Optional[float] = None,
              layer_weights: Optional[Sequence[float]] = None, center: bool = False) -> EditSpec:
    """Build an EditSpec from grid-space inputs with the mode's reference defaults for any weight left None.

    move: mask = object, offset = (dx, dy) cells; drag: handles/targets (x, y) cells, mask = edit area (None =
    default_drag_mask); appearance/paste: mask = base region, ref_mask = reference region. energy_scale
    multiplies the mode's reference energy scale; center subtracts each image's mean feature before the cosines
    (de.center_features). Raises ValueError with a user-facing message."""
    d = de.mode_defaults(mode)
    pick = lambda v, dv: float(dv if v is None else v)  # noqa: E731
    we, wc = pick(w_edit, d.w_edit), pick(w_content, d.w_content)
    wt, wi = pick(w_contrast, d.w_contrast), pick(w_inpaint, d.w_inpaint)
    lw = tuple(layer_weights) if layer_weights is not None else d.layer_weights
    s = d.gradient_scale * float(energy_scale)
    common = dict(mode=mode, grid=tuple(grid), scale_edit=s, scale_content=s, w_edit=we, w_content=wc,
                  w_contrast=wt, w_inpaint=wi, layer_weights=lw, center=bool(center))
    if mode == "move":
        if mask is None:
            raise ValueError("move: the object mask is missing.")
        if offset is None:
            raise ValueError("move: the displacement (one handle -> target point pair) is missing.")
        geom = de.move_geometry(mask, dx=offset[0], dy=offset[1], resize_scale=resize_scale)
        return EditSpec(edit_mask=geom.cur, geom=geom, **common)
    if mode == "drag":
        if len(handles) == 0:
            raise ValueError("drag: no point pairs given.")
        for p in list(handles) + list(targets):
            de.point_patch(p, grid)  # raises when a point lies outside the grid
        m = default_drag_mask(grid, handles, targets) if mask is None else de._grid_mask(mask, grid, "mask")
        return EditSpec(edit_mask=m, handles=tuple(map(tuple, handles)), targets=tuple(map(tuple, targets)), **common)
    if mode in ("appearance", "paste"):
        if mask is None:
            raise ValueError(f"{mode}: the base mask (region to change in the edited image) is missing.")
        if ref_mask is None:
            raise ValueError(f"{mode}: the reference mask (region to take from the reference image) is missing.")
        mb = de._grid_mask(mask, grid, "mask")
        mr = de._grid_mask(ref_mask, grid, "ref_mask")
        if mode == "paste" and int(mb.sum()) != int(mr.sum()):
            raise ValueError(f"paste: the base mask covers {int(mb.sum())} cells but the reference mask "
                             f"{int(mr.sum())}; the pasted region must have the same size and shape in both images.")
        return EditSpec(edit_mask=mb, base_mask=mb, ref_mask=mr, **common)
    raise ValueError(f"unknown DragonDiffusion mode {mode!r}; expected one of {', '.join(de.MODES)}.")


def energies(spec: EditSpec, f_cur: de.Features, f_gud: de.Features, f_ref: Optional[de.Features] = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_edit, E_content) of the spec's mode for current / guidance-branch / reference features on the grid
    (each image's features centred first when spec.center)."""
    if spec.center:
        f_cur, f_gud = de.center_features(f_cur), de.center_features(f_gud)
        f_ref = None if f_ref is None else de.center_features(f_ref)
    lw = spec.layer_weights
    if spec.mode == "drag":
        return de.drag_energy(f_cur, f_gud, spec.handles, spec.targets, spec.edit_mask, w_edit=spec.w_edit,
                              w_content=spec.w_content, w_inpaint=spec.w_inpaint, layer_weights=lw)
    if spec.mode == "move":
        return de.move_energy(f_cur, f_gud, spec.geom, w_edit=spec.w_edit, w_content=spec.w_content,
                              w_contrast=spec.w_contrast, w_inpaint=spec.w_inpaint,
                              layer_weights=lw if lw is not None else (0.5,) * len(f_cur))
    fn = de.appearance_energy if spec.mode == "appearance" else de.paste_energy
    return fn(f_cur, f_gud, f_ref, spec.base_mask, spec.ref_mask, w_edit=spec.w_edit, w_content=spec.w_content,
              layer_weights=lw)


# --------------------------------------------------------------------------------------------------------------
# Guidance branch: the inverted latent at any σ
# --------------------------------------------------------------------------------------------------------------

def guidance_latent(inv: DDIMInversion, sigma: float, tol: float = 0.02) -> Optional[torch.Tensor]:
    """z_t^gud in sampler space at σ: the stored DDIM latent, linearly interpolated in σ between grid points (DDIM
    is Euler in x, so the path is piecewise linear in σ: exact at and between grid sigmas). None above the start."""
    sig = inv.sigmas.double()
    s = float(sigma)
    if s > float(sig[0]) * (1.0 + tol):
        return None
    if s >= float(sig[0]):
        return inv.latents[0]
    i = int((sig > s).sum()) - 1        # sig[i] > s >= sig[i + 1]
    i = min(max(i, 0), len(sig) - 2)
    a, b = float(sig[i]), float(sig[i + 1])
    t = 0.0 if a == b else (a - s) / (a - b)
    if t <= 1e-6:
        return inv.latents[i]
    if t >= 1.0 - 1e-6:
        return inv.latents[i + 1]
    return inv.latents[i] * (1.0 - t) + inv.latents[i + 1] * t


def sigma_percent_window(model: Any, start: float, end: float) -> Callable[[float], bool]:
    """Predicate σ -> in [start, end) of the denoising process in ComfyUI's percent convention (0 = pure noise):
    percent(σ) = 1 − t(σ)/999. The reference's 'i < 30 of 50' is [0, 0.6); 'from step 5' is [0.1, 1]."""
    start, end = float(start), float(end)

    def active(sigma: float) -> bool:
        if sigma <= 0:
            return False
        p = 1.0 - host.timestep_of(model, sigma) / 999.0
        return start - 1e-9 <= p < end or (end >= 1.0 and p >= start)
    return active


def inversion_step_window(inv: DDIMInversion, predicate: Callable[[int, int], bool]) -> Callable[[float], bool]:
    """Predicate σ -> predicate(step, steps) for the INVERSION's grid step nearest σ (0 = noisiest of the full
    grid of inv.steps steps), so the reference's step windows apply exactly when sampling along its sigmas."""
    sig = inv.sigmas[:-1].double()
    steps = int(inv.steps) or len(sig)
    offset = steps - len(sig)

    def active(sigma: float) -> bool:
        if sigma <= 0 or len(sig) == 0:
            return False
        d = (sig.log() - math.log(float(sigma))).abs()
        i = int(torch.argmin(d))
        if float(d[i]) > 0.02:
            return False
        return predicate(i + offset, steps)
    return active


# --------------------------------------------------------------------------------------------------------------
# Feature guidance (post-CFG)
# --------------------------------------------------------------------------------------------------------------

@dataclass
class GuidanceStats:
    """Counters of one FeatureGuidance (ints only): guided calls, truncated feature passes, backward passes."""
    calls: int = 0
    guided: int = 0
    feature_passes_grad: int = 0
    feature_passes_nograd: int = 0
    backward_passes: int = 0

    def as_dict(self) -> dict:
        """The counters as a plain dict."""
        return dict(self.__dict__)


class FeatureGuidance:
    """Post-CFG DragonDiffusion guidance of one edit: x̂0' = x̂0 − σ·g_z, g_z = sqrt(1+σ²)·(mask-split ∇_x(s·E)).

    inversion gives z_t^gud; reference (appearance/paste) the second image's inverted latents. `active(σ)` is the
    step window. observer(σ, x̂0_unguided, x̂0_guided) lets an owning loop see each guided call (DiffEditor's
    unguided direction term)."""

    def __init__(self, spec: EditSpec, inversion: DDIMInversion, blocks: Sequence[int],
                 reference: Optional[DDIMInversion] = None, active: Optional[Callable[[float], bool]] = None,
                 batched_backward: bool = False, truncate: bool = True,
                 observer: Optional[Callable[[float, torch.Tensor, torch.Tensor], None]] = None):
        if spec.needs_reference and reference is None:
            raise ValueError(f"{spec.mode}: the reference image's inversion is missing.")
        self.spec, self.inv, self.ref, self.blocks = spec.normal(), inversion, reference, list(blocks)
        self.active = active
        self.batched_backward = batched_backward
        self.truncate = truncate
        self.observer = observer
        self.suspended = False      # set by an owning loop around calls that must stay unguided
        self.stats = GuidanceStats()

    @property
    def enabled(self) -> bool:
        """False when both gradient scales are 0 (then no extra pass runs at all)."""
        return self.spec.scale_edit != 0 or self.spec.scale_content != 0

    def _branch_features(self, call: host.GuidanceCall, which: str, inv: DDIMInversion) -> Optional[list]:
        """Features of the guidance branch (or reference) latent at this σ, no grad, cached for the run per σ."""
        cache: OrderedDict = call.run.setdefault("dragon_features", OrderedDict())
        key = (which, round(math.log(max(call.sigma, 1e-8)), 6))
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        lat = guidance_latent(inv, call.sigma)
        if lat is None:
            return None
        lat = lat.to(device=call.x.device, dtype=call.x.dtype)
        if lat.shape[0] != call.x.shape[0]:
            lat = lat.expand(call.x.shape[0], *lat.shape[1:])
        with torch.no_grad():
            feats = de.to_energy_grid(self._features(call, lat), self.spec.grid)
        self.stats.feature_passes_nograd += 1
        cache[key] = feats
        while len(cache) > CACHE_SIGMAS * (2 if self.ref is not None else 1):
            cache.popitem(last=False)
        return feats

    def _features(self, call: host.GuidanceCall, x: torch.Tensor) -> list[torch.Tensor]:
        """Truncated feature pass (or a full pass when truncate is off: the reference design, for the bench)."""
        if self.truncate:
            return call.features(x)
        last = len(host.decoder_blocks(call.model)) - 1
        return call.features(x, blocks=call.blocks + [last])[:len(call.blocks)]

    def __call__(self, call: host.GuidanceCall) -> Optional[torch.Tensor]:
        self.stats.calls += 1
        if self.suspended or not self.enabled or (self.active is not None and not self.active(call.sigma)):
            return None
        spec = self.spec
        with call.differentiable():
            f_gud = self._branch_features(call, "gud", self.inv)
            if f_gud is None:
                return None
            f_ref = self._branch_features(call, "ref", self.ref) if self.ref is not None else None
            if spec.needs_reference and f_ref is None:
                return None
            x = host.grad_input(call.x)
            f_cur = de.to_energy_grid(self._features(call, x), spec.grid)
            self.stats.feature_passes_grad += 1
            e_edit, e_con = energies(spec, f_cur, f_gud, f_ref)
            nb = int(e_edit.requires_grad and spec.scale_edit != 0) + int(e_con.requires_grad and spec.scale_content != 0)
            g = de.guidance_gradient(e_edit, e_con, x, spec.edit_mask, spec.scale_edit, spec.scale_content,
                                     batched=self.batched_backward)
            self.stats.backward_passes += 1 if (self.batched_backward and nb == 2) else nb
        s = call.sigma
        x0 = call.x0 - (s * math.sqrt(1.0 + s * s)) * g.to(device=call.x0.device, dtype=call.x0.dtype)
        self.stats.guided += 1
        if self.observer is not None:
            self.observer(s, call.x0, x0)
        return x0


def patch_feature_guidance(model: Any, guidance: FeatureGuidance) -> Any:
    """Install `guidance` on `model` (a clone) so that every sampler applies it."""
    return host.patch_post_cfg_guidance(model, guidance, guidance.blocks)


# --------------------------------------------------------------------------------------------------------------
# Memory bank K/V
# --------------------------------------------------------------------------------------------------------------

KV_MODES = {"move": "replace", "drag": "concat", "appearance": "mix", "paste": "mix"}


def _token_cells(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Flat token indices of a bool mask nearest-resized to a layer's token grid (the official AttnProcessor's
    F.interpolate of the mask, > 0.5); never empty for a non-empty mask (then the best-covered token, where the
    official code would select none)."""
    m = mask.float()[None, None]
    idx = (F.interpolate(m, size=hw, mode="nearest")[0, 0].reshape(-1) > 0.5).nonzero().squeeze(1)
    if idx.numel() == 0 and bool(mask.any()):
        idx = F.interpolate(m, size=hw, mode="area")[0, 0].reshape(-1).argmax().reshape(1)
    return idx


def region_mix(base_mask: torch.Tensor, ref_store: host.KVStore, ref_mask: torch.Tensor) -> host.MixFn:
    """K/V mix of appearance / paste: [bank tokens outside the base mask ; reference tokens inside the reference
    mask] (masks on any grid, resized to each layer's tokens); the bank alone where the reference has no K/V."""
    cache: dict = {}

    def mix(layer: host.AttnLayer, extra: dict, k_own, v_own, kb, vb):
        s = extra.get("sigmas")
        sigma = float(torch.as_tensor(s).reshape(-1)[0]) if s is not None else float("nan")
        ref = ref_store.get(sigma, layer, 0, device=kb.device, dtype=kb.dtype)
        if ref is None:
            return kb, vb
        hw = extra.get("original_shape", [0, 0, *base_mask.shape[-2:]])[-2:]
        th, tw = layer.tokens(hw)
        key = (th, tw)
        if key not in cache:
            cache[key] = (_token_cells(~base_mask, (th, tw)), _token_cells(ref_mask, (th, tw)))
        out_idx, in_idx = (t.to(kb.device) for t in cache[key])
        kr, vr = ref
        n = kb.shape[0]
        kr = kr.expand(n, *kr.shape[1:]) if kr.shape[0] != n else kr
        vr = vr.expand(n, *vr.shape[1:]) if vr.shape[0] != n else vr
        k = torch.cat([kb.index_select(1, out_idx), kr.index_select(1, in_idx)], dim=1)
        v = torch.cat([vb.index_select(1, out_idx), vr.index_select(1, in_idx)], dim=1)
        return k, v
    return mix


def patch_memory_bank(model: Any, inversion: DDIMInversion, mode: str, when: Optional[Callable[[float], bool]] = None,
                      base_mask: Optional[torch.Tensor] = None, reference: Optional[DDIMInversion] = None,
                      ref_mask: Optional[torch.Tensor] = None) -> host.KVInjection:
    """Inject the inversion's decoder self-attention K/V into `model` (a clone): replace (move), concat (drag) or
    the region mix (appearance / paste); returns the injection (hit / miss counters)."""
    if inversion.kv is None or len(inversion.kv) == 0:
        raise ValueError("the inversion has no recorded K/V: enable record_kv on DDIM Inversion.")
    kind = KV_MODES.get(mode)
    if kind is None:
        raise ValueError(f"unknown DragonDiffusion mode {mode!r}; expected one of {', '.join(KV_MODES)}.")
    mix = None
    if kind == "mix":
        if reference is None or reference.kv is None or len(reference.kv) == 0:
            raise ValueError(f"{mode}: the reference inversion with recorded K/V is missing (record_kv on).")
        if base_mask is None or ref_mask is None:
            raise ValueError(f"{mode}: the base mask and the reference mask are both needed.")
        mix = region_mix(base_mask.bool(), reference.kv, ref_mask.bool())
    layers = host.select_layers(model, part="output")
    check_bank_fits(inversion.kv, layers)
    inj = host.KVInjection(inversion.kv, mode=kind, mix=mix, when=when)
    host.patch_kv_inject(model, inj, layers)
    return inj


def check_bank_fits(store: host.KVStore, layers: Sequence[host.AttnLayer]) -> None:
    """ValueError when a K/V bank was not recorded on these layers (another model) or has another width."""
    if not store.sigmas:
        raise ValueError("the K/V bank is empty.")
    s0 = store.sigmas[0]
    for layer in layers:
        kv = store.get(s0, layer, 0)
        if kv is None:
            raise ValueError(f"the K/V bank has no entry for decoder layer {layer.key}: it was recorded with "
                             "another model.")
        if kv[0].shape[-1] != layer.channels:
            raise ValueError(f"the K/V bank's width {kv[0].shape[-1]} at layer {layer.key} does not match the "
                             f"model's {layer.channels}: it was recorded with another model.")


# --------------------------------------------------------------------------------------------------------------
# The whole edit
# --------------------------------------------------------------------------------------------------------------

def run(model: Any, positive: Any, negative: Any, cfg: float, inv: DDIMInversion, spec: EditSpec,
        blocks: Sequence[int], defaults: de.DragonDefaults, opts: EditOptions, reference: Optional[DDIMInversion] = None,
        stats: Optional[dict] = None, memory_bank: bool = True, on_step: Optional[Callable[[int, int], None]] = None,
        **guidance_kw: Any) -> torch.Tensor:
    """DragonDiffusion's whole edit (what the DragonDiffusion node calls), on a clone of `model`: the memory-bank
    K/V (the mode's kind, in the reference's step window), the feature guidance (unless both scales are 0) and the
    DDIM loop along the inversion's sigmas from its start latent (init_paste / vacate_noise applied). Returns
    LATENT samples; `stats` (if given) receives the guidance counters and the denoiser call count. ValueError
    (patch_memory_bank) when the K/V bank does not fit the model or the reference's K/V are missing."""
    m = host.clone(model)
    if memory_bank:
        kv_when = inversion_step_window(inv, lambda i, n: de.kv_inject_active(i, n, defaults))
        masks = (spec.base_mask, spec.ref_mask) if spec.needs_reference else (None, None)
        patch_memory_bank(m, inv, spec.mode, when=kv_when, base_mask=masks[0], reference=reference, ref_mask=masks[1])
    guidance = None
    if spec.scale_edit != 0 or spec.scale_content != 0:
        g_when = inversion_step_window(inv, lambda i, n: de.guidance_active(i, n, defaults, opts.sparsify))
        guidance = FeatureGuidance(spec, inv, blocks, reference=reference, active=g_when, **guidance_kw)
        patch_feature_guidance(m, guidance)
    latent_mask = de.mask_to_latent(sde_mask(spec), latent_hw(inv))
    holder: dict = {}

    def loop(den: host.Denoiser, x: torch.Tensor, _sig: torch.Tensor) -> torch.Tensor:
        ref_start = reference.start.to(device=x.device, dtype=x.dtype) if reference is not None else None
        x_start = start_latent(inv.start.to(device=x.device, dtype=x.dtype), spec, opts, float(inv.sigmas[0]),
                               ref_start)
        out = edit_loop(den, x_start, inv, guidance, defaults, opts, latent_mask=latent_mask, on_step=on_step)
        holder["calls"] = den.calls
        return out

    samples = host.process_out(model, inv.start.clone())
    out = host.session(m, positive, negative, cfg, samples, inv.sigmas, loop, seed=int(opts.seed))
    if stats is not None:
        stats.update(guidance.stats.as_dict() if guidance is not None else {})
        stats["denoiser_calls"] = holder.get("calls", 0)
    return out
