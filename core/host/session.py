"""Calls inside ComfyUI's own sampling machinery: a per-run clone, a session that runs a method's loop as a
KSAMPLER function (conds, CFG, every other patch and device management stay ComfyUI's), the denoiser the loop
calls, differentiable calls, stock sampling, and checks that run before a sampler starts."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import torch

from . import internals
from .errors import HostError
from . import facts
from .facts import base_model
from .handle import SharedHandle
from .kv import without_kv_patches


def clone(model: Any) -> Any:
    """A per-run clone of the user's ModelPatcher; every patch of this pack goes on such a clone."""
    return model.clone()


class Denoiser:
    """The CFG-combined denoiser of a running session: x0(x, σ) = x̂0, eps(x, σ) = ε̂ = (x − x̂0)/σ.
    Calls go through ComfyUI (conds, CFG, every other patch, device management)."""

    def __init__(self, model_k: Any, extra_args: dict, patcher: Any):
        self._model_k, self.extra_args, self.patcher = model_k, extra_args, patcher
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    def x0(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """x̂0 at sampler state x and noise level σ."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        self.calls += 1
        return self._model_k(x, s, **self.extra_args)

    def eps(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """ε̂ = (x − x̂0)/σ."""
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        return (x - self.x0(x, sigma)) / s

    def cond_x0(self, x: torch.Tensor, sigma: torch.Tensor | float, kv_patches: bool = False) -> torch.Tensor:
        """x̂0 of the positive conditioning alone: one UNet pass, no CFG and no post-CFG functions; this pack's
        attn1 (K/V record / inject) patches are left out unless kv_patches (DragonDiffusion's plain cond UNet)."""
        import comfy.samplers
        bm, cond = internals.session_positive(self._model_k)
        if not cond:
            raise HostError("a cond-only pass needs the positive conditioning of the session")
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        mo = self.extra_args.get("model_options", {})
        if not kv_patches:
            mo = without_kv_patches(mo)
        self.calls += 1
        return comfy.samplers.calc_cond_batch(bm, [cond], x, s, mo)[0]


@contextlib.contextmanager
def grad_enabled(model: Any) -> Iterator[None]:
    """Make UNet calls of `model` (a ModelPatcher, BaseModel or Denoiser) differentiable w.r.t. their inputs
    inside a node run by ComfyUI: leave inference mode, enable grad, and swap inference-tensor weights for
    aliases of the same memory (restored on exit; `internals.differentiable_weights`)."""
    if isinstance(model, Denoiser):
        model = model.patcher
    with torch.inference_mode(False), torch.enable_grad(), internals.differentiable_weights(base_model(model)):
        yield


def grad_input(t: torch.Tensor) -> torch.Tensor:
    """A fresh leaf copy of an (possibly inference) tensor that can require grad."""
    with torch.inference_mode(False):
        return t.detach().clone().requires_grad_(True)


def session(model: Any, positive: Any, negative: Any, cfg: float, samples: torch.Tensor, sigmas: torch.Tensor,
            loop: Callable[[Denoiser, torch.Tensor, torch.Tensor], torch.Tensor], seed: int = 0,
            disable_pbar: bool = True) -> torch.Tensor:
    """Run `loop(den, x, sigmas)` inside ComfyUI's sampling machinery on `model` (a clone) and return its result
    as LATENT samples. `x` starts as the processed-in latent z_0 (no noise is added); the loop returns the final
    sampler state. `negative` may be None (cfg must then be 1)."""
    import comfy.sample
    if negative is None:
        negative = []

    flow = facts.is_flow(model)

    def fn(model_k, x, sig, extra_args=None, callback=None, disable=None, **_):
        if flow:  # CONST noise scaling gave (1 − σ_0)·z_0 for zero noise: start from z_0 itself
            x = base_model(model).process_latent_in(samples).to(x.device, x.dtype)
        return loop(Denoiser(model_k, extra_args or {}, model), x, sig)

    sampler = ksampler(fn)
    noise = torch.zeros_like(samples)
    return comfy.sample.sample_custom(model, noise, float(cfg), sampler, sigmas, positive, negative, samples,
                                      noise_mask=None, callback=None, disable_pbar=disable_pbar, seed=seed)


def sample_with_sampler(model: Any, positive: Any, negative: Any, cfg: float, sampler: Any, sigmas: torch.Tensor,
                        samples: torch.Tensor, seed: int = 0,
                        callback: Optional[Callable[[int, torch.Tensor, torch.Tensor, int], None]] = None,
                        noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Stock SamplerCustom without added noise (or with `noise`, e.g. a flow inversion's InvertedNoise): sample
    LATENT `samples` with a SAMPLER on `sigmas`; returns LATENT samples. callback(step, x̂0, x, total) per step."""
    import comfy.sample
    noise = torch.zeros_like(samples) if noise is None else noise
    negative = negative if negative is not None else []
    return comfy.sample.sample_custom(model, noise, float(cfg), sampler, sigmas, positive, negative, samples,
                                      noise_mask=None, callback=callback, disable_pbar=True, seed=seed)


def ksampler(sampler_function: Callable[..., torch.Tensor], extra_options: Optional[dict] = None,
             inpaint_options: Optional[dict] = None) -> Any:
    """A SAMPLER for any sampler node: comfy.samplers.KSAMPLER around a function with the k-diffusion sampler
    contract fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **extra_options)."""
    import comfy.samplers
    return comfy.samplers.KSAMPLER(sampler_function, extra_options or {}, inpaint_options or {})


class _SamplingCheck(SharedHandle):
    """OUTER_SAMPLE wrapper: check(sigmas, latent_image, noise) before a sampling run starts, after(result) on the
    LATENT samples it returns (either raises to refuse)."""

    def __init__(self, check: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any],
                 after: Optional[Callable[[torch.Tensor], Any]] = None):
        self.check = check
        self.after = after

    def __call__(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        self.check(sigmas, latent_image, noise)
        out = executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        if self.after is not None and isinstance(out, torch.Tensor) and not out.is_nested:
            self.after(out)
        return out


def patch_sampling_check(model: Any, key: str, check: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any],
                         after: Optional[Callable[[torch.Tensor], Any]] = None) -> Any:
    """Make every sampler of `model` (a clone) call check(sigmas, latent_image, noise) before it samples (e.g. the
    schedule-match rule of a patch that only works on an inversion's sigmas) and, given, after(result) on the LATENT
    samples it returns (e.g. a blown-out result); replaces a check under the same key."""
    import comfy.patcher_extension as pe
    wkey = f"dragedit_sampling_check_{key}"
    model.remove_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, wkey)
    model.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, wkey, _SamplingCheck(check, after))
    return model
