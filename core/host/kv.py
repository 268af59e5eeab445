"""Self-attention K/V: the store and its one life cycle (size estimate, RAM budget, placement, build, free), and
the attn1 replace patch that records K/V into stores and injects stored K/V into a run.

Life cycle of a K/V store (every recording run goes through these, in this order):
  1. `estimate_bytes(layers, latent_hw, steps, dtype, halves, batch)`: bytes the recording will hold;
  2. `check_budget(estimate, limit_gb, ...)`: KVBudgetError before the run when it exceeds the limit (the user's
     limit_gb, else KV_RAM_FRACTION of the RAM available now); returns the budget for the store's hard stop;
  3. `placement(model, estimate, scoped)`: (device, pinned) for the store;
  4. `build_store(model, estimate, dtype=, scoped=, budget_bytes=)`: the KVStore on that placement;
  5. `patch_kv_record(clone, store)` during the run, then `KVStore.release()` (or `free_store`) when done.
A store is owned by a run (`scoped`: freed when the run ends) or by an INVERSION object (kept in ComfyUI's cache).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from . import internals
from .errors import HostError, KVBudgetError
from .handle import SharedHandle
from .unet import AttnLayer, attention_layers

log = logging.getLogger("DragEdit")

KV_PLACEMENT_ENV = "DRAGEDIT_KV_PLACEMENT"   # auto (default) | offload | pinned | gpu
PIN_RAM_FRACTION = 0.25                      # pinned staging only for stores up to this share of the RAM
KV_RAM_FRACTION = 0.5                        # automatic RAM limit: this share of the RAM available now


def _sigma_key(sigma: float) -> float:
    return float(math.log(max(float(sigma), 1e-8)))


# --------------------------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------------------------

class KVStore(SharedHandle):
    """Self-attention K/V cache keyed by (sigma step, layer order/block_index, half); half 0 = cond, 1 = uncond.
    Tensors are kept in `dtype` (fp16 by default: half the RAM of fp32) on `device` (the offload device) and moved
    back on read. `budget_bytes` > 0 is a hard stop: a put that would exceed it raises KVBudgetError.
    A CUDA -> CPU store may stage its copies in pinned memory, asynchronously (`use_pinned_memory`)."""

    pinned = False                 # set by use_pinned_memory(); plain pageable, synchronous copies otherwise
    _event: Any = None             # CUDA event recorded after the last asynchronous copy into the store

    def __init__(self, dtype: torch.dtype = torch.float16, device: torch.device | str = "cpu", tolerance: float = 0.02,
                 budget_bytes: int = 0):
        self.dtype, self.device, self.tolerance = dtype, torch.device(device), tolerance
        self.budget_bytes = int(budget_bytes)
        self._data: dict[tuple[float, tuple, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._sigmas: dict[float, float] = {}
        self._bytes = 0

    def _reserve(self, key: tuple, k: torch.Tensor, v: torch.Tensor) -> None:
        """Account for an entry about to be stored under key; KVBudgetError beyond the budget."""
        size = torch.empty((), dtype=self.dtype).element_size()
        new = (k.numel() + v.numel()) * size
        old = self._data.get(key)
        grow = new - (sum(t.numel() * t.element_size() for t in old) if old is not None else 0)
        if self.budget_bytes > 0 and self._bytes + grow > self.budget_bytes:
            raise KVBudgetError(f"the recorded self-attention K/V reached the memory limit of "
                                f"{self.budget_bytes / 1024 ** 3:.2f} GB ({len(self._sigmas)} steps stored)")
        self._bytes += grow

    def put(self, sigma: float, layer: AttnLayer | tuple, half: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K, V (detached, converted) for one step, layer and half."""
        k, v = self._stage(k), self._stage(v)
        key = _sigma_key(sigma)
        self._sigmas[key] = float(sigma)
        lk = layer.key if isinstance(layer, AttnLayer) else tuple(layer)
        self._reserve((key, lk, int(half)), k, v)
        self._data[(key, lk, int(half))] = (k.detach().to(self.device, self.dtype), v.detach().to(self.device, self.dtype))

    def nearest_step(self, sigma: float) -> Optional[float]:
        """The stored step key nearest to sigma in log-sigma, or None if none lies within the tolerance."""
        if not self._sigmas:
            return None
        key = _sigma_key(sigma)
        best = min(self._sigmas, key=lambda s: abs(s - key))
        return best if abs(best - key) <= self.tolerance else None

    def use_pinned_memory(self, on: bool = True) -> "KVStore":
        """Keep CPU copies of CUDA tensors in page-locked memory, filled and read with non-blocking copies (the
        stream orders them; `synchronize()` before the CPU reads them). Pinned blocks are returned with
        `release()` (or `release_pinned_memory()` after `clear()`)."""
        self.pinned = bool(on) and self.device.type == "cpu" and torch.cuda.is_available()
        return self

    def _stage(self, t: torch.Tensor) -> torch.Tensor:
        """t converted to the store's dtype on its own device (fewer bytes cross the bus), then copied to the store's
        device: into pinned memory without blocking when `pinned`, else a plain copy (no-op when already there)."""
        t = t.detach()
        if t.device.type == "cuda" and self.device.type != "cuda":
            t = t.to(self.dtype)
            if self.pinned:
                dst = torch.empty(t.shape, dtype=self.dtype, pin_memory=True)
                dst.copy_(t, non_blocking=True)
                self._event = torch.cuda.Event()
                self._event.record(torch.cuda.current_stream(t.device))
                return dst
        return t.to(self.device, self.dtype)

    def synchronize(self) -> None:
        """Wait until every asynchronous copy into the store has landed (before the CPU reads stored tensors)."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None

    def _fetch(self, t: torch.Tensor, device: Any, dtype: Any) -> torch.Tensor:
        """A stored tensor on `device` in `dtype`: a non-blocking copy from pinned memory (ordered after the copy
        that filled it), converted on the target device."""
        device = torch.device(device) if device is not None else t.device
        dtype = dtype or t.dtype
        if device.type == "cuda" and t.device.type == "cpu":
            if self._event is not None:
                torch.cuda.current_stream(device).wait_event(self._event)
            return t.to(device, non_blocking=self.pinned).to(dtype)
        if device.type == "cpu":
            self.synchronize()
        return t.to(device, dtype)

    def get(self, sigma: float, layer: AttnLayer | tuple, half: int, device: Any = None, dtype: Any = None
            ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """K, V for the step nearest sigma; the cond half (0) stands in when the asked half was not recorded."""
        step = self.nearest_step(sigma)
        if step is None:
            return None
        lk = layer.key if isinstance(layer, AttnLayer) else tuple(layer)
        kv = self._data.get((step, lk, int(half))) or self._data.get((step, lk, 0))
        if kv is None:
            return None
        k, v = kv
        return self._fetch(k, device, dtype), self._fetch(v, device, dtype)

    @property
    def sigmas(self) -> list[float]:
        """Recorded step sigmas, descending."""
        return sorted(self._sigmas.values(), reverse=True)

    def __len__(self) -> int:
        return len(self._data)

    def nbytes(self) -> int:
        """Bytes held by the cache."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self._data.values())

    def clear(self) -> None:
        """Free every cached tensor."""
        self._data.clear()
        self._sigmas.clear()
        self._bytes = 0

    def release(self) -> None:
        """The last step of the life cycle: free every cached tensor and, for a pinned store, hand the cached pinned
        blocks back to the system."""
        self.clear()
        if self.pinned:
            release_pinned_memory()


# --------------------------------------------------------------------------------------------------------------
# the life cycle
# --------------------------------------------------------------------------------------------------------------

def estimate_bytes(layers: Sequence[AttnLayer], latent_hw: Sequence[int], steps: int,
                   dtype: torch.dtype = torch.float16, halves: int = 1, batch: int = 1) -> int:
    """Bytes of a K/V store of `steps` steps: Σ_layers 2·tokens·channels per step (inner dim = channels, as in
    SD1.x/2.x/XL), times halves (cond/uncond) and batch."""
    size = torch.empty((), dtype=dtype).element_size()
    per_step = sum(2 * math.prod(l.tokens(latent_hw)) * l.channels for l in layers)
    return int(per_step * steps * halves * batch * size)


def estimate_model_bytes(model: Any, latent_hw: Sequence[int], steps: int, dtype: torch.dtype = torch.float16,
                         halves: int = 1, batch: int = 1) -> int:
    """`estimate_bytes` over every self-attention layer of `model` (what `patch_kv_record` records by default)."""
    return estimate_bytes(attention_layers(model), latent_hw, steps, dtype, halves, batch)


def available_memory() -> Optional[int]:
    """Bytes of RAM available now (psutil), or None when unknown."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a ComfyUI requirement
        return None


def check_budget(estimate: int, limit_gb: float = 0.0, what: str = "",
                 fix: str = "lower steps or strength, or use a smaller image", label: str = "") -> int:
    """The RAM guard of recorded K/V, before the run: log the estimate; KVBudgetError (a message naming the estimate,
    the limit, where the limit comes from, and `fix`) when it exceeds the user's limit (limit_gb > 0) or,
    automatically, KV_RAM_FRACTION of the RAM available now. Returns the budget in bytes for the KVStore's hard stop
    (0 = none, when the available RAM is unknown). `label` names the caller in the log line."""
    gb = 1024 ** 3
    avail = available_memory()
    auto = int(KV_RAM_FRACTION * avail) if avail else None
    limit = int(float(limit_gb) * gb) if float(limit_gb) > 0 else auto
    log.info("DragEdit %s: recording self-attention K/V needs about %.2f GB%s (limit %s)", label, estimate / gb,
             f" ({what})" if what else "", "none" if limit is None else f"{limit / gb:.2f} GB")
    if limit is not None and estimate > limit:
        src = (f"kv_max_gb = {float(limit_gb):g}" if float(limit_gb) > 0 else
               f"half of the {avail / gb:.1f} GB of RAM available now")
        raise KVBudgetError(f"recording the self-attention K/V would keep about {estimate / gb:.2f} GB in RAM"
                            f"{f' ({what})' if what else ''}, above the limit of {limit / gb:.2f} GB ({src}): {fix}.")
    return limit or 0


def placement(model: Any, est_bytes: int, scoped: bool = True) -> tuple[torch.device, bool]:
    """(device, pinned) for a K/V store of about `est_bytes` recorded from `model`.

    auto: on a CUDA model whose store lives only for the run (`scoped`), keep it in VRAM when ComfyUI manages
    VRAM normally (NORMAL/HIGH_VRAM) and the free VRAM, less the weights still to load, the store and a reserve
    (the larger of ComfyUI's minimum inference memory + 2 GiB and 20% of the card), stays positive; otherwise the
    offload device, with pinned, non-blocking copies when that is system RAM and the store takes at most a quarter
    of it. A store that outlives the run (an INVERSION in ComfyUI's cache, not `scoped`) stays on the offload
    device in pageable memory. Low-VRAM modes always offload. $DRAGEDIT_KV_PLACEMENT=offload|pinned|gpu forces one
    choice for scoped stores (benches, troubleshooting)."""
    off = torch.device(getattr(model, "offload_device", None) or "cpu")
    load = torch.device(getattr(model, "load_device", None) or "cpu")
    if not scoped or load.type != "cuda" or not torch.cuda.is_available():
        return off, False
    mode = os.environ.get(KV_PLACEMENT_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "offload", "pinned", "gpu"):
        raise HostError(f"${KV_PLACEMENT_ENV} must be auto, offload, pinned or gpu, got {mode!r}")
    if mode == "gpu" or off.type == "cuda":
        return load, False
    if mode == "offload":
        return off, False
    if mode == "pinned":
        return off, off.type == "cpu"
    import comfy.model_management as mm
    if internals.vram_managed_normally():
        unloaded = internals.weights_still_to_load(model)
        reserve = max(mm.minimum_inference_memory() + 2 * 1024 ** 3, int(0.2 * mm.get_total_memory(load)))
        if mm.get_free_memory(load) - unloaded - int(est_bytes) >= reserve:
            return load, False
    try:
        import psutil
        ram = int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a ComfyUI requirement
        ram = 0
    return off, off.type == "cpu" and 0 < int(est_bytes) <= PIN_RAM_FRACTION * ram


def build_store(model: Any, est_bytes: int, *, dtype: torch.dtype = torch.float16, scoped: bool = True,
                budget_bytes: int = 0) -> KVStore:
    """An empty KVStore for recording about `est_bytes` from `model`, on `placement(model, est_bytes, scoped)`
    (pinned staging where that says so), with the hard stop `budget_bytes` (0 = none; from `check_budget`)."""
    device, pinned = placement(model, est_bytes, scoped=scoped)
    return KVStore(dtype=dtype, device=device, budget_bytes=budget_bytes).use_pinned_memory(pinned)


def free_store(store: Optional[KVStore]) -> None:
    """`store.release()` for a store that may be None."""
    if store is not None:
        store.release()


def release_pinned_memory() -> None:
    """Return cached pinned host blocks (freed K/V stores) to the system: torch keeps them for reuse otherwise."""
    internals.release_pinned_host_memory()


# --------------------------------------------------------------------------------------------------------------
# the attn1 patch: record and inject
# --------------------------------------------------------------------------------------------------------------

def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, extra: dict) -> torch.Tensor:
    """ComfyUI's attention kernel; the plain SDPA one when gradients flow (other kernels may lack backward)."""
    from comfy.ldm.modules import attention as A
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return A.attention_pytorch(q, k, v, heads)
    return A.optimized_attention(q, k, v, heads)


def chunks(extra: dict, batch: int) -> list[tuple[int, slice]]:
    """(half, rows) for each cond/uncond chunk of the batch, from cond_or_uncond (order is not fixed); halves
    2, 3... are extra conds batched with cond and uncond."""
    cu = list(extra.get("cond_or_uncond") or [0])
    n = max(batch // len(cu), 1)
    return [(int(h), slice(i * n, (i + 1) * n)) for i, h in enumerate(cu)]


def _current_sigma(extra: dict) -> float:
    s = extra.get("sigmas")
    if s is None:
        return float("nan")
    return float(torch.as_tensor(s).reshape(-1)[0])


MixFn = Callable[[AttnLayer, dict, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class KVInjection:
    """How stored K/V enter a layer: 'replace' (K,V := bank), 'concat' ([own; bank] along tokens) or 'mix'
    (mix(layer, extra, k_own, v_own, k_bank, v_bank) -> (k, v), e.g. masked_mix). `when(sigma)` limits the steps;
    `halves` limits to cond (0) / uncond (1) rows."""
    store: KVStore
    mode: str = "replace"
    mix: Optional[MixFn] = None
    when: Optional[Callable[[float], bool]] = None
    halves: tuple[int, ...] = (0, 1)
    hits: int = 0
    misses: int = 0


class Attn1Patch(SharedHandle):
    """attn1 replace patch for one layer: records K/V into stores and/or injects stored K/V, then computes
    attention (chaining to the replace patch that was there before, `prev`)."""

    def __init__(self, layer: AttnLayer, prev: Optional[Callable] = None):
        self.layer = layer
        self.prev = prev
        self.recorders: list[KVStore] = []
        self.injections: list[KVInjection] = []

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        sigma = _current_sigma(extra)
        parts = chunks(extra, q.shape[0])
        for store in self.recorders:
            for half, rows in parts:
                store.put(sigma, self.layer, half, k[rows], v[rows])
        for inj in self.injections:
            if inj.when is not None and not inj.when(sigma):
                continue
            k, v = self._inject(inj, sigma, parts, q, k, v, extra)
        if self.prev is not None:
            return self.prev(q, k, v, extra)
        return _attention(q, k, v, extra["n_heads"], extra)

    def _inject(self, inj: KVInjection, sigma: float, parts: list, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                extra: dict) -> tuple[torch.Tensor, torch.Tensor]:
        ks, vs = [], []
        for half, rows in parts:
            k_own, v_own = k[rows], v[rows]
            bank = inj.store.get(sigma, self.layer, half, device=k.device, dtype=k.dtype) if half in inj.halves else None
            if bank is None:
                if half in inj.halves:
                    inj.misses += 1
                ks.append(k_own), vs.append(v_own)
                continue
            inj.hits += 1
            kb, vb = bank
            kb = kb.expand(k_own.shape[0], *kb.shape[1:]) if kb.shape[0] != k_own.shape[0] else kb
            vb = vb.expand(v_own.shape[0], *vb.shape[1:]) if vb.shape[0] != v_own.shape[0] else vb
            if inj.mode == "replace":
                kn, vn = kb, vb
            elif inj.mode == "concat":
                kn, vn = torch.cat([k_own, kb], dim=1), torch.cat([v_own, vb], dim=1)
            elif inj.mode == "mix":
                kn, vn = inj.mix(self.layer, extra, k_own, v_own, kb, vb)
            else:
                raise HostError(f"unknown K/V injection mode {inj.mode!r}")
            ks.append(kn), vs.append(vn)
        if len({t.shape[1] for t in ks}) != 1:  # halves disagree on token count (concat on one half only)
            m = max(t.shape[1] for t in ks)
            ks = [torch.cat([t, t[:, :m - t.shape[1]]], 1) if t.shape[1] < m else t for t in ks]
            vs = [torch.cat([t, t[:, :m - t.shape[1]]], 1) if t.shape[1] < m else t for t in vs]
        return torch.cat(ks, 0), torch.cat(vs, 0)


def masked_mix(mask: torch.Tensor) -> MixFn:
    """A 'mix' for KVInjection: K,V = m·bank + (1−m)·own, with `mask` [H,W] (1 = take the bank) resized
    to each layer's token grid (area average)."""
    m2 = mask.float().reshape(1, 1, *mask.shape[-2:])

    def mix(layer: AttnLayer, extra: dict, k_own, v_own, kb, vb):
        hw = extra.get("original_shape", [0, 0, *mask.shape[-2:]])[-2:]
        th, tw = layer.tokens(hw)
        mm = torch.nn.functional.interpolate(m2, size=(th, tw), mode="area").reshape(1, th * tw, 1)
        mm = mm.to(k_own.device, k_own.dtype)
        return mm * kb + (1 - mm) * k_own, mm * vb + (1 - mm) * v_own
    return mix


def _attn1_patch_for(model: Any, layer: AttnLayer) -> Attn1Patch:
    """Our patch object on this layer of this ModelPatcher, installing it (chained to any existing one)."""
    cur = internals.replace_patch(model.model_options, "attn1", layer.key)
    if isinstance(cur, Attn1Patch) and cur.layer == layer:
        # clone() shares patch objects: give this model its own copy that still shares the stores
        p = Attn1Patch(layer, cur.prev)
        p.recorders, p.injections = list(cur.recorders), list(cur.injections)
    else:
        p = Attn1Patch(layer, cur)
    model.set_model_attn1_replace(p, layer.part, layer.number, layer.block_index)
    return p


def patch_kv_record(model: Any, store: KVStore, layers: Optional[Sequence[AttnLayer]] = None) -> Any:
    """Record self-attention K/V of `layers` (default all) into `store` on every call of `model` (a clone)."""
    for layer in (layers if layers is not None else attention_layers(model)):
        _attn1_patch_for(model, layer).recorders.append(store)
    return model


def patch_kv_inject(model: Any, injection: KVInjection, layers: Optional[Sequence[AttnLayer]] = None) -> Any:
    """Inject stored K/V into `layers` (default all) of `model` (a clone) as the injection says."""
    for layer in (layers if layers is not None else attention_layers(model)):
        _attn1_patch_for(model, layer).injections.append(injection)
    return model


def without_kv_patches(model_options: dict) -> dict:
    """A copy of model_options without this pack's attn1 (K/V record / inject) patches; the patches they chained
    to take their place. Nothing of `model_options` is mutated."""
    current = internals.replace_patches(model_options, "attn1")
    if not any(isinstance(p, Attn1Patch) for p in current.values()):
        return model_options
    kept = {}
    for key, p in current.items():
        while isinstance(p, Attn1Patch):
            p = p.prev
        if p is not None:
            kept[key] = p
    return internals.with_replace_patches(model_options, "attn1", kept)
