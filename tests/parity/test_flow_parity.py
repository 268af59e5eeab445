"""FlowEdit and SEGA on flow models against ports of the official code (tests/parity/flow_reference.py) on the tiny
ComfyUI FLUX and its diffusers FluxTransformer2DModel twin: the pack's nodes run inside stock ComfyUI sampling
(SamplerCustomAdvanced / SamplerCustom with the euler SAMPLER), the references in diffusers' packed token space."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from tools.support import tiny_models  # noqa: E402
from tools.support.diffusers_bridge import flux_ids, flux_twin, pack, unpack  # noqa: E402
from tools.support.flow_calls import _call, scheduler_sigmas  # noqa: E402
from tools.support.node_calls import run_node  # noqa: E402
from dragedit.core import host  # noqa: E402
from dragedit.nodes.flowedit import FlowEdit  # noqa: E402
from dragedit.nodes.sega import SEGAGuidance  # noqa: E402

import flow_reference as ref  # noqa: E402

SIZE = 8


@pytest.fixture(scope="module")
def flux():
    return tiny_models.flux()


@pytest.fixture(scope="module")
def twin(flux):
    return flux_twin(flux)


def _embeds(cond):
    c, extra = cond[0]
    _img_ids, txt_ids = flux_ids(SIZE, SIZE, c.shape[1])
    return c.float(), extra["pooled_output"].float(), txt_ids


def test_twin_velocity_matches_comfy(flux, twin):
    """The twin is the same network: ComfyUI's x̂0 of the tiny FLUX gives the twin's velocity (v = (x − x̂0)/σ)."""
    import comfy.samplers
    cond = tiny_models.dit_conditioning()
    x = torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    s = 0.6
    with torch.inference_mode():
        x0 = flux.model.apply_model(x, torch.tensor([s]), c_crossattn=cond[0][0], y=cond[0][1]["pooled_output"])
    v_comfy = (x - x0) / s
    img_ids, _ = flux_ids(SIZE, SIZE, 8)
    emb, pooled, txt_ids = _embeds(cond)
    v_twin = unpack(ref.calc_v_flux(twin, pack(x), emb, pooled, None, txt_ids, img_ids, s), SIZE, SIZE)
    assert torch.allclose(v_comfy, v_twin, atol=2e-5), float((v_comfy - v_twin).abs().max())


# ------------------------------------------------------------------------------------------------------ FlowEdit

def _flowedit_comfy(flux, lat, src, tar, sigmas, **kw):
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, RandomNoise, SamplerCustomAdvanced
    g, = run_node(FlowEdit, model=flux, source=src, target=tar, **kw)
    with torch.inference_mode():
        sampler = _call(KSamplerSelect, sampler_name="euler")[0]
        noise = _call(RandomNoise, noise_seed=123)[0]
        out = _call(SamplerCustomAdvanced, noise=noise, guider=g, sampler=sampler, sigmas=sigmas, latent_image=lat)
    return host.process_in(flux, out[0]["samples"])


@pytest.mark.parametrize("n_avg,n_min,n_max", [(1, 0, 6), (2, 0, 8), (1, 2, 7)])
def test_flowedit_matches_official_loop(flux, twin, n_avg, n_min, n_max):
    steps, seed = 8, 5
    lat = tiny_models.dit_latent(seed=2, size=SIZE)
    src, tar = tiny_models.dit_conditioning(0), tiny_models.dit_conditioning(7)
    sigmas = scheduler_sigmas(flux, steps)
    got = _flowedit_comfy(flux, lat, src, tar, sigmas[steps - n_max:], source_cfg=1.0, target_cfg=1.0,
                          n_avg=n_avg, seed=seed, n_min=n_min)

    x_src = host.process_in(flux, lat["samples"]).float()
    gen = torch.Generator().manual_seed(seed)           # the draws FlowEdit's torch.randn_like makes, in the same order
    img_ids, _ = flux_ids(SIZE, SIZE, 8)
    want = ref.flowedit_flux(twin, pack(x_src), sigmas.tolist(), (*_embeds(src), None), (*_embeds(tar), None),
                             img_ids, lambda: pack(torch.randn(x_src.shape, generator=gen)), T_steps=steps,
                             n_avg=n_avg, n_min=n_min, n_max=n_max)
    want = unpack(want, SIZE, SIZE)
    assert (want - x_src).abs().max() > 1e-2                       # the edit moved the latent
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())


def test_flowedit_with_the_source_prompt_keeps_the_image(flux):
    lat = tiny_models.dit_latent(seed=2, size=SIZE)
    src = tiny_models.dit_conditioning(0)
    got = _flowedit_comfy(flux, lat, src, src, scheduler_sigmas(flux, 6), source_cfg=1.0, target_cfg=1.0,
                          n_avg=1, seed=0)
    assert torch.allclose(got, host.process_in(flux, lat["samples"]), atol=1e-5)


# ------------------------------------------------------------------------------------------------------ SEGA

def _sega_model(flux, concepts, momentum_scale, momentum_beta):
    m = flux
    for c in concepts:
        m, = run_node(SEGAGuidance, model=m, concept=c["cond"], direction="remove" if c["reverse"] else "add",
                      scale=c["scale"], threshold=c["threshold"], warmup=c["warmup"], cooldown=c["cooldown"] or 0,
                      weight=c["weight"], momentum_scale=momentum_scale, momentum_beta=momentum_beta, mode="SEGA")
    return m


CASES = {
    "simple_sega_two_concepts": dict(cfg=1.0, negative=False, momentum=(0.3, 0.6), concepts=[
        dict(seed=3, reverse=False, scale=4.0, threshold=0.8, warmup=1, cooldown=5, weight=1.0),
        dict(seed=4, reverse=True, scale=3.0, threshold=0.9, warmup=2, cooldown=6, weight=0.6)]),
    "true_cfg_one_concept": dict(cfg=2.5, negative=True, momentum=(0.1, 0.4), concepts=[
        dict(seed=3, reverse=False, scale=5.0, threshold=0.9, warmup=0, cooldown=None, weight=1.0)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sega_on_flux_matches_semantic_guidance_pipeline_step_by_step(flux, twin, case):
    import comfy.sample
    import comfy.samplers
    spec = CASES[case]
    steps = 6
    prompt = tiny_models.dit_conditioning(0)
    negative = tiny_models.dit_conditioning(9) if spec["negative"] else []
    concepts = [dict(c, cond=tiny_models.dit_conditioning(c["seed"])) for c in spec["concepts"]]
    model = _sega_model(flux, concepts, *spec["momentum"])
    sigmas = scheduler_sigmas(flux, steps)
    empty = torch.zeros(1, 16, SIZE, SIZE)
    noise = comfy.sample.prepare_noise(empty, 11)
    ours = []
    with torch.inference_mode():
        out = comfy.sample.sample_custom(model, noise, spec["cfg"], comfy.samplers.sampler_object("euler"), sigmas,
                                         prompt, negative, empty, callback=lambda i, x0, x, n: ours.append(x.clone()),
                                         disable_pbar=True, seed=11)
    ours.append(host.process_in(flux, out))

    img_ids, _ = flux_ids(SIZE, SIZE, 8)
    theirs = [noise.clone()]
    ref.flux_sega(twin, pack(noise.float()), sigmas.tolist(), _embeds(prompt), [_embeds(c["cond"]) for c in concepts],
                  img_ids, negative=_embeds(negative)[:2] if spec["negative"] else None, true_cfg_scale=spec["cfg"],
                  reverse_editing_direction=[c["reverse"] for c in concepts],
                  edit_guidance_scale=[c["scale"] for c in concepts], edit_warmup_steps=[c["warmup"] for c in concepts],
                  edit_cooldown_steps=None if concepts[0]["cooldown"] is None else [c["cooldown"] for c in concepts],
                  edit_threshold=[c["threshold"] for c in concepts], edit_momentum_scale=spec["momentum"][0],
                  edit_mom_beta=spec["momentum"][1], edit_weights=[c["weight"] for c in concepts],
                  on_step=lambda i, x: theirs.append(unpack(x, SIZE, SIZE)))
    assert len(ours) == len(theirs) == steps + 1
    plain = []
    with torch.inference_mode():
        comfy.sample.sample_custom(flux, noise, spec["cfg"], comfy.samplers.sampler_object("euler"), sigmas, prompt,
                                   negative, empty, callback=lambda i, x0, x, n: plain.append(x.clone()),
                                   disable_pbar=True, seed=11)
    assert (plain[-1] - ours[-2]).abs().max() > 1e-3               # the concepts changed the run
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (i, float((a - b).abs().max()))
