"""Pure noise-schedule formulas in ComfyUI's sampler parameterisation x = z_t/sqrt(ᾱ_t) = z_0 + σ·ε.

ᾱ = 1/(1+σ²); z_t = sqrt(ᾱ_t)·x. Deterministic DDIM is Euler in this form."""
from __future__ import annotations

import torch


def alpha_bar(sigma: torch.Tensor | float) -> torch.Tensor:
    """ᾱ_t = 1/(1+σ_t²)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return 1.0 / (1.0 + s * s)


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """ε̂ = (x − x̂0)/σ."""
    return (x - x0) / float(sigma)


def to_z(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Sampler state x -> VP latent z_t = sqrt(ᾱ_t)·x."""
    return x * float(alpha_bar(sigma).sqrt())


def from_z(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """VP latent z_t -> sampler state x = z_t/sqrt(ᾱ_t)."""
    return z / float(alpha_bar(sigma).sqrt())


def ddim_step(x: torch.Tensor, eps: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Deterministic DDIM from σ to σ_next (either direction): x̂0 = x − σ·ε̂, x_next = x̂0 + σ_next·ε̂."""
    return x + (float(sigma_next) - float(sigma)) * eps


def rescale_to_sigma(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """The sampler state that shows the UNet the same input z as x at σ_from, but labelled σ_to
    (x·sqrt((1+σ_to²)/(1+σ_from²))): used by DDIM inversion, which evaluates ε̂(z_t, t+Δ) as diffusers does."""
    return x * float(((1.0 + float(sigma_to) ** 2) / (1.0 + float(sigma_from) ** 2)) ** 0.5)
