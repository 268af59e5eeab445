"""The one module that touches ComfyUI's UNet: model facts, layer maps, K/V and feature patches,
differentiable calls inside ComfyUI's own sampling machinery.

Everything else in core/ talks to ComfyUI only through this module. Stores (K/V caches, captured features)
are owned by a run or by an INVERSION object, never by a patch: a patch holds a handle that
`ModelPatcher.clone()` (which deep-copies model_options) passes on without copying.

Sampler state convention (ComfyUI): x = z_t / sqrt(ᾱ_t) = z_0 + σ·ε with ᾱ = 1/(1+σ²); the wrapped model
returns x̂0 for eps- and v-prediction models alike, so ε̂ = (x − x̂0)/σ.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch

# --------------------------------------------------------------------------------------------
# lazy ComfyUI imports (importing core/ outside ComfyUI must not fail until a host call is made)
# --------------------------------------------------------------------------------------------


def _comfy():
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers
    import comfy.supported_models_base
    import comfy.latent_formats
    import comfy.model_sampling
    return comfy


class HostError(RuntimeError):
    """A model or host that this pack cannot work with (raised with a message a user can act on)."""


# --------------------------------------------------------------------------------------------
# model construction (tests and the shapes demo model)
# --------------------------------------------------------------------------------------------

def init_weights_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Deterministic init by module type: ComfyUI layers skip init (torch.empty), so models built from
    config without a state dict hold garbage. Linear/Conv ~ N(0, std), norms weight 1 bias 0, other biases 0."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            w = getattr(m, "weight", None)
            b = getattr(m, "bias", None)
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if isinstance(w, torch.Tensor):
                    w.fill_(1.0)
                if isinstance(b, torch.Tensor):
                    b.zero_()
            elif isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)):
                if isinstance(w, torch.Tensor):
                    w.copy_(torch.randn(w.shape, generator=g) * std)
                if isinstance(b, torch.Tensor):
                    b.zero_()


def build_model(unet_config: dict, *, latent_format: Any = "sd15", prediction: str = "eps", sdxl: bool = False,
                state_dict: Optional[dict] = None, seed: int = 0, dtype: torch.dtype = torch.float32,
                init_std: float = 0.02, text_start_tokens: int = 1) -> Any:
    """Build a real ComfyUI model (model_base + ModelPatcher on the CPU) from a UNet config: the tiny test
    models and the shapes demo model. `latent_format` is "sd15", "sdxl" or a comfy LatentFormat class;
    `text_start_tokens`: start tokens its text encoder puts before the words (see `text_start_tokens`)."""
    comfy = _comfy()
    lf = {"sd15": comfy.latent_formats.SD15, "sdxl": comfy.latent_formats.SDXL}.get(latent_format, latent_format) \
        if isinstance(latent_format, str) else latent_format
    cfg = dict(unet_config)
    cfg.setdefault("dtype", dtype)

    class _Config(comfy.supported_models_base.BASE):
        unet_config = cfg
        unet_extra_config = {}
        latent_format = lf

    _Config.text_start_tokens = int(text_start_tokens)
    mc = _Config(cfg)
    mtype = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}[prediction]
    base_cls = comfy.model_base.SDXL if sdxl else comfy.model_base.BaseModel
    with torch.inference_mode(False):
        m = base_cls(mc, model_type=mtype, device="cpu")
        if state_dict is not None:
            missing, unexpected = m.diffusion_model.load_state_dict(state_dict, strict=False)
            if missing or unexpected:
                raise HostError(f"state dict does not fit the UNet config: missing {missing[:4]}, unexpected {unexpected[:4]}")
        else:
            init_weights_(m.diffusion_model, seed=seed, std=init_std)
        m.diffusion_model.to(dtype)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(m, load_device=cpu, offload_device=cpu)


# --------------------------------------------------------------------------------------------
# model facts and schedule
# --------------------------------------------------------------------------------------------

def base_model(model: Any) -> Any:
    """The comfy BaseModel behind a ModelPatcher (or the BaseModel itself)."""
    return getattr(model, "model", model)


def text_start_tokens(model: Any) -> int:
    """Start tokens (BOS) the model's text encoder puts before the prompt's words: 1 for CLIP (SD1.x/2.x, SDXL),
    0 for a model built with `build_model(text_start_tokens=0)` (the shapes demo model's word encoder)."""
    return int(getattr(getattr(base_model(model), "model_config", None), "text_start_tokens", 1))


def concept_token_range(n_tokens: int, count: int, start: int = 1) -> tuple[int, int]:
    """Token slice [lo, hi) of a concept's context whose cross-attention makes its LEDITS++ mask: the first `count`
    tokens after the `start` start tokens; count 0 = from `start` to all but the last token (diffusers on CLIP:
    tokens 1..T−2, padding included). At least one token, never past the context."""
    lo = max(0, min(int(start), n_tokens - 1))
    hi = lo + int(count) if count else n_tokens - 1
    return lo, max(lo + 1, min(hi, n_tokens))


def diffusion_model(model: Any) -> torch.nn.Module:
    """The UNet module (UNetModel) of a MODEL; HostError when the model family is not a UNet we support."""
    dm = getattr(base_model(model), "diffusion_model", None)
    if dm is None or not hasattr(dm, "output_blocks") or not hasattr(dm, "input_blocks"):
        raise HostError(f"unsupported model family ({type(dm).__name__}): DragEdit needs an SD1.x/SD2.x/SDXL-style UNet")
    return dm


def check_supported(model: Any) -> str:
    """Return 'eps' or 'v' for supported models (discrete-schedule UNets), else raise HostError."""
    comfy = _comfy()
    diffusion_model(model)
    bm = base_model(model)
    ms = model_sampling(model)
    if not isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete):
        raise HostError(f"unsupported sampling ({type(ms).__name__}): only discrete-schedule eps / v-prediction models work")
    mt = getattr(bm, "model_type", None)
    if mt == comfy.model_base.ModelType.EPS:
        return "eps"
    if mt == comfy.model_base.ModelType.V_PREDICTION:
        return "v"
    raise HostError(f"unsupported prediction type {mt}: only eps and v-prediction models work")


def model_sampling(model: Any) -> Any:
    """ComfyUI's model_sampling object (respects object patches where the host has get_model_object)."""
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    return base_model(model).model_sampling


def is_v_prediction(model: Any) -> bool:
    """True for v-prediction models (SD2.x 768-v); the denoiser still returns x̂0 either way."""
    comfy = _comfy()
    return getattr(base_model(model), "model_type", None) == comfy.model_base.ModelType.V_PREDICTION


def alpha_bar(sigma: torch.Tensor | float) -> torch.Tensor:
    """ᾱ_t = 1/(1+σ_t²) for the discrete VP schedules of SD (eps and v alike)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return 1.0 / (1.0 + s * s)


def sigma_of_alpha_bar(ab: torch.Tensor | float) -> torch.Tensor:
    """σ_t = sqrt((1−ᾱ_t)/ᾱ_t)."""
    ab = torch.as_tensor(ab, dtype=torch.float64)
    return torch.sqrt((1.0 - ab) / ab)


def timestep_of(model: Any, sigma: torch.Tensor | float) -> float:
    """The model's (DDPM) timestep t for a sigma."""
    return float(model_sampling(model).timestep(torch.as_tensor(sigma, dtype=torch.float32).reshape(1))[0])


def ddim_sigmas(model: Any, steps: int) -> torch.Tensor:
    """Descending DDIM grid ending in 0, strictly descending for every steps in 1..T: timesteps o + k·(T//steps) for
    k < steps with offset o = 1, as diffusers' DDIMScheduler with steps_offset=1 and "leading" spacing (equal to
    ComfyUI's 'ddim_uniform' when T divides by steps; that one adds extra steps otherwise). At the one edge where
    that grid leaves the model's range (steps = T: timesteps 1..T) the offset drops to
    o = T−1−(steps−1)·(T//steps) (= 0: every timestep 0..T−1 once) instead of clipping T to T−1, which would repeat
    the first sigma."""
    ms = model_sampling(model)
    n = int(len(ms.sigmas))
    steps = int(steps)
    if not 1 <= steps <= n:
        raise HostError(f"steps must be between 1 and {n}, got {steps}")
    ratio = n // steps
    offset = min(1, n - 1 - (steps - 1) * ratio)
    ts = torch.arange(steps - 1, -1, -1, dtype=torch.long) * ratio + offset
    sig = ms.sigmas.detach().to("cpu", torch.float32)[ts]
    return torch.cat([sig, sig.new_zeros(1)])


def latent_format(model: Any) -> Any:
    """The model's latent format (scale factor, channels)."""
    return base_model(model).latent_format


def process_in(model: Any, samples: torch.Tensor) -> torch.Tensor:
    """LATENT samples (VAE space) -> the UNet's latent z_0 (scaled)."""
    return base_model(model).process_latent_in(samples)


def process_out(model: Any, z: torch.Tensor) -> torch.Tensor:
    """The UNet's latent -> LATENT samples (VAE space)."""
    return base_model(model).process_latent_out(z)


# --------------------------------------------------------------------------------------------
# layer map
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# stores: owned by a run / an INVERSION object; patches hold a handle that clone() does not copy
# --------------------------------------------------------------------------------------------

class _SharedHandle:
    """Base for objects that must survive ModelPatcher.clone()'s deepcopy of model_options by reference."""

    def __deepcopy__(self, memo: dict) -> "_SharedHandle":
        return self

    def __copy__(self) -> "_SharedHandle":
        return self


def _sigma_key(sigma: float) -> float:
    return float(math.log(max(float(sigma), 1e-8)))


class KVBudgetError(HostError):
    """A K/V store reached its memory budget (the RAM guard's hard stop)."""


def available_memory() -> Optional[int]:
    """Bytes of RAM available now (psutil), or None when unknown."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a ComfyUI requirement
        return None


class KVStore(_SharedHandle):
    """Self-attention K/V cache keyed by (sigma step, layer order/block_index, half); half 0 = cond, 1 = uncond.
    Tensors are kept in `dtype` (fp16 by default: half the RAM of fp32) on `device` (the offload device) and moved
    back on read. `budget_bytes` > 0 is a hard stop: a put that would exceed it raises KVBudgetError."""

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

    # device transfers (issue 15): a CUDA -> CPU store may stage its copies in pinned memory, asynchronously
    pinned = False                 # set by use_pinned_memory(); plain pageable, synchronous copies otherwise
    _event: Any = None             # CUDA event recorded after the last asynchronous copy into the store

    def use_pinned_memory(self, on: bool = True) -> "KVStore":
        """Keep CPU copies of CUDA tensors in page-locked memory, filled and read with non-blocking copies (the
        stream orders them; `synchronize()` before the CPU reads them). Pinned blocks are returned with
        `release_pinned_memory()` once the store is cleared."""
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


class FeatureStore(_SharedHandle):
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


class _StopForward(Exception):
    """Raised by a feature hook to end a truncated UNet call after the deepest needed block."""


# --------------------------------------------------------------------------------------------
# attention patches
# --------------------------------------------------------------------------------------------

def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, extra: dict) -> torch.Tensor:
    """ComfyUI's attention kernel; the plain SDPA one when gradients flow (other kernels may lack backward)."""
    from comfy.ldm.modules import attention as A
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return A.attention_pytorch(q, k, v, heads)
    return A.optimized_attention(q, k, v, heads)


def _chunks(extra: dict, batch: int) -> list[tuple[int, slice]]:
    """(half, rows) for each cond/uncond chunk of the batch, from cond_or_uncond (order is not fixed)."""
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


class _Attn1Patch(_SharedHandle):
    """attn1 replace patch for one layer: records K/V into stores and/or injects stored K/V, then computes
    attention (chaining to a replace patch that was already there)."""

    def __init__(self, layer: AttnLayer, prev: Optional[Callable] = None):
        self.layer = layer
        self.prev = prev
        self.recorders: list[KVStore] = []
        self.injections: list[KVInjection] = []

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        sigma = _current_sigma(extra)
        chunks = _chunks(extra, q.shape[0])
        for store in self.recorders:
            for half, rows in chunks:
                store.put(sigma, self.layer, half, k[rows], v[rows])
        for inj in self.injections:
            if inj.when is not None and not inj.when(sigma):
                continue
            k, v = self._inject(inj, sigma, chunks, q, k, v, extra)
        if self.prev is not None:
            return self.prev(q, k, v, extra)
        return _attention(q, k, v, extra["n_heads"], extra)

    def _inject(self, inj: KVInjection, sigma: float, chunks: list, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                extra: dict) -> tuple[torch.Tensor, torch.Tensor]:
        ks, vs = [], []
        for half, rows in chunks:
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


def _attn1_patch_for(model: Any, layer: AttnLayer) -> _Attn1Patch:
    """Our patch object on this layer of this ModelPatcher, installing it (chained to any existing one)."""
    to = model.model_options.setdefault("transformer_options", {})
    rep = to.get("patches_replace", {}).get("attn1", {})
    cur = rep.get(layer.key) or rep.get((layer.part, layer.number))
    if isinstance(cur, _Attn1Patch) and cur.layer == layer:
        # clone() shares patch objects: give this model its own copy that still shares the stores
        p = _Attn1Patch(layer, cur.prev)
        p.recorders, p.injections = list(cur.recorders), list(cur.injections)
    else:
        p = _Attn1Patch(layer, cur)
    model.set_model_attn1_replace(p, layer.part, layer.number, layer.block_index)
    return p


def clone(model: Any) -> Any:
    """A per-run clone of the user's ModelPatcher; every patch of this pack goes on such a clone."""
    return model.clone()


class _SamplingCheck(_SharedHandle):
    """OUTER_SAMPLE wrapper: check(sigmas, latent_image, noise) before a sampling run starts (raises to refuse)."""

    def __init__(self, check: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]):
        self.check = check

    def __call__(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        self.check(sigmas, latent_image, noise)
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)


def patch_sampling_check(model: Any, key: str, check: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]) -> Any:
    """Make every sampler of `model` (a clone) call check(sigmas, latent_image, noise) before it samples (e.g. the
    schedule-match rule of a patch that only works on an inversion's sigmas); replaces a check under the same key."""
    _comfy()
    import comfy.patcher_extension as pe
    wkey = f"dragedit_sampling_check_{key}"
    model.remove_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, wkey)
    model.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, wkey, _SamplingCheck(check))
    return model


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


KV_PLACEMENT_ENV = "DRAGEDIT_KV_PLACEMENT"   # auto (default) | offload | pinned | gpu
PIN_RAM_FRACTION = 0.25                      # pinned staging only for stores up to this share of the RAM


def kv_placement(model: Any, est_bytes: int, scoped: bool = True) -> tuple[torch.device, bool]:
    """(device, pinned) for a K/V store of about `est_bytes` recorded from `model`.

    auto: on a CUDA model whose store lives only for the run (`scoped`), keep it in VRAM when ComfyUI manages
    VRAM normally (NORMAL/HIGH_VRAM) and the free VRAM, less the weights still to load, the store and a reserve
    (the larger of ComfyUI's minimum inference memory + 2 GiB and 20% of the card), stays positive; otherwise the
    offload device, with pinned, non-blocking copies when that is system RAM and the store takes at most a quarter
    of it. A store that outlives the run (an INVERSION in ComfyUI's cache) stays in pageable RAM. Low-VRAM modes
    always offload. $DRAGEDIT_KV_PLACEMENT=offload|pinned|gpu forces one choice (benches, troubleshooting)."""
    import os
    off = torch.device(getattr(model, "offload_device", None) or "cpu")
    load = torch.device(getattr(model, "load_device", None) or "cpu")
    if load.type != "cuda" or not torch.cuda.is_available():
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
    if not scoped:
        return off, False
    mm = _comfy().model_management
    if mm.vram_state in (mm.VRAMState.NORMAL_VRAM, mm.VRAMState.HIGH_VRAM):
        try:
            unloaded = max(int(model.model_size()) - int(model.loaded_size()), 0)
        except Exception:  # pragma: no cover - a patcher without size bookkeeping
            unloaded = 0
        reserve = max(mm.minimum_inference_memory() + 2 * 1024 ** 3, int(0.2 * mm.get_total_memory(load)))
        if mm.get_free_memory(load) - unloaded - int(est_bytes) >= reserve:
            return load, False
    try:
        import psutil
        ram = int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a ComfyUI requirement
        ram = 0
    return off, off.type == "cpu" and 0 < int(est_bytes) <= PIN_RAM_FRACTION * ram


def release_pinned_memory() -> None:
    """Return cached pinned host blocks (freed K/V stores) to the system: torch keeps them for reuse otherwise."""
    fn = getattr(torch._C, "_host_emptyCache", None)
    if fn is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        fn()


# --------------------------------------------------------------------------------------------
# decoder feature capture
# --------------------------------------------------------------------------------------------

class _FeatureWrapper(_SharedHandle):
    """DIFFUSION_MODEL wrapper that hooks the last layer of chosen output blocks for the duration of one UNet
    call, stores their outputs, and (store.truncate) stops after the deepest one."""

    def __init__(self, store: FeatureStore, blocks: Sequence[int]):
        self.store, self.blocks = store, sorted(set(int(b) for b in blocks))

    def __call__(self, executor, *args, **kwargs):
        unet = executor.class_obj
        store, deepest = self.store, max(self.blocks)
        to = kwargs.get("transformer_options")
        if to is None and len(args) >= 6:
            to = args[5]
        store.cond_or_uncond = list((to or {}).get("cond_or_uncond") or [0])
        store.calls += 1
        handles = []

        def make_hook(idx: int):
            def hook(_mod, _inp, out):
                store.features[idx] = out
                if store.truncate and idx == deepest:
                    raise _StopForward()
            return hook

        for b in self.blocks:
            handles.append(unet.output_blocks[b][-1].register_forward_hook(make_hook(b)))
        try:
            return executor(*args, **kwargs)
        except _StopForward:
            x = args[0] if args else kwargs["x"]
            return torch.zeros(x.shape[0], unet.out_channels, *x.shape[2:], device=x.device, dtype=x.dtype)
        finally:
            for h in handles:
                h.remove()


def patch_feature_capture(model: Any, store: FeatureStore, blocks: Sequence[int]) -> Any:
    """Capture the outputs of output blocks `blocks` into `store` on every UNet call of `model` (a clone)."""
    comfy = _comfy()
    import comfy.patcher_extension as pe
    n = len(decoder_blocks(model))
    bad = [b for b in blocks if not 0 <= int(b) < n]
    if bad:
        raise HostError(f"output block(s) {bad} do not exist: this UNet has output blocks 0..{n - 1}")
    model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, f"dragedit_features_{id(store)}", _FeatureWrapper(store, blocks))
    return model


# --------------------------------------------------------------------------------------------
# calls inside ComfyUI's sampling machinery
# --------------------------------------------------------------------------------------------

class Denoiser:
    """The CFG-combined denoiser of a running session: x0(x, σ) = x̂0, eps(x, σ) = ε̂ = (x − x̂0)/σ.
    Calls go through ComfyUI (conds, CFG, every other patch, device management)."""

    def __init__(self, model_k: Any, extra_args: dict, patcher: Any):
        self._model_k, self.extra_args, self.patcher = model_k, extra_args, patcher
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    def x0(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """x̂0 at sampler state x and noise level σ."""
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        self.calls += 1
        return self._model_k(x, s, **self.extra_args)

    def eps(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """ε̂ = (x − x̂0)/σ."""
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        return (x - self.x0(x, sigma)) / s

    @property
    def inner_model(self) -> Any:
        """The comfy BaseModel being sampled (for model_sampling, latent format)."""
        return self._model_k.inner_model.inner_model

    def cond_x0(self, x: torch.Tensor, sigma: torch.Tensor | float, kv_patches: bool = False) -> torch.Tensor:
        """x̂0 of the positive conditioning alone: one UNet pass, no CFG and no post-CFG functions; this pack's
        attn1 (K/V record / inject) patches are left out unless kv_patches (DragonDiffusion's plain cond UNet)."""
        comfy = _comfy()
        guider = self._model_k.inner_model
        cond = guider.conds.get("positive") if hasattr(guider, "conds") else None
        if not cond:
            raise HostError("a cond-only pass needs the positive conditioning of the session")
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        mo = self.extra_args.get("model_options", {})
        if not kv_patches:
            mo = dict(mo, transformer_options=_without_attn1_patches(mo.get("transformer_options", {})))
        self.calls += 1
        return comfy.samplers.calc_cond_batch(guider.inner_model, [cond], x, s, mo)[0]


def _alias_non_inference(t: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) tensor that shares t's memory: no copy of the weights."""
    with torch.inference_mode(False):
        a = torch.from_dlpack(t.detach())
    if a.is_inference():  # pragma: no cover - fall back to a copy if this torch keeps the flag
        with torch.inference_mode(False):
            a = t.detach().clone()
    return a


@contextlib.contextmanager
def grad_enabled(model: Any) -> Iterator[None]:
    """Make UNet calls of `model` (a ModelPatcher, BaseModel or Denoiser) differentiable w.r.t. their inputs
    inside a node run by ComfyUI: leave inference mode, enable grad, and swap inference-tensor weights for
    aliases of the same memory (restored on exit)."""
    if isinstance(model, Denoiser):
        model = model.patcher
    bm = base_model(model)
    swapped: list[tuple[torch.nn.Module, str, str, torch.Tensor]] = []
    with torch.inference_mode(False), torch.enable_grad():
        try:
            for mod in bm.modules():
                for name, p in list(mod._parameters.items()):
                    if p is not None and p.is_inference():
                        swapped.append((mod, "_parameters", name, p))
                        mod._parameters[name] = torch.nn.Parameter(_alias_non_inference(p), requires_grad=False)
                for name, b in list(mod._buffers.items()):
                    if b is not None and b.is_inference():
                        swapped.append((mod, "_buffers", name, b))
                        mod._buffers[name] = _alias_non_inference(b)
            yield
        finally:
            for mod, where, name, t in reversed(swapped):
                getattr(mod, where)[name] = t


def grad_input(t: torch.Tensor) -> torch.Tensor:
    """A fresh leaf copy of an (possibly inference) tensor that can require grad."""
    with torch.inference_mode(False):
        return t.detach().clone().requires_grad_(True)


def session(model: Any, positive: Any, negative: Any, cfg: float, samples: torch.Tensor, sigmas: torch.Tensor,
            loop: Callable[[Denoiser, torch.Tensor, torch.Tensor], torch.Tensor], seed: int = 0,
            disable_pbar: bool = True) -> torch.Tensor:
    """Run `loop(den, x, sigmas)` inside ComfyUI's sampling machinery on `model` (a clone) and return its result
    as LATENT samples. `x` starts as the processed-in latent z_0 (no noise is added); the loop returns the final
    sampler state. `negative` may be None (cfg must then be 1)."""
    comfy = _comfy()
    if negative is None:
        negative = []
    holder: dict = {}

    def fn(model_k, x, sig, extra_args=None, callback=None, disable=None, **_):
        den = Denoiser(model_k, extra_args or {}, model)
        holder["den"] = den
        return loop(den, x, sig)

    sampler = comfy.samplers.KSAMPLER(fn)
    noise = torch.zeros_like(samples)
    out = comfy.sample.sample_custom(model, noise, float(cfg), sampler, sigmas, positive, negative, samples,
                                     noise_mask=None, callback=None, disable_pbar=disable_pbar, seed=seed)
    return out


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


# --- added for DragonDiffusion ---
# Guidance that any sampler applies: a sampler_post_cfg_function that may run one extra, differentiable UNet
# pass truncated after the deepest feature block (positive conditioning only, without this pack's K/V
# record/inject patches: the reference's separate plain "estimator"), and a per-sampling-run state dict that an
# OUTER_SAMPLE wrapper opens and drops, so caches live exactly as long as one sampling run.

class GuidanceCall:
    """One denoiser call as a post-CFG guidance sees it: sampler state x, σ, the CFG result x̂0, the run's state
    dict, and `features(x)`, the extra truncated UNet pass (call it inside `differentiable()`)."""

    def __init__(self, args: dict, blocks: Sequence[int], run: dict):
        self._args = args
        self.blocks = [int(b) for b in blocks]
        self.run = run
        self.x: torch.Tensor = args["input"]
        self.x0: torch.Tensor = args["denoised"]
        self.sigma = float(torch.as_tensor(args["sigma"]).reshape(-1)[0])
        self.feature_calls = 0

    @property
    def model(self) -> Any:
        """The comfy BaseModel being sampled."""
        return self._args["model"]

    def differentiable(self) -> contextlib.AbstractContextManager:
        """Context for feature passes and backward: out of inference mode, grad on, weights aliased (no copy)."""
        return grad_enabled(self._args["model"])

    def features(self, x: torch.Tensor, blocks: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
        """Outputs of `blocks` (default: the patch's blocks; cond rows, in that order) for sampler state x at this
        call's σ: one UNet call on the positive conditioning, without this pack's K/V patches, stopped after the
        deepest block. Differentiable w.r.t. x when x requires grad (inside `differentiable()`)."""
        comfy = _comfy()
        blocks = self.blocks if blocks is None else [int(b) for b in blocks]
        store = FeatureStore()
        store.truncate = True
        mo = _estimator_options(self._args["model_options"], store, blocks)
        if not x.requires_grad and x.is_inference():
            with torch.inference_mode(False):
                x = x.detach().clone()
        cond = self._args["cond"]
        if not cond:
            raise HostError("feature guidance needs a positive conditioning")
        comfy.samplers.calc_cond_batch(self.model, [cond], x, self._args["sigma"], mo)
        self.feature_calls += 1
        if store.calls != 1:
            raise HostError(f"feature guidance expected one UNet call for the positive conditioning, ComfyUI made "
                            f"{store.calls} (area / timestep-ranged conditionings are not supported here)")
        out = []
        for b in blocks:
            f = store.features.get(b)
            if f is None:
                raise HostError(f"output block {b} did not run during the feature pass")
            if f.shape[0] != x.shape[0]:  # several cond entries batched together: average them like calc_cond_batch
                f = f.reshape(f.shape[0] // x.shape[0], x.shape[0], *f.shape[1:]).mean(0)
            out.append(f)
        return out


def _estimator_options(model_options: dict, store: FeatureStore, blocks: Sequence[int]) -> dict:
    """model_options for the feature pass: this pack's attn1 patches removed (chained patches kept), a truncating
    feature-capture wrapper added; nothing of the running options is mutated."""
    import comfy.patcher_extension as pe
    mo = dict(model_options)
    to = dict(mo.get("transformer_options", {}))
    wrappers = {k: dict(v) for k, v in to.get("wrappers", {}).items()}
    dm = dict(wrappers.get(pe.WrappersMP.DIFFUSION_MODEL, {}))
    dm["dragedit_guidance_features"] = [_FeatureWrapper(store, blocks)]
    wrappers[pe.WrappersMP.DIFFUSION_MODEL] = dm
    to["wrappers"] = wrappers
    mo["transformer_options"] = _without_attn1_patches(to)
    return mo


def _without_attn1_patches(transformer_options: dict) -> dict:
    """A copy of transformer_options without this pack's attn1 patches (patches chained below them are kept)."""
    to = dict(transformer_options)
    pr = to.get("patches_replace")
    if pr and "attn1" in pr:
        pr = dict(pr)
        attn1 = {}
        for key, p in pr["attn1"].items():
            while isinstance(p, _Attn1Patch):
                p = p.prev
            if p is not None:
                attn1[key] = p
        pr["attn1"] = attn1
        to["patches_replace"] = pr
    return to


class _GuidanceRun(_SharedHandle):
    """OUTER_SAMPLE wrapper: opens a fresh state dict for one sampling run and drops it when the run ends."""

    def __init__(self) -> None:
        self.state: Optional[dict] = None

    def __call__(self, executor, *args, **kwargs):
        prev, self.state = self.state, {}
        try:
            return executor(*args, **kwargs)
        finally:
            self.state = prev


class _PostCfgGuidance(_SharedHandle):
    """sampler_post_cfg_function: hands each call to `fn(GuidanceCall)`; fn returns the new x̂0 or None."""

    def __init__(self, fn: Callable[[GuidanceCall], Optional[torch.Tensor]], blocks: Sequence[int], run: _GuidanceRun):
        self.fn, self.blocks, self.run = fn, list(blocks), run

    def __call__(self, args: dict) -> torch.Tensor:
        state = self.run.state if self.run.state is not None else {}
        out = self.fn(GuidanceCall(args, self.blocks, state))
        return args["denoised"] if out is None else out


def patch_post_cfg_guidance(model: Any, fn: Callable[[GuidanceCall], Optional[torch.Tensor]],
                            blocks: Sequence[int]) -> Any:
    """Make every sampler of `model` (a clone) pass each CFG result x̂0 through fn(GuidanceCall) -> new x̂0 or None;
    GuidanceCall.features gives outputs of output blocks `blocks`. GuidanceCall.run lives for one sampling run."""
    _comfy()
    import comfy.patcher_extension as pe
    n = len(decoder_blocks(model))
    bad = [b for b in blocks if not 0 <= int(b) < n]
    if bad or not blocks:
        raise HostError(f"output block(s) {list(blocks)} invalid: this UNet has output blocks 0..{n - 1}")
    run = _GuidanceRun()
    model.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, f"dragedit_guidance_run_{id(run)}", run)
    model.set_model_sampler_post_cfg_function(_PostCfgGuidance(fn, blocks, run))
    return model


# --- added for SEGA ---
# Extra conditionings (SEGA / LEDITS++ edit concepts) evaluated in the SAME batched UNet call as cond and uncond,
# and a combine function that takes the place of the CFG step. ComfyUI does the cond processing itself: an
# OUTER_SAMPLE wrapper adds each extra CONDITIONING to the guider's conds under its own key before sampling starts,
# so prepare_sampling / process_conds (areas, masks, timestep ranges, model conds such as SDXL's pooled/size ADM)
# treat it exactly like positive and negative. A sampler_calc_cond_batch_function appends those processed conds to
# [cond, uncond] (calc_cond_batch batches every cond that fits into one UNet call) and keeps the extra x̂0's for the
# sampler_cfg_function, which hands everything to `combine`. Optional attn2 probes record the extra conds'
# cross-attention probabilities (LEDITS++ implicit masks). Per-run state (momentum, maps) lives in a dict that the
# wrapper opens and drops with each sampling run; the patch object itself is immutable and shared by clones.

def _calc_cond_batch_fn() -> Callable:
    comfy = _comfy()
    return comfy.samplers.calc_cond_batch


class CondGuidanceCall:
    """One denoiser call as a cond-guidance combine function sees it. Noise tensors are ComfyUI's cfg "noise"
    x − x̂0 = σ·ε̂ (batch B); `noise_extra[j]` belongs to extra conditioning j; `attn_maps[j]` is its cross-attention
    map [B, h, w] (probabilities summed over its tokens, averaged over heads and probed layers) or None."""

    def __init__(self, args: dict, noise_extra: list[torch.Tensor], run: dict, step: int, timestep: float,
                 attn_maps: list[Optional[torch.Tensor]], prev_cfg: Optional[Callable[[dict], torch.Tensor]]):
        self._args, self._prev_cfg = args, prev_cfg
        self.x: torch.Tensor = args["input"]
        self.sigma: torch.Tensor = torch.as_tensor(args["sigma"]).reshape(-1)
        self.cond_scale = float(args["cond_scale"])
        self.noise_cond: torch.Tensor = args["cond"]
        self.noise_uncond: torch.Tensor = args["uncond"]
        self.noise_extra = noise_extra
        self.run = run
        self.step = int(step)
        self.timestep = float(timestep)
        self.attn_maps = attn_maps

    def cfg(self) -> torch.Tensor:
        """The CFG noise the model would use without this guidance (a cfg function patched in before, or plain
        uncond + s·(cond − uncond))."""
        if self._prev_cfg is not None:
            return self._prev_cfg(self._args)
        return self.noise_uncond + (self.noise_cond - self.noise_uncond) * self.cond_scale


class _CondGuidancePatch(_SharedHandle):
    """OUTER_SAMPLE wrapper (`outer`), sampler_calc_cond_batch_function (`calc`) and sampler_cfg_function
    (`__call__`) of one cond guidance; immutable apart from `run`, the state of the sampling run in progress."""

    def __init__(self, key: str, conds: Sequence[Any], combine: Callable[[CondGuidanceCall], torch.Tensor], payload: Any,
                 drop_positive: bool, attn_tokens: Optional[Sequence[int]], prev_cfg: Optional[Callable],
                 prev_calc: Optional[Callable]):
        self.key, self.conds, self.combine, self.payload = key, list(conds), combine, payload
        self.drop_positive = bool(drop_positive)
        self.attn_tokens = list(attn_tokens) if attn_tokens is not None else None
        self.ctx_lens = [int(c[0][0].shape[1]) if c and c[0][0] is not None and c[0][0].ndim == 3 else 0
                         for c in self.conds]  # token counts, to fold ComfyUI's repeated contexts (LCM padding)
        self.prev_cfg, self.prev_calc = prev_cfg, prev_calc
        self.run: Optional[dict] = None

    def cond_key(self, j: int) -> str:
        return f"{self.key}_{j}"

    def outer(self, executor, *args, **kwargs):
        """Add the extra conds to the guider's conds (processed by ComfyUI with positive/negative) and open the
        run's state for the duration of this sampling run."""
        comfy = _comfy()
        import comfy.sampler_helpers as sh
        guider = executor.class_obj
        conds = getattr(guider, "conds", None)
        if not isinstance(conds, dict):
            raise HostError("edit concepts need ComfyUI's standard guider (KSampler, SamplerCustom or CFGGuider)")
        added = []
        for j, c in enumerate(self.conds):
            k = self.cond_key(j)
            conds[k] = [d.copy() for d in sh.convert_cond(c)]
            added.append(k)
        comfy.samplers.filter_registered_hooks_on_conds({k: conds[k] for k in added}, guider.model_options)
        prev, self.run = self.run, {"guider": guider, "keys": added}
        try:
            return executor(*args, **kwargs)
        finally:
            self.run = prev
            for k in added:
                conds.pop(k, None)

    def _state(self) -> dict:
        if self.run is None:
            raise HostError("edit concepts were evaluated outside a sampling run (a guider that skips ComfyUI's "
                            "OUTER_SAMPLE stage is not supported)")
        return self.run

    def calc(self, args: dict) -> list[torch.Tensor]:
        """Evaluate cond, uncond and every extra cond in one calc_cond_batch; return [cond, uncond] and keep the rest."""
        run = self._state()
        conds = list(args["conds"])
        if len(conds) < 2 or not conds[1]:
            raise HostError("edit concepts need the negative (unconditional) conditioning: connect a negative prompt "
                            "(an empty CLIP Text Encode) to the sampler or guider")
        guider = run["guider"]
        extra = [guider.conds.get(k) for k in run["keys"]]
        if any(e is None for e in extra):
            raise HostError("the edit concepts' conditionings were lost before sampling (another patch replaced the "
                            "guider's conds)")
        if self.drop_positive:
            conds[0] = None
        run["attn"] = {} if self.attn_tokens is not None else None
        all_conds = conds[:2] + extra
        if self.prev_calc is not None:
            out = self.prev_calc(dict(args, conds=all_conds))
        else:
            out = _calc_cond_batch_fn()(args["model"], all_conds, args["input"], args["sigma"], args["model_options"])
        run["extra_x0"] = list(out[2:2 + len(extra)])
        first = out[1] if self.drop_positive else out[0]
        return [first, out[1]]

    def __call__(self, args: dict) -> torch.Tensor:
        run = self._state()
        extra_x0 = run.pop("extra_x0", None)
        if extra_x0 is None:
            raise HostError("the edit concepts' predictions are missing at the CFG step: this guider does not use "
                            "ComfyUI's standard CFG path (use KSampler, SamplerCustom or CFGGuider)")
        x = args["input"]
        sigma = torch.as_tensor(args["sigma"]).reshape(-1)
        mo = args.get("model_options") or {}
        grid = (mo.get("transformer_options") or {}).get("sample_sigmas")
        if grid is None:
            raise HostError("this ComfyUI does not report the run's sigmas (transformer_options['sample_sigmas'])")
        g = torch.as_tensor(grid).detach().to("cpu", torch.float64).reshape(-1)
        step = int(torch.argmin((g - float(sigma[0])).abs()).item())
        ts = float(model_sampling(args["model"]).timestep(sigma[:1].float().cpu())[0])
        maps: list[Optional[torch.Tensor]] = [None] * len(extra_x0)
        rec = run.get("attn")
        if rec:
            for j, (s, n) in rec.items():
                if j < len(maps) and n > 0:
                    maps[j] = s / n
        call = CondGuidanceCall(args, [x - e for e in extra_x0], run, step, ts, maps, self.prev_cfg)
        return self.combine(call)


class _Attn2Probe(_SharedHandle):
    """attn2 replace patch: plain cross-attention (or the patch that was there), plus, for rows of extra conds, the
    attention probabilities of their tokens recorded into the owner's run state."""

    def __init__(self, owner: _CondGuidancePatch, layer: AttnLayer, prev: Optional[Callable]):
        self.owner, self.layer, self.prev = owner, layer, prev

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        run = self.owner.run
        rec = run.get("attn") if run is not None else None
        if rec is not None:
            self._record(rec, q, k, extra)
        if self.prev is not None:
            return self.prev(q, k, v, extra)
        from comfy.ldm.modules import attention as A
        return A.optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"))

    def _record(self, rec: dict, q: torch.Tensor, k: torch.Tensor, extra: dict) -> None:
        heads = int(extra["n_heads"])
        tokens = self.owner.attn_tokens or []
        shape = extra.get("original_shape") or [0, 0, 1, q.shape[1]]
        h, w = self.layer.tokens(shape[-2:])
        if h * w != q.shape[1]:
            return
        for idx, rows in _chunks(extra, q.shape[0]):
            j = idx - 2
            if j < 0 or j >= len(tokens):
                continue
            qj, kj = q[rows].float(), k[rows].float()
            n, lq, dim = qj.shape
            dh = dim // heads
            qh = qj.reshape(n, lq, heads, dh).transpose(1, 2)
            kh = kj.reshape(n, kj.shape[1], heads, dh).transpose(1, 2)
            probs = torch.softmax(qh @ kh.transpose(-1, -2) * dh ** -0.5, dim=-1)  # [n, heads, HW, T]
            t_own = self.owner.ctx_lens[j]
            if t_own and probs.shape[-1] != t_own and probs.shape[-1] % t_own == 0:
                # batched with a longer context: ComfyUI repeated this one's tokens; fold the copies back together
                probs = probs.reshape(*probs.shape[:-1], probs.shape[-1] // t_own, t_own).sum(-2)
            lo, hi = concept_token_range(probs.shape[-1], int(tokens[j] or 0), getattr(self.owner, "attn_start", 1))
            m = probs[..., lo:hi].sum(-1).sum(1).reshape(n, h, w)  # summed over heads; divided by the count
            s, c = rec.get(j, (0.0, 0))
            rec[j] = (s + m, c + heads)


def cond_guidance_patch(model: Any, key: str) -> Optional[_CondGuidancePatch]:
    """The cond guidance installed on `model` under `key`, or None."""
    _comfy()
    import comfy.patcher_extension as pe
    for w in model.get_wrappers(pe.WrappersMP.OUTER_SAMPLE, f"dragedit_cond_guidance_{key}"):
        owner = getattr(w, "__self__", None)
        if isinstance(owner, _CondGuidancePatch):
            return owner
    return None


def cond_guidance_payload(model: Any, key: str) -> Any:
    """The payload object given to `patch_cond_guidance` for `key` on this model (for chaining), or None."""
    p = cond_guidance_patch(model, key)
    return None if p is None else p.payload


def patch_cond_guidance(model: Any, key: str, conds: Sequence[Any], combine: Callable[[CondGuidanceCall], torch.Tensor],
                        *, payload: Any = None, drop_positive: bool = False,
                        attn_layers: Optional[Sequence[AttnLayer]] = None,
                        attn_tokens: Optional[Sequence[int]] = None) -> Any:
    """Make every sampler of `model` (a clone) evaluate the extra CONDITIONINGs `conds` in the same batched UNet
    call as cond and uncond and return combine(CondGuidanceCall) (a cfg "noise" x − x̂0) as the CFG result. A guidance
    already installed under `key` is replaced (chained cfg / calc functions of others are kept). drop_positive:
    the positive is not evaluated (cond := uncond). attn_layers + attn_tokens: record the extra conds' cross-attention
    maps on those layers, summed over each one's first attn_tokens[j] tokens after the start token, if the encoder
    has one (`text_start_tokens`; 0 = all but the start token and the last, as diffusers' LEDITS++ does: its token
    count includes the padding; `concept_token_range`)."""
    _comfy()
    import comfy.patcher_extension as pe
    old = cond_guidance_patch(model, key)
    mo = model.model_options
    prev_cfg = mo.get("sampler_cfg_function")
    if old is not None and prev_cfg is old:
        prev_cfg = old.prev_cfg
    prev_calc = mo.get("sampler_calc_cond_batch_function")
    if old is not None and getattr(prev_calc, "__self__", None) is old:
        prev_calc = old.prev_calc
    if attn_layers and attn_tokens is None:
        attn_tokens = [0] * len(conds)
    patch = _CondGuidancePatch(key, conds, combine, payload, drop_positive, attn_tokens if attn_layers else None,
                               prev_cfg, prev_calc)
    patch.attn_start = text_start_tokens(model)  # where the concept's words begin in its context
    wkey = f"dragedit_cond_guidance_{key}"
    model.remove_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, wkey)
    model.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, wkey, patch.outer)
    model.set_model_sampler_calc_cond_batch_function(patch.calc)
    model.set_model_sampler_cfg_function(patch, disable_cfg1_optimization=True)
    to = mo.setdefault("transformer_options", {})
    rep = to.get("patches_replace", {}).get("attn2", {})
    for layer in (attn_layers or []):
        cur = rep.get(layer.key) or rep.get((layer.part, layer.number))
        if isinstance(cur, _Attn2Probe) and cur.owner.key == key:
            cur = cur.prev
        model.set_model_attn2_replace(_Attn2Probe(patch, layer, cur), layer.part, layer.number, layer.block_index)
    if old is not None and old.attn_tokens is not None and not attn_layers:  # drop the old probes
        rep = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
        for lk, cur in list(rep.items()):
            if isinstance(cur, _Attn2Probe) and cur.owner.key == key:
                if cur.prev is None:
                    rep.pop(lk)
                else:
                    rep[lk] = cur.prev
    return model


def sample_with_sampler(model: Any, positive: Any, negative: Any, cfg: float, sampler: Any, sigmas: torch.Tensor,
                        samples: torch.Tensor, seed: int = 0,
                        callback: Optional[Callable[[int, torch.Tensor, torch.Tensor, int], None]] = None) -> torch.Tensor:
    """Stock SamplerCustom without added noise: sample LATENT `samples` with a SAMPLER on `sigmas`; returns LATENT
    samples. callback(step, x̂0, x, total) per step."""
    comfy = _comfy()
    noise = torch.zeros_like(samples)
    negative = negative if negative is not None else []
    return comfy.sample.sample_custom(model, noise, float(cfg), sampler, sigmas, positive, negative, samples,
                                      noise_mask=None, callback=callback, disable_pbar=True, seed=seed)
