"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., arXiv 2304.06140; used by LEDITS, arXiv 2307.00522).

Parameterisation (ComfyUI's sampler state, DEVELOPERS.md "Sampler state convention"): x = z_t/sqrt(ᾱ_t) = z_0 + σ_t·ε,
ᾱ_t = 1/(1+σ_t²); the denoiser returns x̂0, so ε̂ = (x − x̂0)/σ. `sigmas` is a descending 1-D tensor, normally
ending in 0 (a ComfyUI SIGMAS).

One DDPM(η) reverse step as the official DDPM_inversion code takes it, z_{t−1} = sqrt(ᾱ_{t−1})·x̂0 +
sqrt(1−ᾱ_{t−1}−η·var)·ε̂ + η·sqrt(var)·n with var = (1−ᾱ_{t−1})/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_{t−1}), reads in x-form (divide
by sqrt(ᾱ_{t−1})):

    x_{t−1} = x̂0 + σ_down·ε̂ + σ_up·n,   v = σ_{t−1}²·(σ_t² − σ_{t−1}²)/σ_t²,   σ_up = η·sqrt(v),   σ_down² = σ_{t−1}² − η·v

At η = 1 this is DDIM's posterior (ComfyUI's `get_ancestral_step`); at η < 1 the official code's direction term
uses η·var where DDIM's posterior (and diffusers' LEDITS++) use η²·var (docs/ledits.md). The noise n is the
same tensor in both forms, so the noise maps z_t stored here are the ones diffusers' LEDITS++ `invert` stores at
η = 1 (same scale, N(0, I) for a perfect model).

Inversion: x_t = x0 + σ_t·ε̃_t drawn independently per step (not chained); from the noisiest step down,
z_t = (x_{t−1} − μ_t(x_t))/σ_up,t, and x_{t−1} is replaced by μ_t + σ_up,t·z_t computed by the very same
`ddpm_step` the sampler uses, so sampling with the stored maps and the same denoiser reproduces the chain bit for
bit. A step that ends at σ = 0 is deterministic (x_{t−1} = x̂0); there the inversion stores the residual
r = x0 − x̂0 (in x units) and the sampler adds it, so the input latent comes back to float tolerance (diffusers
gets the same effect from its last, tiny-variance step to ᾱ_0; the original DDPM_inversion code drops it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Optional

import torch

from . import seeds
from .noise_map_states import NoiseMapStates

__all__ = [
    "DenoiseFn", "Inversion", "ancestral_sigmas", "ddpm_step", "check_sigmas", "invert_edit_friendly",
    "sample_edit_friendly", "make_sampler_fn", "keep_outside", "RegionFn",
]

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""denoise(x, σ) -> x̂0: the (CFG-combined) denoiser in ComfyUI's parameterisation; σ is a 0-d tensor."""

_SIGMA_RTOL = 1e-5
_SIGMA_ATOL = 1e-6


def ancestral_sigmas(sigma: float | torch.Tensor, sigma_next: float | torch.Tensor, eta: float = 1.0
                     ) -> tuple[float, float]:
    """(σ_down, σ_up) of one DDPM(η) step σ_t -> σ_{t−1} in x-form, as the official DDPM_inversion code
    (reverse_step / inversion_forward_process): with v = σ_{t−1}²·(σ_t²−σ_{t−1}²)/σ_t² (the posterior variance at
    η = 1), σ_up = η·sqrt(v) and σ_down = sqrt(σ_{t−1}² − η·v), i.e. the direction coefficient
    sqrt(1 − ᾱ_{t−1} − η·var) in z-form (diffusers' LEDITS++ uses η²·var; the two agree at η = 1). Both capped at
    σ_{t−1} (η > 1); (0, 0) for a step to σ = 0."""
    s, sn = float(sigma), float(sigma_next)
    if sn <= 0.0:
        return 0.0, 0.0
    if eta == 0.0:
        return sn, 0.0
    v = max(sn * sn * (s * s - sn * sn) / (s * s), 0.0)
    up = min(sn, float(eta) * math.sqrt(v))
    down = math.sqrt(max(sn * sn - float(eta) * v, 0.0))
    return down, up


def ddpm_step(x: torch.Tensor, x0_hat: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor,
              noise: Optional[torch.Tensor], eta: float = 1.0) -> torch.Tensor:
    """One DDPM(η) reverse step x_t -> x_{t−1} = x̂0 + σ_down·ε̂ + σ_up·n (DDIM posterior with variance η²σ_t² in
    x-form); returns x̂0 when σ_{t−1} = 0; `noise` None means the posterior mean μ_t."""
    down, up = ancestral_sigmas(sigma, sigma_next, eta)
    if float(sigma_next) <= 0.0:
        return x0_hat
    mu = x0_hat + (x - x0_hat) * (down / float(sigma))  # x̂0 + σ_down·ε̂, ε̂ = (x − x̂0)/σ
    if noise is None or up == 0.0:
        return mu
    return mu + noise * up


def check_sigmas(sigmas: torch.Tensor, what: str = "sigmas") -> torch.Tensor:
    """Validate a SIGMAS tensor (1-D, ≥ 2 values, finite, ≥ 0, strictly descending); returns a float64 CPU copy."""
    if not isinstance(sigmas, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor (a ComfyUI SIGMAS), got {type(sigmas).__name__}")
    s = sigmas.detach().to("cpu", torch.float64)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"{what} must be a 1-D tensor with at least 2 values (1 step), got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"{what} must be finite and non-negative, got {_fmt(s)}")
    if not bool((s[1:] < s[:-1]).all()):
        i = int(torch.nonzero(s[1:] >= s[:-1])[0])
        raise ValueError(f"{what} must be strictly descending (noisiest first), but sigma {i + 1} "
                         f"({float(s[i + 1]):.6g}) is not below sigma {i} ({float(s[i]):.6g}) in {_fmt(s)} "
                         f"({s.numel() - 1} steps)")
    return s


@dataclass
class Inversion(NoiseMapStates):
    """Result of an edit-friendly inversion (owned by one INVERSION object; immutable by convention).

    sigmas: (S+1,) descending grid this inversion covers (after any skip); xts: (S+1, B, C, H, W) sampler states,
    xts[0] = the start latent x_{T−skip}, xts[i] the state at sigmas[i] that the sampler will reach, xts[S] the
    reconstruction of x0; zs: (S, B, C, H, W) noise maps z_t (zero for a step ending at σ = 0); residual:
    x0 − x̂0 added at a final step to σ = 0 (None when the grid does not end in 0); eta: η; skipped: number of
    noisiest steps of the original grid that were dropped; model_id: id of the base model that made it (0 = unknown).

    As an INVERSION (core.inversion.Inversion) it is its own noise_maps and carries no K/V."""

    kind: ClassVar[str] = "ddpm"
    kv: ClassVar[None] = None

    sigmas: torch.Tensor
    xts: torch.Tensor
    zs: torch.Tensor
    eta: float
    residual: Optional[torch.Tensor] = None
    skipped: int = 0
    model_id: int = 0

    free = NoiseMapStates.release

    def skip(self, n: int) -> "Inversion":
        """Drop the first n noisiest steps: start from xts[n] and use only the matching noise maps."""
        n = int(n)
        if not 0 <= n < self.steps:
            raise ValueError(f"skip must be in [0, {self.steps - 1}] for an inversion of {self.steps} steps, got {n}")
        if n == 0:
            return self
        return replace(self, sigmas=self.sigmas[n:], xts=self.xts[n:], zs=self.zs[n:], skipped=self.skipped + n)

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> "Inversion":
        """A copy with tensors moved (sigmas stay float32/float64 on CPU)."""
        mv = (lambda t: None if t is None else t.to(device=device, dtype=dtype))
        return replace(self, xts=mv(self.xts), zs=mv(self.zs), residual=mv(self.residual))

    def match_sigmas(self, sigmas: torch.Tensor) -> int:
        """Offset k such that `sigmas` equals this inversion's sigmas[k : k+len] (a contiguous run, e.g. a
        SplitSigmas part); ValueError with both grids when there is none."""
        g = check_sigmas(sigmas, "sigmas given to the edit-friendly DDPM sampler")
        s = self.sigmas.detach().to("cpu", torch.float64)
        m = g.numel()
        for k in range(0, s.numel() - m + 1):
            if torch.allclose(s[k:k + m], g, rtol=_SIGMA_RTOL, atol=_SIGMA_ATOL):
                return k
        raise ValueError(
            "the sigmas given to the edit-friendly DDPM sampler do not match the INVERSION's: got "
            f"{_fmt(g)} ({m - 1} steps), the inversion has {_fmt(s)} ({s.numel() - 1} steps). Feed the SIGMAS "
            "output of the DDPM Inversion node (or a SplitSigmas part of it) to the sampler.")


def _fmt(s: torch.Tensor, n: int = 4) -> str:
    v = [f"{x:.4g}" for x in s.tolist()]
    return "[" + ", ".join(v if len(v) <= 2 * n else v[:n] + ["..."] + v[-n:]) + "]"


def _make_generator(seed: Optional[int], generator: Optional[torch.Generator]) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator(device="cpu")
    g.manual_seed(seeds.derive_seed(seed or 0))
    return g


def _check_x0_hat(x0_hat: Any, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x0_hat, torch.Tensor) or x0_hat.shape != x.shape:
        got = tuple(x0_hat.shape) if isinstance(x0_hat, torch.Tensor) else type(x0_hat).__name__
        raise ValueError(f"denoise(x, sigma) must return x̂0 with the shape of x {tuple(x.shape)}, got {got}")
    return x0_hat


def invert_edit_friendly(denoise: DenoiseFn, x0: torch.Tensor, sigmas: torch.Tensor, *, seed: Optional[int] = None,
                         generator: Optional[torch.Generator] = None, eta: float = 1.0, skip: int = 0,
                         callback: Optional[Callable[[int, int], None]] = None) -> Inversion:
    """Edit-friendly DDPM inversion of the clean latent x0 (sampler units) on `sigmas`: independent
    x_t = x0 + σ_t·ε̃_t, then z_t = (x_{t−1} − μ_t)/σ_up,t from the noisiest kept step down."""
    # ε̃ are drawn least-noisy first on a CPU generator (diffusers' order). `skip` drops the first T_skip
    # noisiest steps without denoise calls (same result as `.skip(T_skip)` of the full inversion, to rounding).
    # callback(i, total) runs after each step (progress bar / interruption).
    s64 = check_sigmas(sigmas)
    eta = float(eta)
    if not eta > 0.0:
        raise ValueError(f"eta must be > 0 for an edit-friendly inversion (η = 0 has no noise to invert), got {eta}")
    if not isinstance(x0, torch.Tensor) or x0.ndim < 2:
        raise ValueError(f"x0 must be a batched latent tensor [B, C, ...], got "
                         f"{tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__}")
    n = s64.numel() - 1
    skip = int(skip)
    if not 0 <= skip < n:
        raise ValueError(f"skip must be in [0, {n - 1}] for {n} steps, got {skip}")

    gen = _make_generator(seed, generator)
    # independent noisy states for every grid index 0..n-1 (drawn least noisy first, as diffusers does)
    xts = torch.empty((n + 1 - skip, *x0.shape), dtype=x0.dtype, device=x0.device)
    for i in reversed(range(n)):  # every index is drawn, so a skip does not change the kept steps' noise
        e = torch.randn(x0.shape, generator=gen, device=gen.device, dtype=torch.float32)
        if i >= skip:
            xts[i - skip] = x0 + float(s64[i]) * e.to(device=x0.device, dtype=x0.dtype)
    xts[n - skip] = x0
    sig_t = sigmas.detach()
    zs = torch.zeros((n - skip, *x0.shape), dtype=x0.dtype, device=x0.device)
    residual: Optional[torch.Tensor] = None

    total = n - skip
    for j in range(total):
        i = j + skip
        s, sn = float(s64[i]), float(s64[i + 1])
        x = xts[j]
        x0_hat = _check_x0_hat(denoise(x, sig_t[i]), x)
        if sn <= 0.0:
            residual = xts[j + 1] - x0_hat           # x0 − x̂0 (the last step is deterministic)
            xts[j + 1] = x0_hat + residual
        else:
            _, up = ancestral_sigmas(s, sn, eta)
            mu = ddpm_step(x, x0_hat, s, sn, None, eta)
            z = (xts[j + 1] - mu) / up
            zs[j] = z
            xts[j + 1] = ddpm_step(x, x0_hat, s, sn, zs[j], eta)  # correction: exactly what the sampler computes
        if callback is not None:
            callback(j, total)
    return Inversion(sigmas=sigmas.detach()[skip:].clone(), xts=xts, zs=zs, eta=eta, residual=residual,
                     skipped=skip)


def _fit(t: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    """t (B', C, H, W) broadcast to x's batch (B' = B or 1), on x's device/dtype; ValueError otherwise."""
    if t.shape[1:] != x.shape[1:]:
        raise ValueError(f"the INVERSION's {what} have latent shape {tuple(t.shape[1:])} but the sampler's latent "
                         f"is {tuple(x.shape[1:])}: invert the same image size / model family you sample")
    if t.shape[0] != x.shape[0]:
        if t.shape[0] != 1:
            raise ValueError(f"the INVERSION holds a batch of {t.shape[0]} but the sampler's latent has a batch of "
                             f"{x.shape[0]}: use the same batch (or invert a single image to share its maps)")
        t = t.expand(x.shape[0], *t.shape[1:])
    return t.to(device=x.device, dtype=x.dtype)


def keep_outside(x: torch.Tensor, region: Optional[torch.Tensor], inversion_state: torch.Tensor) -> torch.Tensor:
    """x inside `region` (latent-sized, 1 = edited, soft values blend) and the inversion's own state outside it:
    M ⊙ x + (1 − M) ⊙ x_t^inv (blended latent diffusion on the inversion's trajectory). region None: x."""
    if region is None:
        return x
    m = region.to(device=x.device, dtype=x.dtype)
    return m * x + (1.0 - m) * _fit(inversion_state, x, "states")


def _reverse(x0_fn: Callable[[torch.Tensor, int], torch.Tensor], inv: Inversion, x: torch.Tensor, offset: int,
             steps: int, apply_residual: bool, report: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]],
             region: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The DDPM(η) reverse loop over inv's steps offset..offset+steps−1 with the stored noise maps; with `region`,
    each new state outside it is the inversion's state xts[k+1] (`keep_outside`)."""
    if region is not None and not (inv.xts.ndim > 1 and inv.xts.shape[0] > offset + steps):
        raise ValueError("this INVERSION does not hold its states, so the image outside the mask cannot be kept")
    s64 = inv.sigmas.detach().to("cpu", torch.float64)
    for i in range(steps):
        k = offset + i
        s, sn = float(s64[k]), float(s64[k + 1])
        x0_hat = _check_x0_hat(x0_fn(x, i), x)
        if report is not None:
            report(i, x, x0_hat)
        if sn <= 0.0:
            if apply_residual and inv.residual is not None:
                x = x0_hat + _fit(inv.residual, x, "residual")
            else:
                x = x0_hat
        else:
            x = ddpm_step(x, x0_hat, s, sn, _fit(inv.zs[k], x, "noise maps"), inv.eta)
        x = keep_outside(x, region, inv.xts[k + 1]) if region is not None else x
    return x


def sample_edit_friendly(denoise: DenoiseFn, inversion: Inversion, x_start: Optional[torch.Tensor] = None,
                         callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
                         apply_residual: bool = True) -> torch.Tensor:
    """DDPM(η) generation with the stored noise maps from x_start (default: the start latent); with the
    inversion's denoiser it reproduces x0. callback(i, x, x̂0) runs before each step's update."""
    x = inversion.start if x_start is None else x_start
    sig = inversion.sigmas.detach()
    return _reverse(lambda xx, i: denoise(xx, sig[i]), inversion, x, 0, inversion.steps, apply_residual, callback)


RegionFn = Callable[[dict, torch.Tensor], Optional[torch.Tensor]]
"""region(extra_args, x): the latent region [1 or B, 1, h, w] a sampler may change (outside it the inversion's own
states are kept), read from what is being sampled (the model options in extra_args); None = everywhere."""


def make_sampler_fn(inversion: Inversion, apply_residual: bool = True, region: Optional[RegionFn] = None
                    ) -> Callable[..., torch.Tensor]:
    """A KSAMPLER-contract function fn(model, x, sigmas, extra_args, callback, disable) that runs DDPM(η) with
    the inversion's noise maps; `sigmas` must be its grid or a contiguous run of it (ValueError otherwise). `region`
    (a RegionFn): outside the region it gives, each state is the inversion's own (`keep_outside`)."""

    def sample_edit_friendly_ddpm(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                                  extra_args: Optional[dict] = None, callback: Optional[Callable[[dict], Any]] = None,
                                  disable: Optional[bool] = None, **_: Any) -> torch.Tensor:
        extra_args = {} if extra_args is None else extra_args
        offset = inversion.match_sigmas(sigmas)
        steps = int(sigmas.numel()) - 1
        _fit(inversion.zs[offset], x, "noise maps")  # shape/batch errors before the first model call
        if inversion.xts.ndim > 1 and inversion.xts.shape[0] > offset:
            # a start latent that went through LATENT (process_out -> process_in) differs from the stored state by
            # rounding: continue from the stored state itself so that reconstruction stays exact
            ref = _fit(inversion.xts[offset], x, "start latents")
            if torch.allclose(x, ref, rtol=1e-5, atol=1e-6):
                x = ref.clone()
        s_in = x.new_ones([x.shape[0]])

        def x0_fn(xx: torch.Tensor, i: int) -> torch.Tensor:
            return model(xx, sigmas[i] * s_in, **extra_args)

        def report(i: int, xx: torch.Tensor, den: torch.Tensor) -> None:
            if callback is not None:
                callback({"x": xx, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": den})

        reg = region(extra_args, x) if region is not None else None
        return _reverse(x0_fn, inversion, x, offset, steps, apply_residual, report, reg)

    return sample_edit_friendly_ddpm
