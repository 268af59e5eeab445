"""core/host/dit.py and the flow branch of core/schedule.py on real tiny DiTs: a FLUX built from config and an SD3
loaded through comfy.sd.load_diffusion_model."""
import pytest
import torch

from tools.support import tiny_models
from dragedit.core import host, schedule
from dragedit.core.host import dit, facts, families


def test_families_and_supported_check(flux, sd3, sd15_model):
    assert families.family_of(flux) is dit and families.family_of(sd3) is dit and families.family_of(sd15_model) is not dit
    assert host.check_supported(flux) == "flow" and host.check_supported(sd3) == "flow"
    assert dit.kind_of(flux) == dit.FLUX and dit.kind_of(sd3) == dit.SD3 and dit.kind_of(sd15_model) is None
    assert facts.is_flow(flux) and facts.is_flow(sd3) and not facts.is_flow(sd15_model)
    import comfy.model_sampling
    assert isinstance(facts.model_sampling(sd3), comfy.model_sampling.ModelSamplingDiscreteFlow)
    assert isinstance(facts.model_sampling(flux), comfy.model_sampling.ModelSamplingFlux)


def test_unet_nodes_refuse_flow_models(flux):
    from dragedit.nodes._errors import NodeInputError
    from dragedit.nodes._inputs import supported_model
    with pytest.raises(NodeInputError, match="flow-matching DiT"):
        supported_model(flux)
    assert supported_model(flux, flow=True) == "flow"


def test_eps_sampling_on_a_dit_is_refused(flux):
    import comfy.model_base
    eps = host.clone(flux)
    eps.add_object_patch("model_sampling", comfy.model_base.model_sampling(flux.model.model_config,
                                                                           comfy.model_base.ModelType.EPS))
    with pytest.raises(host.HostError, match="flow-matching sampling"):
        host.check_supported(eps)


def test_layer_map(flux, sd3):
    fb = dit.blocks(flux)
    assert [b.key for b in fb] == [("double", 0), ("double", 1), ("single", 0), ("single", 1)]
    assert [b.order for b in fb] == [0, 1, 2, 3] and all(b.heads == 4 and b.head_dim == 32 for b in fb)
    assert [b.patch_key for b in dit.select_blocks(flux, kinds=["single"])] == [("single_block", 0), ("single_block", 1)]
    sb = dit.blocks(sd3)
    assert [b.key for b in sb] == [("double", 0), ("double", 1)] and sb[0].heads == 2 and sb[0].head_dim == 64
    assert dit.has_rope(flux) and not dit.has_rope(sd3)


def test_token_map(flux, sd3):
    tm = dit.token_map(flux, (16, 12), 5, ref_hws=[(8, 8)])     # 2 x 2 patches
    assert (tm.txt, tm.img, tm.ref, tm.grid) == ((0, 5), (5, 53), (53, 69), (8, 6))
    tm3 = dit.token_map(sd3, (8, 7), 3)     # patch 2: the latent padded to whole patches
    assert tm3.grid == (4, 4) and tm3.img == (3, 19) and tm3.ref == (19, 19)
    assert dit.token_map_of(30, 4, 16, (4, 4)).ref == (20, 30)
    with pytest.raises(host.HostError, match="cannot hold"):
        dit.token_map_of(10, 4, 16)
    ids = dit.image_ids(flux, (6, 8))
    assert ids.shape == (1, 12, 3) and ids[0, 5].tolist() == [0.0, 1.0, 1.0]


def test_flow_schedule_branch():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert torch.equal(schedule.rescale_to_sigma(x, 0.3, 0.7, flow=True), x)
    for s in (0.0, 0.25, 0.5, 0.9):
        ab = float(schedule.alpha_bar(s, flow=True))
        a, b = 1 - s, s
        # z = x / sqrt(a² + b²) = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε
        assert ab == pytest.approx(a * a / (a * a + b * b))
        z = schedule.to_z(x, s, flow=True)
        assert torch.allclose(z, x / (a * a + b * b) ** 0.5) and torch.allclose(schedule.from_z(z, s, flow=True), x)
    # the VP branch is unchanged
    assert float(schedule.alpha_bar(2.0)) == pytest.approx(0.2)


def test_flow_step_is_comfyuis_rectified_flow_ancestral_step():
    from comfy.k_diffusion import sampling as K
    torch.manual_seed(0)
    x0 = torch.randn(1, 4, 4, 4)
    sigmas = torch.tensor([1.0, 0.7, 0.4, 0.0])
    noises = [torch.randn(1, 4, 4, 4) for _ in range(3)]
    calls = iter(noises)
    denoise = lambda x, s, **_: x0 * 0.9 + 0.1 * x          # any deterministic model
    x = torch.randn(1, 4, 4, 4)
    ref = K.sample_euler_ancestral_RF(denoise, x.clone(), sigmas, eta=0.6, disable=True,
                                      noise_sampler=lambda a, b: next(calls))
    y = x.clone()
    for i in range(3):
        y = schedule.flow_step(y, denoise(y, sigmas[i]), float(sigmas[i]), float(sigmas[i + 1]), noises[i], eta=0.6)
    assert torch.allclose(y, ref, atol=1e-6)


def test_session_starts_flow_models_from_the_clean_latent(flux):
    lat = tiny_models.dit_latent()["samples"]
    seen = {}

    def loop(den, x, s):
        seen["x"] = x.clone()
        return x

    with torch.inference_mode():
        host.session(host.clone(flux), tiny_models.dit_conditioning(), None, 1.0, lat, torch.tensor([1.0, 0.0]), loop)
    assert torch.allclose(seen["x"], host.process_in(flux, lat), atol=1e-6)
