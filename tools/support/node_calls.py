"""Calls of node functions and stock ComfyUI samplers the way ComfyUI's executor makes them (inside
torch.inference_mode), and a UNet call counter, for the in-process tests (the pack loaded as `dragedit`)."""
from __future__ import annotations

import torch


def run_node(cls, **inputs):
    """Call a node's FUNCTION the way ComfyUI's executor does (inside torch.inference_mode)."""
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


def sample_custom(model, positive, negative, cfg, sampler, sigmas, samples, callback=None):
    """What the stock SamplerCustom node runs (add_noise off), inside inference mode like the executor."""
    import comfy.sample
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, torch.zeros_like(samples), float(cfg), sampler, sigmas, positive,
                                          negative, samples, callback=callback, disable_pbar=True)


def stock_sampler_custom(model, positive, negative, cfg, sampler, sigmas, latent):
    """ComfyUI's own SamplerCustom node (add_noise off), called like the executor calls it."""
    from comfy_extras.nodes_custom_sampler import SamplerCustom
    fn = getattr(SamplerCustom, "execute", None) or SamplerCustom().sample
    with torch.inference_mode():
        out = fn(model=model, add_noise=False, noise_seed=0, cfg=cfg, positive=positive, negative=negative,
                 sampler=sampler, sigmas=sigmas, latent_image=latent)
    return (out.args if hasattr(out, "args") else out)[0]["samples"]


def ksampler(name):
    """ComfyUI's KSAMPLER of that sampler name."""
    import comfy.samplers
    return comfy.samplers.ksampler(name)


def sega_node(model, concept, direction="add", scale=5.0, threshold=0.9, warmup=0, cooldown=0, weight=1.0,
              momentum_scale=0.1, momentum_beta=0.4, mode="SEGA", cross_attention_mask=True, concept_tokens=0,
              mask=None):
    """The patched MODEL of the SEGA Guidance node."""
    from dragedit.nodes.sega import SEGAGuidance
    return run_node(SEGAGuidance, model=model, concept=concept, direction=direction, scale=scale, threshold=threshold,
                    warmup=warmup, cooldown=cooldown, weight=weight, momentum_scale=momentum_scale,
                    momentum_beta=momentum_beta, mode=mode, cross_attention_mask=cross_attention_mask,
                    concept_tokens=concept_tokens, **({} if mask is None else {"mask": mask}))[0]


class UNetCounter:
    """model_function_wrapper counting UNet calls and rows (batch entries) with their cond_or_uncond."""

    def __init__(self):
        self.calls: list[tuple[int, list]] = []

    def __call__(self, apply, a):
        self.calls.append((int(a["input"].shape[0]), list(a["cond_or_uncond"])))
        return apply(a["input"], a["timestep"], **a["c"])

    @property
    def rows(self) -> int:
        return sum(n for n, _ in self.calls)


def counted(model):
    """A clone of the model whose UNet calls a new UNetCounter records: (model, counter)."""
    c = UNetCounter()
    m = model.clone()
    m.set_model_unet_function_wrapper(c)
    return m, c
