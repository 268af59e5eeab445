"""Source attention maps in a DiT edit (LEDITS-flow's structure lock): in the chosen blocks, the image tokens' queries
and keys of each edit call are replaced by those of the same call run on the inversion's own state at that step, so
the image attends to itself as the source image did (where things are, their shape) while the values, and through
them the colours and textures, follow the edit. Prompt-to-prompt's attention-map injection (Hertz et al. 2022) on a
DiT's joint attention, in its single-stream blocks.

Hooks (all on a clone, chained with what is already there; no state outlives the run):
- the block tags and token count of `dit_kv.install_block_tags` (block_type / block_index, text and image token
  counts in transformer_options);
- transformer_options["optimized_attention_override"]: `SourceAttention`, chained to the override set before;
- an APPLY_MODEL wrapper (`SourcePass`) that runs each model call twice: first on the source state of its step
  (recording Q / K of the chosen blocks), then on the edit's latent with them injected. It costs one more model call
  per call and holds one call's Q / K at a time (no per-step store).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch

from . import dit, dit_kv, internals
from .handle import SharedHandle
from .kv import _current_sigma, chunks

WRAPPER_KEY = "dragedit_source_attention"

SourceStateFn = Callable[[float], Optional[torch.Tensor]]
"""sigma -> the source (inversion) state at that step [B, C, H, W], or None when the step is not the source's."""


class SourceAttention(SharedHandle):
    """The attention override: in "record" mode keeps the image-token Q / K of the selected blocks (the rows of
    `source_rows`), in "inject" mode puts them in place of every row's own; "off" passes through. Then calls `prev`
    or the kernel."""

    def __init__(self, selected: frozenset, prev: Optional[Callable] = None):
        self.selected, self.prev = selected, prev
        self.mode = "off"
        self.bank: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.injected = 0

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        q, k = args[0], args[1]
        if self.mode != "off":
            q, k = self.process(q, k, kwargs)
            args = (q, k, *args[2:])
        if self.prev is not None:
            return self.prev(func, *args, **kwargs)
        return func(*args, **kwargs)

    def process(self, q: torch.Tensor, k: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, k) of one attention call after recording or injecting."""
        to = kwargs.get("transformer_options") or {}
        key = (to.get("block_type"), to.get("block_index"))
        n_txt, n_img = to.get(dit_kv.TXT_TOKENS), to.get(dit_kv.IMG_TOKENS)
        td = dit_kv._token_dim(kwargs)
        if key not in self.selected or n_txt is None or n_img is None or k.shape[td] < n_txt + n_img:
            return q, k
        lo, n = int(n_txt), int(n_img)
        if self.mode == "record":
            rows = source_rows(to, q.shape[0])
            self.bank[key] = (q[rows].narrow(td, lo, n).detach(), k[rows].narrow(td, lo, n).detach())
            return q, k
        got = self.bank.get(key)
        if got is None or q.shape[0] % got[0].shape[0]:
            return q, k
        self.injected += 1
        reps = q.shape[0] // got[0].shape[0]
        return tuple(torch.cat([t.narrow(td, 0, lo), b.to(t.dtype).repeat(reps, *([1] * (b.ndim - 1))),
                                t.narrow(td, lo + n, t.shape[td] - lo - n)], td) for t, b in zip((q, k), got))


def source_rows(transformer_options: dict, batch: int) -> slice:
    """The rows whose source-pass attention maps every row takes: the positive prompt's (cond_or_uncond 0: the
    prompt the image was inverted with when no target is given), else the negative's (LEDITS++ runs without the
    positive and inverts with the negative), else the first chunk."""
    parts = dict(chunks(transformer_options, batch))
    for half in (0, 1):
        if half in parts:
            return parts[half]
    return next(iter(parts.values()))


class SourcePass(SharedHandle):
    """APPLY_MODEL wrapper: for a call at a step where `source_at` gives the source state, run the call on that state
    with the override recording, then on the call's own latent with it injecting; other calls run as they are."""

    def __init__(self, override: SourceAttention, source_at: SourceStateFn):
        self.override, self.source_at = override, source_at

    def __call__(self, executor, x, *args, **kwargs):
        sigma = _current_sigma(internals.apply_model_options(args, kwargs) or {})
        src = None if math.isnan(sigma) else self.source_at(sigma)
        if src is None or x.shape[0] % src.shape[0]:
            return executor(x, *args, **kwargs)
        o = self.override
        try:
            o.mode = "record"
            src = src.to(x.device, x.dtype)
            executor(src.repeat(x.shape[0] // src.shape[0], *([1] * (x.ndim - 1))), *args, **kwargs)
            o.mode = "inject"
            return executor(x, *args, **kwargs)
        finally:
            o.mode, o.bank = "off", {}


def structure_blocks(model: Any) -> list[dit.DitBlock]:
    """The blocks whose attention maps the structure lock takes from the source: the single-stream blocks (FLUX,
    Chroma, Kontext; none on SD3 / Qwen-Image, whose joint blocks carry the prompt's effect: there the lock is
    not applied)."""
    return dit.select_blocks(model, kinds=("single",))


def patch_source_attention(model: Any, source_at: SourceStateFn, blocks: Optional[Sequence[dit.DitBlock]] = None
                           ) -> SourceAttention:
    """Install the structure lock on `model` (a clone) for `blocks` (default `structure_blocks`); returns the override
    (its `injected` counts the block calls that took the source's Q / K)."""
    import comfy.patcher_extension as pe
    sel = structure_blocks(model) if blocks is None else list(blocks)
    dit_kv.install_block_tags(model)
    o = SourceAttention(frozenset(b.key for b in sel), dit_kv.attention_override(model))
    dit_kv.set_attention_override(model, o)
    model.remove_wrappers_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY)
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY, SourcePass(o, source_at))
    return o
