"""RegionDrag on flow-matching DiTs (FLUX / Chroma / Kontext, SD3 / SD3.5, Qwen-Image): the DiT path of
core.regiondrag.run, picked by the model-family seam (host.family_of).

One deterministic flow inversion of the clean latent to the start fraction of the grid with FireFlow (Deng et al.,
arXiv 2412.07517: a midpoint step whose first velocity is the previous step's midpoint velocity), recording the
image-token K/V of the chosen blocks at every model call; then one FireFlow pass down the same sigmas. The midpoint
calls of the pass land on the sigmas the inversion recorded at, so every call but the first finds K/V of its own
step. Why FireFlow and not Euler: on the same sigmas it costs one model call more than Euler for the whole run, its
reconstruction is about 10 dB better (bench/flow_inversion.py: 32.8 vs 22.3 dB at 8 steps on a tiny FLUX), and an
Euler inversion records v(x_i, σ_{i+1}) while the sampler asks v(x_{i+1}, σ_{i+1}), so its K/V are a step off.

Per step of the pass, as the UNet path (core.regiondrag): before each step the cached handle cells are pasted onto
the target cells (while the paste schedule says so; the FireFlow velocity carried to the next step is pasted with
them) and the cached state is restored outside the editable mask; the vacated handle cells are re-noised once on
the start latent (z ← sqrt(1−α²)·z + α·n on the unit-variance z = x/sqrt((1−σ)² + σ²)).

In attention (host.dit_kv, a chained optimized_attention_override), per image token, from a correspondence map on
the token grid (`token_plan`, LazyDrag-style: each moved token takes the K/V of the source token its cells came
from; with point pairs and a mask every masked cell follows its nearest handle, core.regiondrag.make_plan):
- moved tokens (at least half their cells are paste targets) take the cached K/V of their source token, the key
  re-encoded at the new position by the relative rotation R(p_target − p_source) (FLUX / Qwen-Image: RoPE). SD3 has
  an absolute position embedding added at the input, so a cached key carries its old position and cannot be
  rotated: on SD3 a moved token takes the cached V only (RF-Solver-Edit's value injection) and keeps its own key;
- background tokens (outside the editable mask; with no mask, every token that neither receives nor gives up
  content) take their own cached K/V (KV-Edit: the background is rebuilt from the inversion's K/V);
- the other tokens (vacated, partly covered, the rest of a user's editable mask) keep their own K/V: regenerated.
Text and Kontext reference tokens are never touched.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from . import host
from . import regiondrag as rd
from .flow_inversion import velocity
from .schedule import from_z, to_z

SOLVER = "fireflow"
LAYER_SETS = ("all", "double", "single", "vital")


# ====================================================================== the token-level correspondence map
@dataclass(frozen=True)
class TokenPlan:
    """Per image token (row-major over the token grid): `moved` takes the K/V of token `index[j]` (re-encoded at
    its own position by `rope`), `background` takes its own cached K/V; the rest keep theirs."""
    grid: tuple[int, int]
    moved: torch.Tensor                  # bool [n]
    index: torch.Tensor                  # long [n]: source token of each token (itself where not moved)
    background: torch.Tensor             # bool [n]

    @property
    def n(self) -> int:
        return self.grid[0] * self.grid[1]


def _pool(m: torch.Tensor, p: int, grid: tuple[int, int]) -> torch.Tensor:
    """Share of each token's p x p cells where m (float [h, w]) is set; the latent padded to whole patches."""
    gh, gw = grid
    pad = F.pad(m.float()[None, None], (0, gw * p - m.shape[1], 0, gh * p - m.shape[0]))
    return F.avg_pool2d(pad, p)[0, 0]


def token_plan(model: Any, plan: rd.EditPlan) -> TokenPlan:
    """The token-level correspondence map of an EditPlan on `model`'s patch grid."""
    p = host.dit.patch_size(model)
    h, w = plan.latent_hw
    grid = host.dit.image_grid(model, (h, w))
    gh, gw = grid
    n = gh * gw
    index = torch.arange(n)
    dst = plan.pairs.dst_mask() if len(plan.pairs) else torch.zeros(h, w, dtype=torch.bool)
    src = plan.pairs.src_mask() if len(plan.pairs) else torch.zeros(h, w, dtype=torch.bool)
    moved = _pool(dst, p, grid) >= 0.5
    if bool(moved.any()):
        disp = torch.zeros(2, h, w, dtype=torch.float64)         # (dx, dy) in cells, source − target
        d = (plan.pairs.src - plan.pairs.dst).to(torch.float64)
        disp[0, plan.pairs.dst[:, 1], plan.pairs.dst[:, 0]] = d[:, 0]
        disp[1, plan.pairs.dst[:, 1], plan.pairs.dst[:, 0]] = d[:, 1]
        cnt = _pool(dst, p, grid).double() * p * p
        mean = torch.stack([_pool(disp[c], p, grid).double() * p * p for c in (0, 1)]) / cnt.clamp_min(1)
        ty, tx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        sx = (tx + mean[0] / p).round().long().clamp(0, gw - 1)
        sy = (ty + mean[1] / p).round().long().clamp(0, gh - 1)
        index = torch.where(moved.reshape(-1), (sy * gw + sx).reshape(-1), index)
    touched = (_pool(dst | src | plan.vacate, p, grid) > 0)
    editable = _pool(plan.editable > 0.5, p, grid) > 0
    user_mask = not bool((plan.editable > 0.5).all())
    free = touched | editable if user_mask else touched
    background = ~moved & ~free
    return TokenPlan(grid, moved.reshape(-1), index, background.reshape(-1))


def with_edit_area(model: Any, plan: rd.EditPlan, grow_tokens: int = 1) -> rd.EditPlan:
    """The plan with an editable area when it has none (no mask, or one covering the whole image): the cells that
    receive, give up or are re-noised, grown by `grow_tokens` tokens and snapped to whole tokens. Outside it the
    latent is the inversion's at every step and the tokens take their own cached K/V (KV-Edit keeps the background
    latents and K/V of the inversion the same way), so the background ends as the input."""
    if not bool((plan.editable > 0.5).all()) or len(plan.pairs) == 0:
        return plan
    p = host.dit.patch_size(model)
    h, w = plan.latent_hw
    grid = host.dit.image_grid(model, (h, w))
    touched = (_pool(plan.pairs.dst_mask() | plan.pairs.src_mask() | plan.vacate, p, grid) > 0).float()
    k = 2 * int(grow_tokens) + 1
    grown = F.max_pool2d(touched[None, None], k, stride=1, padding=int(grow_tokens))[0, 0]
    cells = grown.repeat_interleave(p, 0).repeat_interleave(p, 1)[:h, :w]
    return dataclasses.replace(plan, editable=cells)


def point_radius(model: Any, image_size: Sequence[int], latent_hw: Sequence[int]) -> float:
    """Radius (image px) of the disc a point pair moves on a DiT without a mask: one token side (patch x VAE factor),
    since K/V move by whole tokens."""
    return float(host.dit.patch_size(model) * rd.infer_factor(image_size, latent_hw))


# ====================================================================== blocks
def select_blocks(model: Any, layers: str = "all") -> list:
    """The DiT blocks whose K/V are recorded and injected: all, the double (joint) blocks, FLUX's single blocks, or
    Stable Flow's "vital" blocks (host.dit.vital_blocks)."""
    if layers not in LAYER_SETS:
        raise rd.RegionDragError("dit_layers", f"must be one of {', '.join(LAYER_SETS)}, got {layers!r}")
    if layers == "vital":
        sel = host.dit.vital_blocks(model)
    elif layers == "all":
        sel = host.dit.blocks(model)
    else:
        sel = host.dit.select_blocks(model, kinds=[layers])
    if not sel:
        raise rd.RegionDragError("dit_layers", f"'{layers}' selects no block of this model (it has "
                                               f"{len(host.dit.blocks(model))} blocks, all double: SD3 / Qwen-Image "
                                               "have no single blocks)")
    return sel


def kv_bytes(model: Any, latent_hw: Sequence[int], steps: int, dtype: torch.dtype = torch.float16,
             layers: str = "all") -> int:
    """Bytes of the K/V a RegionDrag run of `steps` inverted steps records (FireFlow: steps + 1 model calls)."""
    return host.dit_kv.estimate_bytes(model, latent_hw, int(steps) + 1, dtype, select_blocks(model, layers))


# ====================================================================== passes
def renoise(x: torch.Tensor, where: torch.Tensor, alpha: float, sigma: float,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Vacate on a flow state: inside `where` [h, w], z ← sqrt(1−α²)·z + α·n on z = x/sqrt((1−σ)² + σ²)."""
    alpha = float(alpha)
    if alpha <= 0 or not bool(where.any()):
        return x
    keep = math.sqrt(1.0 - alpha * alpha) if alpha < 1.0 else 0.0
    n = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    noisy = from_z(keep * to_z(x, sigma, flow=True) + alpha * n, sigma, flow=True)
    return torch.where(where.to(x.device), noisy, x)


def invert(model: Any, positive: Any, samples: torch.Tensor, sigmas: torch.Tensor, blocks: Sequence[Any],
           kv_dtype: torch.dtype = torch.float16, on_step: Optional[Callable[[int, int], None]] = None
           ) -> tuple[list[torch.Tensor], host.KVStore, int]:
    """FireFlow inversion of LATENT samples up `sigmas` (descending, ends 0) with CFG 1 on `positive`, recording
    the image-token K/V of `blocks` on a clone: (states descending, the K/V store, model calls)."""
    run = host.clone(model)
    n = sigmas.numel() - 1
    est = host.dit_kv.estimate_bytes(model, samples.shape[-2:], n + 1, kv_dtype, blocks)
    store = host.kv.build_store(model, est, dtype=kv_dtype, scoped=True)
    host.dit_kv.patch_dit_kv_record(run, store, blocks)
    holder: dict = {}
    asc = torch.flip(sigmas.detach().to(torch.float64), [0]).tolist()

    def loop(den: host.Denoiser, x: torch.Tensor, _sig: torch.Tensor) -> torch.Tensor:
        from .flow_inversion import ode_solve
        lat = ode_solve(lambda xx, s: den.x0(xx, s), x, asc, SOLVER, invert=True,
                        on_step=(lambda i, _x: on_step(i + 1, n)) if on_step is not None else None)
        holder["latents"], holder["calls"] = lat[::-1], den.calls
        return x

    try:
        host.session(run, positive, None, 1.0, samples, sigmas, loop)
    except BaseException:
        host.kv.free_store(store)
        raise
    return holder["latents"], store, int(holder["calls"])


def injections(model: Any, store: host.KVStore, tokens: TokenPlan, latent_hw: Sequence[int], plan: rd.EditPlan,
               sigmas: torch.Tensor, reencode: bool = True) -> tuple[Any, Any]:
    """(background injection, moved-token injection or None) for host.dit_kv: the background at every step, the
    moved tokens while the paste schedule pastes (a call belongs to step i when σ_{i+1} < σ ≤ σ_i)."""
    bg = host.dit_kv.DitKVInjection(store, mask=tokens.background)
    if not bool(tokens.moved.any()):
        return bg, None
    s = sigmas.detach().to(torch.float64)
    n = s.numel() - 1
    last = plan.paste_steps(n)
    lo = float(s[last])

    def pasting(sigma: float) -> bool:                # the calls of steps 0 .. last − 1 have σ > σ_last
        return last > 0 and float(sigma) > lo

    rope = None
    values_only = not host.dit.has_rope(model)
    if reencode and not values_only:
        rope = host.dit_kv.moved_rope(model, latent_hw, tokens.index)
    mv = host.dit_kv.DitKVInjection(store, index=tokens.index, mask=tokens.moved, rope=rope,
                                    values_only=values_only, when=pasting)
    return bg, mv


def denoise(model: Any, positive: Any, latents: list[torch.Tensor], sigmas: torch.Tensor, store: host.KVStore,
            plan: rd.EditPlan, blocks: Sequence[Any], *, reencode: bool = True, swap_kv: bool = True,
            on_step: Optional[Callable[[int, int], None]] = None, stats: Optional[dict] = None) -> torch.Tensor:
    """The drag pass: FireFlow down `sigmas` from the inverted start with paste / restore before each step and the
    K/V injections of `injections`. Returns LATENT samples."""
    hw = tuple(latents[0].shape[-2:])
    run = host.clone(model)
    inj: list = []
    if swap_kv:
        bg, mv = injections(model, store, token_plan(model, plan), hw, plan, sigmas, reencode)
        inj = [i for i in (bg, mv) if i is not None]
        for i in inj:
            host.dit_kv.patch_dit_kv_inject(run, i, blocks)
    s64 = sigmas.detach().to("cpu", torch.float64)
    n = s64.numel() - 1
    holder: dict = {}

    def loop(den: host.Denoiser, x_in: torch.Tensor, _sig: torch.Tensor) -> torch.Tensor:
        xts = [t.to(x_in.device, x_in.dtype) for t in latents]
        x = renoise(xts[0].clone(), plan.vacate, plan.noise_scale, float(s64[0]), rd._renoise_generator(plan.seed))
        x0_fn = (lambda xx, s: den.x0(xx, s))
        v_prev: Optional[torch.Tensor] = None
        for i in range(n):
            if len(plan.pairs) and plan.pastes_at(i, n):
                x = plan.pairs.paste(xts[i], x)
                if v_prev is not None:                      # the carried velocity moves with the content
                    v_prev = plan.pairs.paste(v_prev, v_prev)
            x = rd.restore_outside(x, xts[i], plan)
            s, sn = float(s64[i]), float(s64[i + 1])
            h = sn - s
            v1 = v_prev if v_prev is not None else velocity(x0_fn, x, s)
            v_mid = velocity(x0_fn, x + 0.5 * h * v1, s + 0.5 * h)
            x = x + h * v_mid
            v_prev = v_mid
            if on_step is not None:
                on_step(i + 1, n)
        holder["calls"] = den.calls
        return rd.restore_outside(x, xts[n], plan)

    out = host.session(run, positive, None, 1.0, host.process_out(model, latents[0].clone()), sigmas, loop,
                       seed=plan.seed)
    if stats is not None:
        stats["unet_calls"] = holder.get("calls", 0)
        stats["kv_hits"] = sum(i.hits for i in inj)
        stats["kv_misses"] = sum(i.misses for i in inj)
    return out


def grid_sigmas(model: Any, steps: int, strength: float) -> torch.Tensor:
    """The sigmas of the run: the last round(strength·steps) steps of the model's "simple" flow grid, then 0."""
    full = host.dit.flow_sigmas(model, int(steps))
    k = int(steps) - int(round(float(strength) * int(steps)))
    return full[k:]


def run(model: Any, positive: Any, samples: torch.Tensor, plan: rd.EditPlan, *, steps: int = rd.DEFAULT_STEPS,
        strength: float = rd.DEFAULT_STRENGTH, seed: int = 0, kv_dtype: torch.dtype = torch.float16,
        swap_kv: bool = True, layers: str = "all", reencode: bool = True,
        on_step: Optional[Callable[[int, int], None]] = None, stats: Optional[dict] = None) -> torch.Tensor:
    """RegionDrag on a DiT (what core.regiondrag.run calls for one): FireFlow inversion with K/V, the drag pass,
    caches freed. Returns LATENT samples."""
    sigmas = grid_sigmas(model, steps, strength)
    if sigmas.numel() < 2:
        raise rd.RegionDragError("strength", f"is {strength}: with {steps} steps nothing is inverted; raise it")
    blocks = select_blocks(model, layers)
    plan = with_edit_area(model, plan)
    latents, store, calls = invert(model, positive, samples, sigmas, blocks, kv_dtype, on_step)
    try:
        if stats is not None:
            stats["kv_bytes"] = store.nbytes()
            stats["inversion_bytes"] = sum(t.numel() * t.element_size() for t in latents) + store.nbytes()
        den_stats: dict = {}
        out = denoise(model, positive, latents, sigmas, store, plan, blocks, reencode=reencode, swap_kv=swap_kv,
                      on_step=on_step, stats=den_stats)
        out = rd.restore_outside(out, samples.to(out), plan)
        if stats is not None:
            stats["unet_calls"] = calls + int(den_stats.get("unet_calls", 0))
            stats.update({k: v for k, v in den_stats.items() if k != "unet_calls"})
    finally:
        host.kv.free_store(store)
        latents.clear()
    return out
