"""SEGA semantic guidance (Brack et al., arXiv 2301.12247) and the LEDITS++ variant (arXiv 2311.16711), in plain torch.

Everything works on noise predictions ε (eps units). ComfyUI's cfg functions see x0 or "noise" x − x0 = σ·ε:
convert with `to_eps` / `from_eps` first, since thresholds are scale-free but the momentum ν mixes steps of
different σ and must live in ε units.

SEGA (diffusers 0.39 `SemanticStableDiffusionPipeline`), at step i for concept c:
    ψ_c = s_e,c·(ε_c − ε_uncond), negated for removal; kept where |ψ_c| ≥ quantile_λc(|ψ_c| over H×W) per
    (sample, channel), else 0;
    γ = Σ_c max(w_c, 0)·ψ_c + s_m·ν;  ν ← β_m·ν + (1−β_m)·γ;  ε̃ = ε_u + s_g·(ε_p − ε_u) + γ  once every concept is
    past its warm-up. Concepts before warm-up still feed γ and ν (momentum accumulates); a concept at or past
    its cool-down contributes 0 (but ν keeps acting). While only some concepts are warmed up, diffusers adds
    Σ_{c warm} (w_c/Σ_warm w)·ψ_c instead (weights renormalised, no momentum).
Deliberate differences from diffusers, both for degenerate settings only: a renormalisation over warmed-up
concepts whose weights sum to 0 gives 0 (diffusers divides 0/0 and returns NaN), and the formula is applied for
any guidance_scale (diffusers skips all guidance, SEGA included, when guidance_scale ≤ 1).

LEDITS++ (diffusers `LEditsPPPipelineStableDiffusion.__call__`): no target-prompt CFG and no momentum,
ε̃ = ε_u + Σ_c M_c ⊙ ψ_c over concepts with warmup ≤ i < cooldown (weights are not used), where M² keeps
positions whose channel-sum Σ_ch|ψ_c| reaches its λ-quantile, M¹ is the concept's cross-attention mask
(`attention_mask`), and with both: M = M¹·M² while t ≤ 800, M¹ alone for t > 800 (`noise_mask_active`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "to_eps", "from_eps", "SegaConcept", "SegaState", "quantile_threshold", "noise_quantile_mask",
    "sega_term", "sega_guidance", "attention_mask", "ledits_pp_term", "ledits_pp_guidance", "step_index_of",
]

_QUANTILE_MAX_NUMEL = 1 << 24  # torch.quantile refuses larger inputs


def _sigma_view(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor | float:
    """σ broadcast against x: a float, or a [B] / scalar tensor reshaped to [B, 1, 1, ...]."""
    if isinstance(sigma, torch.Tensor):
        s = sigma.to(device=x.device, dtype=x.dtype)
        return s.reshape(-1, *([1] * (x.ndim - 1))) if s.ndim > 0 and s.numel() > 1 else s.reshape(())
    return float(sigma)


def to_eps(x: torch.Tensor, x0: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """ε̂ = (x − x̂0)/σ from the sampler state x and the denoiser's x̂0 (σ a float, scalar or [B] tensor)."""
    return (x - x0) / _sigma_view(sigma, x)


def from_eps(x: torch.Tensor, eps: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """x̂0 = x − σ·ε̂ (inverse of `to_eps`); ComfyUI's cfg "noise" is x − x̂0 = σ·ε̂."""
    return x - eps * _sigma_view(sigma, x)


@dataclass(frozen=True)
class SegaConcept:
    """One edit concept (diffusers' SEGA defaults): scale s_e, threshold λ ∈ [0, 1] (0.9 keeps the top 10 %),
    reverse = remove (negate ψ), warmup/cooldown step indices (cooldown None = never), weight w (< 0 acts as 0)."""

    scale: float = 5.0
    threshold: float = 0.9
    reverse: bool = False
    warmup: int = 10
    cooldown: Optional[int] = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= float(self.threshold) <= 1.0) or math.isnan(float(self.threshold)):
            raise ValueError(f"SEGA threshold must be a quantile in [0, 1], got {self.threshold}")
        if int(self.warmup) < 0:
            raise ValueError(f"SEGA warmup must be ≥ 0 steps, got {self.warmup}")
        if self.cooldown is not None and int(self.cooldown) < 0:
            raise ValueError(f"SEGA cooldown must be ≥ 0 steps or None, got {self.cooldown}")
        if not math.isfinite(float(self.scale)) or not math.isfinite(float(self.weight)):
            raise ValueError(f"SEGA scale and weight must be finite, got {self.scale}, {self.weight}")

    def active(self, step: int) -> bool:
        """Not cooled down at this step (warm-up is handled separately: it still feeds the momentum)."""
        return self.cooldown is None or step < int(self.cooldown)


class SegaState:
    """The momentum ν of one sampling run (one per run, never shared); updated once per step index."""
    # A second call for the same step (multi-evaluation sampler, retry) recomputes from the ν that step started
    # with; going back to an earlier step raises.

    def __init__(self) -> None:
        self.momentum: Optional[torch.Tensor] = None  # ν after the last step seen
        self.step: int = -1
        self._before: Optional[torch.Tensor] = None  # ν at the start of `step`

    def momentum_at(self, step: int, like: torch.Tensor) -> torch.Tensor:
        """ν to use at `step` (zeros at the first step)."""
        step = int(step)
        if step < self.step:
            raise ValueError(f"SegaState went back from step {self.step} to {step}: use a new SegaState per run")
        if step > self.step:
            self._before = self.momentum
        nu = self._before
        if nu is None:
            return torch.zeros_like(like)
        if nu.shape != like.shape:
            raise ValueError(f"SEGA momentum has shape {tuple(nu.shape)} but this step's ε has {tuple(like.shape)}: "
                             "the batch changed within one run; use a new SegaState")
        return nu.to(device=like.device, dtype=like.dtype)

    def update(self, step: int, momentum: torch.Tensor) -> None:
        """Record ν after `step`."""
        self.step = int(step)
        self.momentum = momentum


def _quantile_last(v: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile over the last dim (linear interpolation, as diffusers; half types go through float32
    and back, as diffusers does), chunked when large."""
    v32 = v if v.dtype in (torch.float32, torch.float64) else v.float()
    rows = v32.reshape(-1, v32.shape[-1])
    if rows.numel() <= _QUANTILE_MAX_NUMEL:
        out = torch.quantile(rows, float(q), dim=-1)
    else:
        per = max(1, _QUANTILE_MAX_NUMEL // rows.shape[-1])
        out = torch.cat([torch.quantile(r, float(q), dim=-1) for r in rows.split(per)])
    return out.reshape(v32.shape[:-1]).to(v.dtype)


def quantile_threshold(psi: torch.Tensor, threshold: float) -> torch.Tensor:
    """SEGA's threshold: keep ψ where |ψ| ≥ the λ-quantile of |ψ| over the spatial positions of each
    (sample, channel), else 0 (λ = 0.9 keeps about 10 % of positions per channel)."""
    a = psi.abs()
    q = _quantile_last(a.flatten(start_dim=2), threshold)
    q = q.reshape(*q.shape, *([1] * (psi.ndim - 2)))
    return torch.where(a >= q, psi, torch.zeros_like(psi))


def noise_quantile_mask(psi: torch.Tensor, threshold: float) -> torch.Tensor:
    """LEDITS++ M²: 1 where Σ_channels|ψ| ≥ its λ-quantile over positions (per sample), else 0; shaped like ψ."""
    s = psi.abs().sum(dim=1, keepdim=True)
    q = _quantile_last(s.flatten(start_dim=2), threshold)
    q = q.reshape(*q.shape, *([1] * (psi.ndim - 2)))
    return (s >= q).to(psi.dtype).expand_as(psi)


def _check_eps(eps_uncond: torch.Tensor, eps_concepts: Sequence[torch.Tensor], concepts: Sequence[SegaConcept],
               extra: Sequence[torch.Tensor] = ()) -> None:
    if len(eps_concepts) != len(concepts):
        raise ValueError(f"got {len(eps_concepts)} concept predictions for {len(concepts)} concepts")
    if eps_uncond.ndim < 3:
        raise ValueError(f"ε must be [B, C, H, W(, ...)], got shape {tuple(eps_uncond.shape)}")
    for e in list(eps_concepts) + list(extra):
        if e.shape != eps_uncond.shape:
            raise ValueError(f"all ε predictions must share the shape {tuple(eps_uncond.shape)}, got {tuple(e.shape)}")


def user_mask_at(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The user's mask [H, W] (or [1, H, W]) area-resized to the spatial size of `like` [B, C, h, w], as [1, 1, h, w]
    in its dtype and device (a cell's value = the share of it that is masked)."""
    m = mask.float().reshape(1, 1, *mask.shape[-2:])
    hw = tuple(like.shape[-2:])
    if tuple(m.shape[-2:]) != hw:
        m = torch.nn.functional.interpolate(m, size=hw, mode="area")
    return m.to(like.device, like.dtype)


def masked_concept(eps_c: torch.Tensor, eps_ref: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """ε_c with the concept confined to the user's mask M: ε_ref + M ⊙ (ε_c − ε_ref), so that ψ_c = ±s_e·M ⊙ (ε_c − ε_ref)
    before any threshold (diffusers LEDITS++'s `user_mask`); `mask` None gives ε_c back."""
    if mask is None:
        return eps_c
    return eps_ref + user_mask_at(mask, eps_c) * (eps_c - eps_ref)


def _psi(eps_c: torch.Tensor, eps_uncond: torch.Tensor, concept: SegaConcept) -> torch.Tensor:
    """ψ_c = ±s_e·(ε_c − ε_uncond) (negated for removal), before thresholding."""
    d = eps_c - eps_uncond
    if concept.reverse:
        d = d * -1
    return d * float(concept.scale)


def sega_term(step: int, eps_uncond: torch.Tensor, eps_concepts: Sequence[torch.Tensor],
              concepts: Sequence[SegaConcept], state: SegaState, momentum_scale: float = 0.1,
              momentum_beta: float = 0.4,
              threshold_fn: Callable[[torch.Tensor, float], torch.Tensor] = quantile_threshold) -> torch.Tensor:
    """SEGA's edit term γ at step i, added to the CFG estimate (diffusers' warm-up, momentum, renormalisation
    and cool-down semantics, see the module docstring); updates `state`. `threshold_fn(ψ, λ)` keeps the strongest
    part of ψ (per channel over positions here; per image token for FLUX: core/sega_flow.py)."""
    _check_eps(eps_uncond, eps_concepts, concepts)
    n = len(concepts)
    if n == 0:
        return torch.zeros_like(eps_uncond)
    step = int(step)
    psis: list[torch.Tensor] = []
    weights: list[float] = []
    warm: list[int] = []
    for c, (eps_c, cc) in enumerate(zip(eps_concepts, concepts)):
        if step >= int(cc.warmup):
            warm.append(c)
        if not cc.active(step):
            psis.append(torch.zeros_like(eps_uncond))
            weights.append(0.0)
            continue
        psis.append(threshold_fn(_psi(eps_c, eps_uncond, cc), cc.threshold))
        weights.append(max(float(cc.weight), 0.0))

    applied = torch.zeros_like(eps_uncond)
    if 0 < len(warm) < n:  # some concepts warmed up: their renormalised mix, no momentum
        total = sum(weights[c] for c in warm)
        if total > 0.0:
            for c in warm:
                applied = applied + psis[c] * (weights[c] / total)

    gamma = torch.zeros_like(eps_uncond)
    for w, p in zip(weights, psis):
        gamma = gamma + p * w
    nu = state.momentum_at(step, eps_uncond)
    gamma = gamma + float(momentum_scale) * nu
    state.update(step, float(momentum_beta) * nu + (1.0 - float(momentum_beta)) * gamma)
    if len(warm) == n:
        applied = gamma
    return applied


def sega_guidance(step: int, eps_uncond: torch.Tensor, eps_prompt: torch.Tensor, eps_concepts: Sequence[torch.Tensor],
                  concepts: Sequence[SegaConcept], state: SegaState, guidance_scale: float,
                  momentum_scale: float = 0.1, momentum_beta: float = 0.4) -> torch.Tensor:
    """SEGA's guided noise estimate ε̃ = ε_uncond + s_g·(ε_prompt − ε_uncond) + γ (γ from `sega_term`)."""
    _check_eps(eps_uncond, eps_concepts, concepts, (eps_prompt,))
    gamma = sega_term(step, eps_uncond, eps_concepts, concepts, state, momentum_scale, momentum_beta)
    return eps_uncond + (float(guidance_scale) * (eps_prompt - eps_uncond) + gamma)


def _smoothing_kernel(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """LEDITS++'s 3×3 smoothing kernel: ∝ exp(−((d − 1)/(2·0.5))²) per axis, normalised (as diffusers writes it)."""
    d = torch.arange(3, dtype=torch.float32)
    k1 = torch.exp(-(((d - 1.0) / (2 * 0.5)) ** 2)) / (0.5 * math.sqrt(2 * math.pi))
    k = k1[:, None] * k1[None, :]
    return (k / k.sum()).view(1, 1, 3, 3).to(device=device, dtype=dtype)


def attention_mask(attn_map: torch.Tensor, threshold: float, size: Sequence[int], channels: int = 4) -> torch.Tensor:
    """LEDITS++ implicit mask M¹ [B, channels, H, W] (0/1) from a concept's cross-attention map [B, h, w]:
    reflect-pad, 3×3 smooth, keep ≥ λ-quantile, nearest-upsample to `size` = latent (H, W)."""
    # attn_map: summed over the concept's tokens (SOT excluded), averaged over heads and the 16² layers.
    if attn_map.ndim != 3:
        raise ValueError(f"attention map must be [B, h, w], got shape {tuple(attn_map.shape)}")
    m = F.pad(attn_map.unsqueeze(1), (1, 1, 1, 1), mode="reflect")
    m = F.conv2d(m, _smoothing_kernel(m.dtype, m.device)).squeeze(1)
    q = _quantile_last(m.flatten(start_dim=1), threshold)
    mask = (m >= q[:, None, None]).to(attn_map.dtype)
    mask = F.interpolate(mask.unsqueeze(1), size=tuple(int(s) for s in size))
    return mask.repeat(1, int(channels), 1, 1)


def ledits_pp_term(step: int, eps_uncond: torch.Tensor, eps_concepts: Sequence[torch.Tensor],
                   concepts: Sequence[SegaConcept], attn_masks: Optional[Sequence[Optional[torch.Tensor]]] = None,
                   use_intersect_mask: bool = True, noise_mask_active: bool = True,
                   user_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LEDITS++ edit term Σ_c M_c ⊙ ψ_c (no momentum; weights unused); M per the module docstring."""
    # attn_masks[c] = M¹ (0/1, broadcastable to ε, e.g. from `attention_mask`) or None. With M¹: M = M¹·M² if
    # use_intersect_mask and noise_mask_active (diffusers: t ≤ 800), else M¹. Without M¹: M = M² at every
    # step. user_mask multiplies ψ first.
    _check_eps(eps_uncond, eps_concepts, concepts)
    if attn_masks is not None and len(attn_masks) != len(concepts):
        raise ValueError(f"got {len(attn_masks)} attention masks for {len(concepts)} concepts")
    step = int(step)
    out = torch.zeros_like(eps_uncond)
    for c, (eps_c, cc) in enumerate(zip(eps_concepts, concepts)):
        if step < int(cc.warmup) or not cc.active(step):
            continue
        psi = _psi(eps_c, eps_uncond, cc)
        if user_mask is not None:
            psi = psi * user_mask.to(device=psi.device, dtype=psi.dtype)
        m1 = None if attn_masks is None else attn_masks[c]
        if m1 is not None:
            m1 = m1.to(device=psi.device, dtype=psi.dtype)
            if use_intersect_mask and noise_mask_active:
                psi = psi * (noise_quantile_mask(psi, cc.threshold) * m1)
            else:
                psi = psi * m1
        else:
            psi = torch.where(noise_quantile_mask(psi, cc.threshold) > 0, psi, torch.zeros_like(psi))
        out = out + psi
    return out


def ledits_pp_guidance(step: int, eps_uncond: torch.Tensor, eps_concepts: Sequence[torch.Tensor],
                       concepts: Sequence[SegaConcept], attn_masks: Optional[Sequence[Optional[torch.Tensor]]] = None,
                       use_intersect_mask: bool = True, noise_mask_active: bool = True,
                       user_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LEDITS++ guided estimate ε̃ = ε_uncond + Σ_c M_c ⊙ ψ_c (no target-prompt CFG); see `ledits_pp_term`."""
    return eps_uncond + ledits_pp_term(step, eps_uncond, eps_concepts, concepts, attn_masks, use_intersect_mask,
                                       noise_mask_active, user_mask)


def step_index_of(sigma: float | torch.Tensor, sample_sigmas: torch.Tensor) -> int:
    """Index i of the step whose σ_i is nearest to `sigma` in the run's schedule (ComfyUI: transformer_options
    ["sample_sigmas"]), to count warm-up / cool-down steps inside a cfg function."""
    s = float(torch.as_tensor(sigma).reshape(-1)[0])
    grid = sample_sigmas.detach().to("cpu", torch.float64).reshape(-1)
    if grid.numel() == 0:
        raise ValueError("empty sample_sigmas")
    return int(torch.argmin((grid - s).abs()).item())
