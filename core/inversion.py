"""The INVERSION contract, and DDIM inversion.

`Inversion` is what an INVERSION socket carries and what every method reads: the sampling sigmas, the latent at
each of them, optional self-attention K/V, optional noise maps, and release(). DDIM Inversion gives a
`DDIMInversion` (below); DDPM Inversion (edit-friendly) a core.ddpm_inversion.Inversion (its own noise maps);
RegionDrag's run a core.regiondrag.RegionInversion.

DDIM inversion walks the noise schedule backwards from the clean latent z_0 to z_t at a start step, keeping every
intermediate latent (the memory bank of DragonDiffusion, the start of DragDiffusion). Step i goes from σ_i up to
σ_{i+1} with ε̂ evaluated on the current latent z_i but at timestep t_{i+1}, exactly as diffusers'
DDIMInverseScheduler does: the K/V and ε̂ of that call then belong to the same timestep as the sampling call that
later undoes the step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, runtime_checkable

import torch

from . import host
from .schedule import ddim_step, eps_from_x0, rescale_to_sigma

StepCallback = Callable[[int, int], None]


@runtime_checkable
class Inversion(Protocol):
    """An inverted image as the methods read it.

    sigmas: the sampling sigmas, descending from the start step to the last (normally 0), on the CPU;
    latent(i): the state x_i in sampler space at sigmas[i] (0 = start, num_latents - 1 = the clean end);
    kv: the self-attention K/V recorded at each step, or None; noise_maps: the DDPM noise maps that make a DDPM
    sampler retrace the states (a core.ddpm_inversion.Inversion), or None for a deterministic (DDIM) inversion;
    model_id: id of the base model that made it (0 = unknown); release(): free the cached tensors."""

    sigmas: torch.Tensor
    model_id: int

    @property
    def num_latents(self) -> int: ...

    def latent(self, i: int) -> torch.Tensor: ...

    @property
    def kv(self) -> Optional[host.KVStore]: ...

    @property
    def noise_maps(self) -> Any: ...

    def release(self) -> None: ...


def latent_hw(inv: Inversion) -> tuple[int, int]:
    """(h, w) of an inversion's latent."""
    x = inv.latent(0)
    return int(x.shape[-2]), int(x.shape[-1])


class LatentListStates:
    """Mixin for the deterministic inversions (DDIM, flow ODE) that store one latent per sigma in `latents`
    (latents[0] the start, latents[-1] the clean latent): num_latents, latent(i), start."""

    latents: list[torch.Tensor]

    @property
    def num_latents(self) -> int:
        return len(self.latents)

    def latent(self, i: int) -> torch.Tensor:
        """x at sigmas[i] (sampler space)."""
        return self.latents[i]

    @property
    def start(self) -> torch.Tensor:
        """x at the start sigma (sampler space)."""
        return self.latents[0]


@dataclass
class DDIMInversion(LatentListStates):
    """The INVERSION of DDIM Inversion: sampling sigmas (descending from the start step to 0), the latents x_i in
    sampler space at each of those sigmas (latents[0] = start, latents[-1] = clean), the optional self-attention
    K/V recorded at each step, and what produced it (steps of the full grid, cfg, the base model's id)."""
    sigmas: torch.Tensor
    latents: list[torch.Tensor]
    kv: Optional[host.KVStore] = None
    steps: int = 0
    cfg: float = 1.0
    model_id: int = 0
    extras: dict = field(default_factory=dict)

    noise_maps = None        # deterministic: no noise maps

    def latent_at(self, sigma: float) -> torch.Tensor:
        """The stored latent nearest sigma (the guidance branch z_t^gud of DragonDiffusion)."""
        i = int(torch.argmin((self.sigmas - float(sigma)).abs()))
        return self.latents[i]

    def release(self) -> None:
        """Release the cached tensors."""
        self.latents.clear()
        host.kv.free_store(self.kv)

    free = release


def start_index(steps: int, strength: float) -> int:
    """Index into the descending grid where sampling starts: steps − round(strength·steps)."""
    return int(steps) - int(round(float(strength) * int(steps)))


def start_sigmas(model: Any, steps: int, strength: float) -> torch.Tensor:
    """The sampling sigmas from the start step of `strength` on the model's DDIM grid of `steps` steps to 0."""
    return host.ddim_sigmas(model, int(steps))[start_index(int(steps), float(strength)):]


def invert(den: host.Denoiser, x0: torch.Tensor, sigmas_desc: torch.Tensor,
           on_step: Optional[StepCallback] = None) -> list[torch.Tensor]:
    """DDIM-invert x0 (sampler space, σ = sigmas_desc[-1] = 0) up to sigmas_desc[0]; returns the latents in
    the order of sigmas_desc (latents[0] = most noisy)."""
    asc = torch.flip(sigmas_desc, [0]).tolist()
    x = x0
    out = [x0]
    n = len(asc) - 1
    for i in range(n):
        s, s_next = asc[i], asc[i + 1]
        x_in = rescale_to_sigma(x, s, s_next)           # same z_i, labelled t_{i+1}
        eps = eps_from_x0(x_in, den.x0(x_in, s_next), s_next)
        x = ddim_step(x, eps, s, s_next)
        out.append(x)
        if on_step is not None:
            on_step(i + 1, n)
    return out[::-1]


def sample(den: host.Denoiser, x: torch.Tensor, sigmas_desc: torch.Tensor,
           on_step: Optional[StepCallback] = None) -> torch.Tensor:
    """Plain DDIM sampling (Euler in sampler space) along sigmas_desc."""
    s = sigmas_desc.tolist()
    for i in range(len(s) - 1):
        x0 = den.x0(x, s[i])
        x = x0 if s[i + 1] == 0 else ddim_step(x, eps_from_x0(x, x0, s[i]), s[i], s[i + 1])
        if on_step is not None:
            on_step(i + 1, len(s) - 1)
    return x


def kv_estimate(model: Any, samples: torch.Tensor, sigmas: torch.Tensor, dtype: torch.dtype, halves: int = 1) -> int:
    """Bytes the K/V of every self-attention layer take over the steps of `sigmas` for LATENT `samples`."""
    return host.kv.estimate_model_bytes(model, samples.shape[-2:], max(len(sigmas) - 1, 0), dtype, halves,
                                        samples.shape[0])


def run(model: Any, samples: torch.Tensor, positive: Any, negative: Any, cfg: float, sigmas: torch.Tensor, *,
        steps: int, kv_dtype: Optional[torch.dtype] = None, kv_budget_bytes: int = 0,
        on_step: Optional[StepCallback] = None) -> tuple[torch.Tensor, DDIMInversion]:
    """The whole DDIM inversion of LATENT `samples` along `sigmas` (start .. 0, taken from a grid of `steps`),
    with the CFG denoiser of (positive, negative, cfg) inside ComfyUI's sampling machinery; with kv_dtype, the
    self-attention K/V of every layer at every step are recorded into a store on the offload device (hard stop at
    kv_budget_bytes: host.KVBudgetError, the store then freed). Returns (LATENT samples at the start, INVERSION)."""
    run_model = host.clone(model)
    store = None
    if kv_dtype is not None and len(sigmas) > 1:
        halves = 2 if negative is not None and float(cfg) > 1.0 else 1
        store = host.kv.build_store(model, kv_estimate(model, samples, sigmas, kv_dtype, halves), dtype=kv_dtype,
                                    scoped=False, budget_bytes=kv_budget_bytes)
        host.patch_kv_record(run_model, store)
    holder: dict = {}

    def loop(den: host.Denoiser, x: torch.Tensor, _sig: torch.Tensor) -> torch.Tensor:
        lat = invert(den, x, sigmas.to(x.device), on_step=on_step)
        holder["latents"] = [t.to(model.offload_device) for t in lat]
        return lat[0]

    if len(sigmas) > 1:
        try:
            out = host.session(run_model, positive, negative, cfg if negative is not None else 1.0, samples, sigmas,
                               loop)
        except BaseException:
            host.kv.free_store(store)
            raise
        latents = holder["latents"]
    else:  # strength 0: nothing to invert
        out = samples.clone()
        latents = [host.process_in(model, samples.clone())]
    inv = DDIMInversion(sigmas=sigmas.cpu(), latents=latents, kv=store, steps=int(steps), cfg=float(cfg),
                        model_id=id(host.base_model(model)))
    return out, inv
