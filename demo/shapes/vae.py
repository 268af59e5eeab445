"""Exactly invertible image <-> latent map of the shapes model: 2x2 pixel-unshuffle of (2·x − 1), so a
[B,3,32,32] image in [0,1] is a [B,12,16,16] latent in [−1,1] and back with no loss. `ShapesVAE` wraps it as
a ComfyUI VAE that the stock VAE Encode / VAE Decode nodes (and their tiled variants) accept."""
from __future__ import annotations

from typing import Any

import torch

FACTOR = 2
LATENT_CHANNELS = 3 * FACTOR * FACTOR


def encode(pixels: torch.Tensor) -> torch.Tensor:
    """Images [B,3,H,W] in [0,1] -> latents [B,12,H/2,W/2] (the model's 'VAE space', before the latent scale)."""
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected images [B,3,H,W], got shape {tuple(pixels.shape)}")
    if pixels.shape[-1] % FACTOR or pixels.shape[-2] % FACTOR:
        raise ValueError(f"image height and width must be even, got {tuple(pixels.shape[-2:])}")
    return torch.nn.functional.pixel_unshuffle(pixels * 2.0 - 1.0, FACTOR)


def decode(latent: torch.Tensor) -> torch.Tensor:
    """Latents [B,12,h,w] -> images [B,3,2h,2w] (not clamped: the exact inverse of `encode`)."""
    if latent.ndim != 4 or latent.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"expected a shapes-model latent [B,{LATENT_CHANNELS},h,w], got shape {tuple(latent.shape)} "
                         f"(a latent from another model's VAE?)")
    return (torch.nn.functional.pixel_shuffle(latent, FACTOR) + 1.0) / 2.0


class UnshuffleAE(torch.nn.Module):
    """The parameter-free 'first stage model' behind ShapesVAE (encode/decode in [−1,1] image space)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_unshuffle(x, FACTOR)

    def decode(self, z: torch.Tensor, **_: Any) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"the Shapes VAE decodes {LATENT_CHANNELS}-channel latents, got shape {tuple(z.shape)} "
                             f"(a latent made for another model?)")
        return torch.nn.functional.pixel_shuffle(z, FACTOR)


def make_comfy_vae() -> Any:
    """A comfy.sd.VAE (subclass) whose first stage is the exact 2x2 unshuffle: encode(IMAGE [B,H,W,3]) ->
    [B,12,H/2,W/2], decode(latent) -> IMAGE [B,H,W,3]; all of ComfyUI's VAE methods work on it."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd

    class ShapesVAE(comfy.sd.VAE):
        """The shapes model's exact pixel-unshuffle VAE, built without a state dict."""

        def __init__(self) -> None:  # noqa: D401 - replaces comfy.sd.VAE.__init__ (which needs weights)
            self.memory_used_encode = lambda shape, dtype: 64 * shape[-1] * shape[-2] * mm.dtype_size(dtype)
            self.memory_used_decode = lambda shape, dtype: 64 * shape[-1] * shape[-2] * FACTOR * FACTOR * mm.dtype_size(dtype)
            self.downscale_ratio = FACTOR
            self.upscale_ratio = FACTOR
            self.latent_channels = LATENT_CHANNELS
            self.latent_dim = 2
            self.output_channels = 3
            self.process_input = lambda image: image * 2.0 - 1.0
            self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
            self.working_dtypes = [torch.float32]
            self.disable_offload = True
            self.not_video = True
            self.size = None
            self.downscale_index_formula = None
            self.upscale_index_formula = None
            self.extra_1d_channel = None
            self.crop_input = True
            self.first_stage_model = UnshuffleAE().eval()
            self.device = torch.device("cpu")
            self.vae_dtype = torch.float32
            self.output_device = mm.intermediate_device()
            self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                            offload_device=self.device)
            self.size = 0

    return ShapesVAE()
