"""DDIM inversion steps against diffusers' DDIM schedulers (any step count)."""
from __future__ import annotations

import torch

from tools.support import tiny_models
from dragedit.core import host
from dragedit.core import inversion as inv
from dragedit.core.schedule import eps_from_x0


def _scheduler_pair(steps):
    from diffusers import DDIMInverseScheduler, DDIMScheduler
    kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
              set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading")
    inv_s, fwd_s = DDIMInverseScheduler(**kw), DDIMScheduler(**kw)
    inv_s.set_timesteps(steps)
    fwd_s.set_timesteps(steps)
    return inv_s, fwd_s


def test_steps_match_diffusers_ddim_schedulers(sd15_model):
    """Each inversion step and each sampling step equals diffusers' DDIMInverseScheduler / DDIMScheduler on a
    diffusers UNet holding the same weights (ComfyUI's x = z/sqrt(ᾱ); diffusers works on z)."""
    from tools.support.diffusers_bridge import sd15_unet_twin
    steps = 10
    unet = sd15_unet_twin(sd15_model)
    ctx = tiny_models.conditioning(1)[0][0]
    samples = tiny_models.latent(3)["samples"]
    sig = host.ddim_sigmas(sd15_model, steps)
    got = {}

    def loop(den, x, _s):
        got["inv"] = inv.invert(den, x, sig)[::-1]          # ascending noise
        got["smp"] = [got["inv"][-1]]
        s = sig.tolist()
        for i in range(steps):
            x0 = den.x0(got["inv"][steps - i], s[i])        # one sampling step from each inverted latent
            got["smp"].append(x0 if s[i + 1] == 0 else x0 + s[i + 1] * eps_from_x0(got["inv"][steps - i], x0, s[i]))
        return x

    with torch.inference_mode():
        host.session(host.clone(sd15_model), tiny_models.conditioning(1), None, 1.0, samples, sig, loop)
    inv_s, fwd_s = _scheduler_pair(steps)
    sig_asc = torch.flip(sig, [0])
    z = lambda x, s: x * float(host.alpha_bar(s).sqrt())
    with torch.no_grad():
        for i, t in enumerate(inv_s.timesteps):                # inversion steps
            zi = z(got["inv"][i], sig_asc[i])
            eps = unet(zi, t, encoder_hidden_states=ctx).sample
            z_next = inv_s.step(eps, t, zi).prev_sample
            ref = z(got["inv"][i + 1], sig_asc[i + 1])
            assert torch.allclose(z_next, ref, rtol=1e-4, atol=1e-5), (i, float((z_next - ref).abs().max()))
        for i, t in enumerate(fwd_s.timesteps):                # sampling steps
            zt = z(got["inv"][steps - i], sig[i])
            eps = unet(zt, t, encoder_hidden_states=ctx).sample
            z_prev = fwd_s.step(eps, t, zt, eta=0.0).prev_sample
            ref = z(got["smp"][i + 1], sig[i + 1])
            assert torch.allclose(z_prev, ref, rtol=1e-4, atol=1e-5), (i, float((z_prev - ref).abs().max()))
