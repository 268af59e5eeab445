"""GUIDERs whose denoiser is a method of this pack (FlowEdit): a comfy.samplers.CFGGuider subclass, the way ComfyUI's
own guider nodes are made (comfy_extras/nodes_custom_sampler.py: Guider_Basic, Guider_DualCFG), so stock
SamplerCustomAdvanced runs it with any NOISE, SAMPLER and SIGMAS node and every model patch stays ComfyUI's.

The method sees a `GuiderRun` per sampling run: the clean start latent x_src (the LATENT given to the sampler node, in
model space), the run's sigmas, and `x0(x, σ, positive, negative, cfg)`, the CFG-combined x̂0 of any two of the
guider's CONDITIONINGs at any state x (one batched model call through comfy.samplers.calc_cond_batch). The sampler
starts from x_src itself: the guider hands the sampler x_src as its noise, so CONST noise scaling
σ·n + (1 − σ)·x_src gives x_src whatever NOISE is connected.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch

from .facts import process_in

Method = Callable[["GuiderRun", torch.Tensor, torch.Tensor], torch.Tensor]
"""method(run, x, σ) -> x̂0 that the sampler uses at state x and noise level σ."""
SampleCheck = Callable[[Any, torch.Tensor], None]
"""check(sampler, sigmas) before a run starts: raises to refuse the SAMPLER or SIGMAS."""


class GuiderRun:
    """One sampling run of a method guider: x_src (model space), sigmas (float64, CPU), seed, the method's own state
    dict, and `x0`."""

    def __init__(self, guider: Any, x_src: torch.Tensor, sigmas: torch.Tensor, seed: Optional[int]):
        self._guider = guider
        self.x_src = x_src
        self.sigmas = sigmas.detach().to("cpu", torch.float64).reshape(-1)
        self.seed = 0 if seed is None else int(seed)
        self.state: dict = {}
        self.model_options: dict = {}
        self.calls = 0

    @property
    def steps(self) -> int:
        return int(self.sigmas.numel()) - 1

    def step_of(self, sigma: torch.Tensor | float) -> int:
        """Index i of the run's sigma nearest to σ."""
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        return int(torch.argmin((self.sigmas - s).abs()).item())

    def x0(self, x: torch.Tensor, sigma: torch.Tensor, positive: str, negative: Optional[str] = None,
           cfg: float = 1.0) -> torch.Tensor:
        """x̂0_u + cfg·(x̂0_c − x̂0_u) of the guider's CONDITIONINGs `positive` / `negative` (keys given to
        `method_guider`) at x, σ; the positive alone when negative is None or cfg is 1."""
        import comfy.samplers
        g = self._guider
        cond = g.conds.get(positive)
        uncond = g.conds.get(negative) if negative is not None and float(cfg) != 1.0 else None
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        self.calls += 1
        out = comfy.samplers.calc_cond_batch(g.inner_model, [cond, uncond], x, s, self.model_options)
        if uncond is None:
            return out[0]
        return out[1] + (out[0] - out[1]) * float(cfg)


@functools.lru_cache(maxsize=None)
def _guider_class() -> type:
    import comfy.samplers

    class MethodGuider(comfy.samplers.CFGGuider):
        """A CFGGuider whose predict_noise is a method of this pack (see the module docstring)."""

        method: Method
        check: Optional[SampleCheck] = None
        run: Optional[GuiderRun] = None

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                   seed=None, *args, **kwargs):
            if self.check is not None:
                self.check(sampler, sigmas)
            # ComfyUI shifts a non-empty latent into model space (CFGGuider.inner_sample); the run starts there
            lat = latent_image.to(torch.float32)
            x_src = process_in(self.model_patcher, lat) if torch.count_nonzero(lat) > 0 else lat
            prev, self.run = self.run, GuiderRun(self, x_src, sigmas, seed)
            try:
                return super().sample(x_src.to(noise.dtype), latent_image, sampler, sigmas, denoise_mask, callback,
                                      disable_pbar, seed, *args, **kwargs)
            finally:
                self.run = prev

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            run = self.run
            run.model_options = model_options
            if run.x_src.device != x.device or run.x_src.dtype != x.dtype:
                run.x_src = run.x_src.to(x.device, x.dtype)
            return self.method(run, x, timestep)

    return MethodGuider


def method_guider(model: Any, conds: dict[str, Any], method: Method, check: Optional[SampleCheck] = None) -> Any:
    """A GUIDER for SamplerCustomAdvanced over `model` with the CONDITIONINGs `conds` (key -> CONDITIONING or None)
    whose denoiser is method(run, x, σ) (see GuiderRun); check(sampler, sigmas) runs before each sampling run."""
    g = _guider_class()(model)
    g.inner_set_conds({k: c for k, c in conds.items() if c is not None})
    g.method = method
    g.check = check
    return g


def sampler_function(sampler: Any) -> Optional[Callable]:
    """The k-diffusion function of a KSAMPLER SAMPLER (None for another kind of sampler)."""
    return getattr(sampler, "sampler_function", None)


def euler_function() -> Callable:
    """ComfyUI's plain Euler sampler function (the "euler" SAMPLER)."""
    import comfy.k_diffusion.sampling as ks
    return ks.sample_euler
