"""Image-token K/V of a DiT's joint attention: record them per block into a KVStore and inject stored ones into a
run (with keys re-encoded for a new position), through ComfyUI's public hooks only.

Hooks (all on a clone, chained with what is already there):
- transformer_options["optimized_attention_override"] (comfy.ldm.modules.attention.wrap_attn): sees every attention
  call as override(func, q, k, v, heads, **kwargs); q / k arrive after RoPE. Layout [B, H, N, D] when the caller
  passes skip_reshape=True (FLUX, Qwen-Image on 0.3.75), else tokens on dim 1 ([B, N, H·D] for Qwen-Image on
  0.3.64, [B, N, H, D] for SD3). Tokens are [txt; img; ref].
- a "dit" replace on every block (`ModelPatcher.set_model_patch_replace(fn, "dit", "double_block" | "single_block",
  i)`) that puts block_type / block_index into transformer_options (0.3.75 sets them itself for FLUX and Qwen-Image;
  0.3.64 and SD3 do not) and the text token count (the double block's txt stream), then runs the block (or the replace
  that was there before).
- an APPLY_MODEL wrapper that puts the image token count of the call (the latent size in whole patches) into
  transformer_options: the reference tokens (Kontext / Qwen-Image-Edit) are what follows the image tokens, and are
  never recorded or touched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from . import dit, internals
from .errors import HostError
from .handle import SharedHandle
from .kv import KVStore, _current_sigma, chunks

TXT_TOKENS = "dragedit_txt_tokens"
IMG_TOKENS = "dragedit_img_tokens"
OVERRIDE = "optimized_attention_override"
WRAPPER_KEY = "dragedit_dit_tokens"


# --------------------------------------------------------------------------------------------------------------
# block identity and token counts
# --------------------------------------------------------------------------------------------------------------

class BlockTag(SharedHandle):
    """dit replace of one block: sets transformer_options block_type / block_index (and the text token count from a
    double block's txt stream), then runs the replace that was there before or the stock block."""

    def __init__(self, kind: str, index: int, prev: Optional[Callable] = None):
        self.kind, self.index, self.prev = kind, int(index), prev

    def __call__(self, args: dict, extra: dict) -> dict:
        to = args.get("transformer_options")
        if to is not None:
            to["block_type"], to["block_index"] = self.kind, self.index
            if self.kind == "double" and args.get("txt") is not None:
                to[TXT_TOKENS] = int(args["txt"].shape[1])
        if self.prev is not None:
            return self.prev(args, extra)
        return extra["original_block"](args)


class TokenCount(SharedHandle):
    """APPLY_MODEL wrapper: transformer_options[IMG_TOKENS] = image tokens of this call's latent."""

    def __init__(self, patch: int):
        self.patch = int(patch)

    def __call__(self, executor, x, *args, **kwargs):
        to = internals.apply_model_options(args, kwargs)
        if to is not None:
            to[IMG_TOKENS] = math.ceil(x.shape[-2] / self.patch) * math.ceil(x.shape[-1] / self.patch)
        return executor(x, *args, **kwargs)


def dit_replace(model: Any, block: dit.DitBlock) -> Optional[Callable]:
    """The dit replace patch installed on `block` of `model`, or None (read-only, `internals.replace_patches`)."""
    return internals.replace_patches(model.model_options, "dit").get(block.patch_key)


def install_block_tags(model: Any) -> Any:
    """Put a BlockTag on every block of `model` (a clone; idempotent) and the token-count wrapper."""
    import comfy.patcher_extension as pe
    for b in dit.blocks(model):
        cur = dit_replace(model, b)
        if isinstance(cur, BlockTag):
            continue
        model.set_model_patch_replace(BlockTag(b.kind, b.index, cur), "dit", f"{b.kind}_block", b.index)
    model.remove_wrappers_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY)
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY, TokenCount(dit.patch_size(model)))
    return model


# --------------------------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------------------------

def _token_dim(kwargs: dict) -> int:
    """Token dimension of q / k / v in an attention call: 2 for [B, H, N, D] (skip_reshape), else 1."""
    return 2 if kwargs.get("skip_reshape") else 1


def _to_bhnd(t: torch.Tensor, heads: int, td: int) -> torch.Tensor:
    """[B, H, N, D] view of a tensor with tokens on dim td ([B, N, H·D] or [B, N, H, D] when td = 1)."""
    if td == 2:
        return t
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def _from_bhnd(t: torch.Tensor, like: torch.Tensor, td: int) -> torch.Tensor:
    """Back from [B, H, N, D] to the layout of `like`."""
    if td == 2:
        return t
    return t.transpose(1, 2).reshape(like.shape)


# --------------------------------------------------------------------------------------------------------------
# injection
# --------------------------------------------------------------------------------------------------------------

@dataclass
class DitKVInjection:
    """How stored image-token K/V enter a block. For each target image token j (row-major over the token grid):
    take bank token `index[j]` (default j) where `mask[j]` (default everywhere), with its key rotated by `rope`
    (`dit.relative_pe(model, source_ids, target_ids)` for the gathered tokens: re-encoded at the target position;
    None = keys as recorded); `values_only` swaps V only (RF-Solver-Edit). `when(sigma)` limits the steps, `halves`
    the cond (0) / uncond (1) rows. Text and reference tokens are never touched."""
    store: KVStore
    index: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    rope: Optional[torch.Tensor] = None
    values_only: bool = False
    when: Optional[Callable[[float], bool]] = None
    halves: tuple[int, ...] = (0, 1)
    hits: int = 0
    misses: int = 0


class DitAttnOverride(SharedHandle):
    """transformer_options["optimized_attention_override"] of this pack: records image-token K/V of the selected
    blocks into stores and injects stored ones, then calls the override that was set before (`prev`) or the kernel."""

    def __init__(self, prev: Optional[Callable] = None):
        self.prev = prev
        self.recorders: list[tuple[KVStore, Optional[frozenset]]] = []
        self.injections: list[tuple[DitKVInjection, Optional[frozenset]]] = []

    def copy(self) -> "DitAttnOverride":
        """A new override with the same prev, recorders and injections (the stores stay shared)."""
        o = DitAttnOverride(self.prev)
        o.recorders, o.injections = list(self.recorders), list(self.injections)
        return o

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        q, k, v = args[0], args[1], args[2]
        heads = args[3] if len(args) > 3 else kwargs.get("heads")   # SD3 passes heads by keyword
        k, v = self.process(q, k, v, int(heads), kwargs)
        args = (q, k, v, *args[3:])
        if self.prev is not None:
            return self.prev(func, *args, **kwargs)
        return func(*args, **kwargs)

    def process(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kwargs: dict
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) of one attention call after recording and injecting."""
        to = kwargs.get("transformer_options") or {}
        key = (to.get("block_type"), to.get("block_index"))
        n_txt, n_img = to.get(TXT_TOKENS), to.get(IMG_TOKENS)
        td = _token_dim(kwargs)
        if key[0] is None or n_txt is None or n_img is None or k.shape[td] < n_txt + n_img:
            return k, v                          # not a joint attention call this pack knows (e.g. SD3.5's attn2)
        lo, hi = int(n_txt), int(n_txt) + int(n_img)
        sigma = _current_sigma(to)
        parts = chunks(to, k.shape[0])
        for store, sel in self.recorders:
            if sel is None or key in sel:
                for half, rows in parts:
                    store.put(sigma, key, half, k[rows].narrow(td, lo, hi - lo), v[rows].narrow(td, lo, hi - lo))
        for inj, sel in self.injections:
            if (sel is not None and key not in sel) or (inj.when is not None and not inj.when(sigma)):
                continue
            k, v = self._inject(inj, key, sigma, parts, k, v, heads, td, lo, hi)
        return k, v

    def _inject(self, inj: DitKVInjection, key: tuple, sigma: float, parts: list, k: torch.Tensor, v: torch.Tensor,
                heads: int, td: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        ks, vs = [], []
        for half, rows in parts:
            k_h, v_h = k[rows], v[rows]
            bank = inj.store.get(sigma, key, half, device=k.device, dtype=k.dtype) if half in inj.halves else None
            if bank is None or bank[0].shape[td] != hi - lo:
                inj.misses += int(half in inj.halves)
                ks.append(k_h), vs.append(v_h)
                continue
            inj.hits += 1
            kb, vb = (t.expand(k_h.shape[0], *t.shape[1:]) if t.shape[0] != k_h.shape[0] else t for t in bank)
            if inj.index is not None:
                idx = inj.index.to(k.device)
                kb, vb = kb.index_select(td, idx), vb.index_select(td, idx)
            if inj.rope is not None and not inj.values_only:
                kb = _from_bhnd(dit.reencode_keys(_to_bhnd(kb, heads, td), inj.rope.to(k.device)), kb, td)
            k_img, v_img = k_h.narrow(td, lo, hi - lo), v_h.narrow(td, lo, hi - lo)
            if inj.mask is not None:                 # SD3: k [B, N, H·D], v [B, N, H, D]: one shape each
                kb = torch.where(_token_mask(inj.mask, k_img, td), kb, k_img)
                vb = torch.where(_token_mask(inj.mask, v_img, td), vb, v_img)
            new_k = k_img if inj.values_only else kb
            ks.append(torch.cat([k_h.narrow(td, 0, lo), new_k, k_h.narrow(td, hi, k_h.shape[td] - hi)], td))
            vs.append(torch.cat([v_h.narrow(td, 0, lo), vb, v_h.narrow(td, hi, v_h.shape[td] - hi)], td))
        return torch.cat(ks, 0), torch.cat(vs, 0)


def _token_mask(mask: torch.Tensor, like: torch.Tensor, td: int) -> torch.Tensor:
    """A per-token bool mask shaped to broadcast over `like` with tokens on dim td."""
    shape = [1] * like.ndim
    shape[td] = like.shape[td]
    return mask.to(like.device, torch.bool).reshape(shape)


def estimate_bytes(model: Any, latent_hw: Sequence[int], calls: int, dtype: torch.dtype = torch.float16,
                   blocks: Optional[Sequence[dit.DitBlock]] = None, halves: int = 1, batch: int = 1) -> int:
    """Bytes of the image-token K/V of `blocks` (default all) recorded over `calls` model calls: per block and call
    2 · image tokens · heads · head dim, in dtype."""
    size = torch.empty((), dtype=dtype).element_size()
    n_img = math.prod(dit.image_grid(model, latent_hw))
    sel = dit.blocks(model) if blocks is None else blocks
    per_call = sum(2 * n_img * b.heads * b.head_dim for b in sel)
    return int(per_call * int(calls) * halves * batch * size)


def attention_override(model: Any) -> Any:
    """The attention override set on `model`'s transformer_options, or None (read-only)."""
    return (model.model_options.get("transformer_options") or {}).get(OVERRIDE)


def set_attention_override(model: Any, override: Callable) -> None:
    """Make `override` the attention override of `model` (a clone), in a new transformer_options dict so that the
    model it was cloned from keeps its own; `override` chains to the one set before itself (its `prev`)."""
    to = dict(model.model_options.get("transformer_options") or {})
    to[OVERRIDE] = override
    model.model_options["transformer_options"] = to


def _override_for(model: Any) -> DitAttnOverride:
    """This pack's override on `model` (a clone), installed chained to any override already set; a clone gets its
    own copy (clone() shares the object) that still shares the stores. Also installs the block tags."""
    dit.diffusion_model(model)
    install_block_tags(model)
    cur = attention_override(model)
    o = cur.copy() if isinstance(cur, DitAttnOverride) else DitAttnOverride(cur)
    set_attention_override(model, o)
    return o


def _selection(blocks: Optional[Sequence[dit.DitBlock]]) -> Optional[frozenset]:
    return None if blocks is None else frozenset(b.key for b in blocks)


def patch_dit_kv_record(model: Any, store: KVStore, blocks: Optional[Sequence[dit.DitBlock]] = None) -> Any:
    """Record the image-token K/V of `blocks` (default all) into `store` (keyed (sigma, (block_type, index), half))
    on every call of `model` (a clone)."""
    _override_for(model).recorders.append((store, _selection(blocks)))
    return model


def patch_dit_kv_inject(model: Any, injection: DitKVInjection, blocks: Optional[Sequence[dit.DitBlock]] = None) -> Any:
    """Inject stored image-token K/V into `blocks` (default all) of `model` (a clone) as `injection` says."""
    _override_for(model).injections.append((injection, _selection(blocks)))
    return model


def moved_rope(model: Any, latent_hw: Sequence[int], index: torch.Tensor) -> torch.Tensor:
    """RoPE rotations that re-encode the bank keys gathered by `index` (source token per target token) at their
    target positions: R(ids[target] − ids[index[target]])."""
    if not dit.has_rope(model):
        raise HostError("this model has no rotary position encoding: keys cannot be re-encoded (SD3 adds an "
                        "absolute position embedding at the input)")
    ids = dit.image_ids(model, latent_hw)
    return dit.relative_pe(model, ids[:, index.long()], ids)
