"""Real ComfyUI DiT models built from a config (no checkpoint): a tiny FLUX for tests and benches. ComfyUI's FLUX
detection hard-codes 24 heads (the smallest detectable FLUX is ~394 M parameters), so a small FLUX is built from its
config like the UNet ones (build.py); a tiny SD3 loads through the real loader instead (tools/support/tiny_models)."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch


def flux_config(in_channels: int = 16, context_dim: int = 32, hidden: int = 128, heads: int = 4, depth: int = 2,
                depth_single: int = 2, patch: int = 1, axes: tuple[int, ...] = (8, 12, 12)) -> dict:
    """Keyword arguments of comfy.ldm.flux.model.Flux: `in_channels` latent channels in and out, context and pooled
    dims `context_dim`, RoPE over (index, row, column) with `axes` (sum = head dim), no guidance embedding."""
    if hidden % heads or sum(axes) != hidden // heads:
        raise ValueError(f"RoPE axes {axes} must sum to the head dim {hidden} / {heads}")
    return dict(image_model="flux", in_channels=in_channels, out_channels=in_channels, vec_in_dim=context_dim,
                context_in_dim=context_dim, hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth,
                depth_single_blocks=depth_single, axes_dim=list(axes), theta=10000, patch_size=patch, qkv_bias=True,
                guidance_embed=False)


@functools.lru_cache(maxsize=None)
def _flux_model_config_class(latent_format: Any = None, text_start_tokens: int = 1) -> type:
    """A comfy.supported_models.Flux config for a FLUX built from config (CONST + ModelSamplingFlux; FLUX latents
    unless `latent_format` names another comfy LatentFormat class; `text_start_tokens` as facts.text_start_tokens)."""
    import comfy.supported_models

    attrs = {"unet_config": {"image_model": "flux", "guidance_embed": False}, "unet_extra_config": {},
             "supported_inference_dtypes": [torch.float32], "text_start_tokens": int(text_start_tokens)}
    if latent_format is not None:
        attrs["latent_format"] = latent_format
    return type("TinyFlux", (comfy.supported_models.Flux,), attrs)


def build_flux(config: dict, *, state_dict: Optional[dict] = None, shift: float = 1.15, seed: int = 0,
               std: float = 0.05, latent_format: Any = None, text_start_tokens: int = 1,
               init: Optional[Callable[[torch.nn.Module], None]] = None) -> Any:
    """A ComfyUI MODEL (ModelPatcher over comfy.model_base.Flux on the CPU, fp32, ModelSamplingFlux with μ = shift)
    from a `flux_config`: the tiny test FLUX and the shapes demo DiT. Without a state dict, `init(diffusion_model)`
    initialises the weights (default: a seeded N(0, std) init with zero biases and unit QK-norm scales)."""
    import comfy.model_base
    import comfy.model_patcher
    cfg = dict(config, dtype=torch.float32)
    mc = _flux_model_config_class(latent_format, int(text_start_tokens))(cfg)
    mc.sampling_settings = dict(mc.sampling_settings, shift=float(shift))
    with torch.inference_mode(False):
        m = comfy.model_base.Flux(mc, model_type=comfy.model_base.ModelType.FLUX, device="cpu")
        m.model_sampling.set_parameters(shift=float(shift))
        dm = m.diffusion_model
        if state_dict is not None:
            missing, unexpected = dm.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False)
            if missing or unexpected:
                raise ValueError(f"state dict does not fit the FLUX config: missing {missing[:4]}, "
                                 f"unexpected {unexpected[:4]}")
        elif init is not None:
            init(dm)
        else:
            g = torch.Generator().manual_seed(int(seed))
            with torch.no_grad():
                for name, p in dm.named_parameters():
                    if name.endswith(".scale"):
                        p.fill_(1.0)
                    elif p.ndim < 2:
                        p.zero_()
                    else:
                        p.copy_(torch.randn(p.shape, generator=g) * std)
        dm.to(torch.float32)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(m, load_device=cpu, offload_device=cpu)
