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


def match_run(run: torch.Tensor, grid: torch.Tensor, contiguous: bool = False, rtol: float = 1e-4) -> int | None:
    """Index in `grid` (descending sigmas) of the first sigma of `run` when every sigma of `run` is one of the
    grid's, in order (`contiguous`: a contiguous run grid[k:k+len(run)], e.g. a SplitSigmas part); else None.
    Sigmas match within rtol·max(σ, 1e-3) + 1e-6."""
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
    if contiguous and any(b != a + 1 for a, b in zip(idx, idx[1:])):
        return None
    return idx[0]
