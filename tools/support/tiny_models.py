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


# --------------------------------------------------------------------------------------------------------------
# DiTs (issue 20): a tiny FLUX built from config, a tiny SD3 through the real loader
# --------------------------------------------------------------------------------------------------------------

DIT_CONTEXT = 32


def flux(seed: int = 0, depth: int = 2, depth_single: int = 2, patch: int = 2, shift: float = 1.15):
    """Tiny FLUX built from config (hidden 128, 4 heads, RoPE axes [8, 12, 12], 16 latent channels in 2 x 2 patches
    as FLUX.1 (ComfyUI 0.3.64 unpatchifies with 2 x 2 whatever the config), context and pooled dims 32): a real
    comfy.model_base.Flux with ModelSamplingFlux."""
    from dragedit.core.host import dit_build
    cfg = dit_build.flux_config(context_dim=DIT_CONTEXT, depth=depth, depth_single=depth_single, patch=patch)
    return dit_build.build_flux(cfg, seed=seed, shift=shift)


def sd3_state_dict(seed: int = 0, depth: int = 2, patch: int = 2):
    """State dict of a depth-`depth` SD3 MMDiT (hidden 64·depth, 16 latent channels, context / pooled dims 32) that
    ComfyUI's detection reads as SD3 (depth = x_embedder width / 64)."""
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    import comfy.ops
    hidden = 64 * depth
    with torch.inference_mode(False):
        m = MMDiT(input_size=None, patch_size=patch, in_channels=16, out_channels=16, depth=depth,
                  adm_in_channels=DIT_CONTEXT, pos_embed_max_size=16, num_patches=256,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": DIT_CONTEXT, "out_features": hidden}},
                  dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
        g = torch.Generator().manual_seed(seed)
        sd = {}
        for k, v in m.state_dict().items():
            sd[k] = (torch.randn(v.shape, generator=g) * 0.05) if v.ndim >= 2 else torch.zeros(v.shape)
    return sd


def sd3(path, seed: int = 0):
    """Tiny SD3 written to `path` (safetensors, fp16) and loaded through comfy.sd.load_diffusion_model."""
    import comfy.sd
    import comfy.utils
    import safetensors.torch
    sd = {k: v.half().contiguous() for k, v in sd3_state_dict(seed).items()}
    safetensors.torch.save_file(sd, str(path))
    return comfy.sd.load_diffusion_model(str(path))


def dit_conditioning(seed: int = 0, tokens: int = 8, width: int = DIT_CONTEXT):
    """A CONDITIONING for the tiny DiTs: context [1, tokens, width] and pooled_output [1, width]."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(1, tokens, width, generator=g)
    return [[c, {"pooled_output": torch.randn(1, width, generator=g)}]]


def dit_latent(seed: int = 0, size: int = 8, channels: int = 16):
    """A LATENT dict (VAE space) for the tiny DiTs: a smooth random pattern, size x size."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(1, channels, max(size // 4, 1), max(size // 4, 1), generator=g)
    s = torch.nn.functional.interpolate(s, size=(size, size), mode="bilinear", align_corners=False)
    return {"samples": s}


def qwen_image(seed: int = 0, layers: int = 2):
    """Tiny Qwen-Image built from config (4 heads of 32, RoPE axes [8, 12, 12], 16 latent channels in 2 x 2 patches,
    text width 32): a real comfy.model_base.QwenImage with its flow sampling."""
    import comfy.model_patcher
    import comfy.supported_models
    cfg = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=layers,
               attention_head_dim=32, num_attention_heads=4, joint_attention_dim=DIT_CONTEXT,
               axes_dims_rope=(8, 12, 12), dtype=torch.float32)
    with torch.inference_mode(False):
        mc = comfy.supported_models.QwenImage(cfg)
        mc.set_inference_dtype(torch.float32, None)
        m = mc.get_model({}, device="cpu")
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.diffusion_model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 if p.ndim >= 2 else torch.ones(p.shape))
        m.diffusion_model.to(torch.float32)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(m, load_device=cpu, offload_device=cpu)
