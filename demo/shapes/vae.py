"""Exactly invertible image <-> latent map of the shapes model: 2x2 pixel-unshuffle of (2·x − 1), so a
[B,3,32,32] image in [0,1] is a [B,12,16,16] latent in [−1,1] and back with no loss. `make_comfy_vae` wraps it as
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
    """The parameter-free 'first stage model' of the Shapes VAE (encode/decode in [−1,1] image space)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_unshuffle(x, FACTOR)

    def decode(self, z: torch.Tensor, **_: Any) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"the Shapes VAE decodes {LATENT_CHANNELS}-channel latents, got shape {tuple(z.shape)} "
                             f"(a latent made for another model?)")
        return torch.nn.functional.pixel_shuffle(z, FACTOR)


# Attributes of comfy.sd.VAE that `make_comfy_vae` sets after ComfyUI's constructor: what a first stage other than the
# constructor's own decides. tests/host/test_shapes_vae.py checks that a stock VAE has each of them.
FIRST_STAGE_ATTRIBUTES = ("first_stage_model", "patcher", "downscale_ratio", "upscale_ratio", "latent_channels",
                          "memory_used_encode", "memory_used_decode", "working_dtypes", "disable_offload", "not_video")
# Attributes only some ComfyUI releases have (0.3.75's cached first-stage size; 0.3.64 has none): reset when present.
OPTIONAL_ATTRIBUTES = ("size",)
# The state dict that makes comfy.sd.VAE build its parameter-free pixel-space VAE (3 channels, ratio 1).
PIXEL_SPACE_SD = "pixel_space_vae"


def make_comfy_vae() -> Any:
    """A comfy.sd.VAE whose first stage is the exact 2x2 unshuffle: encode(IMAGE [B,H,W,3]) -> [B,12,H/2,W/2],
    decode(latent) -> IMAGE [B,H,W,3]; all of ComfyUI's VAE methods (tiled ones included) work on it.

    ComfyUI's VAE constructor picks its first stage from the keys of a state dict and takes no custom module, so
    this is the one place past its public API: the VAE is built by the public constructor as the parameter-free
    pixel-space VAE (so device, dtype, output device and every attribute ComfyUI adds are ComfyUI's own), then the
    FIRST_STAGE_ATTRIBUTES are set for the unshuffle (ratio 2, 12 latent channels, float32 on the CPU, no offload).
    tests/host/test_shapes_vae.py fails with a clear message when comfy.sd.VAE stops building the pixel-space VAE or
    renames one of these attributes."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd

    cpu = torch.device("cpu")
    vae = comfy.sd.VAE(sd={PIXEL_SPACE_SD: torch.tensor(1.0)}, device=cpu, dtype=torch.float32)
    if vae.first_stage_model is None:
        raise RuntimeError(f"this ComfyUI's comfy.sd.VAE does not build a pixel-space VAE from a '{PIXEL_SPACE_SD}' "
                           f"state dict; the Shapes VAE is built on it (demo/shapes/vae.py make_comfy_vae)")
    vae.first_stage_model = UnshuffleAE().eval()
    vae.patcher = comfy.model_patcher.ModelPatcher(vae.first_stage_model, load_device=cpu, offload_device=cpu)
    vae.downscale_ratio = vae.upscale_ratio = FACTOR
    vae.latent_channels = LATENT_CHANNELS
    vae.memory_used_encode = lambda shape, dtype: 64 * shape[-1] * shape[-2] * mm.dtype_size(dtype)
    vae.memory_used_decode = lambda shape, dtype: 64 * shape[-1] * shape[-2] * FACTOR * FACTOR * mm.dtype_size(dtype)
    vae.working_dtypes = [torch.float32]
    vae.disable_offload = True                  # nothing to offload: the first stage has no parameters
    vae.not_video = True
    if hasattr(vae, "size"):
        vae.size = None
        vae.model_size()                        # ComfyUI's own size of the new first stage (0 bytes)
    return vae
