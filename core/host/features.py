"""Decoder feature capture: outputs of chosen UNet output blocks, recorded during UNet calls (with grad when the
call has grad), optionally ending the call after the deepest one.

Capture goes through ComfyUI's output_block_patch (it sees output block i−1's output as the input of block i);
the last output block's output and the early stop have no public mechanism and go through host.internals.
An output_block_patch that another node put on the model before this pack's (FreeU, for one) runs first, so the
captured h is the block output as that patch left it."""
from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

import torch

from . import internals
from .errors import HostError
from .handle import SharedHandle
from .unet import decoder_blocks


class FeatureStore(SharedHandle):
    """Decoder block outputs captured during UNet calls: features[block_index] (with grad when the call had
    grad). `truncate` stops the UNet after the deepest requested block (for feature-only calls)."""

    def __init__(self) -> None:
        self.features: dict[int, torch.Tensor] = {}
        self.cond_or_uncond: list[int] = []
        self.truncate = False
        self.calls = 0

    def clear(self) -> None:
        """Drop captured tensors."""
        self.features.clear()
        self.cond_or_uncond = []

    def half(self, index: int, which: int = 0) -> torch.Tensor:
        """Rows of captured block `index` that belong to the cond (0) or uncond (1) half."""
        f = self.features[index]
        cu = self.cond_or_uncond or [0]
        n = f.shape[0] // len(cu)
        idx = cu.index(which) if which in cu else 0
        return f[idx * n:(idx + 1) * n]


class FeatureCapture(SharedHandle):
    """Captures the outputs of output blocks `blocks` into `store` on each UNet call: a DIFFUSION_MODEL wrapper
    (this object: per-call bookkeeping, the early stop) plus `output_block_patch`. `store` None = inactive (the call
    runs untouched); `activate` sets a store and blocks for the duration of a context."""

    def __init__(self, store: Optional[FeatureStore], blocks: Sequence[int], last_block: int):
        self.store = store
        self.blocks = sorted(set(int(b) for b in blocks))
        self.last_block = int(last_block)

    @contextlib.contextmanager
    def activate(self, store: FeatureStore, blocks: Sequence[int]):
        """Capture `blocks` into `store` while the context is open."""
        prev = self.store, self.blocks
        self.store, self.blocks = store, sorted(set(int(b) for b in blocks))
        try:
            yield store
        finally:
            self.store, self.blocks = prev

    def _got(self, index: int, out: torch.Tensor) -> None:
        store = self.store
        store.features[index] = out
        if store.truncate and index == self.blocks[-1]:
            internals.stop_unet()

    def output_block_patch(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        """output_block_patch: h is the output of the previous output block; returned unchanged."""
        if self.store is not None:
            part, number = internals.current_block(transformer_options)
            if part == "output" and number - 1 in self.blocks:
                self._got(number - 1, h)
        return h, hsp

    def __call__(self, executor, *args, **kwargs):
        store = self.store
        if store is None:
            return executor(*args, **kwargs)
        unet = executor.class_obj
        _, to = internals.diffusion_model_call(args, kwargs)
        store.cond_or_uncond = list(to.get("cond_or_uncond") or [0])
        store.calls += 1
        last = self.last_block
        hook = (internals.output_block_hook(unet, last, lambda out: self._got(last, out))
                if last in self.blocks else contextlib.nullcontext())
        with hook:
            return internals.run_stoppable(executor, args, kwargs, unet)


def install_capture(model: Any, store: Optional[FeatureStore], blocks: Sequence[int], key: str) -> FeatureCapture:
    """Put a FeatureCapture on `model` (a clone) under wrapper key `key`: its DIFFUSION_MODEL wrapper and its
    output_block_patch."""
    import comfy.patcher_extension as pe
    cap = FeatureCapture(store, blocks, len(decoder_blocks(model)) - 1)
    model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, key, cap)
    model.set_model_output_block_patch(cap.output_block_patch)
    return cap


def patch_feature_capture(model: Any, store: FeatureStore, blocks: Sequence[int]) -> Any:
    """Capture the outputs of output blocks `blocks` into `store` on every UNet call of `model` (a clone)."""
    n = len(decoder_blocks(model))
    bad = [b for b in blocks if not 0 <= int(b) < n]
    if bad:
        raise HostError(f"output block(s) {bad} do not exist: this UNet has output blocks 0..{n - 1}")
    install_capture(model, store, blocks, f"dragedit_features_{id(store)}")
    return model
