"""Tiny SD-shaped models built from config as real ComfyUI model objects (model_base + ModelPatcher),
deterministically initialised: SD1.5-shaped (eps), SD2-shaped v-prediction, SDXL-shaped (ADM/pooled)."""
from __future__ import annotations

import torch

CONTEXT_DIM = 32

SD15_UNET = dict(
    in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1],
    transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
    context_dim=CONTEXT_DIM, num_heads=2, use_linear_in_transformer=True, use_spatial_transformer=True,
    legacy=False, image_size=32, adm_in_channels=None, num_head_channels=-1,
)

# A 3-level SD1.5-shaped UNet: cross-attention at 1/4 of the latent resolution, where LEDITS++ reads its masks.
SD15_3LEVEL = dict(SD15_UNET, channel_mult=[1, 2, 2], num_res_blocks=[1, 1, 1],
                   transformer_depth=[1, 1, 1], transformer_depth_output=[1] * 6)

# SDXL layout in small: no attention at the highest resolution, deeper stacks below, ADM (pooled + sizes).
SDXL_POOLED = 32
SDXL_UNET = dict(
    in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=[1, 1, 1],
    transformer_depth=[0, 1, 2], transformer_depth_output=[0, 0, 1, 1, 2, 2],
    transformer_depth_middle=2, context_dim=CONTEXT_DIM, num_heads=2, use_linear_in_transformer=True,
    use_spatial_transformer=True, legacy=False, image_size=32, adm_in_channels=SDXL_POOLED + 6 * 256,
    num_classes="sequential", num_head_channels=-1, use_temporal_attention=False,
)


def sd15(seed: int = 0):
    """Tiny SD1.5-shaped eps model (about 1 M parameters)."""
    from dragedit.core import host
    return host.build_model(SD15_UNET, latent_format="sd15", prediction="eps", seed=seed)


def vpred(seed: int = 0):
    """Tiny SD2-shaped v-prediction model."""
    from dragedit.core import host
    return host.build_model(SD15_UNET, latent_format="sd15", prediction="v", seed=seed)


def sdxl(seed: int = 0):
    """Tiny SDXL-shaped model (its own block layout, ADM / pooled conditioning)."""
    from dragedit.core import host
    return host.build_model(SDXL_UNET, latent_format="sdxl", prediction="eps", sdxl=True, seed=seed)


def conditioning(seed: int = 0, tokens: int = 8, pooled: bool = False, width: int = CONTEXT_DIM):
    """A CONDITIONING list like CLIP Text Encode gives (deterministic random context)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(1, tokens, width, generator=g)
    extra = {}
    if pooled:
        extra["pooled_output"] = torch.randn(1, SDXL_POOLED, generator=g)
    return [[c, extra]]


def latent(seed: int = 0, size: int = 16, channels: int = 4):
    """A LATENT dict (VAE space) with a smooth random pattern."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(1, channels, size // 4, size // 4, generator=g)
    s = torch.nn.functional.interpolate(s, size=(size, size), mode="bilinear", align_corners=False) * 3
    return {"samples": s}
