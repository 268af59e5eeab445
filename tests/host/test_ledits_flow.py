"""LEDITS on flow models and FlowEdit, in-process on real tiny DiTs: SEGA Guidance and LEDITS Edit on a tiny FLUX,
a tiny SD3 through comfy.sd.load_diffusion_model and the shapes demo DiT; the FlowEdit GUIDER with stock
SamplerCustomAdvanced; their refusals name node and input."""
import pytest
import torch

from tools.support import tiny_models
from tools.support.flow_calls import _call, psnr, sampler_custom_advanced, scheduler_sigmas
from tools.support.node_calls import run_node
from dragedit.core import host
from dragedit.nodes._errors import NodeInputError
from dragedit.nodes.flow_inversion import EditFriendlyFlowInversion, EditFriendlyFlowSampler
from dragedit.nodes.flowedit import FlowEdit
from dragedit.nodes.sega import LEDITSEdit, SEGAGuidance

SEGA = dict(direction="add", threshold=0.9, warmup=0, cooldown=0, weight=1.0, momentum_scale=0.1, momentum_beta=0.4)


@pytest.fixture(scope="module")
def shapes_dit():
    from dragedit.demo.shapes import dit
    model, clip, vae = dit.load(dit.WEIGHTS)
    return model, clip.encoder, vae


def _sega_edit(model, scale, negative=None, cfg=1.0, mode="SEGA", **kw):
    """Edit-friendly flow inversion + SEGA Guidance + the inversion's sampler in SamplerCustomAdvanced; PSNR (dB)
    of the result against the input latent."""
    lat = tiny_models.dit_latent(size=8)
    pos = tiny_models.dit_conditioning()
    sig = scheduler_sigmas(model, 6)
    noise, sampler, _ = run_node(EditFriendlyFlowInversion, model=model, latent=lat, positive=pos, sigmas=sig,
                                 eta=1.0, seed=1, cfg=cfg, negative=negative)
    m, = run_node(SEGAGuidance, model=model, concept=tiny_models.dit_conditioning(5), scale=scale, mode=mode,
                  **dict(SEGA, **kw))
    out = sampler_custom_advanced(m, noise, sampler, sig, lat, pos, negative=negative, cfg=cfg)
    return psnr(host.process_in(model, out), host.process_in(model, lat["samples"]))


@pytest.mark.parametrize("which", ["flux", "sd3"])
def test_sega_on_flow_scale_zero_reconstructs_and_a_concept_edits(which, request):
    model = request.getfixturevalue(which)
    assert _sega_edit(model, 0.0) >= 60.0                           # simple SEGA, no negative (BasicGuider)
    assert _sega_edit(model, 5.0) < 40.0


def test_sega_on_flow_true_cfg_and_ledits_pp(flux):
    neg = tiny_models.dit_conditioning(9)
    assert _sega_edit(flux, 0.0, negative=neg, cfg=2.0) >= 60.0
    assert _sega_edit(flux, 5.0, negative=neg, cfg=2.0) < 40.0
    assert _sega_edit(flux, 5.0, mode="LEDITS++", cross_attention_mask=False, negative=neg) < 60.0
    with pytest.raises(NodeInputError, match=r"\[SEGA Guidance\] input 'cross_attention_mask'.*no cross-attention"):
        _sega_edit(flux, 5.0, mode="LEDITS++", cross_attention_mask=True)


def test_ledits_edit_on_the_shapes_dit(shapes_dit):
    from dragedit.demo.shapes import dit
    model, enc, vae = shapes_dit
    z = tiny_models.dit_latent(seed=4, size=16, channels=12)
    src, neg = dit.conditioning(enc, ["red circle"]), dit.conditioning(enc, [""])
    blue = dit.conditioning(enc, ["blue"])
    base = dict(model=model, vae=vae, source=src, negative=neg, steps=10, skip=2, source_cfg=1.0, target_cfg=1.0,
                seed=0, latent=z, concept_1=blue)
    for mode in ("SEGA", "LEDITS++"):
        _img, out = run_node(LEDITSEdit, mode=mode, scale_1=0.0, **base)
        assert psnr(out["samples"], z["samples"]) >= 60.0, mode
    img, out = run_node(LEDITSEdit, mode="SEGA", scale_1=10.0, **base)
    assert psnr(out["samples"], z["samples"]) < 50.0 and img.shape == (1, 32, 32, 3)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, :16] = 1.0                            # latent cells rows 4-11, columns 0-7
    _img, kept = run_node(LEDITSEdit, mode="SEGA", scale_1=10.0, mask=mask, **base)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, :8] = True
    got, want = kept["samples"][..., ~inside], z["samples"][..., ~inside]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)          # the input kept outside the mask
    assert (kept["samples"] - z["samples"])[..., inside].abs().max() > 1e-2
    with pytest.raises(NodeInputError, match=r"\[LEDITS Edit\] input 'skip'"):
        run_node(LEDITSEdit, mode="SEGA", **dict(base, skip=10))


def _flowedit(model, source, target, sigmas, sampler="euler", **kw):
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, RandomNoise, SamplerCustomAdvanced
    lat = tiny_models.dit_latent(seed=2, size=8)
    g, = run_node(FlowEdit, model=model, source=source, target=target, **dict(dict(
        source_cfg=1.0, target_cfg=1.0, n_avg=1, seed=0), **kw))
    with torch.inference_mode():
        s = _call(KSamplerSelect, sampler_name=sampler)[0]
        out = _call(SamplerCustomAdvanced, noise=_call(RandomNoise, noise_seed=1)[0], guider=g, sampler=s,
                    sigmas=sigmas, latent_image=lat)[0]["samples"]
    return psnr(host.process_in(model, out), host.process_in(model, lat["samples"]))


@pytest.mark.parametrize("which", ["flux", "sd3"])
def test_flowedit_keeps_the_image_for_the_source_prompt_and_edits_for_another(which, request):
    model = request.getfixturevalue(which)
    src, tar, neg = (tiny_models.dit_conditioning(s) for s in (0, 7, 9))
    sig = scheduler_sigmas(model, 8)
    assert _flowedit(model, src, src, sig) >= 60.0
    assert _flowedit(model, src, src, sig[2:], negative=neg, source_cfg=3.0, target_cfg=3.0) >= 60.0
    assert _flowedit(model, src, tar, sig[2:], n_avg=2, n_min=1) < 40.0


def test_flowedit_refusals_name_node_and_input(flux, sd15_model):
    src, tar = tiny_models.dit_conditioning(0), tiny_models.dit_conditioning(7)
    sig = scheduler_sigmas(flux, 4)
    with pytest.raises(NodeInputError, match=r"\[FlowEdit\] input 'model'"):
        run_node(FlowEdit, model=sd15_model, source=tiny_models.conditioning(), target=tiny_models.conditioning(),
                 source_cfg=1.0, target_cfg=1.0, n_avg=1, seed=0)
    with pytest.raises(NodeInputError, match=r"\[FlowEdit\] input 'target_cfg'.*no negative"):
        run_node(FlowEdit, model=flux, source=src, target=tar, source_cfg=1.0, target_cfg=4.0, n_avg=1, seed=0)
    with pytest.raises(NodeInputError, match=r"\[FlowEdit\] input 'target'.*width 8"):
        run_node(FlowEdit, model=flux, source=src, target=tiny_models.dit_conditioning(width=8), source_cfg=1.0,
                 target_cfg=1.0, n_avg=1, seed=0)
    with pytest.raises(NodeInputError, match=r"\[FlowEdit\] input 'sampler'.*euler"):
        _flowedit(flux, src, tar, sig, sampler="heun")
    with pytest.raises(NodeInputError, match=r"\[FlowEdit\] input 'sigmas'.*end at 0"):
        _flowedit(flux, src, tar, sig[:-1])


def test_sega_and_flowedit_on_qwen_image_5d_latents():
    """Qwen-Image's 5-D latents [B, C, T, H, W]: SEGA's per-token threshold and FlowEdit run on them."""
    q = tiny_models.qwen_image()
    lat = {"samples": tiny_models.dit_latent(size=8)["samples"].unsqueeze(2)}
    pos = [[tiny_models.dit_conditioning(0)[0][0], {}]]
    con = [[tiny_models.dit_conditioning(5)[0][0], {}]]
    sig = scheduler_sigmas(q, 4)
    z0 = host.process_in(q, lat["samples"])
    noise, sampler, _ = run_node(EditFriendlyFlowInversion, model=q, latent=lat, positive=pos, sigmas=sig, eta=1.0,
                                 seed=1, cfg=1.0)
    dbs = []
    for scale in (0.0, 5.0):
        m, = run_node(SEGAGuidance, model=q, concept=con, scale=scale, mode="SEGA", **SEGA)
        dbs.append(psnr(host.process_in(q, sampler_custom_advanced(m, noise, sampler, sig, lat, pos)), z0))
    assert dbs[0] >= 60.0 and dbs[1] < 40.0
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, RandomNoise, SamplerCustomAdvanced
    for target, lo, hi in ((pos, 60.0, float("inf")), (con, 0.0, 50.0)):
        g, = run_node(FlowEdit, model=q, source=pos, target=target, source_cfg=1.0, target_cfg=1.0, n_avg=1, seed=0)
        with torch.inference_mode():
            out = _call(SamplerCustomAdvanced, noise=_call(RandomNoise, noise_seed=1)[0], guider=g,
                        sampler=_call(KSamplerSelect, sampler_name="euler")[0], sigmas=sig,
                        latent_image=lat)[0]["samples"]
        assert lo <= psnr(host.process_in(q, out), z0) < hi


@pytest.mark.parametrize("mode", ["SEGA", "LEDITS++"])
def test_user_mask_on_flow_is_taken_against_the_concepts_reference(mode):
    """On a flow DiT the user mask confines ψ_c against the reference the concept term uses: the velocity of the
    prompt for simple SEGA (cfg 1), the unconditional one for LEDITS++ (which never uses the prompt). A zero mask
    therefore leaves exactly the unguided prediction, a mask of ones exactly the unmasked one."""
    from dragedit.core import ledits, sega
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond, uncond, extra = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    args = {"input": x, "sigma": torch.tensor([0.5]), "cond_scale": 1.0, "cond": cond, "uncond": uncond}

    def combine(mask):
        entry = ledits.ConceptEntry(conditioning=None, mask=mask,
                                    concept=sega.SegaConcept(scale=5.0, threshold=0.5, warmup=0))
        patch = ledits.SegaPatch(entries=(entry,), mode=mode, flow=True, patch=2, cross_attention_mask=False)
        call = host.CondGuidanceCall(args, [extra], {}, step=3, timestep=500.0, attn_maps=[None], prev_cfg=None,
                                     steps=10, has_uncond=True)
        return patch.combine(call)

    unguided = uncond if mode == "LEDITS++" else cond          # cfg 1: the prompt's prediction
    torch.testing.assert_close(combine(torch.zeros(8, 8)), unguided, rtol=0, atol=1e-6)
    torch.testing.assert_close(combine(torch.ones(16, 16)), combine(None), rtol=0, atol=1e-6)
    assert (combine(None) - unguided).abs().max() > 1e-2
    if mode == "SEGA":     # simple SEGA's term by hand: ψ against the prompt's velocity (the FLUX pipeline at cfg 1)
        from dragedit.core import sega_flow
        c = sega.SegaConcept(scale=5.0, threshold=0.5, warmup=0)
        want = cond + sega_flow.flow_sega_term(3, 10, cond / 0.5, [extra / 0.5], [c], sega.SegaState(), 0.1, 0.4,
                                               2) * 0.5
        torch.testing.assert_close(combine(None), want, rtol=0, atol=1e-6)


def test_masked_concepts_keep_the_image_outside_the_mask_on_flow(flux):
    """With every concept masked, the edit-friendly flow sampler keeps the inversion's own states outside the masks'
    union (core/ledits.mask_region): SEGA Guidance with a mask + Edit-friendly Flow Inversion's sampler in stock
    SamplerCustomAdvanced (or the Edit-friendly Flow Sampler node's) give the input latent back outside the mask
    and an edit inside; a concept without a mask
    acts everywhere, so nothing is kept."""
    lat = tiny_models.dit_latent(size=8)
    pos = tiny_models.dit_conditioning()
    sig = scheduler_sigmas(flux, 6)
    noise, sampler, inv = run_node(EditFriendlyFlowInversion, model=flux, latent=lat, positive=pos, sigmas=sig,
                                   eta=1.0, seed=1, cfg=1.0)
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    m, = run_node(SEGAGuidance, model=flux, concept=tiny_models.dit_conditioning(5), scale=5.0, mode="SEGA", mask=mask,
                  **SEGA)
    out = sampler_custom_advanced(m, noise, sampler, sig, lat, pos)
    z = lat["samples"]
    torch.testing.assert_close(out[..., 4:], z[..., 4:], rtol=0, atol=1e-5)
    assert (out[..., :4] - z[..., :4]).abs().max() > 1e-2
    sampler_node, = run_node(EditFriendlyFlowSampler, inversion=inv)     # the sampler node keeps it too
    assert torch.equal(sampler_custom_advanced(m, noise, sampler_node, sig, lat, pos), out)
    both, = run_node(SEGAGuidance, model=m, concept=tiny_models.dit_conditioning(6), scale=5.0, mode="SEGA", **SEGA)
    out2 = sampler_custom_advanced(both, noise, sampler, sig, lat, pos)
    assert (out2[..., 4:] - z[..., 4:]).abs().max() > 1e-2
