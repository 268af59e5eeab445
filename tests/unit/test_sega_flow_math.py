"""core/sega_flow.py in plain torch: the per-token threshold against an explicit packing as diffusers' FLUX pipeline
does it, padding and 5-D latents, the edit window, and the two bases of the guided velocity."""
from __future__ import annotations

import torch

from core import sega, sega_flow  # noqa: E402

Concept = sega.SegaConcept


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_token_threshold_is_the_packed_per_token_quantile():
    psi = rnd(2, 4, 6, 8)
    got = sega_flow.token_quantile_threshold(psi, 0.75, patch=2)
    packed = psi.view(2, 4, 3, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 12, 16)   # FluxPipeline._pack_latents
    q = torch.quantile(packed.abs(), 0.75, dim=2)
    kept = torch.where(packed.abs() >= q[:, :, None], packed, torch.zeros_like(packed))
    want = kept.view(2, 3, 4, 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(2, 4, 6, 8)
    assert torch.equal(got, want)
    assert int((got != 0).sum()) == 2 * 12 * 4                  # 4 of 16 values per token


def test_token_threshold_pads_partial_patches_and_takes_5d_latents():
    psi = rnd(1, 3, 5, 5, seed=1)
    got = sega_flow.token_quantile_threshold(psi, 0.5, patch=2)
    assert got.shape == psi.shape
    corner = psi[0, :, 4:, 4:]                                  # the last token: one real cell, three padded
    q = torch.quantile(torch.cat([corner.abs().reshape(-1), torch.zeros(9, dtype=psi.dtype)]), 0.5)
    assert torch.equal(got[0, :, 4:, 4:], torch.where(corner.abs() >= q, corner, torch.zeros_like(corner)))
    v5 = rnd(1, 4, 1, 4, 4, seed=2)
    assert torch.equal(sega_flow.token_quantile_threshold(v5, 0.75)[:, :, 0],
                       sega_flow.token_quantile_threshold(v5[:, :, 0], 0.75))


def test_edit_window():
    cs = [Concept(warmup=2, cooldown=5), Concept(warmup=3, cooldown=7)]
    assert [sega_flow.edit_window(i, 6, cs) for i in range(8)] == [False, False, True, True, True, True, True, False]
    never = [Concept(warmup=1, cooldown=None), Concept(warmup=4, cooldown=3)]
    assert [sega_flow.edit_window(i, 4, never) for i in range(6)] == [False, True, True, True, True, False]


def test_guided_velocity_simple_sega_and_true_cfg():
    vp, vu, vc = rnd(1, 4, 4, 4, seed=3), rnd(1, 4, 4, 4, seed=4), rnd(1, 4, 4, 4, seed=5)
    c = Concept(scale=2.0, threshold=0.0, warmup=0)              # threshold 0 keeps every value
    simple = sega_flow.flow_sega_velocity(0, 4, vp, [vc], [c], sega.SegaState(), momentum_scale=0.0)
    assert torch.allclose(simple, vp + 2.0 * (vc - vp))
    true_cfg = sega_flow.flow_sega_velocity(0, 4, vp, [vc], [c], sega.SegaState(), v_uncond=vu, guidance_scale=3.0,
                                            momentum_scale=0.0)
    assert torch.allclose(true_cfg, vu + 3.0 * (vp - vu) + 2.0 * (vc - vu))
    late = Concept(scale=2.0, threshold=0.0, warmup=2)
    state = sega.SegaState()
    assert torch.equal(sega_flow.flow_sega_velocity(1, 4, vp, [vc], [late], state), vp)
    assert state.momentum is None                               # no momentum before the edit window
