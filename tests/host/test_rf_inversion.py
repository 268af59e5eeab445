"""core/rf_inversion.py and nodes/rf_inversion.py on a real tiny FLUX (built from config) and a tiny SD3 (through
comfy.sd.load_diffusion_model), composed with the stock SamplerCustomAdvanced."""
import pytest
import torch

from tools.support import tiny_models
from tools.support.flow_calls import _call, psnr, sampler_custom_advanced, scheduler_sigmas
from tools.support.node_calls import run_node
from dragedit.core import flow_inversion as fi
from dragedit.core import host
from dragedit.core import rf_inversion as rf
from dragedit.core.inversion import Inversion
from dragedit.nodes._errors import NodeInputError
from dragedit.nodes.flow_inversion import FlowInversion
from dragedit.nodes.rf_inversion import RFInversion, RFInversionSampler


def _invert(model, steps=8, gamma=0.5, seed=3):
    lat = tiny_models.dit_latent(size=8)
    pos = tiny_models.dit_conditioning()
    sig = scheduler_sigmas(model, steps)
    noise, sampler, inv = run_node(RFInversion, model=model, latent=lat, positive=pos, sigmas=sig, gamma=gamma,
                                   seed=seed, cfg=1.0)
    return lat, pos, sig, noise, sampler, inv


def test_gamma_zero_is_the_explicit_euler_inversion():
    def x0(x, s):
        return x * (1.0 - s) - 0.3 * s

    sig = [0.0, 0.2, 0.5, 0.9]
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    got = rf.controlled_forward(x0, x, sig, 0.0, torch.randn_like(x))
    want = fi.ode_solve(x0, x, sig, "euler", invert=False)      # ascending grid: v labelled with the step's start
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_gamma_one_lands_on_the_target_noise():
    sig = [0.0, 0.3, 0.6, 1.0]
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y1 = torch.randn_like(x)
    got = rf.controlled_forward(lambda xx, s: xx * 0.5, x, sig, 1.0, y1)
    assert torch.allclose(got[-1], y1, atol=1e-6)


def test_eta_schedule_window_and_decay():
    assert rf.eta_schedule(8, 0.9, 0.0, 0.25) == [0.9, 0.9, 0, 0, 0, 0, 0, 0]
    assert rf.eta_schedule(8, 0.5, 0.25, 0.5) == [0, 0, 0.5, 0.5, 0, 0, 0, 0]
    assert rf.eta_schedule(4, 1.0, 0.0, 1.0, 1.0) == [1.0, 0.75, 0.5, 0.25]


@pytest.mark.parametrize("which", ["flux", "sd3"])
def test_rf_inversion_through_sampler_custom_advanced(which, request):
    """η = 1 on every step pulls each x̂0 onto the image: exact reconstruction; the node's default sampler
    (η 0.9 on the first quarter) with the source prompt comes closer than η = 0; the INVERSION is a flow inversion."""
    model = request.getfixturevalue(which)
    lat, pos, sig, noise, sampler, inv = _invert(model)
    z0 = host.process_in(model, lat["samples"])
    assert isinstance(inv, Inversion) and inv.num_latents == 9 and inv.noise_maps is None
    assert torch.equal(inv.latents[-1], z0.to(inv.latents[-1]))
    (full,) = run_node(RFInversionSampler, inversion=inv, eta=1.0, start=0.0, stop=1.0)
    assert psnr(host.process_in(model, sampler_custom_advanced(model, noise, full, sig, lat, pos)), z0) >= 60.0
    (free,) = run_node(RFInversionSampler, inversion=inv, eta=0.0, start=0.0, stop=1.0)
    dbs = [psnr(host.process_in(model, sampler_custom_advanced(model, noise, s, sig, lat, pos)), z0)
           for s in (sampler, free)]
    print(which, "default sampler / eta 0: %.2f / %.2f dB" % tuple(dbs))
    assert dbs[0] > dbs[1]


def test_eta_zero_is_the_stock_euler_sampler(flux):
    from comfy_extras.nodes_custom_sampler import KSamplerSelect
    lat, pos, sig, noise, _, inv = _invert(flux, steps=6)
    (ours,) = run_node(RFInversionSampler, inversion=inv, eta=0.0, start=0.0, stop=1.0)
    with torch.inference_mode():
        euler = _call(KSamplerSelect, sampler_name="euler")[0]
    a = sampler_custom_advanced(flux, noise, ours, sig, lat, pos)
    b = sampler_custom_advanced(flux, noise, euler, sig, lat, pos)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_gamma_zero_node_matches_the_euler_ode_of_the_core(flux):
    """The node's γ = 0 inversion is core.flow_inversion's Euler ODE run up the same grid with start labels."""
    lat, pos, sig, _, _, inv = _invert(flux, steps=4, gamma=0.0)
    inv_euler = run_node(FlowInversion, model=flux, latent=lat, positive=pos, sigmas=sig, solver="euler", cfg=1.0)[2]
    # the Euler inversion labels v with the step's end, RF-Inversion with its start: same clean latent, other path
    assert torch.equal(inv.latents[-1], inv_euler.latents[-1])
    assert not torch.allclose(inv.latents[0], inv_euler.latents[0], atol=1e-4)


def test_bad_inputs_name_node_and_input(flux, sd15_model):
    lat, pos, sig, _, _, inv = _invert(flux, steps=4)
    with pytest.raises(NodeInputError, match=r"\[RF-Inversion\] input 'gamma'"):
        run_node(RFInversion, model=flux, latent=lat, positive=pos, sigmas=sig, gamma=1.5, seed=0, cfg=1.0)
    with pytest.raises(NodeInputError, match=r"\[RF-Inversion\] input 'model'"):
        run_node(RFInversion, model=sd15_model, latent=tiny_models.latent(), positive=tiny_models.conditioning(),
                 sigmas=sig, gamma=0.5, seed=0, cfg=1.0)
    with pytest.raises(NodeInputError, match=r"\[RF-Inversion\] input 'sigmas'.*end at 0"):
        run_node(RFInversion, model=flux, latent=lat, positive=pos, sigmas=sig[:-1], gamma=0.5, seed=0, cfg=1.0)
    with pytest.raises(NodeInputError, match=r"\[RF-Inversion Sampler\] input 'inversion'"):
        run_node(RFInversionSampler, inversion="nope", eta=0.9, start=0.0, stop=0.25)
    with pytest.raises(NodeInputError, match=r"\[RF-Inversion Sampler\] input 'start'"):
        run_node(RFInversionSampler, inversion=inv, eta=0.9, start=0.5, stop=0.25)
    with pytest.raises(NodeInputError, match=r"\[RF-Inversion Sampler\] input 'eta'"):
        run_node(RFInversionSampler, inversion=inv, eta=-0.1, start=0.0, stop=0.25)


def test_sampler_refuses_another_latent_inside_sampler_custom_advanced(flux):
    _, pos, sig, noise, sampler, inv = _invert(flux, steps=4)
    (s2,) = run_node(RFInversionSampler, inversion=inv, eta=0.9, start=0.0, stop=0.25)
    from comfy_extras.nodes_custom_sampler import RandomNoise
    other = tiny_models.dit_latent(size=16)
    with torch.inference_mode():
        noise = _call(RandomNoise, noise_seed=0)[0]                # the inversion's NOISE has the inverted size
    for smp, node in ((sampler, "RF-Inversion"), (s2, "RF-Inversion Sampler")):
        with pytest.raises(NodeInputError, match=rf"\[{node}\] input 'inversion'.*the LATENT that was inverted"):
            sampler_custom_advanced(flux, noise, smp, sig, other, pos)
