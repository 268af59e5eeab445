"""A FLUX-architecture shapes demo model: ComfyUI's own `comfy.ldm.flux.model.Flux` built from a config on the demo's
latent (the 12-channel 16 x 16 unshuffle latent of 32 px scenes), with the demo word encoder's context [B, 8, 32]
and pooled output [B, 32] (the mean over tokens, as `ShapesClip.encode_from_tokens` returns it).

Objective (what ComfyUI's FLUX sampling assumes, comfy/model_sampling.py CONST + ModelSamplingFlux): for a data
latent x0 (model space, i.e. scaled by the latent format) and noise ε, x_σ = σ·ε + (1 − σ)·x0, the model gets
timestep = σ (the Flux module multiplies it by time_factor 1000 itself) and predicts the velocity v = ε − x0, so that
ComfyUI's denoised = x_σ − σ·v is x0. The sampling shift (ModelSamplingFlux's μ, σ = e^μ / (e^μ + 1/t − 1)) is
stored in the weights' metadata; `build_model` puts it into the model's sampling settings.

Weights file: 'dit.*' (Flux state dict) and 'text.*' (prompt encoder) tensors in fp16; metadata "format"
(`FORMAT`), "design", "config" (JSON of the Flux config), "shift", "steps", ... (see tools/train_shapes_dit.py)."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from . import model as shapes_model
from . import vae as shapes_vae
from .prompt import CONTEXT_DIM, PromptEncoder, ShapesClip

FORMAT = "dragedit-shapes-dit-v1"
# ModelSamplingFlux's μ at 256 image tokens (FLUX's base_shift 0.5; ComfyUI's ModelSamplingFlux node gives 0.46 for a
# 32 x 32 image): a 64-256 token model needs little shift towards high noise.
DEFAULT_SHIFT = 0.5
WEIGHTS = Path(__file__).resolve().parent / "weights" / "shapes_dit-p2.safetensors"


def flux_config(hidden: int = 128, heads: int = 4, depth: int = 2, depth_single: int = 2, patch: int = 1,
                axes: tuple[int, ...] = (8, 12, 12)) -> dict:
    """Keyword arguments of comfy.ldm.flux.model.Flux for a shapes DiT: 12 latent channels in and out, context and
    pooled dims 32, RoPE over (index, row, column) with `axes` (sum = head dim), no guidance embedding (like
    FLUX.1-schnell), qkv bias."""
    if hidden % heads or sum(axes) != hidden // heads:
        raise ValueError(f"RoPE axes {axes} must sum to the head dim {hidden} / {heads}")
    return dict(image_model="flux", in_channels=shapes_vae.LATENT_CHANNELS, out_channels=shapes_vae.LATENT_CHANNELS,
                vec_in_dim=CONTEXT_DIM, context_in_dim=CONTEXT_DIM, hidden_size=hidden, mlp_ratio=4.0,
                num_heads=heads, depth=depth, depth_single_blocks=depth_single, axes_dim=list(axes), theta=10000,
                patch_size=patch, qkv_bias=True, guidance_embed=False)


@dataclasses.dataclass(frozen=True)
class Design:
    """One shapes DiT design: its Flux config and a note on its cost."""
    name: str
    config: dict
    note: str = ""


DESIGNS: dict[str, Design] = {d.name: d for d in (
    Design("dit-p1", flux_config(patch=1), "hidden 128, 4 heads, 2 double + 2 single blocks, patch 1 (256 tokens)"),
    Design("dit-p2", flux_config(patch=2), "hidden 128, 4 heads, 2 double + 2 single blocks, patch 2 (64 tokens)"),
    Design("dit-p2-d4", flux_config(patch=2, depth=4, depth_single=4),
           "hidden 128, 4 heads, 4 double + 4 single blocks, patch 2 (64 tokens)"),
    Design("dit-p1-d4", flux_config(patch=1, depth=4, depth_single=4),
           "hidden 128, 4 heads, 4 double + 4 single blocks, patch 1 (256 tokens)"),
)}


def default_weights() -> Path:
    """The weights the Shapes Demo Model node loads for design "dit": the shipped file, or
    $DRAGEDIT_SHAPES_DIT_WEIGHTS (a developer's candidate, e.g. a training run's export under ShapesBench)."""
    return Path(os.environ.get("DRAGEDIT_SHAPES_DIT_WEIGHTS") or WEIGHTS)


def design_of(name: str) -> Design:
    """The design called `name` (ValueError naming the known ones otherwise)."""
    if name not in DESIGNS:
        raise ValueError(f"unknown shapes DiT design {name!r}; known: {', '.join(DESIGNS)}")
    return DESIGNS[name]


@functools.lru_cache(maxsize=None)
def latent_format_class() -> type:
    """The shapes latent format (12 channels, scale 3.0, exact RGB previews) marked as a DiT's: the same latents as
    the UNet demo model, so the Shapes VAE and the scenes work unchanged."""
    base = shapes_model.latent_format_class("v1")

    class ShapesDiTLatent(base):
        """12-channel 2x2-unshuffle latents of the shapes DiT demo model."""
        dragedit_shapes_dit = True
        dragedit_size_reason = ("the shapes DiT is trained on 32x32 images (a 16x16 latent); larger ones are far "
                                "outside what it has seen")

    return ShapesDiTLatent


def build_model(config: dict, state_dict: Optional[dict] = None, shift: float = DEFAULT_SHIFT, seed: int = 0,
                init_std: float = 0.02) -> Any:
    """A ComfyUI MODEL (ModelPatcher over comfy.model_base.Flux, FLOW-matching sampling through ModelSamplingFlux
    with μ = `shift`) on the CPU in fp32, from a Flux config (`flux_config`) and its state dict (None: a seeded
    random init, N(0, init_std) weights and zero biases, with the output layer and the modulations' gates at zero as
    in DiT's adaLN-zero). It runs through ComfyUI's samplers unchanged (KSampler, SamplerCustom...)."""
    from ...core.host import dit_build
    return dit_build.build_flux(config, state_dict=state_dict, shift=shift, latent_format=latent_format_class(),
                                text_start_tokens=0,                 # word ids, no start token
                                init=lambda dm: init_weights_(dm, seed=seed, std=init_std))


@torch.no_grad()
def init_weights_(dm: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Seeded init of a Flux module: normal(std) weights, zero biases, QK-norm scales at one; the final projection and
    every modulation's output at zero (adaLN-zero: each block starts as the identity)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in dm.named_parameters():
        if name.endswith(".scale"):                       # RMSNorm of q / k
            p.fill_(1.0)
        elif p.ndim < 2:
            p.zero_()
        else:
            p.copy_(torch.randn(p.shape, generator=g) * std)
    for mod in [m for n, m in dm.named_modules() if n.endswith("_mod") or n.endswith("modulation")] + [dm.final_layer]:
        lin = getattr(mod, "lin", None) or getattr(mod, "linear", None)
        if lin is not None:
            lin.weight.zero_()
            if lin.bias is not None:
                lin.bias.zero_()
    if hasattr(dm.final_layer, "adaLN_modulation"):
        dm.final_layer.adaLN_modulation[-1].weight.zero_()
        dm.final_layer.adaLN_modulation[-1].bias.zero_()


def dit_of(model: Any) -> torch.nn.Module:
    """The comfy.ldm.flux.model.Flux module inside a shapes DiT MODEL."""
    return getattr(model, "model", model).diffusion_model


class ShapesDiTClip(ShapesClip):
    """The word encoder as a ComfyUI CLIP for the DiT: CLIP Text Encode's CONDITIONING carries the pooled output
    (the mean over tokens), which the FLUX model takes as its vector input y."""

    def clone(self) -> "ShapesDiTClip":
        c = ShapesDiTClip(self.encoder)
        c.layer_idx = self.layer_idx
        return c

    def encode_from_tokens_scheduled(self, tokens: dict, unprojected: bool = False, add_dict: dict = {},
                                     show_pbar: bool = True) -> list:
        """CONDITIONING [[c [1,T,32], {"pooled_output": [1,32]}]] for tokenize()'s output."""
        c, pooled = self.encode_from_tokens(tokens, return_pooled=True)
        return [[c, {"pooled_output": pooled, **dict(add_dict)}]]


def conditioning(encoder: torch.nn.Module, prompts: list[str]) -> list:
    """CONDITIONING for a batch of prompts (context [B,T,32], pooled [B,32]), as ShapesDiTClip makes it."""
    from .prompt import tokenize
    p = next(encoder.parameters())
    with torch.no_grad():
        c = encoder(torch.tensor([tokenize(t) for t in prompts], dtype=torch.long, device=p.device)).float().cpu()
    return [[c, {"pooled_output": c.mean(1)}]]


def save_weights(dit_sd: dict, text_sd: dict, path: Path | str, meta: dict) -> None:
    """Write a DiT weights file: 'dit.*' and 'text.*' tensors in fp16, metadata values as strings (dicts / lists as
    JSON)."""
    from safetensors.torch import save_file
    sd = {f"dit.{k}": v.detach().to("cpu", torch.float16).contiguous() for k, v in dit_sd.items()}
    sd.update({f"text.{k}": v.detach().to("cpu", torch.float16).contiguous() for k, v in text_sd.items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    md = {k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else str(v) for k, v in meta.items()}
    save_file(sd, str(path), metadata={"format": FORMAT, **md})


def read_meta(path: Path | str) -> dict:
    """The metadata of a DiT weights file ("config" parsed from JSON)."""
    meta = shapes_model.read_meta(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a shapes DiT weights file (format {meta.get('format')!r}, expected {FORMAT!r})")
    meta["config"] = json.loads(meta["config"])
    return meta


def load(path: Path | str) -> tuple[Any, ShapesDiTClip, Any]:
    """(MODEL, CLIP, VAE) of a shapes DiT weights file; the MODEL samples with the shift stored in the file."""
    from safetensors.torch import load_file
    meta = read_meta(path)
    sd = load_file(str(path))
    dit_sd = {k[4:]: v for k, v in sd.items() if k.startswith("dit.")}
    text_sd = {k[5:]: v.float() for k, v in sd.items() if k.startswith("text.")}
    model = build_model(meta["config"], dit_sd, shift=float(meta.get("shift", DEFAULT_SHIFT)))
    with torch.inference_mode(False):
        enc = PromptEncoder()
        enc.load_state_dict(text_sd)
    return model, ShapesDiTClip(enc), shapes_vae.make_comfy_vae()
