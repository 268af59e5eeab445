"""The shapes demo model as real ComfyUI objects: an SD-style eps UNet (ComfyUI's UNetModel, self- and
cross-attention at every level), its latent format (12-channel unshuffle latents), the prompt encoder and the
unshuffle VAE; `load_demo()` builds them from the committed safetensors."""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Optional

import torch

from .. import host
from . import vae as shapes_vae
from .prompt import CONTEXT_DIM, PromptEncoder, ShapesClip

log = logging.getLogger("dragedit.shapes")

WEIGHTS = Path(__file__).resolve().parent / "weights" / "shapes_v1.safetensors"
IMAGE_SIZE = 32
LATENT_SIZE = IMAGE_SIZE // shapes_vae.FACTOR
# 1 / std of the unshuffled (2x − 1) scene pixels (0.33 on 2,000 sampled scenes): the UNet sees unit variance.
SCALE_FACTOR = 3.0

UNET_CONFIG = dict(
    in_channels=shapes_vae.LATENT_CHANNELS, out_channels=shapes_vae.LATENT_CHANNELS, model_channels=32,
    channel_mult=[1, 3, 3], num_res_blocks=[1, 1, 1], transformer_depth=[1, 1, 1],
    transformer_depth_output=[1, 1, 1, 1, 1, 1], transformer_depth_middle=1, context_dim=CONTEXT_DIM,
    num_heads=4, num_head_channels=-1, use_linear_in_transformer=True, use_spatial_transformer=True,
    legacy=False, image_size=LATENT_SIZE, adm_in_channels=None,
)


@functools.lru_cache(maxsize=1)
def latent_format_class() -> type:
    """comfy LatentFormat subclass of the shapes model: 12 channels, scale SCALE_FACTOR, exact RGB previews."""
    import comfy.latent_formats

    class ShapesLatent(comfy.latent_formats.LatentFormat):
        """12-channel 2x2-unshuffle latents of the shapes demo model."""
        scale_factor = SCALE_FACTOR
        latent_channels = shapes_vae.LATENT_CHANNELS
        latent_dimensions = 2
        latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        latent_rgb_factors_bias = None
        # Size guard read by the pack's nodes (nodes/_common.check_latent_fits): self-attention runs at the full latent
        # resolution, so the cost of a UNet call grows with the square of the pixel count.
        dragedit_max_latent_side = 4 * LATENT_SIZE          # 64: images up to 128x128
        dragedit_size_reason = (f"the Shapes Demo Model is trained on {IMAGE_SIZE}x{IMAGE_SIZE} images and has "
                                "self-attention at the full latent resolution, so a UNet call costs the square of the "
                                "pixel count; one call on one CPU core: 0.04 s at 32x32, 2.6 s and +0.5 GB at 128x128, "
                                "41 s and +2.2 GB at 256x256")

        def __init__(self) -> None:
            # previews: model-space x̂0 -> unshuffle latent -> RGB in [−1, 1]
            self.latent_rgb_factors_reshape = lambda x0: torch.nn.functional.pixel_shuffle(
                x0[:, :shapes_vae.LATENT_CHANNELS] / SCALE_FACTOR, shapes_vae.FACTOR)

    return ShapesLatent


def split_state_dict(sd: dict) -> tuple[dict, dict]:
    """A shapes weights file -> (UNet state dict, prompt encoder state dict)."""
    unet = {k[5:]: v for k, v in sd.items() if k.startswith("unet.")}
    text = {k[5:]: v for k, v in sd.items() if k.startswith("text.")}
    return unet, text


def build(unet_sd: Optional[dict] = None, text_sd: Optional[dict] = None, seed: int = 0) -> tuple[Any, ShapesClip, Any]:
    """(MODEL, CLIP, VAE) of the shapes model from state dicts (None: deterministic random init from `seed`)."""
    if unet_sd is not None:
        unet_sd = {k: v.float() for k, v in unet_sd.items()}
    model = host.build_model(UNET_CONFIG, latent_format=latent_format_class(), prediction="eps",
                             state_dict=unet_sd, seed=seed, text_start_tokens=0)  # word ids, no start token
    with torch.inference_mode(False):
        torch.manual_seed(seed)
        enc = PromptEncoder()
        if text_sd is not None:
            enc.load_state_dict({k: v.float() for k, v in text_sd.items()})
    return model, ShapesClip(enc), shapes_vae.make_comfy_vae()


def load_demo(path: Optional[Path | str] = None, allow_random: bool = True) -> tuple[Any, ShapesClip, Any]:
    """(MODEL, CLIP, VAE) from the committed weights; when the file is missing and allow_random, a random-init
    model with a logged warning (FileNotFoundError otherwise)."""
    p = Path(path) if path is not None else WEIGHTS
    if not p.exists():
        if not allow_random:
            raise FileNotFoundError(f"shapes model weights not found at {p}; run `python -m core.shapes.train` to make them")
        log.warning("shapes model weights not found at %s: using an UNTRAINED random model", p)
        return build(None, None)
    from safetensors.torch import load_file
    unet_sd, text_sd = split_state_dict(load_file(str(p)))
    return build(unet_sd, text_sd)


def unet_of(model: Any) -> torch.nn.Module:
    """The ComfyUI UNetModel inside a shapes MODEL (for training and the sample grid)."""
    return host.diffusion_model(model)


def alphas_cumprod(model: Any) -> torch.Tensor:
    """ᾱ_t for t = 0..999 from the model's own (ComfyUI) schedule: SD's scaled-linear betas."""
    sig = host.model_sampling(model).sigmas.detach().double()
    return host.alpha_bar(sig).float()
