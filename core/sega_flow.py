"""SEGA on the velocity of flow-matching DiTs (FLUX, SD3, Qwen-Image), as diffusers' community FLUX semantic
guidance pipeline (examples/community/pipeline_flux_semantic_guidance.py) computes it, in plain torch.

With velocities v (ComfyUI's cfg "noise" x − x̂0 is σ·v for a CONST model), at step i of a run of T steps:
- "simple SEGA" (guidance-distilled FLUX-dev: no negative, or cfg 1): base = v_p, reference r = v_p;
  true CFG (cfg > 1 with a negative): base = v_u + s_g·(v_p − v_u), reference r = v_u;
- ψ_c = ±s_e,c·(v_c − r), kept where |ψ_c| ≥ the λ_c-quantile of |ψ_c| over the C·p·p values of each image token
  (the pipeline thresholds its packed [B, tokens, C·p·p] latents per token: `token_quantile_threshold`);
- warm-up, weights, renormalisation and momentum as SEGA (core/sega.sega_term), but only inside the pipeline's edit
  window min_c(warm-up_c) ≤ i ≤ max cool-down (T when a concept never cools down): outside it the concepts are not
  evaluated and the momentum ν neither acts nor builds up (the UNet SEGA pipeline builds ν from step 0);
- ṽ = base + γ.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from .sega import SegaConcept, SegaState, _quantile_last, sega_term


def token_quantile_threshold(psi: torch.Tensor, threshold: float, patch: int = 2) -> torch.Tensor:
    """Keep ψ where |ψ| ≥ the λ-quantile of |ψ| over the values of its image token (C channels × patch × patch
    latent cells; a latent side that is not a whole number of patches is zero-padded, as the DiT pads it), else 0."""
    p = max(int(patch), 1)
    h, w = psi.shape[-2:]
    ph, pw = (-h) % p, (-w) % p
    x = torch.nn.functional.pad(psi, (0, pw, 0, ph)) if (ph or pw) else psi
    b, c = x.shape[:2]
    lead = tuple(x.shape[2:-2])
    hp, wp = x.shape[-2] // p, x.shape[-1] // p
    t = x.abs().reshape(b, c, *lead, hp, p, wp, p)
    n_lead = len(lead)
    perm = [0, *range(2, 2 + n_lead), 2 + n_lead, 4 + n_lead, 1, 3 + n_lead, 5 + n_lead]
    tokens = t.permute(perm).reshape(b, *lead, hp, wp, c * p * p)
    q = _quantile_last(tokens, threshold)                                   # [B, *lead, hp, wp]
    q = q.unsqueeze(1).repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)[..., :h, :w]
    return torch.where(psi.abs() >= q, psi, torch.zeros_like(psi))


def edit_window(step: int, steps: int, concepts: Sequence[SegaConcept]) -> bool:
    """True when step i lies in the pipeline's edit window min warm-up ≤ i ≤ max cool-down (capped at `steps`)."""
    if not concepts:
        return False
    lo = min(int(c.warmup) for c in concepts)
    cds = [c.cooldown for c in concepts]
    hi = int(steps) if any(cd is None for cd in cds) else min(max(int(cd) for cd in cds), int(steps))
    return lo <= int(step) <= hi


def flow_sega_term(step: int, steps: int, v_ref: torch.Tensor, v_concepts: Sequence[torch.Tensor],
                   concepts: Sequence[SegaConcept], state: SegaState, momentum_scale: float = 0.1,
                   momentum_beta: float = 0.4, patch: int = 2) -> torch.Tensor:
    """The FLUX pipeline's edit term γ (velocity units) at step i of a `steps`-step run: zero outside the edit window,
    else SEGA's term on ψ_c = ±s_e·(v_c − v_ref) with per-token thresholds; updates `state` inside the window."""
    if not edit_window(step, steps, concepts):
        return torch.zeros_like(v_ref)
    fn = functools.partial(token_quantile_threshold, patch=int(patch))
    return sega_term(step, v_ref, v_concepts, concepts, state, momentum_scale, momentum_beta, threshold_fn=fn)


def flow_sega_velocity(step: int, steps: int, v_prompt: torch.Tensor, v_concepts: Sequence[torch.Tensor],
                       concepts: Sequence[SegaConcept], state: SegaState, *, v_uncond: torch.Tensor | None = None,
                       guidance_scale: float = 1.0, momentum_scale: float = 0.1, momentum_beta: float = 0.4,
                       patch: int = 2) -> torch.Tensor:
    """The guided velocity ṽ of the FLUX semantic guidance pipeline: simple SEGA without `v_uncond` (or at
    guidance_scale ≤ 1), true CFG with it (see the module docstring)."""
    true_cfg = v_uncond is not None and float(guidance_scale) > 1.0
    if true_cfg:
        base, ref = v_uncond + float(guidance_scale) * (v_prompt - v_uncond), v_uncond
    else:
        base, ref = v_prompt, v_prompt
    return base + flow_sega_term(step, steps, ref, v_concepts, concepts, state, momentum_scale, momentum_beta, patch)
