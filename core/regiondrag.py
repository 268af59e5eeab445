"""RegionDrag (Lu, Li, Han, ECCV'24, arXiv 2407.18247): drags by latent copy-paste and self-attention K/V swap.

One stochastic inversion of the clean latent to a start fraction of the grid (the reference's "cycle-SDE": a
forward diffusion chain whose DDPM noise maps are stored, as in edit-friendly DDPM inversion), which keeps every
per-step state x_t, the noise maps z_t and the self-attention K/V of every layer; then one DDPM(η=1) pass with
those noise maps, where before each step the cached handle cells x_t[handle] are pasted onto the target cells,
the cached x_t is restored outside the editable mask, and every self-attention layer gets the cached K/V of
its step. The vacated handle area is re-noised once on the start latent with strength α (`noise_scale`).

Sampler space (ComfyUI): x = z_t/sqrt(ᾱ_t) = z_0 + σ·ε. The reference's re-noise z ← sqrt(1−α²)·z + α·n
reads x ← sqrt(1−α²)·x + α·sqrt(1+σ²)·n here (same n, divided by sqrt(ᾱ)).

Paste schedule: paste at step i (of n) while i < (1 − paste_end)·n. The reference code compares a DDPM
timestep with a step count (`t >= int(end_t·steps)`), so it pastes at every step; `paste_every_step` keeps that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from . import ddpm_inversion as ef
from . import host, schedule, seeds
from .drag_schema import DragInstructions
from .geometry import CellPairs, GeometryError, Grid, correspondences, idw, region_outline
from .inversion import Inversion, kv_estimate

kv_cache_bytes = host.kv.estimate_bytes     # the K/V size formula, under the name tests and benches read here

DEFAULT_STEPS = 20
DEFAULT_STRENGTH = 0.5
DEFAULT_NOISE_SCALE = 0.6
DEFAULT_PASTE_END = 0.2
SIGMA_RTOL = 1e-4
MAX_VAE_FACTOR = 64      # image side / latent side of any VAE (SD 8, the shapes demo 2); beyond: a wrong image_size


class RegionDragError(ValueError):
    """Instructions or inputs RegionDrag cannot run with; `field` names the offending input ('drag', 'mask'...)."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(message)


# ====================================================================== the INVERSION
@dataclass
class RegionInversion:
    """RegionDrag's inversion (a core.inversion.Inversion): the stochastic inversion (an ef.Inversion: states xts,
    noise maps zs, residual) and the self-attention K/V of every layer at every step (a KVStore)."""

    ef: ef.Inversion
    kv: Optional[host.KVStore] = None
    steps: int = 0                      # steps of the full grid the start fraction was taken from
    model_id: int = 0
    seed: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def sigmas(self) -> torch.Tensor:
        """Sampling sigmas, descending from the start to 0 (CPU)."""
        return self.ef.sigmas.detach().cpu()

    @property
    def num_latents(self) -> int:
        return self.ef.num_latents

    def latent(self, i: int) -> torch.Tensor:
        """The state x_i in sampler space at sigmas[i] (0 = start, the last = the clean latent)."""
        return self.ef.xts[i]

    @property
    def noise_maps(self) -> ef.Inversion:
        return self.ef

    @property
    def latents(self) -> list[torch.Tensor]:
        """Per-step states x_t in sampler space (latents[0] = start, latents[-1] = the clean latent)."""
        return list(self.ef.xts.unbind(0)) if self.ef.xts.numel() else []

    @property
    def start(self) -> torch.Tensor:
        """The start latent x_T (sampler space)."""
        return self.ef.xts[0]

    def nbytes(self) -> int:
        """Bytes held: states, noise maps, residual and K/V."""
        t = [self.ef.xts, self.ef.zs] + ([self.ef.residual] if self.ef.residual is not None else [])
        return sum(x.numel() * x.element_size() for x in t) + (self.kv.nbytes() if self.kv is not None else 0)

    def release(self) -> None:
        """Release the cached tensors (the K/V cache first: it is the big one)."""
        host.kv.free_store(self.kv)
        empty = self.ef.xts.new_zeros((0,))
        self.ef = ef.Inversion(sigmas=self.ef.sigmas, xts=empty, zs=empty, eta=self.ef.eta, residual=None,
                               skipped=self.ef.skipped)

    free = release


def cached_states(inversion: Any) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
    """(sigmas float64 CPU, i -> cached state at sigmas[i]) of an INVERSION (core.inversion.Inversion) that holds a
    state at every one of its sigmas."""
    if not isinstance(inversion, Inversion):
        raise RegionDragError("inversion", f"expected an INVERSION (DDIM Inversion, DDPM Inversion or RegionDrag), "
                                           f"got {type(inversion).__name__}")
    sig = torch.as_tensor(inversion.sigmas).detach().to("cpu", torch.float64).reshape(-1)
    n = inversion.num_latents
    if n == 0:
        raise RegionDragError("inversion", "holds no cached latents (it was freed after its run); run the inversion "
                                           "again")
    if n != sig.numel():
        raise RegionDragError("inversion", f"holds {n} latents for {sig.numel()} sigmas; it is not a per-step "
                                           f"inversion this node can paste from")
    return sig, inversion.latent


# ====================================================================== the edit plan
@dataclass(frozen=True)
class EditPlan:
    """What to do to the latent before each step: paste `pairs` (target <- handle cells) while the schedule says so,
    restore the cached state where `editable` is 0, and re-noise `vacate` once on the start latent."""

    pairs: CellPairs
    editable: torch.Tensor              # float [h, w]: 1 = may change, 0 = restored from the cache every step
    vacate: torch.Tensor                # bool [h, w]: handle cells no target covers (re-noised with α)
    noise_scale: float = DEFAULT_NOISE_SCALE
    paste_end: float = DEFAULT_PASTE_END
    paste_every_step: bool = False
    seed: int = 0

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.pairs.grid_hw

    @property
    def is_noop(self) -> bool:
        """True when nothing is pasted and nothing is restored (the denoising then reproduces the input)."""
        return len(self.pairs) == 0 and bool((self.editable > 0.5).all())

    def paste_steps(self, n: int) -> int:
        """How many of n steps paste: all with paste_every_step, else those with index i < (1 − paste_end)·n."""
        if self.paste_every_step:
            return n
        return max(0, min(n, math.ceil((1.0 - self.paste_end) * n - 1e-9)))

    def pastes_at(self, i: int, n: int) -> bool:
        """Whether step i of n pastes the handle cells onto the targets."""
        return i < self.paste_steps(n)


def infer_factor(image_size: Sequence[int], latent_hw: Sequence[int]) -> int:
    """The VAE downscale factor f with (H//f, W//f) == latent_hw (8 for SD, 2 for the shapes demo)."""
    W, H = int(image_size[0]), int(image_size[1])
    h, w = int(latent_hw[0]), int(latent_hw[1])
    for f in sorted({max(1, W // max(w, 1)), max(1, H // max(h, 1)), max(1, round(W / max(w, 1)))}):
        if W // f == w and H // f == h and f <= MAX_VAE_FACTOR:  # a bigger "factor" is a wrong image_size
            return f
    raise RegionDragError("drag", f"the drag instructions are for a {W}x{H} image, which does not match the "
                                  f"{w}x{h} latent at any VAE factor up to {MAX_VAE_FACTOR} (was the image resized or "
                                  f"cropped after the drag was drawn?)")


def latent_grid(drag: DragInstructions, latent_hw: Sequence[int]) -> Grid:
    """The latent grid of the drag's image (VAE factor inferred from the image and latent sizes)."""
    if drag.image_size is None:
        raise RegionDragError("drag", "has no image_size, so its pixel coordinates cannot be placed on the latent; "
                                      "add \"image_size\": [W, H] or connect the image (IMAGE + VAE)")
    f = infer_factor(drag.image_size, latent_hw)
    return Grid.latent(drag.image_size, f, latent_hw)


def _check_region_targets(drag: DragInstructions, grid: Grid) -> None:
    """A region moved by points whose moved outline leaves the image (beyond half a cell) is an error, as a target
    shape outside the image is for the schema."""
    W, H = drag.image_size
    tol = 0.5 * max(grid.scale)
    for i, r in enumerate(drag.regions):
        if not r.moved_by_points:
            continue
        outline = region_outline(r, "handle")
        hp = torch.tensor([p[0] for p in r.points], dtype=torch.float64).reshape(-1, 2)
        tp = torch.tensor([p[1] for p in r.points], dtype=torch.float64).reshape(-1, 2)
        moved = outline + idw(outline, hp, tp - hp)
        lo, hi = moved.min(0).values, moved.max(0).values
        if float(lo[0]) < -tol or float(lo[1]) < -tol or float(hi[0]) > W + tol or float(hi[1]) > H + tol:
            raise RegionDragError("drag", f"regions[{i}]: the points move the region to x {float(lo[0]):.0f}..."
                                          f"{float(hi[0]):.0f}, y {float(lo[1]):.0f}...{float(hi[1]):.0f}, outside "
                                          f"the {W}x{H} image; keep the moved region inside the image")


def make_plan(drag: DragInstructions, latent_hw: Sequence[int], mask: Optional[torch.Tensor] = None, *,
              noise_scale: float = DEFAULT_NOISE_SCALE, paste_end: float = DEFAULT_PASTE_END,
              paste_every_step: bool = False, seed: int = 0, point_radius: Optional[float] = None,
              follow_nearest_handle: bool = False) -> EditPlan:
    """Drag instructions (image px, image_size set) + optional editable mask [H, W] at image size -> EditPlan on the
    latent grid. Without a mask the drag's own mask is used, else the whole image is editable (the reference UI).
    follow_nearest_handle (the DiT path, LazyDrag's correspondence map): with point pairs and a mask, every cell of
    the mask (one that leaves some cells out) moves with its nearest handle (`nearest_handle_pairs`) and the
    targets become editable too."""
    if not math.isfinite(float(noise_scale)) or float(noise_scale) < 0:
        raise RegionDragError("noise_scale", f"must be 0 or more, got {noise_scale}")
    if not 0.0 <= float(paste_end) <= 1.0:
        raise RegionDragError("paste_end", f"must be between 0 and 1, got {paste_end}")
    grid = latent_grid(drag, latent_hw)
    _check_region_targets(drag, grid)
    try:
        pairs = CellPairs.cat(correspondences(drag, grid, point_radius), grid_hw=grid.hw)
    except GeometryError as e:
        raise RegionDragError("drag", str(e)) from None
    h, w = grid.hw
    m = mask if mask is not None else drag.mask_tensor()
    if m is None:
        editable = torch.ones(h, w)
    else:
        m = torch.as_tensor(m).detach().float().cpu()
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        W, H = grid.image_size
        if m.ndim != 2 or tuple(m.shape) != (H, W):
            raise RegionDragError("mask", f"is {m.shape[-1]}x{m.shape[-2] if m.ndim >= 2 else 1} but the image is "
                                          f"{W}x{H}; use a mask of the image's size")
        if not bool((m > 0.5).any()):
            raise RegionDragError("mask", "is empty (all black), so nothing may change; paint the editable area")
        editable = (grid.coverage(m) >= 0.5).float()
    if follow_nearest_handle and drag.points and not bool((editable > 0.5).all()):   # an all-ones mask = no mask
        region_pairs = [p for p in correspondences(drag, grid, point_radius)[len(drag.points):]]
        pairs = CellPairs.cat([nearest_handle_pairs(drag, grid, editable > 0.5)] + region_pairs, grid_hw=grid.hw)
        editable = torch.maximum(editable, pairs.dst_mask().float())
    vacate = torch.zeros(h, w, dtype=torch.bool)
    if len(pairs):
        vacate = pairs.src_mask() & ~pairs.dst_mask() & (editable > 0.5)
    return EditPlan(pairs=pairs, editable=editable, vacate=vacate, noise_scale=float(noise_scale),
                    paste_end=float(paste_end), paste_every_step=bool(paste_every_step), seed=int(seed))


def nearest_handle_pairs(drag: DragInstructions, grid: Grid, cells: torch.Tensor) -> CellPairs:
    """LazyDrag's explicit correspondence map for point drags: every cell of `cells` (bool [h, w], the masked
    object) moves by the displacement of its nearest handle (winner takes all); targets outside the grid are
    dropped, and where two cells land on one target the later one (row-major) wins."""
    h_px = torch.tensor([p[0] for p in drag.points], dtype=torch.float64).reshape(-1, 2)
    t_px = torch.tensor([p[1] for p in drag.points], dtype=torch.float64).reshape(-1, 2)
    yx = torch.nonzero(cells)
    if yx.shape[0] == 0 or h_px.shape[0] == 0:
        return CellPairs.cat([], grid_hw=grid.hw)
    src = yx[:, [1, 0]]
    centre = grid.cell_center(src)                                  # [N, 2] px
    nearest = torch.cdist(centre, h_px).argmin(1)
    moved = centre + (t_px - h_px)[nearest]
    uv = torch.floor(grid.to_grid(moved)).long()
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < grid.hw[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < grid.hw[0])
    return CellPairs(src[inside], uv[inside], grid.hw, "nearest handle").unique_targets()


# ====================================================================== per-step operations
def renoise(x: torch.Tensor, where: torch.Tensor, alpha: float, sigma: float,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Vacate: inside `where` [h, w], z ← sqrt(1−α²)·z + α·n on z_t = sqrt(ᾱ)·x (the image term drops out for
    α ≥ 1, as in the reference), i.e. x ← sqrt(1−α²)·x + α·sqrt(1+σ²)·n; n ~ N(0, I) from `generator` (CPU)."""
    alpha = float(alpha)
    if alpha <= 0 or not bool(where.any()):
        return x
    keep = math.sqrt(1.0 - alpha * alpha) if alpha < 1.0 else 0.0
    n = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    noisy = keep * x + alpha * math.sqrt(1.0 + float(sigma) ** 2) * n
    return torch.where(where.to(x.device), noisy, x)


def _renoise_generator(seed: int) -> torch.Generator:
    """CPU generator of the vacate noise (offset from the inversion's seed so the draws differ)."""
    return seeds.generator(seed, 1)


def apply_step(x: torch.Tensor, cached: torch.Tensor, plan: EditPlan, i: int, n: int) -> torch.Tensor:
    """Before step i of n: paste cached handle cells onto the targets (while the schedule says so), then restore
    the cached state outside the editable mask."""
    cached = cached.to(x.device, x.dtype)
    if len(plan.pairs) and plan.pastes_at(i, n):
        x = plan.pairs.paste(cached, x)
    return restore_outside(x, cached, plan)


def restore_outside(x: torch.Tensor, cached: torch.Tensor, plan: EditPlan) -> torch.Tensor:
    """x where editable, the cached state elsewhere."""
    e = plan.editable
    if bool((e > 0.5).all()):
        return x
    m = e.to(x.device, x.dtype)
    return x * m + cached.to(x.device, x.dtype) * (1 - m)


def _moved_residual(residual: Optional[torch.Tensor], plan: EditPlan) -> Optional[torch.Tensor]:
    """The last step's residual x0 − x̂0 moved with the content (targets take the handles'; vacated cells none)."""
    if residual is None or len(plan.pairs) == 0:
        return residual
    r = plan.pairs.paste(residual, residual)
    return torch.where(plan.vacate.to(r.device), torch.zeros_like(r), r)


# ====================================================================== the two passes
def grid_sigmas(model: Any, steps: int, strength: float) -> torch.Tensor:
    """The sampling sigmas of the RegionDrag pass: the last round(strength·steps) steps of the DDIM grid, then 0."""
    full = host.ddim_sigmas(model, int(steps))
    k = int(steps) - int(round(float(strength) * int(steps)))
    return full[k:]


def invert_cycle_sde(denoise: ef.DenoiseFn, x0: torch.Tensor, sigmas: torch.Tensor, *, seed: int = 0,
                     callback: Optional[Callable[[int, int], None]] = None) -> ef.Inversion:
    """RegionDrag's stochastic ("cycle-SDE", from SDE-Drag) inversion: the states are a forward diffusion chain
    x_{i} = x_{i+1} + sqrt(σ_i² − σ_{i+1}²)·n_i from the clean latent up (not independent draws), then from the
    noisiest step down the noise map z_i = (x_{i+1} − μ_i(x_i))/σ_up,i of the DDPM(η=1) step that the sampler will
    take, so sampling with the maps reproduces the chain (same Inversion as the edit-friendly one)."""
    # With independent draws (edit-friendly DDPM) z has variance (σ_i² + σ_{i+1}²)/(σ_i² − σ_{i+1}²) ≈ 6 on a 20-step
    # grid: an edited region then keeps that excess noise to the end. On the chain z is the posterior noise, ≈ N(0, I).
    s64 = ef.check_sigmas(sigmas)
    n = s64.numel() - 1
    gen = seeds.generator(seed)
    xts = torch.empty((n + 1, *x0.shape), dtype=x0.dtype, device=x0.device)
    xts[n] = x0
    for i in reversed(range(n)):                     # up the chain, least noisy first
        e = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(x0.device, x0.dtype)
        xts[i] = xts[i + 1] + math.sqrt(max(float(s64[i]) ** 2 - float(s64[i + 1]) ** 2, 0.0)) * e
    zs = torch.zeros((n, *x0.shape), dtype=x0.dtype, device=x0.device)
    residual: Optional[torch.Tensor] = None
    sig_t = sigmas.detach()
    for j in range(n):
        s, sn = float(s64[j]), float(s64[j + 1])
        x0_hat = denoise(xts[j], sig_t[j])
        if sn <= 0.0:
            residual = xts[j + 1] - x0_hat
            xts[j + 1] = x0_hat + residual
        else:
            _, up = ef.ancestral_sigmas(s, sn, 1.0)
            zs[j] = (xts[j + 1] - ef.ddpm_step(xts[j], x0_hat, s, sn, None, 1.0)) / up
            xts[j + 1] = ef.ddpm_step(xts[j], x0_hat, s, sn, zs[j], 1.0)   # exactly what the sampler computes
        if callback is not None:
            callback(j, n)
    return ef.Inversion(sigmas=sigmas.detach().clone(), xts=xts, zs=zs, eta=1.0, residual=residual, skipped=0)


def invert(model: Any, positive: Any, samples: torch.Tensor, sigmas: torch.Tensor, *, seed: int = 0,
           record_kv: bool = True, kv_dtype: torch.dtype = torch.float16,
           on_step: Optional[Callable[[int, int], None]] = None, steps: int = 0, chained: bool = True
           ) -> RegionInversion:
    """Stochastic inversion of LATENT samples on `sigmas` (descending, ends 0), CFG 1 on `positive`: the cycle-SDE
    chain (chained=True, RegionDrag) or edit-friendly independent draws (core.ddpm_inversion); the self-attention
    K/V of every layer is recorded on a clone into a KVStore (kv_dtype, offload device)."""
    run = host.clone(model)
    store = None
    if record_kv:
        # scoped: RegionDrag's run releases its store in `finally`
        store = host.kv.build_store(model, kv_estimate(model, samples, sigmas, kv_dtype), dtype=kv_dtype, scoped=True)
        host.patch_kv_record(run, store)
    holder: dict = {}

    def loop(den: host.Denoiser, x: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        cb = (lambda j, total: on_step(j + 1, total)) if on_step is not None else None
        fn = (lambda xx, s: den.x0(xx, s))
        if chained:
            inv = invert_cycle_sde(fn, x, sig.to(x.device), seed=seed, callback=cb)
        else:
            inv = ef.invert_edit_friendly(fn, x, sig.to(x.device), seed=seed, eta=1.0, callback=cb)
        holder["inv"], holder["calls"] = inv, den.calls
        return inv.xts[0]

    try:
        host.session(run, positive, None, 1.0, samples, sigmas, loop, seed=seed)
    except BaseException:
        host.kv.free_store(store)
        raise
    result = RegionInversion(ef=holder["inv"], kv=store, steps=int(steps), model_id=id(host.base_model(model)),
                             seed=int(seed))
    result.extras["unet_calls"] = holder["calls"]
    return result


def kv_swap_model(model: Any, kv: host.KVStore, layers: Optional[Sequence[host.AttnLayer]] = None,
                  mode: str = "replace") -> tuple[Any, host.KVInjection]:
    """(clone of `model` whose self-attention layers (default all) take the cached K/V of the matching step,
    the KVInjection with its hit/miss counters)."""
    run = host.clone(model)
    injection = host.KVInjection(kv, mode=mode)
    host.patch_kv_inject(run, injection, layers)
    return run, injection


def denoise(model: Any, positive: Any, inversion: RegionInversion, plan: EditPlan, *, swap_kv: bool = True,
            on_step: Optional[Callable[[int, int], None]] = None, stats: Optional[dict] = None) -> torch.Tensor:
    """The RegionDrag DDPM(η) pass with the inversion's noise maps: re-noise the vacated cells on the start latent,
    then before every step paste / restore / swap K/V. Returns LATENT samples of the edited clean latent."""
    inv = inversion.ef
    if tuple(inv.xts.shape[-2:]) != tuple(plan.latent_hw):
        raise RegionDragError("drag", f"the plan is for a {plan.latent_hw[1]}x{plan.latent_hw[0]} latent but the "
                                      f"inversion holds {inv.xts.shape[-1]}x{inv.xts.shape[-2]}")
    injection = None
    if swap_kv and inversion.kv is not None:
        run, injection = kv_swap_model(model, inversion.kv)
    else:
        run = host.clone(model)
    sig64 = inv.sigmas.detach().to("cpu", torch.float64)
    n = inv.steps
    holder: dict = {}

    def loop(den: host.Denoiser, x_in: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        xts = inv.xts.to(x_in.device, x_in.dtype)
        zs = inv.zs.to(x_in.device, x_in.dtype)
        x = renoise(xts[0].clone(), plan.vacate, plan.noise_scale, float(sig64[0]), _renoise_generator(plan.seed))
        residual = _moved_residual(inv.residual, plan)
        for i in range(n):
            x = apply_step(x, xts[i], plan, i, n)
            x0_hat = den.x0(x, sig[i])
            s, sn = float(sig64[i]), float(sig64[i + 1])
            if sn <= 0.0:
                x = x0_hat + residual.to(x0_hat) if residual is not None else x0_hat
            else:
                x = ef.ddpm_step(x, x0_hat, s, sn, zs[i], inv.eta)
            if on_step is not None:
                on_step(i + 1, n)
        x = restore_outside(x, xts[n], plan)
        holder["calls"] = den.calls
        return x

    out = host.session(run, positive, None, 1.0, host.process_out(model, inv.xts[0].clone()), inv.sigmas, loop,
                       seed=plan.seed)
    if stats is not None:
        stats["unet_calls"] = holder.get("calls", 0)
        if injection is not None:
            stats["kv_hits"], stats["kv_misses"] = injection.hits, injection.misses
    return out


def run(model: Any, positive: Any, samples: torch.Tensor, plan: EditPlan, *, steps: int = DEFAULT_STEPS,
                strength: float = DEFAULT_STRENGTH, seed: int = 0, kv_dtype: torch.dtype = torch.float16,
                swap_kv: bool = True, on_step: Optional[Callable[[int, int], None]] = None,
                stats: Optional[dict] = None, dit_layers: str = "all", reencode_keys: bool = True) -> torch.Tensor:
    """RegionDrag's whole run (what the RegionDrag node calls): inversion with K/V, the drag denoising pass, caches
    freed. Returns LATENT samples. A DiT (host.family_of) runs core.regiondrag_dit.run, which also takes the block
    set `dit_layers` and whether moved keys are re-encoded at their new position (`reencode_keys`)."""
    if host.family_of(model) is host.dit:
        from . import regiondrag_dit
        return regiondrag_dit.run(model, positive, samples, plan, steps=steps, strength=strength, seed=seed,
                                  kv_dtype=kv_dtype, swap_kv=swap_kv, layers=dit_layers, reencode=reencode_keys,
                                  on_step=on_step, stats=stats)
    sigmas = grid_sigmas(model, steps, strength)
    if sigmas.numel() < 2:
        raise RegionDragError("strength", f"is {strength}: with {steps} steps nothing is inverted; raise it")
    inversion = invert(model, positive, samples, sigmas, seed=seed, record_kv=swap_kv, kv_dtype=kv_dtype,
                       on_step=on_step, steps=steps)
    try:
        if stats is not None:
            stats["kv_bytes"] = inversion.kv.nbytes() if inversion.kv is not None else 0
            stats["inversion_bytes"] = inversion.nbytes()
        den_stats: dict = {}
        out = denoise(model, positive, inversion, plan, swap_kv=swap_kv, on_step=on_step, stats=den_stats)
        out = restore_outside(out, samples.to(out), plan)     # outside the editable area: the input, bit for bit
        if stats is not None:
            stats["unet_calls"] = int(inversion.extras.get("unet_calls", 0)) + int(den_stats.get("unet_calls", 0))
            stats.update({k: v for k, v in den_stats.items() if k != "unet_calls"})
    finally:
        inversion.release()
    return out


region_drag = run      # the name bench/regiondrag.py calls


# ====================================================================== copy-paste around any sampler
def is_flow_inversion(inversion: Any) -> bool:
    """True for the INVERSION of a flow inversion (core.flow_inversion): its sampler starts from the inverted NOISE
    (SamplerCustomAdvanced), not from a noisy LATENT."""
    from .flow_inversion import EditFriendlyFlowInversion, FlowInversion
    return isinstance(inversion, (FlowInversion, EditFriendlyFlowInversion))


def copy_paste_sampler_fn(inner: Callable[..., torch.Tensor], inversion: Any, plan: EditPlan
                          ) -> Callable[..., torch.Tensor]:
    """Wrap a KSAMPLER-contract sampler function so it runs one step at a time and, before each step, pastes the
    inversion's cached handle cells onto the targets and restores the cached state outside the editable mask; the
    vacated handle cells are re-noised before the first step. Every sigma of the run must be one of the
    inversion's. Multistep samplers run as their one-step form (their history restarts after each paste)."""
    sig_inv, state_at = cached_states(inversion)
    vacate_fn = renoise
    if is_flow_inversion(inversion):
        from .regiondrag_dit import renoise as vacate_fn      # a flow model's re-noise (unit-variance z)

    def sample_copy_paste(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                          extra_args: Optional[dict] = None, callback: Optional[Callable[[dict], Any]] = None,
                          disable: Optional[bool] = None, **kw: Any) -> torch.Tensor:
        extra_args = {} if extra_args is None else extra_args
        s_run = sigmas.detach().to("cpu", torch.float64).reshape(-1)
        n = s_run.numel() - 1
        idx = schedule.match_indices(s_run, sig_inv, SIGMA_RTOL)
        if idx is None:   # the node checks this first with the user-facing message (nodes/_inputs.check_schedule)
            raise RegionDragError("sigmas", "Latent Copy-Paste: the sampler's sigmas "
                                            f"{[round(float(s), 4) for s in s_run[:6]]}... are not among the "
                                            f"INVERSION's {[round(float(s), 4) for s in sig_inv[:6]]}... in order; "
                                            "feed the inversion's SIGMAS to SamplerCustom")
        if tuple(x.shape[-2:]) != tuple(plan.latent_hw):
            raise RegionDragError("drag", f"the drag is for a {plan.latent_hw[1]}x{plan.latent_hw[0]} latent but the "
                                          f"sampler's latent is {x.shape[-1]}x{x.shape[-2]}")
        x = vacate_fn(x, plan.vacate, plan.noise_scale, float(s_run[0]), _renoise_generator(plan.seed))
        base_seed = extra_args.get("seed")
        for i in range(n):
            x = apply_step(x, state_at(idx[i]), plan, i, n)
            args = dict(extra_args)
            if base_seed is not None:
                args["seed"] = seeds.derive_seed(base_seed, i)   # fresh ancestral noise per step
            cb = None
            if callback is not None:
                cb = (lambda d, off=i: callback({**d, "i": int(d.get("i", 0)) + off}))
            x = inner(model, x, sigmas[i:i + 2].clone(), extra_args=args, callback=cb, disable=True, **kw)
        return restore_outside(x, state_at(idx[n]), plan)

    return sample_copy_paste
