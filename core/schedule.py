"""Pure noise-schedule formulas in ComfyUI's sampler parameterisation, for both kinds of models:

- discrete VP models (SD1.x / SD2.x / SDXL; flow=False): x = z_t/sqrt(ᾱ_t) = z_0 + σ·ε, ᾱ = 1/(1+σ²),
  z_t = sqrt(ᾱ_t)·x. Deterministic DDIM is Euler in this form.
- rectified-flow models (FLUX, SD3, Qwen-Image; flow=True, `host.facts.is_flow`): x = (1 − σ)·z_0 + σ·ε; the
  velocity v = ε − z_0 = (x − x̂0)/σ, so `eps_from_x0` returns v and `ddim_step` is the flow Euler step
  x' = x + (σ' − σ)·v. The VP-equivalent latent is z = x / sqrt((1 − σ)² + σ²) with ᾱ = (1 − σ)²/((1 − σ)² + σ²),
  and a flow model takes the same x at any σ label (`rescale_to_sigma` is the identity)."""
from __future__ import annotations

from typing import Optional

import torch


def alpha_bar(sigma: torch.Tensor | float, flow: bool = False) -> torch.Tensor:
    """ᾱ_t = 1/(1+σ_t²); flow: (1 − σ)²/((1 − σ)² + σ²)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if flow:
        return (1.0 - s) ** 2 / ((1.0 - s) ** 2 + s * s)
    return 1.0 / (1.0 + s * s)


def _z_scale(sigma: float, flow: bool) -> float:
    """z_t / x: sqrt(ᾱ_t) for a VP model, 1/sqrt((1 − σ)² + σ²) for a flow model."""
    s = float(sigma)
    if flow:
        return 1.0 / ((1.0 - s) ** 2 + s * s) ** 0.5
    return float(alpha_bar(s).sqrt())


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """ε̂ = (x − x̂0)/σ."""
    return (x - x0) / float(sigma)


def to_z(x: torch.Tensor, sigma: float, flow: bool = False) -> torch.Tensor:
    """Sampler state x -> VP latent z_t = sqrt(ᾱ_t)·z_0 + sqrt(1 − ᾱ_t)·ε (VP: sqrt(ᾱ_t)·x; flow:
    x/sqrt((1 − σ)² + σ²))."""
    return x * _z_scale(sigma, flow)


def from_z(z: torch.Tensor, sigma: float, flow: bool = False) -> torch.Tensor:
    """VP latent z_t -> sampler state x (the inverse of `to_z`)."""
    return z / _z_scale(sigma, flow)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Deterministic DDIM from σ to σ_next (either direction): x̂0 = x − σ·ε̂, x_next = x̂0 + σ_next·ε̂."""
    return x + (float(sigma_next) - float(sigma)) * eps


def rescale_to_sigma(x: torch.Tensor, sigma_from: float, sigma_to: float, flow: bool = False) -> torch.Tensor:
    """The sampler state that shows the model the same input as x at σ_from, but labelled σ_to
    (x·sqrt((1+σ_to²)/(1+σ_from²))): used by DDIM inversion, which evaluates ε̂(z_t, t+Δ) as diffusers does. A flow
    model's input is x itself at every σ: the identity (x unchanged)."""
    if flow:
        return x
    return x * float(((1.0 + float(sigma_to) ** 2) / (1.0 + float(sigma_from) ** 2)) ** 0.5)


def flow_step(x: torch.Tensor, x0_hat: torch.Tensor, sigma: float, sigma_next: float,
              noise: Optional[torch.Tensor] = None, eta: float = 1.0) -> torch.Tensor:
    """One stochastic rectified-flow step σ -> σ' < σ (the DDPM step of a flow model; ComfyUI's
    `sample_euler_ancestral_RF`): an Euler step down to σ_d = σ'·(1 + (σ'/σ − 1)·η), then re-noise to σ':
    x' = (α'/α_d)·(x̂0 + σ_d·v̂) + s·n with α = 1 − σ, v̂ = (x − x̂0)/σ, s² = σ'² − σ_d²·α'²/α_d². `noise` None
    returns the mean; a step to σ' = 0 returns x̂0."""
    s, sn = float(sigma), float(sigma_next)
    if sn <= 0.0:
        return x0_hat
    mu, up = flow_step_terms(x, x0_hat, s, sn, eta)
    return mu if noise is None or up == 0.0 else mu + noise * up


def flow_step_terms(x: torch.Tensor, x0_hat: torch.Tensor, sigma: float, sigma_next: float, eta: float = 1.0
                    ) -> tuple[torch.Tensor, float]:
    """(mean, noise scale s) of `flow_step` from σ to σ' > 0."""
    s, sn = float(sigma), float(sigma_next)
    sd = sn * (1.0 + (sn / s - 1.0) * float(eta))
    a_n, a_d = 1.0 - sn, 1.0 - sd
    up = max(sn * sn - sd * sd * a_n * a_n / (a_d * a_d), 0.0) ** 0.5
    ratio = sd / s
    mu = (ratio * x + (1.0 - ratio) * x0_hat) * (a_n / a_d)
    return mu, up


def match_indices(run: torch.Tensor, grid: torch.Tensor, rtol: float = 1e-4) -> list[int] | None:
    """For each sigma of `run`, its index in `grid` (descending sigmas), when every one is among the grid's and
    they come in the grid's order; else None. Sigmas match within rtol·max(σ, 1e-3) + 1e-6."""
    r = torch.as_tensor(run, dtype=torch.float64).reshape(-1)
    g = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
    if r.numel() == 0 or g.numel() == 0 or not bool(torch.isfinite(r).all()):
        return None
    idx = []
    for s in r.tolist():
        d = (g - s).abs()
        k = int(torch.argmin(d))
        if float(d[k]) > rtol * max(abs(s), 1e-3) + 1e-6:
            return None
        idx.append(k)
    if any(b <= a for a, b in zip(idx, idx[1:])):
        return None
    return idx


def match_run(run: torch.Tensor, grid: torch.Tensor, contiguous: bool = False, rtol: float = 1e-4) -> int | None:
    """Index in `grid` (descending sigmas) of the first sigma of `run` when every sigma of `run` is one of the
    grid's, in order (`contiguous`: a contiguous run grid[k:k+len(run)], e.g. a SplitSigmas part); else None."""
    idx = match_indices(run, grid, rtol)
    if idx is None or (contiguous and any(b != a + 1 for a, b in zip(idx, idx[1:]))):
        return None
    return idx[0]
