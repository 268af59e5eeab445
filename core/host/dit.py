"""The DiT model family (flow-matching joint-attention transformers): FLUX.1 (dev / schnell / Kontext) and Chroma,
SD3 / SD3.5 (MMDiT) and Qwen-Image. Which models it runs, their token map (text / image / reference tokens in joint
attention) and their layer map (double and single blocks in ComfyUI's "dit" patch addressing).

Facts read from ComfyUI 0.3.64 and 0.3.75 (design notes: /work/shared/design/reviews/dit_design.md):
- FLUX / Chroma (comfy.ldm.flux.model.Flux, comfy.ldm.chroma.model.Chroma): `double_blocks` then `single_blocks`;
  joint attention and single blocks see tokens [txt; img; ref] (Kontext reference latents appended after the image
  tokens in `_forward`); RoPE over ids (index, row, column) by `pe_embedder`.
- SD3 / SD3.5 (comfy.ldm.modules.diffusionmodules.mmdit.MMDiT): `joint_blocks` = ("double_block", i) only, tokens
  [txt; img] (context then x in `_block_mixing`), an absolute position embedding, no RoPE.
- Qwen-Image (comfy.ldm.qwen_image.model.QwenImageTransformer2DModel): `transformer_blocks` = ("double_block", i),
  tokens [txt; img; ref].
Every one samples with CONST (rectified flow): x_σ = (1 − σ)·x0 + σ·ε, the model predicts v = ε − x0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from .errors import HostError
from .facts import base_model, model_sampling

FLUX, SD3, QWEN = "flux", "sd3", "qwen"


def _dm(model: Any) -> Any:
    return getattr(base_model(model), "diffusion_model", None)


def kind_of(model: Any) -> Optional[str]:
    """'flux' (FLUX, Chroma, Kontext), 'sd3' (SD3 / SD3.5 MMDiT), 'qwen' (Qwen-Image) or None for another model,
    from the diffusion model's block lists (ComfyUI's attribute names)."""
    dm = _dm(model)
    if dm is None:
        return None
    if hasattr(dm, "double_blocks") and hasattr(dm, "single_blocks"):
        return FLUX
    if hasattr(dm, "joint_blocks"):
        return SD3
    if hasattr(dm, "transformer_blocks") and hasattr(dm, "img_in") and hasattr(dm, "txt_norm"):
        return QWEN
    return None


def is_family(model: Any) -> bool:
    """True when the MODEL's diffusion model is a FLUX / Chroma, SD3 / SD3.5 or Qwen-Image transformer."""
    return kind_of(model) is not None


def diffusion_model(model: Any) -> torch.nn.Module:
    """The transformer of a DiT MODEL; HostError when the model is not one this family runs."""
    if not is_family(model):
        raise HostError(f"unsupported model family ({type(_dm(model)).__name__}): not a FLUX / SD3 / Qwen-Image "
                        "transformer")
    return _dm(model)


def check_supported(model: Any) -> str:
    """'flow' for a supported DiT sampled as rectified flow (ModelSamplingFlux / ModelSamplingDiscreteFlow, CONST
    prediction), else HostError naming what is not supported."""
    import comfy.model_sampling
    diffusion_model(model)
    ms = model_sampling(model)
    flow_types = tuple(c for c in (getattr(comfy.model_sampling, "ModelSamplingFlux", None),
                                   getattr(comfy.model_sampling, "ModelSamplingDiscreteFlow", None)) if c)
    if not isinstance(ms, flow_types) or not isinstance(ms, comfy.model_sampling.CONST):
        raise HostError(f"unsupported sampling ({type(ms).__name__}): DiT models work with flow-matching sampling "
                        "(ModelSamplingFlux / ModelSamplingSD3, CONST prediction)")
    return "flow"


def patch_size(model: Any) -> int:
    """Side of the square latent patch that makes one image token."""
    dm = diffusion_model(model)
    p = getattr(dm, "patch_size", None)
    if p is None:
        p = getattr(getattr(dm, "params", None), "patch_size", 1)
    return int(p[0] if isinstance(p, (tuple, list)) else p)


def image_grid(model: Any, latent_hw: Sequence[int]) -> tuple[int, int]:
    """Token grid (rows, columns) of a latent of size latent_hw: the latent padded to whole patches."""
    p = patch_size(model)
    return math.ceil(int(latent_hw[0]) / p), math.ceil(int(latent_hw[1]) / p)


@dataclass(frozen=True)
class TokenMap:
    """Where each kind of token sits in a joint-attention sequence: [txt; img; ref], each a range [lo, hi);
    `grid` is the image tokens' (rows, columns) grid (row-major)."""
    txt: tuple[int, int]
    img: tuple[int, int]
    ref: tuple[int, int]
    grid: tuple[int, int]

    @property
    def total(self) -> int:
        return self.ref[1]

    @property
    def n_img(self) -> int:
        return self.img[1] - self.img[0]


def token_map(model: Any, latent_hw: Sequence[int], n_txt: int, ref_hws: Sequence[Sequence[int]] = ()) -> TokenMap:
    """The token map of a call on a latent of size latent_hw with n_txt text tokens (after any registers or
    refiners) and reference latents of sizes ref_hws (Kontext / Qwen-Image-Edit; each appended after the image)."""
    gh, gw = image_grid(model, latent_hw)
    n_img = gh * gw
    n_ref = sum(math.prod(image_grid(model, hw)) for hw in ref_hws)
    t = int(n_txt)
    return TokenMap((0, t), (t, t + n_img), (t + n_img, t + n_img + n_ref), (gh, gw))


def token_map_of(n_total: int, n_txt: int, n_img: int, grid: tuple[int, int] = (0, 0)) -> TokenMap:
    """The token map of a sequence of n_total tokens whose first n_txt are text and next n_img image tokens (the
    rest are reference tokens); HostError when they do not fit."""
    if n_txt < 0 or n_img <= 0 or n_txt + n_img > n_total:
        raise HostError(f"a joint-attention sequence of {n_total} tokens cannot hold {n_txt} text and {n_img} "
                        "image tokens")
    return TokenMap((0, n_txt), (n_txt, n_txt + n_img), (n_txt + n_img, n_total), grid)


@dataclass(frozen=True)
class DitBlock:
    """One transformer block in ComfyUI's dit addressing: kind 'double' (joint txt / img streams) or 'single'
    (FLUX's fused stream over [txt; img]), its index among blocks of that kind, its execution order, heads and
    head dim."""
    kind: str
    index: int
    order: int
    heads: int
    head_dim: int

    @property
    def key(self) -> tuple[str, int]:
        """(block_type, block_index) as ComfyUI 0.3.75 puts them into transformer_options."""
        return (self.kind, self.index)

    @property
    def patch_key(self) -> tuple[str, int]:
        """The key of this block's entry in patches_replace["dit"]."""
        return (f"{self.kind}_block", self.index)


def _heads(block: torch.nn.Module, hidden: int) -> tuple[int, int]:
    for attr in ("num_heads", "heads"):
        for mod in (block, getattr(block, "img_attn", None), getattr(getattr(block, "x_block", None), "attn", None),
                    getattr(block, "attn", None)):
            h = getattr(mod, attr, None) if mod is not None else None
            if isinstance(h, int) and h > 0:
                return h, hidden // h
    raise HostError(f"cannot read the head count of {type(block).__name__}")


def blocks(model: Any) -> list[DitBlock]:
    """Every transformer block of the DiT in execution order (double blocks, then FLUX's single blocks)."""
    dm = diffusion_model(model)
    kind = kind_of(model)
    if kind == FLUX:
        hidden = int(dm.hidden_size)
        doubles, singles = list(dm.double_blocks), list(dm.single_blocks)
    elif kind == SD3:
        hidden = int(dm.x_embedder.proj.weight.shape[0])
        doubles, singles = list(dm.joint_blocks), []
    else:
        hidden = int(dm.inner_dim)
        doubles, singles = list(dm.transformer_blocks), []
    out = []
    for i, b in enumerate(doubles):
        out.append(DitBlock("double", i, len(out), *_heads(b, hidden)))
    for i, b in enumerate(singles):
        out.append(DitBlock("single", i, len(out), *_heads(b, hidden)))
    return out


def select_blocks(model: Any, kinds: Optional[Sequence[str]] = None, indices: Optional[Sequence[int]] = None,
                  orders: Optional[Sequence[int]] = None) -> list[DitBlock]:
    """Pick blocks by kind ('double' / 'single'), index within the kind, or execution order."""
    sel = blocks(model)
    if kinds is not None:
        sel = [b for b in sel if b.kind in set(kinds)]
    if indices is not None:
        sel = [b for b in sel if b.index in set(int(i) for i in indices)]
    if orders is not None:
        sel = [b for b in sel if b.order in set(int(o) for o in orders)]
    return sel


# Stable Flow (Avrahami et al., arXiv 2411.14430) found these "vital" layers of FLUX.1-dev (19 double + 38 single
# blocks) by ablation: execution orders 0, 1, 17, 18, 25, 28, 53, 54, 56.
FLUX_DEV_VITAL = (0, 1, 17, 18, 25, 28, 53, 54, 56)


def vital_blocks(model: Any) -> list[DitBlock]:
    """Stable Flow's "vital" blocks: its published list for a FLUX.1-dev-sized stack (57 blocks); for any other
    depth the first and the last block (the ends of the stack, where its vital FLUX layers cluster)."""
    bs = blocks(model)
    orders = FLUX_DEV_VITAL if len(bs) == 57 else sorted({0, len(bs) - 1})
    return [b for b in bs if b.order in set(orders)]


def flow_sigmas(model: Any, steps: int) -> torch.Tensor:
    """Descending sampling sigmas of `steps` steps ending in 0: ComfyUI's "simple" scheduler on the model's flow
    sampling (the shift included), what BasicScheduler gives a DiT."""
    import comfy.samplers
    if int(steps) < 1:
        raise HostError(f"steps must be at least 1, got {steps}")
    return comfy.samplers.calculate_sigmas(model_sampling(model), "simple", int(steps)).detach().to("cpu",
                                                                                                   torch.float32)


def has_rope(model: Any) -> bool:
    """True when image keys carry a rotary position encoding (FLUX, Qwen-Image); SD3 adds an absolute one."""
    return kind_of(model) in (FLUX, QWEN)


def image_ids(model: Any, latent_hw: Sequence[int]) -> torch.Tensor:
    """RoPE position ids [1, n_img, axes] of the image tokens of a latent of size latent_hw (index 0, row, column),
    as the model builds them (`process_img` of FLUX, and of Qwen-Image, whose rows and columns are centred)."""
    kind = kind_of(model)
    if kind not in (FLUX, QWEN):
        raise HostError("image position ids exist for RoPE models (FLUX, Qwen-Image) only")
    dm = diffusion_model(model)
    if kind == FLUX:
        c = int(dm.in_channels) // (patch_size(model) ** 2)
        return dm.process_img(torch.zeros(1, max(c, 1), int(latent_hw[0]), int(latent_hw[1])))[1]
    c = int(dm.in_channels) // (patch_size(model) ** 2)
    return dm.process_img(torch.zeros(1, max(c, 1), 1, int(latent_hw[0]), int(latent_hw[1])))[1].float()


def relative_pe(model: Any, source_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """RoPE rotations R(target − source) for keys recorded at source_ids and used at target_ids ([B, n, axes] each):
    since RoPE rotates each frequency pair by its position, R(p_t)·k = R(p_t − p_s)·R(p_s)·k, so a key recorded
    after RoPE at p_s is re-encoded for p_t by `reencode_keys(k, relative_pe(...))`."""
    if kind_of(model) not in (FLUX, QWEN):
        raise HostError("key re-encoding needs a RoPE model (FLUX, Qwen-Image)")
    dm = diffusion_model(model)
    return dm.pe_embedder(target_ids.float() - source_ids.float())


def reencode_keys(k: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Keys k [B, H, n, D] (post-RoPE) rotated by pe [B or 1, 1, n, D/2, 2, 2] (`relative_pe`): FLUX's apply_rope1."""
    from comfy.ldm.flux.math import apply_rope1
    return apply_rope1(k, pe)


def conditioning_check(model: Any, cond: Any) -> Optional[str]:
    """A message when a CONDITIONING's context width does not fit the DiT's text input (conditioning of another
    model family), else None."""
    dm = diffusion_model(model)
    lin = getattr(dm, "txt_in", None) or getattr(dm, "context_embedder", None)
    want = getattr(lin, "in_features", None)
    if want is None or not cond:
        return None
    got = int(cond[0][0].shape[-1])
    if got != int(want):
        return (f"conditioning has width {got} but this model's text input expects {want} (conditioning from another "
                "model family?)")
    return None
