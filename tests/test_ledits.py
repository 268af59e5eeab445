"""LEDITS on real ComfyUI code: edit-friendly DDPM inversion + sampler through stock sampling, SEGA / LEDITS++
guidance nodes against diffusers' pipelines on the same weights, batching, chaining, errors, the server."""
from __future__ import annotations

import math

import pytest
import torch

from support import tiny_models
from conftest import run_node
from dragedit.core import ddpm_inversion as ef
from dragedit.core import host, ledits
from dragedit.core import sega as S
from dragedit.nodes._common import NodeInputError
from dragedit.nodes.ddpm_inversion import DDPMInversion, EditFriendlyDDPMSampler
from dragedit.nodes.sega import LEDITSEdit, SEGAGuidance

# A 3-level SD1.5-shaped UNet: cross-attention at 1/4 of the latent resolution, where LEDITS++ reads its masks.
SD15_3LEVEL = dict(tiny_models.SD15_UNET, channel_mult=[1, 2, 2], num_res_blocks=[1, 1, 1],
                   transformer_depth=[1, 1, 1], transformer_depth_output=[1] * 6)


def sample_custom(model, positive, negative, cfg, sampler, sigmas, samples, callback=None):
    """What the stock SamplerCustom node runs (add_noise off), inside inference mode like the executor."""
    import comfy.sample
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, torch.zeros_like(samples), float(cfg), sampler, sigmas, positive,
                                          negative, samples, callback=callback, disable_pbar=True)


def stock_sampler_custom(model, positive, negative, cfg, sampler, sigmas, latent):
    """ComfyUI's own SamplerCustom node (add_noise off), called like the executor calls it."""
    from comfy_extras.nodes_custom_sampler import SamplerCustom
    fn = getattr(SamplerCustom, "execute", None) or SamplerCustom().sample
    with torch.inference_mode():
        out = fn(model=model, add_noise=False, noise_seed=0, cfg=cfg, positive=positive, negative=negative,
                 sampler=sampler, sigmas=sigmas, latent_image=latent)
    return (out.args if hasattr(out, "args") else out)[0]["samples"]


def ksampler(name):
    import comfy.samplers
    return comfy.samplers.ksampler(name)


def sega_node(model, concept, direction="add", scale=5.0, threshold=0.9, warmup=0, cooldown=0, weight=1.0,
              momentum_scale=0.1, momentum_beta=0.4, mode="SEGA", cross_attention_mask=True, concept_tokens=0):
    return run_node(SEGAGuidance, model=model, concept=concept, direction=direction, scale=scale, threshold=threshold,
                    warmup=warmup, cooldown=cooldown, weight=weight, momentum_scale=momentum_scale,
                    momentum_beta=momentum_beta, mode=mode, cross_attention_mask=cross_attention_mask,
                    concept_tokens=concept_tokens)[0]


class UNetCounter:
    """model_function_wrapper counting UNet calls and rows (batch entries) with their cond_or_uncond."""

    def __init__(self):
        self.calls: list[tuple[int, list]] = []

    def __call__(self, apply, a):
        self.calls.append((int(a["input"].shape[0]), list(a["cond_or_uncond"])))
        return apply(a["input"], a["timestep"], **a["c"])

    @property
    def rows(self) -> int:
        return sum(n for n, _ in self.calls)


def counted(model):
    c = UNetCounter()
    m = model.clone()
    m.set_model_unet_function_wrapper(c)
    return m, c


# ------------------------------------------------------------------------------ inversion + sampler (item 1, 2)

@pytest.mark.parametrize("kind", ["sd15", "vpred", "sdxl"])
def test_inversion_node_then_stock_sampling_reproduces_the_latent(kind):
    model = getattr(tiny_models, kind)()
    pooled = kind == "sdxl"
    pos, neg = tiny_models.conditioning(1, pooled=pooled), tiny_models.conditioning(2, pooled=pooled)
    lat = tiny_models.latent(0)
    start, inv, sig = run_node(DDPMInversion, model=model, latent=lat, positive=pos, steps=10, skip=3, source_cfg=3.5,
                               eta=1.0, seed=5, negative=neg)
    assert isinstance(inv, ef.Inversion) and inv.kind == "ddpm" and inv.steps == 7 and sig.shape == (8,)
    assert float(sig[-1]) == 0.0 and torch.allclose(sig, host.ddim_sigmas(model, 10)[3:])
    (sampler,) = run_node(EditFriendlyDDPMSampler, inversion=inv)
    out = stock_sampler_custom(model, pos, neg, 3.5, sampler, sig, start)
    torch.testing.assert_close(out, lat["samples"], rtol=0, atol=2e-6 * float(lat["samples"].abs().max()))
    # another prompt edits instead
    other = sample_custom(model, tiny_models.conditioning(9, pooled=pooled), neg, 3.5, sampler, sig, start["samples"])
    assert (other - lat["samples"]).abs().max() > 1e-3


def test_sampler_splits_and_residual_switch(sd15_model, cond):
    pos, neg = cond
    lat = tiny_models.latent(1)
    start, inv, sig = run_node(DDPMInversion, model=sd15_model, latent=lat, positive=pos, steps=10, skip=0,
                               source_cfg=1.0, eta=1.0, seed=1)
    (sampler,) = run_node(EditFriendlyDDPMSampler, inversion=inv)
    mid = sample_custom(sd15_model, pos, neg, 1.0, sampler, sig[:5], start["samples"])  # SplitSigmas: high, then low
    out = sample_custom(sd15_model, pos, neg, 1.0, sampler, sig[4:], mid)
    torch.testing.assert_close(out, lat["samples"], rtol=0, atol=1e-5)
    (plain,) = run_node(EditFriendlyDDPMSampler, inversion=inv, exact_last_step=False)
    rough = sample_custom(sd15_model, pos, neg, 1.0, plain, sig, start["samples"])
    assert (rough - lat["samples"]).abs().max() > 1e-4


def test_inversion_grid_is_diffusers_leading_grid_for_any_step_count(sd15_model, cond):
    """steps = 12 gives 12 steps at t = 1 + 83·k (diffusers' DDIM/LEDITS grid); ComfyUI's ddim_uniform alone would
    add a 13th, noisier one when 1000 % steps != 0."""
    pos, _ = cond
    _, inv, sig = run_node(DDPMInversion, model=sd15_model, latent=tiny_models.latent(0), positive=pos, steps=12,
                           skip=0, source_cfg=1.0, eta=1.0, seed=0)
    ts = [round(host.timestep_of(sd15_model, s)) for s in sig[:-1]]
    assert inv.steps == 12 and ts == [1 + 83 * k for k in range(12)][::-1]


def test_inversion_and_sampler_errors(sd15_model, cond):
    pos, neg = cond
    lat = tiny_models.latent(0)
    kw = dict(model=sd15_model, latent=lat, positive=pos, steps=10, skip=0, source_cfg=1.0, eta=1.0, seed=0)
    with pytest.raises(NodeInputError, match=r"\[DDPM Inversion \(edit-friendly\)\] input 'skip'"):
        run_node(DDPMInversion, **dict(kw, skip=10))
    with pytest.raises(NodeInputError, match="input 'source_cfg'.*negative"):
        run_node(DDPMInversion, **dict(kw, source_cfg=3.5))
    with pytest.raises(NodeInputError, match="input 'positive'.*width"):
        run_node(DDPMInversion, **dict(kw, positive=tiny_models.conditioning(1, width=48)))
    sega_model = sega_node(sd15_model, tiny_models.conditioning(4))
    with pytest.raises(NodeInputError, match="input 'model'.*SEGA"):
        run_node(DDPMInversion, **dict(kw, model=sega_model))
    from dragedit.nodes.inversion import DDIMInversion
    _, ddim_inv, _ = run_node(DDIMInversion, model=sd15_model, latent=lat, positive=pos, steps=4, strength=0.5,
                              record_kv=False)
    with pytest.raises(NodeInputError, match=r"\[Edit-friendly DDPM\] input 'inversion'.*no noise maps"):
        run_node(EditFriendlyDDPMSampler, inversion=ddim_inv)
    start, inv, sig = run_node(DDPMInversion, **kw)
    (sampler,) = run_node(EditFriendlyDDPMSampler, inversion=inv)
    with pytest.raises(ValueError, match="do not match the INVERSION"):
        sample_custom(sd15_model, pos, neg, 1.0, sampler, host.ddim_sigmas(sd15_model, 20), start["samples"])


# ----------------------------------------------------------------------------------- SEGA vs diffusers (item 5)

def _sega_pipeline(model):
    from diffusers.pipelines.deprecated.semantic_stable_diffusion.pipeline_semantic_stable_diffusion import (
        SemanticStableDiffusionPipeline)
    from support.diffusers_bridge import sd15_unet_twin
    import test_sega_math as tsm
    comps = tsm.tiny_sd_components()
    comps["unet"] = sd15_unet_twin(model)
    pipe = SemanticStableDiffusionPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _grid_of(model, timesteps) -> torch.Tensor:
    """ComfyUI sigmas of diffusers' DDIM timesteps, then the final ᾱ_0 step (set_alpha_to_one=False)."""
    ms = host.model_sampling(model)
    return torch.stack([ms.sigmas[int(t)] for t in timesteps] + [ms.sigmas[0]]).float()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_sega_nodes_match_diffusers_semantic_pipeline():
    """diffusers' SemanticStableDiffusionPipeline (DDIM η=0, CFG 7.5, 3 concepts with per-concept direction, scale,
    threshold, warm-up, cool-down, weight and momentum) vs three chained SEGA Guidance nodes on the ComfyUI model
    with the same weights and embeddings, sampled by stock Euler (= DDIM in ComfyUI's parameterisation): the edit term
    γ of every step and the final latent. (Weights drawn with std 0.05 so that ε_c − ε_u stands well above float
    noise: with near-identical concept predictions a threshold decision can flip on rounding alone.)"""
    model = host.build_model(tiny_models.SD15_UNET, latent_format="sd15", prediction="eps", seed=0, init_std=0.05)
    pipe = _sega_pipeline(model)
    embs: list = []
    h = pipe.unet.register_forward_pre_hook(lambda mod, a, kw: embs.append(kw["encoder_hidden_states"].clone()),
                                            with_kwargs=True)
    steps, s_g = 10, 7.5
    z_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(editing_prompt=["glasses", "snow", "hat"], reverse_editing_direction=[False, True, False],
              edit_guidance_scale=[3.0, 4.0, 5.0], edit_threshold=[0.8, 0.9, 0.95], edit_warmup_steps=[0, 2, 4],
              edit_cooldown_steps=[9, 10, 7], edit_weights=[1.0, 0.5, 0.7], edit_momentum_scale=0.3,
              edit_mom_beta=0.6)
    with torch.no_grad():
        ref = pipe(prompt="a cat", height=32, width=32, num_inference_steps=steps, guidance_scale=s_g,
                   latents=z_t.clone(), output_type="latent", **kw).images
        ref_gammas = pipe.sem_guidance.clone()
        plain = pipe(prompt="a cat", height=32, width=32, num_inference_steps=steps, guidance_scale=s_g,
                     latents=z_t.clone(), output_type="latent").images
    h.remove()
    e_u, e_p, *e_c = embs[0].chunk(5)
    edit_model = model
    for i, c in enumerate(e_c):
        edit_model = sega_node(edit_model, [[c, {}]], "remove" if kw["reverse_editing_direction"][i] else "add",
                               kw["edit_guidance_scale"][i], kw["edit_threshold"][i], kw["edit_warmup_steps"][i],
                               kw["edit_cooldown_steps"][i], kw["edit_weights"][i], 0.3, 0.6)
    patch = host.cond_guidance_patch(edit_model, ledits.KEY)
    gammas: list = []
    combine = patch.combine

    def recording(call):
        out = combine(call)
        gammas.append((out - call.cfg()) / call.sigma)
        return out

    patch.combine = recording
    sig = _grid_of(model, pipe.scheduler.timesteps)
    x_t = z_t * torch.sqrt(1 + sig[0] ** 2)
    scale = host.latent_format(model).scale_factor
    to_z = lambda out: out * scale / torch.sqrt(1 + sig[-1] ** 2)  # noqa: E731
    ours = to_z(sample_custom(edit_model, [[e_p, {}]], [[e_u, {}]], s_g, ksampler("euler"), sig, x_t / scale))
    ours_plain = to_z(sample_custom(model, [[e_p, {}]], [[e_u, {}]], s_g, ksampler("euler"), sig, x_t / scale))
    assert len(gammas) == steps
    for i in range(steps):
        torch.testing.assert_close(gammas[i], ref_gammas[i], rtol=0, atol=1e-4)
    tol = 1e-5 * float(ref.abs().max())
    torch.testing.assert_close(ours_plain, plain, rtol=0, atol=tol)
    torch.testing.assert_close(ours, ref, rtol=0, atol=tol)
    assert float((ref - plain).abs().max()) > 1000 * float((ours - ref).abs().max())  # the edit itself is reproduced


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_ledits_pp_nodes_with_cross_attention_masks_match_diffusers():
    """diffusers' LEditsPPPipelineStableDiffusion (edit-friendly DDIM inversion, implicit cross-attention masks
    intersected with the noise-quantile masks, no target CFG) vs SEGA Guidance (LEDITS++) + the Edit-friendly DDPM
    sampler on the same 3-level UNet, with diffusers' noise maps."""
    import comfy.samplers
    import test_sega_math as tsm
    model, pipe = _ledits_pp_twin()
    with torch.no_grad():
        pipe.invert(image=tsm._image(), source_prompt="a cat", source_guidance_scale=3.5, num_inversion_steps=10,
                    skip=0.15, generator=torch.Generator().manual_seed(3))
    embs: list = []
    h = pipe.unet.register_forward_pre_hook(lambda mod, a, kw: embs.append(kw["encoder_hidden_states"].clone()),
                                            with_kwargs=True)
    kw = dict(editing_prompt=["glasses", "snow"], reverse_editing_direction=[False, True],
              edit_guidance_scale=[6.0, 5.0], edit_threshold=[0.7, 0.8], edit_warmup_steps=[0, 2],
              use_cross_attn_mask=True, use_intersect_mask=True)
    with torch.no_grad():
        ref = pipe(output_type="latent", **kw).images
    h.remove()
    e_u, *e_c = embs[0].chunk(3)
    ts, abar, sig = tsm.ddim_grid(pipe)
    assert ts[0] > 800 > ts[1]  # both branches of the t ≤ 800 switch run
    inv = ef.Inversion(sigmas=sig, xts=torch.stack([pipe.init_latents / math.sqrt(abar[0])] * (len(ts) + 1)),
                       zs=pipe.zs.clone(), eta=1.0)
    edit_model = model
    for i, c in enumerate(e_c):
        edit_model = sega_node(edit_model, [[c, {}]], "remove" if kw["reverse_editing_direction"][i] else "add",
                               kw["edit_guidance_scale"][i], kw["edit_threshold"][i], kw["edit_warmup_steps"][i],
                               mode="LEDITS++", cross_attention_mask=True)
    counted_model, counter = counted(edit_model)
    sampler = comfy.samplers.KSAMPLER(ef.make_sampler_fn(inv))
    out = sample_custom(counted_model, [[e_u, {}]], [[e_u, {}]], 1.0, sampler, sig, inv.start / 0.18215)
    ours = out * 0.18215 * math.sqrt(abar[-1])
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-4)
    # LEDITS++ evaluates uncond + concepts only (as diffusers), in one call per step
    assert counter.calls == [(3, [3, 2, 1])] * len(ts)
    # the attention masks matter: without them the result is another one
    plain = model
    for i, c in enumerate(e_c):
        plain = sega_node(plain, [[c, {}]], "remove" if i else "add", kw["edit_guidance_scale"][i],
                          kw["edit_threshold"][i], kw["edit_warmup_steps"][i], mode="LEDITS++",
                          cross_attention_mask=False)
    other = sample_custom(plain, [[e_u, {}]], [[e_u, {}]], 1.0, sampler, sig, inv.start / 0.18215)
    other = other * 0.18215 * math.sqrt(abar[-1])
    assert (other - ref).abs().max() > 100 * (ours - ref).abs().max()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_ledits_pp_inversion_matches_diffusers_invert_with_its_empty_source_prompt():
    """What LEDITS Edit runs in LEDITS++ mode (DDPM Inversion with the negative as positive at cfg 1) equals
    diffusers' LEditsPP `invert` with its default empty source prompt: same grid (diffusers N=10, skip 0.15 is
    steps 11, skip 1 here), same start latent and noise maps from the same seed (all but the last map: diffusers
    steps to ᾱ_0 = final_alpha_cumprod, the pack to σ = 0). Then scale 0 gives the input back, as in diffusers."""
    import test_sega_math as tsm
    model, pipe = _ledits_pp_twin()
    embs: list = []
    h = pipe.unet.register_forward_pre_hook(lambda mod, a, kw: embs.append(kw["encoder_hidden_states"].clone()),
                                            with_kwargs=True)
    image = tsm._image()
    with torch.no_grad():
        pipe.invert(image=image, num_inversion_steps=10, skip=0.15, generator=torch.Generator().manual_seed(3))
        x0 = pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mode() * 0.18215
    h.remove()
    e_u = embs[0][:1]
    assert all(torch.equal(e[:1], e_u) for e in embs)  # the empty prompt only
    ts, abar, sig = tsm.ddim_grid(pipe)
    u = [[e_u, {}]]
    _, inv, sigmas = run_node(DDPMInversion, model=model, latent={"samples": x0 / 0.18215}, positive=u, steps=11,
                              skip=1, source_cfg=1.0, eta=1.0, seed=3, negative=u)
    torch.testing.assert_close(sigmas[:-1].double(), sig[:-1].double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(inv.start, pipe.init_latents / math.sqrt(abar[0]), rtol=0, atol=1e-4)
    zs = pipe.zs
    assert inv.zs.shape == zs.shape
    tol = 1e-5 * float(zs.abs().max())
    torch.testing.assert_close(inv.zs[:-1], zs[:-1], rtol=0, atol=max(tol, 2e-4))


def unet_twin(model, cfg):
    """A diffusers UNet2DConditionModel with the weights of a tiny ComfyUI UNet of config `cfg` (cross-attention
    at every level)."""
    import comfy.utils
    from diffusers import UNet2DConditionModel
    n = len(cfg["channel_mult"])
    unet = UNet2DConditionModel(
        sample_size=cfg["image_size"], in_channels=4, out_channels=4, layers_per_block=cfg["num_res_blocks"][0],
        block_out_channels=tuple(cfg["model_channels"] * k for k in cfg["channel_mult"]),
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cfg["context_dim"], attention_head_dim=cfg["num_heads"], use_linear_projection=True,
        norm_num_groups=32)
    key_map = comfy.utils.unet_to_diffusers(dict(cfg))
    csd = model.model.diffusion_model.state_dict()
    sd = {dk: csd[ck].detach().clone().float() for dk, ck in key_map.items() if ck in csd}
    missing, unexpected = unet.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing[:4], unexpected[:4])
    return unet.eval()


# ------------------------------------------------------------------------ one denoiser call, by hand (item 5)

def _one_step(model, pos, neg, cfg, x, sigma):
    """The guided x̂0 of one denoiser call at (x, σ) through stock sampling (Euler to σ = 0 returns x̂0)."""
    sig = torch.tensor([float(sigma), 0.0])
    return sample_custom(model, pos, neg, cfg, ksampler("euler"), sig, x / 0.18215) * 0.18215


def _x(seed=0, sigma=2.0):
    z0 = tiny_models.latent(seed)["samples"] * 0.18215
    return z0 + sigma * torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed + 100))


def test_remove_is_the_negated_direction_and_threshold_keeps_the_fraction(sd15_model, cond):
    pos, neg = cond
    c = tiny_models.conditioning(7)
    x, s = _x(), 2.0
    base = _one_step(sd15_model, pos, neg, 4.0, x, s)
    add = _one_step(sega_node(sd15_model, c, "add", 6.0, 0.75), pos, neg, 4.0, x, s)
    rem = _one_step(sega_node(sd15_model, c, "remove", 6.0, 0.75), pos, neg, 4.0, x, s)
    d_add, d_rem = add - base, rem - base  # −σ·γ
    torch.testing.assert_close(d_rem, -d_add, rtol=0, atol=1e-5)
    kept = (d_add.abs() > 1e-6).flatten(2).sum(-1)  # per (sample, channel) over 16×16 positions
    n = 256
    assert torch.equal(kept, torch.full_like(kept, n - math.ceil(0.75 * (n - 1))))
    # λ = 0 keeps everything, λ = 1 only the maximum
    full = _one_step(sega_node(sd15_model, c, "add", 6.0, 0.0), pos, neg, 4.0, x, s) - base
    assert int((full.abs() > 1e-6).sum()) == full.numel()
    top = _one_step(sega_node(sd15_model, c, "add", 6.0, 1.0), pos, neg, 4.0, x, s) - base
    assert torch.equal((top.abs() > 1e-6).flatten(2).sum(-1), torch.ones_like(kept))


def test_one_batched_call_equals_separate_calls(sd15_model, cond):
    """Two concepts: one UNet call with 4 rows per step; its result equals the SEGA formula on four separate
    calc_cond_batch calls (one per conditioning) at the same x and σ."""
    import comfy.sampler_helpers
    import comfy.samplers
    pos, neg = cond
    c1, c2 = tiny_models.conditioning(7), tiny_models.conditioning(8)
    m = sega_node(sega_node(sd15_model, c1, "add", 5.0, 0.8), c2, "remove", 3.0, 0.9, weight=0.5)
    cm, counter = counted(m)
    x, s = _x(1), 1.5
    got = _one_step(cm, pos, neg, 6.0, x, s)
    assert counter.calls == [(4, [3, 2, 1, 0])]
    # separately: each conditioning alone through ComfyUI's own cond processing and calc_cond_batch
    sep = {}
    _, sep_counter = counted(sd15_model)

    def loop(den, xx, sig):
        model_k = den._model_k.inner_model  # the CFGGuider
        inner = model_k.inner_model
        mo = den.extra_args["model_options"]
        for name, cc in (("p", pos), ("u", neg), ("c1", c1), ("c2", c2)):
            conds = comfy.samplers.encode_model_conds(inner.extra_conds, comfy.sampler_helpers.convert_cond(cc), xx,
                                                      xx.device, "positive")
            sep[name] = comfy.samplers.calc_cond_batch(inner, [conds], xx, torch.tensor([s]), mo)[0]
        return xx

    with torch.inference_mode():
        host.session(host.clone(sd15_model), pos, neg, 6.0, x / 0.18215, torch.tensor([s, 0.0]), loop)
    eps = {k: (x - v) / s for k, v in sep.items()}
    concepts = [S.SegaConcept(scale=5.0, threshold=0.8, warmup=0), S.SegaConcept(scale=3.0, threshold=0.9, warmup=0,
                                                                                   reverse=True, weight=0.5)]
    e = S.sega_guidance(0, eps["u"], eps["p"], [eps["c1"], eps["c2"]], concepts, S.SegaState(), 6.0, 0.1, 0.4)
    e_cfg = eps["u"] + 6.0 * (eps["p"] - eps["u"])
    torch.testing.assert_close(got, x - s * e, rtol=0, atol=1e-4)  # batched vs single-row matmuls: rounding only
    assert float((e - e_cfg).abs().max()) * s > 100 * float((got - (x - s * e)).abs().max())


def test_momentum_through_sampling_matches_hand_computation(sd15_model, cond):
    """Three Euler steps with λ = 0: record every UNet row, recompute ε̃_i = ε_u + s_g(ε_p − ε_u) + γ_i with
    γ_i = w·s_e(ε_c − ε_u) + s_m ν_i, ν_{i+1} = β ν_i + (1−β) γ_i by hand and compare with the sampler's x̂0; a second
    run starts from ν = 0 again (the state is per sampling run)."""
    pos, neg = cond
    m = sega_node(sd15_model, tiny_models.conditioning(7), "add", 4.0, 0.0, warmup=1, weight=0.7,
                  momentum_scale=0.5, momentum_beta=0.6)
    rows: list = []

    def wrapper(apply, a):
        out = apply(a["input"], a["timestep"], **a["c"])
        rows.append({cu: (a["input"][i:i + 1], out[i:i + 1]) for i, cu in enumerate(a["cond_or_uncond"])})
        return out

    mm = m.clone()
    mm.set_model_unet_function_wrapper(wrapper)
    sig = host.ddim_sigmas(sd15_model, 10)[-4:]
    seen: list = []
    x0 = tiny_models.latent(2)["samples"]
    cb = lambda step, den, x, total: seen.append((x.clone(), den.clone()))  # noqa: E731
    first = sample_custom(mm, pos, neg, 5.0, ksampler("euler"), sig, x0, callback=cb)
    assert len(rows) == 3 and len(seen) == 3
    nu = torch.zeros_like(x0)
    for i in range(3):
        s = float(sig[i])
        x = rows[i][0][0]
        e_p, e_u, e_c = ((x - rows[i][k][1]) / s for k in (0, 1, 2))
        gamma = 0.7 * 4.0 * (e_c - e_u) + 0.5 * nu
        nu = 0.6 * nu + 0.4 * gamma
        applied = gamma if i >= 1 else torch.zeros_like(gamma)
        want = x - s * (e_u + 5.0 * (e_p - e_u) + applied)
        torch.testing.assert_close(seen[i][1], want, rtol=0, atol=2e-5)
    again = sample_custom(mm, pos, neg, 5.0, ksampler("euler"), sig, x0)
    assert torch.equal(again, first)


# ----------------------------------------------------------------------------- chaining and samplers (item 3)

def test_chaining_accumulates_on_clones_without_copying(sd15_model, cond):
    c1, c2 = tiny_models.conditioning(7), tiny_models.conditioning(8)
    m1 = sega_node(sd15_model, c1)
    m2 = sega_node(m1, c2, "remove", momentum_scale=0.3)
    assert len(ledits.sega_patch_of(m1).entries) == 1 and len(ledits.sega_patch_of(m2).entries) == 2
    assert ledits.sega_patch_of(m2).momentum_scale == 0.3 and ledits.sega_patch_of(m1).momentum_scale == 0.1
    assert ledits.sega_patch_of(sd15_model) is None
    p2 = host.cond_guidance_patch(m2, ledits.KEY)
    down = m2.clone()  # a downstream node cloning the model shares the patch (no tensor copies)
    assert host.cond_guidance_patch(down, ledits.KEY) is p2
    assert p2.conds[0] is c1 and p2.conds[1] is c2
    assert down.model_options["sampler_cfg_function"] is p2
    # a cfg function patched in before SEGA is kept (and called for the base CFG)
    seen = []

    def my_cfg(args):
        seen.append(1)
        return args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]

    pre = sd15_model.clone()
    pre.set_model_sampler_cfg_function(my_cfg)
    m3 = sega_node(sega_node(pre, c1), c2)
    assert host.cond_guidance_patch(m3, ledits.KEY).prev_cfg is my_cfg
    pos, neg = cond
    lat = tiny_models.latent(0)["samples"]
    sample_custom(m3, pos, neg, 3.0, ksampler("euler"), host.ddim_sigmas(sd15_model, 3), lat)
    assert len(seen) == 3


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun", "ddim"])
def test_any_sampler_and_ksampler(sd15_model, cond, sampler):
    import nodes as comfy_nodes
    pos, neg = cond
    m, counter = counted(sega_node(sd15_model, tiny_models.conditioning(7), warmup=1))
    with torch.inference_mode():
        (out,) = comfy_nodes.KSampler().sample(m, 0, 4, 1.0, sampler, "normal", pos, neg, tiny_models.latent(0))
    assert torch.isfinite(out["samples"]).all()
    assert counter.calls and all(c == (3, [2, 1, 0]) for c in counter.calls)  # cfg 1 still evaluates uncond


@pytest.mark.parametrize("kind,mode", [("vpred", "SEGA"), ("sdxl", "SEGA"), ("sdxl", "LEDITS++")])
def test_vpred_and_sdxl_edit(kind, mode):
    model = getattr(tiny_models, kind)()
    pooled = kind == "sdxl"
    pos, neg = tiny_models.conditioning(1, pooled=pooled), tiny_models.conditioning(2, pooled=pooled)
    lat = tiny_models.latent(0)
    start, inv, sig = run_node(DDPMInversion, model=model, latent=lat, positive=pos, steps=8, skip=2, source_cfg=2.0,
                               eta=1.0, seed=3, negative=neg)
    (sampler,) = run_node(EditFriendlyDDPMSampler, inversion=inv)
    m, counter = counted(sega_node(model, tiny_models.conditioning(7, pooled=pooled), "add", 8.0, 0.8, warmup=1,
                                   mode=mode))
    out = sample_custom(m, pos, neg, 2.0, sampler, sig, start["samples"])
    assert torch.isfinite(out).all() and (out - lat["samples"]).abs().max() > 1e-4
    rows = 2 if mode == "LEDITS++" else 3
    assert len(counter.calls) == 6 and all(n == rows for n, _ in counter.calls)


@pytest.mark.parametrize("start", [1, 0])
def test_attention_maps_sum_the_concept_tokens(start):
    """The probe's map for concept_tokens = k is the mean over heads and 1/4-resolution layers of the attention
    probabilities of the concept's first k tokens, computed here from the layers' own q/k projections: tokens 1..k
    for a text encoder with a start token (CLIP: SD1.5 / SDXL), 0..k-1 for one without (the shapes model)."""
    model = host.build_model(SD15_3LEVEL, latent_format="sd15", prediction="eps", seed=1, text_start_tokens=start)
    assert host.text_start_tokens(model) == start
    neg = tiny_models.conditioning(2)
    c = tiny_models.conditioning(7, tokens=6)  # batched with the 8-token uncond: ComfyUI repeats it to 24 tokens
    m = sega_node(model, c, "add", 5.0, 0.5, mode="LEDITS++", concept_tokens=3)
    patch = host.cond_guidance_patch(m, ledits.KEY)
    layers = ledits.attention_layers(model)
    assert [(l.part, l.level) for l in layers] == [("input", 4), ("output", 4), ("output", 4)]
    got = {}
    orig = patch.combine
    patch.combine = lambda call: (got.setdefault("maps", [t.clone() for t in call.attn_maps]), orig(call))[1]
    seen = {}
    hooks = []
    dm = model.model.diffusion_model
    for l in layers:
        blk = (dm.input_blocks if l.part == "input" else dm.output_blocks)[l.number]
        st = [mod for mod in blk if hasattr(mod, "transformer_blocks")][0].transformer_blocks[l.block_index]

        def hook(mod, args, kwargs, out, key=l.key):
            seen.setdefault(key, []).append(args[0])
        hooks.append(st.attn2.to_q.register_forward_hook(hook, with_kwargs=True))
    x = _x(3, 1.0)
    try:
        _one_step(m, neg, neg, 1.0, x, 1.0)
    finally:
        for hh in hooks:
            hh.remove()
    ctx = c[0][0]
    total, count = 0, 0
    for l in layers:  # noqa: E741 (recomputed under no_grad from the captured inputs)
        blk = (dm.input_blocks if l.part == "input" else dm.output_blocks)[l.number]
        st = [mod for mod in blk if hasattr(mod, "transformer_blocks")][0].transformer_blocks[l.block_index]
        n = seen[l.key][0][0:1].clone()  # rows: [concept (2), uncond (1)]: the first is the concept
        with torch.no_grad():
            q, k = st.attn2.to_q(n), st.attn2.to_k(ctx)
        heads = st.attn2.heads
        dh = q.shape[-1] // heads
        p = torch.softmax(q.reshape(1, -1, heads, dh).transpose(1, 2) @ k.reshape(1, -1, heads, dh).transpose(1, 2)
                          .transpose(-1, -2) * dh ** -0.5, -1)
        total = total + p[..., start:start + 3].sum(-1).sum(1)
        count += heads
    want = (total / count).reshape(1, 4, 4)
    torch.testing.assert_close(got["maps"][0], want, rtol=1e-5, atol=1e-6)


def test_concept_token_range_with_and_without_a_start_token():
    """[lo, hi) of the concept tokens: after the start token when there is one; 0 = all but the start token and
    the last (diffusers); clamped to at least one token inside the context."""
    assert host.concept_token_range(77, 0, 1) == (1, 76)  # CLIP: tokens 1..75 (diffusers' default)
    assert host.concept_token_range(77, 2, 1) == (1, 3)   # "blue square" on CLIP: tokens 1, 2
    assert host.concept_token_range(8, 2, 0) == (0, 2)    # shapes encoder: "blue square" are tokens 0, 1
    assert host.concept_token_range(8, 1, 0) == (0, 1)    # the first word is reachable
    assert host.concept_token_range(8, 0, 0) == (0, 7)
    assert host.concept_token_range(8, 50, 0) == (0, 8) and host.concept_token_range(8, 50, 1) == (1, 8)
    assert host.concept_token_range(2, 0, 1) == (1, 2) and host.concept_token_range(1, 0, 1) == (0, 1)


def test_shapes_model_declares_no_start_token(sd15_model):
    from dragedit.demo.shapes import model as shapes_model
    m, clip, _ = shapes_model.build(seed=0)
    assert host.text_start_tokens(m) == 0 and host.text_start_tokens(sd15_model) == 1
    assert host.text_start_tokens(host.clone(m)) == 0
    from dragedit.demo.shapes.prompt import WORD_ID
    assert clip.tokenize("blue square")["shapes"][:3] == [WORD_ID["blue"], WORD_ID["square"], WORD_ID["<pad>"]]


# -------------------------------------------------------------------------------------------- errors (item 5)

def test_sega_errors(sd15_model, cond):
    node = r"\[SEGA Guidance\] input "
    with pytest.raises(NodeInputError, match=node + "'concept'.*no concept"):
        sega_node(sd15_model, [])
    with pytest.raises(NodeInputError, match=node + "'threshold'"):
        sega_node(sd15_model, tiny_models.conditioning(7), threshold=1.5)
    with pytest.raises(NodeInputError, match=node + "'threshold'"):
        sega_node(sd15_model, tiny_models.conditioning(7), threshold=-0.1)
    with pytest.raises(NodeInputError, match=node + "'concept'.*width 48.*expects 32"):
        sega_node(sd15_model, tiny_models.conditioning(7, width=48))
    with pytest.raises(NodeInputError, match=node + "'cooldown'"):
        sega_node(sd15_model, tiny_models.conditioning(7), warmup=5, cooldown=3)
    with pytest.raises(NodeInputError, match=node + "'mode'.*one mode per chain"):
        sega_node(sega_node(sd15_model, tiny_models.conditioning(7)), tiny_models.conditioning(8), mode="LEDITS++")
    with pytest.raises(NodeInputError, match=node + "'cross_attention_mask'.*1/4"):  # 2-level UNet: no 1/4 layers
        sega_node(sd15_model, tiny_models.conditioning(7), mode="LEDITS++")
    m = sega_node(sd15_model, tiny_models.conditioning(7))
    pos, _ = cond
    with pytest.raises(host.HostError, match="negative"):  # no uncond to guide against
        sample_custom(m, pos, [], 1.0, ksampler("euler"), host.ddim_sigmas(sd15_model, 2),
                      tiny_models.latent(0)["samples"])


# ------------------------------------------------------------------------------------------- LEDITS Edit (item 4)

def _shapes():
    from dragedit.demo.shapes import model as shapes_model
    return shapes_model.load_demo(allow_random=True)


@pytest.mark.slow
def test_ledits_edit_node_on_the_shapes_model():
    from dragedit.demo.shapes import renderer
    model, clip, vae = _shapes()

    def enc(text):
        tokens = clip.tokenize(text)
        return clip.encode_from_tokens_scheduled(tokens)

    scene = renderer.random_scene(3, two_p=0.0)
    img = renderer.render(scene).permute(1, 2, 0).unsqueeze(0).contiguous()
    kw = dict(model=model, vae=vae, source=enc(renderer.prompt(scene)), negative=enc(""), steps=12, skip=3,
              source_cfg=3.5, target_cfg=3.5, mode="SEGA", seed=0, threshold=0.8, warmup=1, image=img)
    image, latent = run_node(LEDITSEdit, concept_1=enc("blue square"), scale_1=8.0, **kw)
    assert image.shape == img.shape and latent["samples"].shape[1] == 12
    assert (image - img).abs().max() > 0.01
    with pytest.raises(NodeInputError, match=r"\[LEDITS Edit\] input 'concept_1'.*no concepts"):
        run_node(LEDITSEdit, **kw)
    with pytest.raises(NodeInputError, match=r"\[LEDITS Edit\] input 'threshold'"):
        run_node(LEDITSEdit, concept_2=enc("red circle"), **dict(kw, threshold=2.0))
    with pytest.raises(NodeInputError, match=r"\[LEDITS Edit\] input 'concept_2'.*width"):
        run_node(LEDITSEdit, concept_2=tiny_models.conditioning(7, width=8), **kw)
    # LEDITS++ with cross-attention masks (the shapes UNet has 1/4-resolution attention)
    image2, _ = run_node(LEDITSEdit, concept_1=enc("blue square"), direction_1="add", scale_1=8.0,
                         **dict(kw, mode="LEDITS++", warmup=0))
    assert torch.isfinite(image2).all()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["SEGA", "LEDITS++"])
def test_ledits_edit_at_scale_0_reconstructs_the_input(mode):
    """Scale 0 (and target_cfg = source_cfg) gives the input back in both modes: LEDITS++ samples with ε_u + the
    concept terms only, so it inverts with the negative at cfg 1 (diffusers' empty source prompt), not with the
    source prompt at source_cfg (that cost 30-37 dB on the shapes model)."""
    from dragedit.demo.shapes import renderer
    model, clip, vae = _shapes()

    def enc(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    scene = renderer.random_scene(4, two_p=0.0)
    img = renderer.render(scene).permute(1, 2, 0).unsqueeze(0).contiguous()
    image, _ = run_node(LEDITSEdit, model=model, vae=vae, source=enc(renderer.prompt(scene)), negative=enc(""),
                        steps=8, skip=1, source_cfg=3.5, target_cfg=3.5, mode=mode, seed=0, threshold=0.95,
                        warmup=0, image=img, concept_1=enc("blue square"), scale_1=0.0, concept_2=enc("red square"),
                        direction_2="remove", scale_2=0.0)
    mse = float(((image - img) ** 2).mean())
    assert 10 * math.log10(1.0 / max(mse, 1e-30)) > 80.0, mse


@pytest.mark.slow
def test_ledits_edit_target_prompt_alone_and_ledits_pp_needs_a_concept():
    """SEGA mode with a target prompt and no concept is the plain prompt-switch edit (the inversion's noise maps,
    the target at target_cfg): it reconstructs with the source as target and edits with another prompt. LEDITS++
    has no prompt CFG, so a target alone is refused."""
    from dragedit.demo.shapes import renderer
    model, clip, vae = _shapes()

    def enc(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    scene = renderer.random_scene(4, two_p=0.0)
    img = renderer.render(scene).permute(1, 2, 0).unsqueeze(0).contiguous()
    kw = dict(model=model, vae=vae, source=enc(renderer.prompt(scene)), negative=enc(""), steps=8, skip=1,
              source_cfg=3.5, target_cfg=3.5, mode="SEGA", seed=0, image=img)
    same, _ = run_node(LEDITSEdit, target=kw["source"], **kw)
    assert float((same - img).abs().max()) < 1e-3
    other, _ = run_node(LEDITSEdit, target=enc("blue square"), **kw)
    assert float((other - img).abs().max()) > 0.05
    with pytest.raises(NodeInputError, match=r"\[LEDITS Edit\] input 'concept_1'.*no concepts.*LEDITS\+\+"):
        run_node(LEDITSEdit, target=enc("blue square"), **dict(kw, mode="LEDITS++"))


# --------------------------------------------------------------------------------------------- server (item 5)

def _graph():
    return {
        "1": {"class_type": "DragEditTestTinyModel", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 1, "pooled": False}},
        "3": {"class_type": "DragEditTestLatent", "inputs": {"seed": 0, "size": 16, "batch": 1}},
        "9": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 2, "pooled": False}},
        "4": {"class_type": "DragEditDDPMInversion", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "positive": ["2", 0], "negative": ["9", 0], "steps": 10, "skip": 2,
            "source_cfg": 3.5, "eta": 1.0, "seed": 4}},
        "5": {"class_type": "DragEditEditFriendlyDDPM", "inputs": {"inversion": ["4", 1]}},
    }


@pytest.mark.slow
def test_server_reconstruction_and_sega_edit(comfy_server):
    import safetensors.torch
    g = _graph()
    g["6"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["1", 0], "add_noise": False, "noise_seed": 0, "cfg": 3.5, "positive": ["2", 0], "negative": ["9", 0],
        "sampler": ["5", 0], "sigmas": ["4", 2], "latent_image": ["4", 0]}}
    g["7"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "ledits_recon"}}
    g["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "ledits_orig"}}
    g["10"] = {"class_type": "DragEditTestConditioning", "inputs": {"seed": 7, "pooled": False}}
    g["11"] = {"class_type": "DragEditSEGAGuidance", "inputs": {
        "model": ["1", 0], "concept": ["10", 0], "direction": "add", "scale": 6.0, "threshold": 0.9, "warmup": 1,
        "cooldown": 0, "weight": 1.0, "momentum_scale": 0.1, "momentum_beta": 0.4, "mode": "SEGA"}}
    g["12"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["11", 0], "add_noise": False, "noise_seed": 0, "cfg": 3.5, "positive": ["2", 0],
        "negative": ["9", 0], "sampler": ["5", 0], "sigmas": ["4", 2], "latent_image": ["4", 0]}}
    g["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "ledits_edit"}}
    g["14"] = {"class_type": "KSampler", "inputs": {
        "model": ["11", 0], "seed": 0, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["9", 0], "latent_image": ["3", 0], "denoise": 1.0}}
    g["15"] = {"class_type": "SaveLatent", "inputs": {"samples": ["14", 0], "filename_prefix": "ledits_ks"}}
    comfy_server.run_prompt(g)
    out = comfy_server.base / "output"
    load = lambda p: safetensors.torch.load_file(sorted(out.glob(f"{p}*.latent"))[-1])["latent_tensor"]  # noqa: E731
    orig, rec, edit = load("ledits_orig"), load("ledits_recon"), load("ledits_edit")
    torch.testing.assert_close(rec, orig, rtol=0, atol=2e-6 * float(orig.abs().max()))
    assert (edit - orig).abs().max() > 1e-3 and torch.isfinite(load("ledits_ks")).all()


@pytest.mark.slow
def test_server_reports_sega_errors(comfy_server):
    from support.comfy_server import PromptError
    g = _graph()
    g["11"] = {"class_type": "DragEditSEGAGuidance", "inputs": {
        "model": ["1", 0], "concept": ["2", 0], "direction": "add", "scale": 6.0, "threshold": 0.9, "warmup": 5,
        "cooldown": 2, "weight": 1.0, "momentum_scale": 0.1, "momentum_beta": 0.4, "mode": "SEGA"}}
    g["12"] = {"class_type": "KSampler", "inputs": {
        "model": ["11", 0], "seed": 0, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["9", 0], "latent_image": ["3", 0], "denoise": 1.0}}
    g["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "x"}}
    for k in ("4", "5"):
        g.pop(k)
    with pytest.raises(PromptError, match=r"\[SEGA Guidance\] input 'cooldown'"):
        comfy_server.run_prompt(g)


@pytest.mark.slow
def test_example_workflow_runs_on_server(comfy_server):
    """example_workflows/ledits.json (UI format, shapes demo model) converted the way the frontend does and run on the real
    server: the edited 32x32 image differs from the scene but keeps most of it."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from dragedit.demo.shapes import renderer
    from support.workflow_api import ui_to_api
    wf = json.loads((Path(__file__).resolve().parents[1] / "example_workflows" / "ledits.json").read_text())
    prompt = ui_to_api(wf, comfy_server.get("/object_info"))
    edit = prompt["6"]
    assert edit["class_type"] == "DragEditLEDITSEdit" and edit["inputs"]["concept_1"] == ["5", 0]
    assert edit["inputs"]["steps"] == 20 and edit["inputs"]["skip"] == 2 and edit["inputs"]["mode"] == "SEGA"
    assert edit["inputs"]["concept_2"] and edit["inputs"]["direction_2"] == "remove"
    assert edit["inputs"]["target_cfg"] == edit["inputs"]["source_cfg"] == 3.5
    comfy_server.run_prompt(prompt)
    png = sorted((comfy_server.base / "output").glob("ledits*.png"))[-1]
    img = torch.from_numpy(np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    sc = renderer.random_scene(4, two_p=0.0)
    scene = renderer.render(sc)
    diff = (img - scene).abs()
    assert img.shape == (3, 32, 32) and 2e-3 < float(diff.mean()) < 0.25, float(diff.mean())
    # the red square became a blue square of about its size (the renderer's colour areas and shape classifier)
    assert sc.shapes[0].colour == "red" and sc.shapes[0].kind == "square"
    found, area = renderer.colours_present(img), float(renderer.coverage(sc.shapes[0]).sum())
    assert "red" not in found and 0.5 * area <= found.get("blue", 0.0) <= 2.0 * area, (found, area)
    assert renderer.classify(img, "blue")[0] == "square"

def _ledits_pp_twin():
    """A tiny SD1.5-shaped pack model and diffusers' LEDITS++ pipeline on its UNet twin."""
    import test_sega_math as tsm
    from diffusers import LEditsPPPipelineStableDiffusion
    model = host.build_model(SD15_3LEVEL, latent_format="sd15", prediction="eps", seed=0)
    comps = tsm.tiny_sd_components()
    comps["unet"] = unet_twin(model, SD15_3LEVEL)
    pipe = LEditsPPPipelineStableDiffusion(**comps)
    pipe.set_progress_bar_config(disable=True)
    add_noise = pipe.scheduler.add_noise
    pipe.scheduler.add_noise = lambda x, n, t: add_noise(x, n, t.long())  # diffusers 0.39 on torch 2.14
    return model, pipe
