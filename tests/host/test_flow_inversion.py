"""core/flow_inversion.py and nodes/flow_inversion.py on a real tiny FLUX (built from config) and a tiny SD3 (through
comfy.sd.load_diffusion_model), composed with the stock SamplerCustomAdvanced."""
import pytest
import torch

from tools.support import tiny_models
from tools.support.flow_calls import psnr, sampler_custom_advanced, scheduler_sigmas
from tools.support.node_calls import run_node
from dragedit.core import flow_inversion as fi
from dragedit.core import host
from dragedit.core.inversion import Inversion
from dragedit.nodes._errors import NodeInputError
from dragedit.nodes.flow_inversion import EditFriendlyFlowInversion, EditFriendlyFlowSampler, FlowInversion


def _reconstruct(model, node, steps=8, positive=None, **kw):
    lat = tiny_models.dit_latent(size=8)
    pos = tiny_models.dit_conditioning()
    sig = scheduler_sigmas(model, steps)
    noise, sampler, inv = run_node(node, model=model, latent=lat, positive=pos, sigmas=sig, cfg=1.0, **kw)
    out = sampler_custom_advanced(model, noise, sampler, sig, lat, positive or pos)
    z0 = host.process_in(model, lat["samples"])
    return psnr(host.process_in(model, out), z0), inv, (noise, sampler, sig, lat)


@pytest.mark.parametrize("which", ["flux", "sd3"])
def test_edit_friendly_flow_inversion_reconstructs_exactly(which, request):
    model = request.getfixturevalue(which)
    db, inv, _ = _reconstruct(model, EditFriendlyFlowInversion, eta=1.0, seed=3)
    assert db >= 60.0
    assert isinstance(inv, Inversion) and inv.noise_maps is inv and inv.kv is None
    assert inv.num_latents == 9 and inv.zs.shape[0] == 8 and inv.residual is not None


def test_edit_friendly_edits_with_another_prompt(flux):
    db, inv, _ = _reconstruct(flux, EditFriendlyFlowInversion, positive=tiny_models.dit_conditioning(7),
                              eta=1.0, seed=3)
    assert db < 60.0


@pytest.mark.parametrize("solver", list(fi.SOLVERS))
def test_ode_inversions_reconstruct(flux, solver):
    db, inv, _ = _reconstruct(flux, FlowInversion, solver=solver)
    assert isinstance(inv, Inversion) and inv.noise_maps is None and inv.solver == solver
    assert db > 20.0


def test_second_order_inversions_beat_euler(flux):
    dbs = {s: _reconstruct(flux, FlowInversion, solver=s)[0] for s in fi.SOLVERS}
    assert dbs["rf_solver"] > dbs["euler"] and dbs["fireflow"] > dbs["euler"]


def test_model_calls_per_solver():
    calls = []

    def x0(x, s):
        calls.append(s)
        return x * 0.5

    sig = [0.0, 0.25, 0.5, 1.0]
    for solver, want in (("euler", 3), ("rf_solver", 6), ("fireflow", 4)):
        calls.clear()
        fi.ode_solve(x0, torch.ones(1, 2, 2, 2), sig, solver, invert=True)
        assert len(calls) == want


def test_bad_inputs_name_node_and_input(flux, sd15_model):
    lat = tiny_models.dit_latent(size=8)
    pos = tiny_models.dit_conditioning()
    sig = scheduler_sigmas(flux, 4)
    with pytest.raises(NodeInputError, match=r"\[Flow Inversion\] input 'model'"):
        run_node(FlowInversion, model=sd15_model, latent=tiny_models.latent(), positive=tiny_models.conditioning(),
                 sigmas=sig, solver="euler", cfg=1.0)
    with pytest.raises(NodeInputError, match=r"\[Flow Inversion\] input 'sigmas'.*end at 0"):
        run_node(FlowInversion, model=flux, latent=lat, positive=pos, sigmas=sig[:-1], solver="euler", cfg=1.0)
    with pytest.raises(NodeInputError, match=r"\[Edit-friendly Flow Inversion\] input 'cfg'"):
        run_node(EditFriendlyFlowInversion, model=flux, latent=lat, positive=pos, sigmas=sig, eta=1.0, seed=0, cfg=2.0)
    with pytest.raises(NodeInputError, match=r"input 'positive'.*width 8"):
        run_node(FlowInversion, model=flux, latent=lat, positive=tiny_models.dit_conditioning(width=8), sigmas=sig,
                 solver="euler", cfg=1.0)
    with pytest.raises(NodeInputError, match=r"\[Edit-friendly Flow\] input 'inversion'"):
        run_node(EditFriendlyFlowSampler, inversion="nope")


def test_sampler_refuses_other_sigmas(flux):
    _, inv, (noise, sampler, sig, lat) = _reconstruct(flux, EditFriendlyFlowInversion, steps=4, eta=1.0, seed=0)
    (s2,) = run_node(EditFriendlyFlowSampler, inversion=inv)
    for sampler, node in ((s2, "Edit-friendly Flow"), (sampler, "Edit-friendly Flow Inversion")):
        with pytest.raises(NodeInputError, match=rf"\[{node}\] input 'sigmas'.*not a run of the inversion"):
            sampler_custom_advanced(flux, noise, sampler, scheduler_sigmas(flux, 5), lat, tiny_models.dit_conditioning())


def test_noise_refuses_a_latent_of_another_size(flux):
    """The inversion's NOISE given another latent_image: a clear error naming the inversion node and 'latent', not
    ComfyUI's raw size mismatch in noise scaling."""
    _, inv, (noise, sampler, sig, lat) = _reconstruct(flux, EditFriendlyFlowInversion, steps=4, eta=1.0, seed=0)
    other = {"samples": torch.zeros(1, lat["samples"].shape[1], 16, 16)}
    with pytest.raises(NodeInputError, match=r"\[Edit-friendly Flow Inversion\] input 'latent'.*same LATENT"):
        sampler_custom_advanced(flux, noise, sampler, sig, other, tiny_models.dit_conditioning())
