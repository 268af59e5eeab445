"""SEGA / LEDITS++ guidance math (core/sega.py): hand computations (diffusers' pipelines replayed:
tests/parity/test_sega_parity.py)."""
from __future__ import annotations

import math

import pytest
import torch

from core import sega  # noqa: E402
Concept = sega.SegaConcept


def rnd(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


# ----------------------------------------------------------------------------------------- eps helpers

def test_to_eps_from_eps_roundtrip_with_batched_sigma():
    x, x0 = rnd(3, 4, 5, 5, seed=1), rnd(3, 4, 5, 5, seed=2)
    sig = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    eps = sega.to_eps(x, x0, sig)
    torch.testing.assert_close(eps[1], (x[1] - x0[1]) / 2.0)
    torch.testing.assert_close(sega.from_eps(x, eps, sig), x0)
    torch.testing.assert_close(sega.to_eps(x, x0, 2.0), (x - x0) / 2.0)
    torch.testing.assert_close(sega.from_eps(x, eps, torch.tensor(3.0)), x - 3.0 * eps)


# ----------------------------------------------------------------------------------------- threshold

@pytest.mark.parametrize("lam", [0.5, 0.9, 0.95, 0.7])
def test_threshold_keeps_the_stated_fraction_per_channel(lam):
    """Keeps |ψ| ≥ λ-quantile per (sample, channel): N − ⌈λ(N−1)⌉ positions (torch's linear quantile), the largest."""
    psi = rnd(2, 4, 10, 10, seed=3)
    out = sega.quantile_threshold(psi, lam)
    n = 100
    want = n - math.ceil(lam * (n - 1))
    assert abs(want / n - (1 - lam)) < 0.011
    for b in range(2):
        for c in range(4):
            kept = out[b, c] != 0
            assert int(kept.sum()) == want
            top = psi[b, c].abs().flatten().topk(want).indices
            assert set(top.tolist()) == set(kept.flatten().nonzero().flatten().tolist())
            torch.testing.assert_close(out[b, c][kept], psi[b, c][kept])


def test_noise_quantile_mask_is_per_position_over_channels():
    psi = rnd(2, 4, 10, 10, seed=4)
    m = sega.noise_quantile_mask(psi, 0.9)
    assert m.shape == psi.shape and torch.equal(m[:, :1].expand_as(m), m)
    s = psi.abs().sum(1)
    for b in range(2):
        kept = m[b, 0] > 0
        assert int(kept.sum()) == 10
        assert s[b][kept].min() > s[b][~kept].max()


# ------------------------------------------------------------------------------------------- SEGA term

def _hand_step(psi_list, weights, nu, s_m, beta):
    g = sum(w * p for w, p in zip(weights, psi_list)) + s_m * nu
    return g, beta * nu + (1 - beta) * g


def test_momentum_recurrence_by_hand_over_three_steps():
    """γ_i = w·ψ_i + s_m ν_i, ν_{i+1} = β ν_i + (1−β) γ_i, with λ = 0 (keep everything) and warm-up 0."""
    c = Concept(scale=2.5, threshold=0.0, warmup=0, weight=0.8)
    s_m, beta = 0.3, 0.6
    state = sega.SegaState()
    nu = torch.zeros(1, 4, 6, 6, dtype=torch.float64)
    for i in range(3):
        eu, ec = rnd(1, 4, 6, 6, seed=10 + i), rnd(1, 4, 6, 6, seed=20 + i)
        got = sega.sega_term(i, eu, [ec], [c], state, s_m, beta)
        psi = 2.5 * (ec - eu)
        want, nu = _hand_step([psi], [0.8], nu, s_m, beta)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state.momentum, nu, rtol=1e-12, atol=1e-12)
    # ε̃ = ε_u + s_g (ε_p − ε_u) + γ
    eu, ep, ec = rnd(1, 4, 6, 6, seed=1), rnd(1, 4, 6, 6, seed=2), rnd(1, 4, 6, 6, seed=3)
    st = sega.SegaState()
    got = sega.sega_guidance(0, eu, ep, [ec], [c], st, 7.5, s_m, beta)
    torch.testing.assert_close(got, eu + 7.5 * (ep - eu) + 0.8 * 2.5 * (ec - eu))


def test_remove_is_the_negated_direction():
    add = [Concept(scale=4.0, threshold=0.9, warmup=0), Concept(scale=3.0, threshold=0.8, warmup=0, weight=0.5)]
    rem = [Concept(scale=4.0, threshold=0.9, warmup=0, reverse=True),
           Concept(scale=3.0, threshold=0.8, warmup=0, weight=0.5, reverse=True)]
    sa, sr = sega.SegaState(), sega.SegaState()
    for i in range(3):  # momentum included
        eu = rnd(2, 4, 8, 8, seed=i)
        ecs = [rnd(2, 4, 8, 8, seed=50 + i), rnd(2, 4, 8, 8, seed=60 + i)]
        ga = sega.sega_term(i, eu, ecs, add, sa, 0.2, 0.5)
        gr = sega.sega_term(i, eu, ecs, rem, sr, 0.2, 0.5)
        torch.testing.assert_close(gr, -ga, rtol=1e-12, atol=1e-12)
        assert ga.abs().sum() > 0


def test_warmup_accumulates_momentum_and_cooldown_keeps_it():
    c = Concept(scale=1.0, threshold=0.0, warmup=2, cooldown=4)
    s_m, beta = 0.5, 0.4
    state = sega.SegaState()
    nu = torch.zeros(1, 4, 4, 4, dtype=torch.float64)
    for i in range(6):
        eu, ec = rnd(1, 4, 4, 4, seed=100 + i), rnd(1, 4, 4, 4, seed=200 + i)
        got = sega.sega_term(i, eu, [ec], [c], state, s_m, beta)
        psi = (ec - eu) if i < 4 else torch.zeros_like(eu)
        g, nu = _hand_step([psi], [1.0], nu, s_m, beta)
        if i < 2:
            assert torch.count_nonzero(got) == 0  # warm-up: nothing applied...
            assert state.momentum.abs().sum() > 0  # ...but the momentum accumulates
        else:
            torch.testing.assert_close(got, g, rtol=1e-12, atol=1e-12)  # after cool-down: s_m·ν only
        torch.testing.assert_close(state.momentum, nu, rtol=1e-12, atol=1e-12)


def test_partial_warmup_renormalises_weights_without_momentum():
    cs = [Concept(scale=1.0, threshold=0.0, warmup=0, weight=2.0),
          Concept(scale=1.0, threshold=0.0, warmup=0, weight=1.0),
          Concept(scale=1.0, threshold=0.0, warmup=5, weight=3.0)]
    state = sega.SegaState()
    eu = rnd(1, 4, 4, 4, seed=1)
    ecs = [rnd(1, 4, 4, 4, seed=s) for s in (2, 3, 4)]
    sega.sega_term(0, eu, ecs, cs, state, 0.3, 0.5)  # momentum non-zero from now on
    got = sega.sega_term(1, eu, ecs, cs, state, 0.3, 0.5)
    torch.testing.assert_close(got, (2 / 3) * (ecs[0] - eu) + (1 / 3) * (ecs[1] - eu), rtol=1e-12, atol=1e-12)


def test_negative_weights_are_clipped_and_zero_weight_sums_give_zero_not_nan():
    cs = [Concept(scale=1.0, threshold=0.0, warmup=0, weight=-1.0), Concept(scale=1.0, threshold=0.0, warmup=0)]
    eu, e1, e2 = rnd(1, 4, 4, 4, seed=1), rnd(1, 4, 4, 4, seed=2), rnd(1, 4, 4, 4, seed=3)
    got = sega.sega_term(0, eu, [e1, e2], cs, sega.SegaState(), 0.0, 0.5)
    torch.testing.assert_close(got, e2 - eu)
    # only the (clipped) negative-weight concept is warm: diffusers would divide 0/0; we add nothing
    cs2 = [Concept(scale=1.0, threshold=0.0, warmup=0, weight=-1.0), Concept(scale=1.0, threshold=0.0, warmup=3)]
    got = sega.sega_term(0, eu, [e1, e2], cs2, sega.SegaState(), 0.0, 0.5)
    assert torch.isfinite(got).all() and torch.count_nonzero(got) == 0


def test_state_updates_once_per_step_and_refuses_going_back():
    c = Concept(scale=1.0, threshold=0.0, warmup=0)
    eu, ec = rnd(1, 4, 4, 4, seed=1), rnd(1, 4, 4, 4, seed=2)
    a, b = sega.SegaState(), sega.SegaState()
    for i in range(3):
        ga = sega.sega_term(i, eu, [ec], [c], a, 0.3, 0.5)
        sega.sega_term(i, eu * 3, [ec], [c], b, 0.3, 0.5)  # a first evaluation that is then redone
        gb = sega.sega_term(i, eu, [ec], [c], b, 0.3, 0.5)
        torch.testing.assert_close(ga, gb)
        torch.testing.assert_close(a.momentum, b.momentum)
    with pytest.raises(ValueError, match="new SegaState"):
        sega.sega_term(1, eu, [ec], [c], a, 0.3, 0.5)


def test_bad_concepts_and_shapes():
    for bad in (dict(threshold=1.5), dict(threshold=-0.1), dict(warmup=-1), dict(cooldown=-2), dict(scale=math.inf)):
        with pytest.raises(ValueError):
            Concept(**bad)
    eu = rnd(1, 4, 4, 4)
    with pytest.raises(ValueError, match="concept predictions"):
        sega.sega_term(0, eu, [eu, eu], [Concept()], sega.SegaState())
    with pytest.raises(ValueError, match="share the shape"):
        sega.sega_term(0, eu, [rnd(2, 4, 4, 4)], [Concept()], sega.SegaState())
    assert torch.count_nonzero(sega.sega_term(0, eu, [], [], sega.SegaState())) == 0


def test_step_index_of_nearest_sigma():
    grid = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert sega.step_index_of(torch.tensor([3.0001]), grid) == 2
    assert sega.step_index_of(14.6, grid) == 0


# ---------------------------------------------------------------------------------------------- LEDITS++

def test_ledits_pp_has_no_cfg_no_momentum_and_masks_by_channel_sum():
    cs = [Concept(scale=5.0, threshold=0.9, warmup=0), Concept(scale=2.0, threshold=0.75, warmup=0, reverse=True,
                                                             weight=0.1)]
    eu = rnd(2, 4, 8, 8, seed=1)
    ecs = [rnd(2, 4, 8, 8, seed=2), rnd(2, 4, 8, 8, seed=3)]
    got = sega.ledits_pp_guidance(0, eu, ecs, cs)
    p1, p2 = 5.0 * (ecs[0] - eu), -2.0 * (ecs[1] - eu)  # weights are not used by LEDITS++
    want = eu + p1 * sega.noise_quantile_mask(p1, 0.9) + p2 * sega.noise_quantile_mask(p2, 0.75)
    torch.testing.assert_close(got, want)
    assert torch.equal(sega.ledits_pp_guidance(3, eu, ecs, cs), got)  # stateless


def test_ledits_pp_intersects_attention_and_noise_masks_only_when_active():
    c = [Concept(scale=3.0, threshold=0.8, warmup=1, cooldown=4)]
    eu, ec = rnd(1, 4, 8, 8, seed=5), rnd(1, 4, 8, 8, seed=6)
    m1 = torch.zeros(1, 4, 8, 8, dtype=torch.float64)
    m1[..., 2:6, 1:5] = 1
    psi = 3.0 * (ec - eu)
    m2 = sega.noise_quantile_mask(psi, 0.8)
    term = lambda i, **kw: sega.ledits_pp_term(i, eu, [ec], c, attn_masks=[m1], **kw)
    torch.testing.assert_close(term(1, noise_mask_active=True), psi * (m2 * m1))
    torch.testing.assert_close(term(1, noise_mask_active=False), psi * m1)  # t > 800: M¹ only
    torch.testing.assert_close(term(1, use_intersect_mask=False), psi * m1)
    assert torch.count_nonzero(term(0)) == 0 and torch.count_nonzero(term(4)) == 0  # warm-up / cool-down
    um = (torch.arange(8) < 4).double().view(1, 1, 1, 8)
    torch.testing.assert_close(term(2, user_mask=um), (psi * um) * (sega.noise_quantile_mask(psi * um, 0.8) * m1))


# --------------------------------------------------------------- diffusers' SEGA pipeline, replayed


# ------------------------------------------------------------- diffusers' LEDITS++ pipeline, replayed




def test_user_mask_is_area_resized_and_confines_the_concept():
    """A 4x4 mask onto a 2x2 latent: a cell's value is the share of it masked (hand-computed); ε_c outside the mask
    becomes ε_ref, inside it stays; no mask gives ε_c back."""
    S = sega
    m = torch.zeros(4, 4)
    m[:2, :2] = 1.0
    m[3, 3] = 1.0
    like = torch.zeros(1, 3, 2, 2)
    assert torch.equal(S.user_mask_at(m, like), torch.tensor([[[[1.0, 0.0], [0.0, 0.25]]]]))
    eps_c, ref = torch.full((1, 3, 2, 2), 2.0), torch.zeros(1, 3, 2, 2)
    got = S.masked_concept(eps_c, ref, m)
    assert torch.equal(got[0, :, 0, 0], torch.full((3,), 2.0)) and torch.equal(got[0, :, 0, 1], torch.zeros(3))
    assert torch.equal(got[0, :, 1, 1], torch.full((3,), 0.5))
    assert S.masked_concept(eps_c, ref, None) is eps_c
