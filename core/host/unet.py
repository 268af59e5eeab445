"""The UNet model family (SD1.x, SD2.x, SDXL): which models it runs, and its layer map (self-attention layers and
decoder blocks in ComfyUI's addressing).

These are the UNet family's facts, read from ComfyUI's UNet modules: the layer map tells layers apart with
isinstance checks on comfy.ldm's SpatialTransformer / Downsample / Upsample, walks UNetModel.input_blocks /
middle_block / output_blocks, and the conditioning check reads the cross-attention width from attn2.to_k.weight.
ComfyUI has no public layer map; another family (a DiT) gets its own module with the same functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import torch

from .errors import HostError
from .facts import base_model, model_sampling


def is_family(model: Any) -> bool:
    """True when the MODEL's diffusion model is a ComfyUI UNetModel (input and output blocks)."""
    dm = getattr(base_model(model), "diffusion_model", None)
    return dm is not None and hasattr(dm, "output_blocks") and hasattr(dm, "input_blocks")


def diffusion_model(model: Any) -> torch.nn.Module:
    """The UNet module (UNetModel) of a MODEL; HostError when the model family is not a UNet we support."""
    dm = getattr(base_model(model), "diffusion_model", None)
    if not is_family(model):
        raise HostError(f"unsupported model family ({type(dm).__name__}): DragEdit needs an SD1.x/SD2.x/SDXL-style UNet")
    return dm


def check_supported(model: Any) -> str:
    """Return 'eps' or 'v' for supported UNets (discrete schedules), else raise HostError."""
    import comfy.model_base
    import comfy.model_sampling
    diffusion_model(model)
    ms = model_sampling(model)
    if not isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete):
        raise HostError(f"unsupported sampling ({type(ms).__name__}): only discrete-schedule eps / v-prediction models work")
    mt = getattr(base_model(model), "model_type", None)
    if mt == comfy.model_base.ModelType.EPS:
        return "eps"
    if mt == comfy.model_base.ModelType.V_PREDICTION:
        return "v"
    raise HostError(f"unsupported prediction type {mt}: only eps and v-prediction models work")


@dataclass(frozen=True)
class AttnLayer:
    """One transformer block with self-attention: ComfyUI address (part, number, block_index), its global
    execution order (= transformer_index), its downsample level relative to the latent and channels."""
    part: str
    number: int
    block_index: int
    order: int
    level: int
    channels: int

    @property
    def key(self) -> tuple:
        """ComfyUI's address of the layer: (part, number, block_index)."""
        return (self.part, self.number, self.block_index)

    def tokens(self, latent_hw: Sequence[int]) -> tuple[int, int]:
        """Token grid (h, w) of this layer for a latent of size latent_hw (stride-2 downsamples round up)."""
        h, w = int(latent_hw[0]), int(latent_hw[1])
        lv = 1
        while lv < self.level:
            h, w, lv = (h + 1) // 2, (w + 1) // 2, lv * 2
        return h, w


@dataclass(frozen=True)
class DecoderBlock:
    """An output block of the UNet: its index, output channels and output level (1 = latent resolution)."""
    index: int
    channels: int
    level: int


def _walk_unet(dm: torch.nn.Module) -> tuple[list[AttnLayer], list[DecoderBlock]]:
    """Walk the UNet in execution order, tracking the resolution level, and list attention layers and
    decoder blocks."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

    layers: list[AttnLayer] = []
    blocks: list[DecoderBlock] = []
    level, order = 1, 0

    def visit(part: str, number: int, seq: Iterable[torch.nn.Module]) -> None:
        nonlocal level, order
        for layer in seq:
            if isinstance(layer, SpatialTransformer):
                ch = layer.in_channels
                for bi in range(len(layer.transformer_blocks)):
                    layers.append(AttnLayer(part, number, bi, order, level, ch))
                order += 1
            elif isinstance(layer, Downsample):
                level *= 2
            elif isinstance(layer, Upsample):
                level //= 2

    for i, blk in enumerate(dm.input_blocks):
        visit("input", i, blk)
    if dm.middle_block is not None:
        visit("middle", 0, dm.middle_block)
    for i, blk in enumerate(dm.output_blocks):
        visit("output", i, blk)
        ch = None
        for layer in blk:
            ch = getattr(layer, "out_channels", None) or getattr(layer, "in_channels", None) or ch
        blocks.append(DecoderBlock(i, int(ch or 0), level))
    # order: ComfyUI counts transformer_index per SpatialTransformer (not per depth); keep that numbering.
    return layers, blocks


def attention_layers(model: Any) -> list[AttnLayer]:
    """All self-attention layers of the UNet, in execution order."""
    return _walk_unet(diffusion_model(model))[0]


def decoder_blocks(model: Any) -> list[DecoderBlock]:
    """All output blocks of the UNet with their channels and output level."""
    return _walk_unet(diffusion_model(model))[1]


def up_block_outputs(model: Any) -> list[int]:
    """Indices of output blocks that end a resolution level (diffusers' up_blocks[k] outputs): the blocks
    that end with an Upsample, plus the last block."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Upsample
    dm = diffusion_model(model)
    out = [i for i, b in enumerate(dm.output_blocks) if isinstance(b[-1], Upsample)]
    last = len(dm.output_blocks) - 1
    return out + ([last] if last not in out else [])


def select_layers(model: Any, part: Optional[Iterable[str] | str] = None, levels: Optional[Iterable[int]] = None,
                  orders: Optional[Iterable[int]] = None, tokens: Optional[tuple[Sequence[int], Iterable[int]]] = None
                  ) -> list[AttnLayer]:
    """Pick self-attention layers by part ("input"/"middle"/"output"), level (1 = latent resolution, 2, 4...),
    execution order, or token count: tokens=(latent_hw, allowed token counts)."""
    sel = attention_layers(model)
    if part is not None:
        parts = {part} if isinstance(part, str) else set(part)
        sel = [l for l in sel if l.part in parts]
    if levels is not None:
        lv = set(levels)
        sel = [l for l in sel if l.level in lv]
    if orders is not None:
        od = set(orders)
        sel = [l for l in sel if l.order in od]
    if tokens is not None:
        hw, allowed = tokens
        al = set(allowed)
        sel = [l for l in sel if math.prod(l.tokens(hw)) in al]
    return sel


def conditioning_family_check(model: Any, cond: Any) -> Optional[str]:
    """A message when a CONDITIONING's context width does not fit the model's cross-attention (e.g. SDXL
    conditioning on an SD1.5 model), else None."""
    dm = diffusion_model(model)
    want = None
    for layer in dm.modules():
        attn2 = getattr(layer, "attn2", None)
        if attn2 is not None and hasattr(attn2, "to_k"):
            want = attn2.to_k.weight.shape[1]
            break
    if want is None or not cond:
        return None
    got = cond[0][0].shape[-1]
    if got != want:
        return f"conditioning has width {got} but this model's cross-attention expects {want} (conditioning from another model family?)"
    return None


def min_latent_side(model: Any) -> tuple[int, int]:
    """(smallest latent side the model's UNet takes, how many times it halves the latent): 2 * 2^halvings, so the
    deepest level keeps 2x2 cells (at 1x1 a group norm of one value per group, or a 3x3 smoothing of an attention
    map, fails with a raw torch error). (1, 0) for a model of another family."""
    if not is_family(model):
        return 1, 0
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample
    halvings = sum(1 for m in diffusion_model(model).input_blocks.modules() if isinstance(m, Downsample))
    return 2 << halvings, halvings
