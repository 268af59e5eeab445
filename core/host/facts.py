"""Family-neutral model facts: the BaseModel behind a MODEL, its sampling schedule, latent format and text encoder
facts. Which model family runs a model (and so whether the pack supports it) is families.py's question.

Sampler state convention (ComfyUI): x = z_t / sqrt(ᾱ_t) = z_0 + σ·ε with ᾱ = 1/(1+σ²); the wrapped model returns
x̂0 for eps- and v-prediction models alike, so ε̂ = (x − x̂0)/σ.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import HostError


def base_model(model: Any) -> Any:
    """The comfy BaseModel behind a ModelPatcher (or the BaseModel itself)."""
    return getattr(model, "model", model)


def model_sampling(model: Any) -> Any:
    """ComfyUI's model_sampling object (respects object patches where the host has get_model_object)."""
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    return base_model(model).model_sampling


def is_flow(model: Any) -> bool:
    """True when the model samples as rectified flow (CONST: x_σ = (1 − σ)·x0 + σ·ε, e.g. FLUX, SD3, Qwen-Image):
    the schedule formulas of core/schedule.py take flow=True for it."""
    import comfy.model_sampling
    return isinstance(model_sampling(model), comfy.model_sampling.CONST)


def text_start_tokens(model: Any) -> int:
    """Start tokens (BOS) the model's text encoder puts before the prompt's words: 1 for CLIP (SD1.x/2.x, SDXL),
    0 for a model built with `build_model(text_start_tokens=0)` (the shapes demo model's word encoder)."""
    return int(getattr(getattr(base_model(model), "model_config", None), "text_start_tokens", 1))


def concept_token_range(n_tokens: int, count: int, start: int = 1) -> tuple[int, int]:
    """Token slice [lo, hi) of a concept's context whose cross-attention makes its LEDITS++ mask: the first `count`
    tokens after the `start` start tokens; count 0 = from `start` to all but the last token (diffusers on CLIP:
    tokens 1..T−2, padding included). At least one token, never past the context."""
    lo = max(0, min(int(start), n_tokens - 1))
    hi = lo + int(count) if count else n_tokens - 1
    return lo, max(lo + 1, min(hi, n_tokens))


def timestep_of(model: Any, sigma: torch.Tensor | float) -> float:
    """The model's (DDPM) timestep t for a sigma."""
    return float(model_sampling(model).timestep(torch.as_tensor(sigma, dtype=torch.float32).reshape(1))[0])


def ddim_sigmas(model: Any, steps: int) -> torch.Tensor:
    """Descending DDIM grid ending in 0, strictly descending for every steps in 1..T: timesteps o + k·(T//steps) for
    k < steps with offset o = 1, as diffusers' DDIMScheduler with steps_offset=1 and "leading" spacing (equal to
    ComfyUI's 'ddim_uniform' when T divides by steps; that one adds extra steps otherwise). At the one edge where
    that grid leaves the model's range (steps = T: timesteps 1..T) the offset drops to
    o = T−1−(steps−1)·(T//steps) (= 0: every timestep 0..T−1 once) instead of clipping T to T−1, which would repeat
    the first sigma."""
    ms = model_sampling(model)
    n = int(len(ms.sigmas))
    steps = int(steps)
    if not 1 <= steps <= n:
        raise HostError(f"steps must be between 1 and {n}, got {steps}")
    ratio = n // steps
    offset = min(1, n - 1 - (steps - 1) * ratio)
    ts = torch.arange(steps - 1, -1, -1, dtype=torch.long) * ratio + offset
    sig = ms.sigmas.detach().to("cpu", torch.float32)[ts]
    return torch.cat([sig, sig.new_zeros(1)])


def scheduler_sigmas(model: Any, steps: int, scheduler: str = "simple") -> torch.Tensor:
    """Descending SIGMAS of ComfyUI's scheduler `scheduler` for `steps` steps (BasicScheduler at denoise 1), ending
    in 0: the grid LEDITS Edit runs a flow model on."""
    import comfy.samplers
    if int(steps) < 1:
        raise HostError(f"steps must be at least 1, got {steps}")
    return comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, int(steps)).detach().to("cpu",
                                                                                                  torch.float32)


def latent_format(model: Any) -> Any:
    """The model's latent format (scale factor, channels)."""
    return base_model(model).latent_format


def process_in(model: Any, samples: torch.Tensor) -> torch.Tensor:
    """LATENT samples (VAE space) -> the model's latent z_0 (scaled)."""
    return base_model(model).process_latent_in(samples)


def process_out(model: Any, z: torch.Tensor) -> torch.Tensor:
    """The model's latent -> LATENT samples (VAE space)."""
    return base_model(model).process_latent_out(z)
