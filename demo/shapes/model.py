"""The shapes demo model as real ComfyUI objects: an SD-style eps UNet (ComfyUI's UNetModel), its latent format
(12-channel unshuffle latents), the prompt encoder and the unshuffle VAE; `load_demo()` builds them from the
committed safetensors. `ARCHS` holds the shipped design (v1: 32 px, attention at every level) and the Shapes v2
candidates (SD-like locality: two res blocks per level, attention only at the two lowest resolutions); a weights
file names its design in its metadata ("arch")."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch

from ...core import host
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


@dataclasses.dataclass(frozen=True)
class Arch:
    """One shapes-model design: the image side it is trained on and its ComfyUI UNet config."""
    name: str
    image_size: int
    unet_config: dict
    note: str = ""

    @property
    def latent_size(self) -> int:
        return self.image_size // shapes_vae.FACTOR


def _local_config(model_channels: int, latent_size: int) -> dict:
    """SD-like locality (the review's Shapes v2 recipe): levels x1/x2/x4 channels, two res blocks per level, no
    attention at the highest latent resolution (convolutions only there), self + cross attention at the two lower
    levels and the middle."""
    return dict(UNET_CONFIG, model_channels=model_channels, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2],
                transformer_depth=[0, 0, 1, 1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0, 0],
                image_size=latent_size)


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("v1", IMAGE_SIZE, UNET_CONFIG, "shipped: 32 px, 16x16 latent, attention at every level, 3.6 M params"),
    Arch("v2-32", 32, _local_config(32, 16), "candidate: 32 px, 16x16 latent, local (no attention at 16x16)"),
    Arch("v2-64", 64, _local_config(32, 32), "candidate: 64 px, 32x32 latent, local (no attention at 32x32)"),
)}


def arch_of(name: str) -> Arch:
    """The design called `name` (ValueError naming the known ones otherwise)."""
    if name not in ARCHS:
        raise ValueError(f"unknown shapes model design {name!r}; known: {', '.join(ARCHS)}")
    return ARCHS[name]


@functools.lru_cache(maxsize=None)
def latent_format_class(arch: str = "v1") -> type:
    """comfy LatentFormat subclass of the shapes model: 12 channels, scale SCALE_FACTOR, exact RGB previews; the
    size guard scales with the design's training size."""
    import comfy.latent_formats
    latent_size = arch_of(arch).latent_size

    class ShapesLatent(comfy.latent_formats.LatentFormat):
        """12-channel 2x2-unshuffle latents of the shapes demo model."""
        scale_factor = SCALE_FACTOR
        latent_channels = shapes_vae.LATENT_CHANNELS
        latent_dimensions = 2
        dragedit_shapes_arch = arch
        latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        latent_rgb_factors_bias = None
        # Size guard read by the pack's nodes (nodes/_inputs.check_latent_fits): self-attention runs at the full latent
        # resolution, so the cost of a UNet call grows with the square of the pixel count.
        dragedit_max_latent_side = 4 * latent_size          # v1: 64, images up to 128x128
        dragedit_size_reason = (f"the Shapes Demo Model is trained on {2 * latent_size}x{2 * latent_size} images and has "
                                "self-attention at the full latent resolution, so a UNet call costs the square of the "
                                "pixel count; one call on one CPU core: 0.04 s at 32x32, 2.6 s and +0.5 GB at 128x128, "
                                "41 s and +2.2 GB at 256x256") if arch == "v1" else (
                                f"the Shapes Demo Model ({arch}) is trained on {2 * latent_size}x{2 * latent_size} "
                                "images; larger ones are far outside what it has seen")

        def __init__(self) -> None:
            # previews: model-space x̂0 -> unshuffle latent -> RGB in [−1, 1]
            self.latent_rgb_factors_reshape = lambda x0: torch.nn.functional.pixel_shuffle(
                x0[:, :shapes_vae.LATENT_CHANNELS] / SCALE_FACTOR, shapes_vae.FACTOR)

    return ShapesLatent


def default_weights() -> Path:
    """The weights the Shapes Demo Model node loads: the shipped file, or $DRAGEDIT_SHAPES_WEIGHTS (a developer's
    candidate, e.g. to run ShapesBench on a model in training)."""
    return Path(os.environ.get("DRAGEDIT_SHAPES_WEIGHTS") or WEIGHTS)


def read_meta(path: Path | str) -> dict:
    """The metadata of a shapes weights file ("arch", "steps", ...; {} when it has none)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def split_state_dict(sd: dict) -> tuple[dict, dict]:
    """A shapes weights file -> (UNet state dict, prompt encoder state dict)."""
    unet = {k[5:]: v for k, v in sd.items() if k.startswith("unet.")}
    text = {k[5:]: v for k, v in sd.items() if k.startswith("text.")}
    return unet, text


def build(unet_sd: Optional[dict] = None, text_sd: Optional[dict] = None, seed: int = 0, arch: str = "v1"
          ) -> tuple[Any, ShapesClip, Any]:
    """(MODEL, CLIP, VAE) of the shapes model from state dicts (None: deterministic random init from `seed`)."""
    if unet_sd is not None:
        unet_sd = {k: v.float() for k, v in unet_sd.items()}
    model = host.build_model(arch_of(arch).unet_config, latent_format=latent_format_class(arch), prediction="eps",
                             state_dict=unet_sd, seed=seed, text_start_tokens=0)  # word ids, no start token
    # the prompt encoder's random init from `seed` on a forked RNG: the process's global torch RNG is left as it was
    # (a node that reseeds it changes what later nodes drawing from it get, e.g. ComfyUI's Train LoRA timesteps)
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = PromptEncoder()
        if text_sd is not None:
            enc.load_state_dict({k: v.float() for k, v in text_sd.items()})
    return model, ShapesClip(enc), shapes_vae.make_comfy_vae()


def load_demo(path: Optional[Path | str] = None, allow_random: bool = True) -> tuple[Any, ShapesClip, Any]:
    """(MODEL, CLIP, VAE) from the committed weights; when the file is missing and allow_random, a random-init
    model with a logged warning (FileNotFoundError otherwise)."""
    p = Path(path) if path is not None else default_weights()
    if not p.exists():
        if not allow_random:
            raise FileNotFoundError(f"shapes model weights not found at {p}; run `python -m tools.train_shapes` to make them")
        log.warning("shapes model weights not found at %s: using an UNTRAINED random model", p)
        return build(None, None)
    from safetensors.torch import load_file
    unet_sd, text_sd = split_state_dict(load_file(str(p)))
    return build(unet_sd, text_sd, arch=read_meta(p).get("arch", "v1"))


def arch_of_model(model: Any) -> Arch:
    """The design of a loaded shapes MODEL (from its latent format class)."""
    name = getattr(host.base_model(model).latent_format, "dragedit_shapes_arch", None)
    if name is None:
        raise ValueError("not a shapes demo model")
    return arch_of(name)


def unet_of(model: Any) -> torch.nn.Module:
    """The ComfyUI UNetModel inside a shapes MODEL (for training and the sample grid)."""
    return host.diffusion_model(model)


def alphas_cumprod(model: Any) -> torch.Tensor:
    """ᾱ_t for t = 0..999 from the model's own (ComfyUI) schedule: SD's scaled-linear betas."""
    sig = host.model_sampling(model).sigmas.detach().double()
    return host.alpha_bar(sig).float()
