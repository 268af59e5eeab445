"""Stock ComfyUI custom-sampling nodes called the way the executor calls them (inside inference mode), for the flow
inversion tests and bench: BasicScheduler, BasicGuider / CFGGuider, SamplerCustomAdvanced."""
from __future__ import annotations

import torch


def _call(cls, **kw):
    fn = getattr(cls, "execute", None) or getattr(cls(), cls.FUNCTION)
    out = fn(**kw)
    return out.args if hasattr(out, "args") else out


def scheduler_sigmas(model, steps: int, scheduler: str = "simple") -> torch.Tensor:
    """SIGMAS of the stock BasicScheduler node (denoise 1)."""
    from comfy_extras.nodes_custom_sampler import BasicScheduler
    with torch.inference_mode():
        return _call(BasicScheduler, model=model, scheduler=scheduler, steps=int(steps), denoise=1.0)[0]


def sampler_custom_advanced(model, noise, sampler, sigmas, latent, positive, negative=None, cfg: float = 1.0):
    """LATENT samples of the stock SamplerCustomAdvanced with a BasicGuider (cfg 1) or CFGGuider."""
    from comfy_extras.nodes_custom_sampler import BasicGuider, CFGGuider, SamplerCustomAdvanced
    with torch.inference_mode():
        if negative is None:
            guider = _call(BasicGuider, model=model, conditioning=positive)[0]
        else:
            guider = _call(CFGGuider, model=model, positive=positive, negative=negative, cfg=float(cfg))[0]
        out = _call(SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                    latent_image=latent)
    return out[0]["samples"]


def psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR (dB) of a against ref, peak = ref's value range."""
    mse = float((a.double() - ref.double()).pow(2).mean())
    rng = float(ref.max() - ref.min())
    return float("inf") if mse == 0 else 10.0 * float(torch.log10(torch.tensor(rng * rng / mse)))
