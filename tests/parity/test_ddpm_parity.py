"""Edit-friendly DDPM inversion against diffusers: the noise map of compute_noise_ddim and LEDITS++'s invert."""
from __future__ import annotations

import math

import pytest
import torch

from tools.support import diffusers_pipelines as dp
from dragedit.core import ddpm_inversion as ddpm


def test_noise_map_matches_diffusers_compute_noise_ddim():
    """z from our x-form equals diffusers' LEDITS++ `compute_noise_ddim` in z-form on the same DDIM grid."""
    pytest.importorskip("diffusers")
    from diffusers import DDIMScheduler
    from diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion import compute_noise_ddim

    sch = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                        set_alpha_to_one=False, clip_sample=False)
    sch.set_timesteps(10)
    ac = sch.alphas_cumprod.double()
    torch.manual_seed(1)
    for t in sch.timesteps[:-1]:  # the last step goes to ᾱ_0, not σ = 0
        t = int(t)
        tp = t - 1000 // 10
        s, sn = math.sqrt((1 - ac[t]) / ac[t]), math.sqrt((1 - ac[tp]) / ac[tp])
        x, x_prev, eps = (torch.randn(1, 4, 6, 6, dtype=torch.float64) for _ in range(3))
        x0h = x - s * eps
        z_ref, corrected = compute_noise_ddim(sch, math.sqrt(ac[tp]) * x_prev, math.sqrt(ac[t]) * x, t, eps, 1.0)
        mu = ddpm.ddpm_step(x, x0h, s, sn, None, 1.0)
        _, up = ddpm.ancestral_sigmas(s, sn, 1.0)
        z = (x_prev - mu) / up
        torch.testing.assert_close(z, z_ref.double(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ddpm.ddpm_step(x, x0h, s, sn, z, 1.0) * math.sqrt(ac[tp]), corrected.double(),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore")
def test_inversion_matches_diffusers_ledits_pp_invert():
    """Same tiny UNet, image, source CFG and generator: our noise maps equal diffusers' (x-form vs z-form).
    Its grid ends at ᾱ_0 (σ ≈ 0.029), not 0, and it treats the clean latent as a ᾱ_0-level state at the last
    step only (x = z0/√ᾱ_0) while noising it as ᾱ = 1: the last map differs by that 0.04 % rescaling."""
    pytest.importorskip("diffusers")
    pipe, calls = dp.ledits_pp_inverted(steps=8, skip=0.15, seed=3)
    ts, abar, sig = dp.ddim_grid(pipe)
    eu, ec = calls[0]["emb"], calls[1]["emb"]  # diffusers: uncond pass, then the source-prompt pass

    def den(x, s):
        i = int(torch.argmin((sig[:-1] - float(s)).abs()))
        z = x * math.sqrt(abar[i])
        with torch.no_grad():
            e_u = pipe.unet(z, ts[i], encoder_hidden_states=eu).sample
            e_c = pipe.unet(z, ts[i], encoder_hidden_states=ec).sample
        return x - float(s) * (e_u + 3.5 * (e_c - e_u))

    with torch.no_grad():
        x0, _ = pipe.encode_image(dp.blob_image(), dtype=torch.float32)
    inv = ddpm.invert_edit_friendly(den, x0, sig, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(inv.start * math.sqrt(abar[0]), pipe.init_latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inv.zs[:-1], pipe.zs[:-1], rtol=1e-4, atol=2e-4)
    assert (inv.zs[-1] - pipe.zs[-1]).abs().max() < 2e-3 * pipe.zs[-1].abs().max()



# ============================================================ port of the official DDPM_inversion code (test only)
# github inbarhub/DDPM_inversion, ddm_inversion/inversion_utils.py: sample_xts_from_x0, get_variance,
# inversion_forward_process (η > 0 branch), reverse_step, inversion_reverse_process; written for this test, on a
# diffusers UNet with the tiny SD1.5 model's weights and the scheduler's own ᾱ (final ᾱ = alphas_cumprod[0]).
class _OfficialModel:
    def __init__(self, unet, steps):
        from diffusers import DDIMScheduler
        self.unet = unet
        self.scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, set_alpha_to_one=False, clip_sample=False)
        self.scheduler.set_timesteps(steps)


def _off_variance(model, t):
    sch = model.scheduler
    prev = t - sch.config.num_train_timesteps // sch.num_inference_steps
    a_t = sch.alphas_cumprod[t]
    a_p = sch.alphas_cumprod[prev] if prev >= 0 else sch.final_alpha_cumprod
    return (1 - a_p) / (1 - a_t) * (1 - a_t / a_p), a_t, a_p


def _off_eps(model, x, t, emb_u, emb_c, cfg):
    with torch.no_grad():
        u = model.unet(x, t, encoder_hidden_states=emb_u).sample
        c = model.unet(x, t, encoder_hidden_states=emb_c).sample
    return u + cfg * (c - u)


def official_inversion_forward_process(model, x0, eta, emb_u, emb_c, cfg, gen):
    """inversion_forward_process with η > 0: independent x_t ~ q(x_t|x0) drawn least noisy first
    (sample_xts_from_x0), then from the noisiest step down z = (x_{t-1} − μ)/(η·sqrt(var)) with the direction
    sqrt(1 − ᾱ_prev − η·var)·ε̂, x_{t-1} corrected to μ + η·sqrt(var)·z; zs[0] (the last step) set to 0."""
    sch = model.scheduler
    ts = sch.timesteps
    n = len(ts)
    ab = sch.alphas_cumprod
    xts = torch.zeros((n + 1, *x0.shape[1:]))
    xts[0] = x0[0]
    t_to_idx = {int(v): k for k, v in enumerate(ts)}
    for t in reversed(ts):
        idx = n - t_to_idx[int(t)]
        xts[idx] = x0[0] * ab[t] ** 0.5 + torch.randn(x0.shape[1:], generator=gen) * (1 - ab[t]) ** 0.5
    zs = torch.zeros((n, *x0.shape[1:]))
    for t in ts:
        idx = n - t_to_idx[int(t)] - 1
        xt = xts[idx + 1][None]
        eps = _off_eps(model, xt, t, emb_u, emb_c, cfg)
        var, a_t, a_p = _off_variance(model, int(t))
        x0p = (xt - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        mu = a_p ** 0.5 * x0p + (1 - a_p - eta * var) ** 0.5 * eps
        z = (xts[idx][None] - mu) / (eta * var ** 0.5)
        zs[idx] = z[0]
        xts[idx] = (mu + eta * var ** 0.5 * z)[0]
    zs[0] = torch.zeros_like(zs[0])
    return zs, xts


def official_reverse_process(model, xT, eta, zs, emb_u, emb_c, cfg):
    """inversion_reverse_process + reverse_step: every state along the way (noisiest first)."""
    sch = model.scheduler
    ts = sch.timesteps
    n = len(ts)
    t_to_idx = {int(v): k for k, v in enumerate(ts)}
    xt, states = xT, [xT]
    for t in ts:
        idx = n - t_to_idx[int(t)] - 1
        eps = _off_eps(model, xt, t, emb_u, emb_c, cfg)
        var, a_t, a_p = _off_variance(model, int(t))
        x0p = (xt - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        xt = a_p ** 0.5 * x0p + (1 - a_p - eta * var) ** 0.5 * eps + eta * var ** 0.5 * zs[idx][None]
        states.append(xt)
    return states


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_inversion_and_sampling_match_official_ddpm_inversion_code(eta):
    """The pack's edit-friendly inversion and DDPM(η) sampling against the port of the official code, η < 1 too
    (direction sqrt(1 − ᾱ_prev − η·var), noise η·sqrt(var)): the noise maps, the start latent and every state of
    the reverse process from the official maps, CFG 3.5 on the official DDIM grid (its last step to ᾱ_0, whose map
    the official code zeroes)."""
    pytest.importorskip("diffusers")
    from tools.support import tiny_models
    from tools.support.diffusers_bridge import sd15_unet_twin
    steps, cfg = 8, 3.5
    model = tiny_models.sd15(0)
    off = _OfficialModel(sd15_unet_twin(model), steps)
    emb_c, emb_u = tiny_models.conditioning(1)[0][0], tiny_models.conditioning(2)[0][0]
    z0 = tiny_models.latent(0)["samples"] * 0.18215
    zs_off, xts_off = official_inversion_forward_process(off, z0, eta, emb_u, emb_c, cfg,
                                                         torch.Generator().manual_seed(5))
    ab = off.scheduler.alphas_cumprod.double()
    ts = [int(t) for t in off.scheduler.timesteps]
    abar = [float(ab[t]) for t in ts] + [float(ab[0])]
    sig = torch.tensor([math.sqrt((1 - a) / a) for a in abar], dtype=torch.float64)

    def den(x, s):
        i = int(torch.argmin((sig[:-1] - float(s)).abs()))
        e = _off_eps(off, (x * math.sqrt(abar[i])).float(), ts[i], emb_u, emb_c, cfg).double()
        return x - float(s) * e

    inv = ddpm.invert_edit_friendly(den, z0.double(), sig, generator=torch.Generator().manual_seed(5), eta=eta)
    # noise maps: pack noisiest first, official indexed by idx = steps − 1 − j; the official last map is zeroed
    for j in range(steps - 1):
        torch.testing.assert_close(inv.zs[j, 0].float(), zs_off[steps - 1 - j], rtol=1e-4, atol=2e-4,
                                   msg=f"noise map {j}")
    torch.testing.assert_close((inv.start * math.sqrt(abar[0])).float(), xts_off[steps][None], rtol=1e-5, atol=1e-5)
    # the reverse process from the official start and maps, with the pack's step
    states_off = official_reverse_process(off, xts_off[steps][None], eta, zs_off, emb_u, emb_c, cfg)
    ours = ddpm.Inversion(sigmas=sig, xts=inv.xts, zs=torch.stack([zs_off[steps - 1 - j][None].double()
                                                                   for j in range(steps)]), eta=eta)
    got = []
    ddpm.sample_edit_friendly(den, ours, callback=lambda i, x, _x0: got.append(x))
    for i in range(1, steps):
        torch.testing.assert_close((got[i] * math.sqrt(abar[i])).float(), states_off[i], rtol=1e-4, atol=1e-4,
                                   msg=f"state {i}")
