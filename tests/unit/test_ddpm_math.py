"""Edit-friendly DDPM inversion math (core/ddpm_inversion.py): pure torch, hand-made denoisers, no UNet."""
from __future__ import annotations

import math

import pytest
import torch

from core import ddpm_inversion as ddpm  # noqa: E402


def sd15_alphas_cumprod() -> torch.Tensor:
    """SD1.5 scaled-linear ᾱ (β 0.00085 → 0.012, 1000 steps), float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


def ddim_sigmas(steps: int, dtype=torch.float32) -> torch.Tensor:
    """DDIM grid t = 1 + k·(1000//steps), descending, as σ = sqrt((1−ᾱ)/ᾱ), then 0."""
    ac = sd15_alphas_cumprod()
    ts = [1 + k * (1000 // steps) for k in range(steps)][::-1]
    s = [math.sqrt((1 - float(ac[t])) / float(ac[t])) for t in ts]
    return torch.tensor(s + [0.0], dtype=dtype)


def nonlinear_denoise(calls: list | None = None):
    """A σ-dependent, spatially mixing, nonlinear x̂0(x, σ) (stands in for a CFG-combined UNet)."""
    def den(x: torch.Tensor, sigma) -> torch.Tensor:
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        if calls is not None:
            calls.append(s)
        a = 1.0 / math.sqrt(1.0 + s * s)
        return 0.7 * torch.tanh(x * a) + 0.2 * torch.roll(x, 1, dims=-1) * a * math.sin(s) + 0.05 * (x * a) ** 2
    return den


def latent(b=1, c=4, h=8, w=8, seed=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g).to(dtype)


# ---------------------------------------------------------------------------------------------- the step

@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddpm_step_equals_official_reverse_step_in_z_form(eta):
    """x-form step == the official DDPM_inversion reverse_step z_{t−1} = √ᾱ' x̂0 + √(1−ᾱ'−η·var) ε̂ + η·√var n,
    divided by √ᾱ' (at η = 1 DDIM's posterior)."""
    torch.manual_seed(0)
    x, x0h, n = (torch.randn(2, 4, 5, 5, dtype=torch.float64) for _ in range(3))
    for s, sn in [(14.6, 9.1), (3.0, 2.0), (0.5, 0.12), (0.05, 0.03)]:
        ab, abp = 1 / (1 + s * s), 1 / (1 + sn * sn)
        var = (1 - abp) / (1 - ab) * (1 - ab / abp)
        z = math.sqrt(ab) * x
        eps = (z - math.sqrt(ab) * x0h) / math.sqrt(1 - ab)
        z_prev = math.sqrt(abp) * x0h + math.sqrt(1 - abp - eta * var) * eps + eta * math.sqrt(var) * n
        got = ddpm.ddpm_step(x, x0h, s, sn, n, eta)
        torch.testing.assert_close(got, z_prev / math.sqrt(abp), rtol=1e-10, atol=1e-10)
        # ComfyUI's ancestral step (η=1): σ_up = σ'·sqrt(σ²−σ'²)/σ, σ_down = σ'²/σ
        if eta == 1.0:
            down, up = ddpm.ancestral_sigmas(s, sn, 1.0)
            assert up == pytest.approx(sn * math.sqrt(s * s - sn * sn) / s)
            assert down == pytest.approx(sn * sn / s)


def test_ddpm_step_to_zero_returns_x0_hat():
    x, x0h, n = latent(seed=1), latent(seed=2), latent(seed=4)
    assert ddpm.ddpm_step(x, x0h, 0.03, 0.0, n) is x0h
    assert ddpm.ddpm_step(x, x0h, torch.tensor(0.03), torch.tensor(0.0), None) is x0h


# ---------------------------------------------------------------------------------------- the inversion

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("eta", [1.0, 0.6])
def test_exact_reconstruction_nonlinear_denoise(dtype, tol, eta):
    sig = ddim_sigmas(25, dtype=dtype)
    x0 = latent(b=2, dtype=dtype)
    den = nonlinear_denoise()
    inv = ddpm.invert_edit_friendly(den, x0, sig, seed=7, eta=eta)
    assert inv.zs.shape == (25, 2, 4, 8, 8) and inv.xts.shape == (26, 2, 4, 8, 8) and inv.steps == 25
    seen = []
    out = ddpm.sample_edit_friendly(den, inv, callback=lambda i, x, x0h: seen.append(x.clone()))
    assert torch.equal(out, inv.xts[-1])  # bit-exact: the sampler walks the stored chain
    for i, x in enumerate(seen):
        assert torch.equal(x, inv.xts[i])
    torch.testing.assert_close(out, x0, rtol=0, atol=tol)
    assert torch.isfinite(inv.zs).all()
    assert torch.count_nonzero(inv.zs[-1]) == 0 and inv.residual is not None  # last step (to σ=0): residual


def test_start_states_are_independent_draws_least_noisy_first():
    """x_t = x0 + σ_t ε̃_t with fresh ε̃ per t (not chained), drawn from the least noisy step upwards."""
    sig = ddim_sigmas(6, dtype=torch.float64)
    x0 = latent(dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    draws = [torch.randn(x0.shape, generator=g).double() for _ in range(6)]  # index 0 = least noisy step (5)
    inv = ddpm.invert_edit_friendly(nonlinear_denoise(), x0, sig, seed=11)
    torch.testing.assert_close(inv.xts[0], x0 + float(sig[0]) * draws[5], rtol=0, atol=1e-12)
    inv3 = ddpm.invert_edit_friendly(nonlinear_denoise(), x0, sig, seed=11, skip=3)
    torch.testing.assert_close(inv3.xts[0], x0 + float(sig[3]) * draws[2], rtol=0, atol=1e-12)


def test_noise_maps_by_hand_with_an_oracle_denoiser():
    """With x̂0 ≡ x0: μ_t = x0 + σ_down ε̃_t, so z_t = (σ_{t−1} ε̃_{t−1} − σ_down ε̃_t)/σ_up."""
    sig = ddim_sigmas(5, dtype=torch.float64)
    x0 = latent(dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    draws = [torch.randn(x0.shape, generator=g).double() for _ in range(5)][::-1]  # draws[i] belongs to step i
    inv = ddpm.invert_edit_friendly(lambda x, s: x0.clone(), x0, sig, seed=5)
    for i in range(4):  # chain corrections are exact up to rounding here
        s, sn = float(sig[i]), float(sig[i + 1])
        down, up = ddpm.ancestral_sigmas(s, sn, 1.0)
        torch.testing.assert_close(inv.zs[i], (sn * draws[i + 1] - down * draws[i]) / up, rtol=1e-9, atol=1e-9)


def test_skip_argument_equals_skip_method_and_saves_calls():
    sig = ddim_sigmas(20)
    x0 = latent()
    full_calls, skip_calls = [], []
    full = ddpm.invert_edit_friendly(nonlinear_denoise(full_calls), x0, sig, seed=2)
    part = ddpm.invert_edit_friendly(nonlinear_denoise(skip_calls), x0, sig, seed=2, skip=7)
    assert len(full_calls) == 20 and len(skip_calls) == 13
    view = full.skip(7)
    assert part.skipped == view.skipped == 7 and part.steps == view.steps == 13
    torch.testing.assert_close(part.sigmas, sig[7:])
    torch.testing.assert_close(view.sigmas, sig[7:])
    # the skipped full inversion starts from its corrected x_13 (rounding differs from the fresh draw)
    torch.testing.assert_close(part.xts, view.xts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part.zs, view.zs, rtol=1e-3, atol=1e-3)
    den = nonlinear_denoise()
    torch.testing.assert_close(ddpm.sample_edit_friendly(den, part), x0, rtol=0, atol=2e-6)
    torch.testing.assert_close(ddpm.sample_edit_friendly(den, view), x0, rtol=0, atol=2e-6)
    assert full.skip(0) is full
    with pytest.raises(ValueError, match="skip"):
        full.skip(20)
    with pytest.raises(ValueError, match="skip"):
        ddpm.invert_edit_friendly(den, x0, sig, skip=20)


def test_no_residual_gives_the_plain_last_step():
    sig = ddim_sigmas(8)
    x0 = latent()
    den = nonlinear_denoise()
    inv = ddpm.invert_edit_friendly(den, x0, sig, seed=1)
    out = ddpm.sample_edit_friendly(den, inv, apply_residual=False)
    torch.testing.assert_close(out, den(inv.xts[-2], sig[-2]))
    assert (out - x0).abs().max() > 1e-4


def test_editing_with_another_denoiser_changes_the_result():
    sig = ddim_sigmas(10)
    x0 = latent()
    inv = ddpm.invert_edit_friendly(nonlinear_denoise(), x0, sig, seed=1)
    edited = ddpm.sample_edit_friendly(lambda x, s: nonlinear_denoise()(x, s) + 0.3, inv)
    assert torch.isfinite(edited).all() and (edited - x0).abs().mean() > 0.05


def test_bad_inputs():
    x0 = latent()
    den = nonlinear_denoise()
    with pytest.raises(ValueError, match="eta"):
        ddpm.invert_edit_friendly(den, x0, ddim_sigmas(4), eta=0.0)
    with pytest.raises(ValueError, match="descending"):
        ddpm.invert_edit_friendly(den, x0, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2"):
        ddpm.invert_edit_friendly(den, x0, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="shape of x"):
        ddpm.invert_edit_friendly(lambda x, s: x[:, :2], x0, ddim_sigmas(4))


# ---------------------------------------------------------------- the KSAMPLER-contract sampler function

class FakeModel:
    """Stands in for ComfyUI's KSamplerX0Inpaint: model(x, σ·s_in, **extra_args) -> x̂0; records the calls."""

    def __init__(self):
        self.den = nonlinear_denoise()
        self.calls = []

    def __call__(self, x, sigma, **extra):
        assert sigma.shape == (x.shape[0],) and bool((sigma == sigma[0]).all())
        self.calls.append((float(sigma[0]), dict(extra)))
        return self.den(x, sigma[0])


def test_sampler_fn_contract_reproduces_and_reports():
    sig = ddim_sigmas(12)
    x0 = latent()
    inv = ddpm.invert_edit_friendly(nonlinear_denoise(), x0, sig, seed=4)
    fn = ddpm.make_sampler_fn(inv)
    model, reports = FakeModel(), []
    extra = {"seed": 5, "denoise_mask": None, "model_options": {"k": 1}}
    out = fn(model, inv.start.clone(), sig.clone(), extra_args=extra, callback=reports.append, disable=True)
    torch.testing.assert_close(out, x0, rtol=0, atol=2e-6)
    assert torch.equal(out, ddpm.sample_edit_friendly(nonlinear_denoise(), inv))
    assert [c[0] for c in model.calls] == pytest.approx(sig[:-1].tolist())
    assert all(c[1] == extra for c in model.calls)  # extra_args passed through untouched
    assert [r["i"] for r in reports] == list(range(12))
    assert set(reports[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert float(reports[3]["sigma"]) == pytest.approx(float(sig[3]))
    assert torch.equal(reports[3]["x"], inv.xts[3])
    # a SplitSigmas pair (high part, then low part) walks the same chain
    hi, lo = sig[:6], sig[5:]
    mid = fn(FakeModel(), inv.start.clone(), hi)
    assert torch.equal(mid, inv.xts[5])
    assert torch.equal(fn(FakeModel(), mid, lo), out)
    # and so does the sampler of a skipped inversion on its own sigmas
    inv5 = inv.skip(5)
    assert torch.equal(ddpm.make_sampler_fn(inv5)(FakeModel(), inv5.start.clone(), inv5.sigmas), out)


def test_sampler_fn_sigma_mismatch_is_a_clear_error():
    sig = ddim_sigmas(10)
    inv = ddpm.invert_edit_friendly(nonlinear_denoise(), latent(), sig, seed=4)
    fn = ddpm.make_sampler_fn(inv)
    with pytest.raises(ValueError, match="do not match the INVERSION"):
        fn(FakeModel(), inv.start, ddim_sigmas(12))
    with pytest.raises(ValueError, match="do not match the INVERSION"):
        fn(FakeModel(), inv.start, sig * 1.01)
    with pytest.raises(ValueError, match="descending"):
        fn(FakeModel(), inv.start, sig.flip(0))


def test_sampler_fn_batch_and_shape_handling():
    sig = ddim_sigmas(6)
    x0 = latent(b=1)
    den = nonlinear_denoise()
    inv = ddpm.invert_edit_friendly(den, x0, sig, seed=4)
    fn = ddpm.make_sampler_fn(inv)
    out = fn(FakeModel(), inv.start.expand(3, -1, -1, -1).clone(), sig)  # one image's maps shared by a batch
    assert out.shape == (3, 4, 8, 8)
    for b in range(3):
        torch.testing.assert_close(out[b:b + 1], x0, rtol=0, atol=2e-6)
    inv2 = ddpm.invert_edit_friendly(den, latent(b=2), sig, seed=4)
    with pytest.raises(ValueError, match="batch of 2"):
        ddpm.make_sampler_fn(inv2)(FakeModel(), latent(b=3), sig)
    with pytest.raises(ValueError, match="latent shape"):
        fn(FakeModel(), latent(h=16), sig)
    model = FakeModel()
    with pytest.raises(ValueError):
        fn(model, latent(h=16), sig)
    assert model.calls == []  # refused before any model call


# ---------------------------------------------------------- against diffusers' LEDITS++ `invert` (DDIM)




def test_keep_outside_blends_by_hand():
    """keep_outside = M ⊙ x + (1 − M) ⊙ x_t^inv, on hand numbers (a soft cell blends linearly)."""
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    state = torch.tensor([[[[10.0, 20.0, 30.0]]]])
    m = torch.tensor([[[[1.0, 0.25, 0.0]]]])
    assert torch.equal(ddpm.keep_outside(x, m, state), torch.tensor([[[[1.0, 15.5, 30.0]]]]))
    assert ddpm.keep_outside(x, None, state) is x


def test_sampler_fn_region_keeps_the_inversion_states_outside():
    """A region (the SEGA masks' union, core/ledits.mask_region) confines an edit: sampled with another denoiser than
    the inversion's (an edit), every state outside the region is the inversion's own xts[k], so the result there is
    x0 (to float rounding); inside, with a pointwise denoiser, every state is the unconfined edit's; a soft cell lies between.
    The region function sees the sampler's extra_args."""
    sig = ddim_sigmas(10)
    x0 = latent()
    inv = ddpm.invert_edit_friendly(nonlinear_denoise(), x0, sig, seed=4)

    def edit(x, s):
        return 0.6 * torch.tanh(x / math.sqrt(1.0 + float(s) ** 2)) + 0.3   # pointwise: cells do not mix

    model = FakeModel()
    model.den = edit
    region = torch.zeros(1, 1, 8, 8)
    region[..., :4] = 1.0
    region[..., 0, 5] = 0.25
    seen = []
    extra = {"model_options": {"k": 1}}
    reports, plain_reports = [], []
    out = ddpm.make_sampler_fn(inv, region=lambda e, x: seen.append(e) or region)(
        model, inv.start.clone(), sig, extra_args=extra, callback=reports.append)
    plain = ddpm.make_sampler_fn(inv)(model, inv.start.clone(), sig, callback=plain_reports.append)
    assert seen == [extra]
    out_side, inside = (region == 0).expand_as(x0), (region == 1).expand_as(x0)
    assert torch.equal(out[out_side], inv.xts[-1][out_side])
    torch.testing.assert_close(out[out_side], x0[out_side], rtol=0, atol=2e-6)
    for r, k in zip(reports, range(len(reports))):
        assert torch.equal(r["x"][out_side], inv.xts[k][out_side])
    assert torch.equal(out[inside], plain[inside])
    assert (plain - x0)[inside].abs().max() > 0.1                            # the edit does change the inside
    soft = out[..., 0, 5]
    assert not torch.equal(soft, x0[..., 0, 5]) and not torch.equal(soft, plain[..., 0, 5])
    with pytest.raises(ValueError, match="does not hold its states"):
        bare = ddpm.Inversion(sigmas=inv.sigmas, xts=torch.empty(0), zs=inv.zs, eta=1.0, residual=inv.residual)
        ddpm.make_sampler_fn(bare, region=lambda e, x: region)(model, inv.start.clone(), sig)
