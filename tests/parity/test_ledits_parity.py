"""LEDITS / SEGA nodes against diffusers: the inversion grid, the semantic (SEGA) pipeline, LEDITS++ with
cross-attention masks and its inversion with an empty source prompt, on a diffusers twin of the tiny SD1.5 model."""
from __future__ import annotations

import math

import pytest
import torch

from tools.support import diffusers_pipelines as dp
from tools.support import tiny_models
from tools.support.node_calls import run_node, sample_custom, ksampler, sega_node, counted
from dragedit.core import ddpm_inversion as ef
from dragedit.core import host, ledits
from dragedit.nodes.ddpm_inversion import DDPMInversion


def test_inversion_grid_is_diffusers_leading_grid_for_any_step_count(sd15_model, cond):
    """steps = 12 gives 12 steps at t = 1 + 83·k (diffusers' DDIM/LEDITS grid); ComfyUI's ddim_uniform alone would
    add a 13th, noisier one when 1000 % steps != 0."""
    pos, _ = cond
    _, inv, sig = run_node(DDPMInversion, model=sd15_model, latent=tiny_models.latent(0), positive=pos, steps=12,
                           skip=0, source_cfg=1.0, eta=1.0, seed=0)
    ts = [round(host.timestep_of(sd15_model, s)) for s in sig[:-1]]
    assert inv.steps == 12 and ts == [1 + 83 * k for k in range(12)][::-1]


def _sega_pipeline(model):
    from diffusers.pipelines.deprecated.semantic_stable_diffusion.pipeline_semantic_stable_diffusion import (
        SemanticStableDiffusionPipeline)
    from tools.support.diffusers_bridge import sd15_unet_twin
    comps = dp.tiny_sd_components()
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
    model, pipe = _ledits_pp_twin()
    with torch.no_grad():
        pipe.invert(image=dp.blob_image(), source_prompt="a cat", source_guidance_scale=3.5, num_inversion_steps=10,
                    skip=0.15, generator=torch.Generator().manual_seed(3))
    embs: list = []
    h = pipe.unet.register_forward_pre_hook(lambda mod, a, kw: embs.append(kw["encoder_hidden_states"].clone()),
                                            with_kwargs=True)
    kw = dict(editing_prompt=["glasses", "snow"], reverse_editing_direction=[False, True],
              edit_guidance_scale=[6.0, 5.0], edit_threshold=[0.7, 0.8], edit_warmup_steps=[0, 2],
              use_cross_attn_mask=True, use_intersect_mask=True)
    ref_states: list = []

    def on_step(_pipe, _i, _t, tensors):
        ref_states.append(tensors["latents"].clone())
        return {}
    with torch.no_grad():
        ref = pipe(output_type="latent", callback_on_step_end=on_step, **kw).images
    h.remove()
    e_u, *e_c = embs[0].chunk(3)
    ts, abar, sig = dp.ddim_grid(pipe)
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
    states: list = []
    out = sample_custom(counted_model, [[e_u, {}]], [[e_u, {}]], 1.0, sampler, sig, inv.start / 0.18215,
                        callback=lambda i, _x0, x, _n: states.append(x.clone()))
    ours = out * 0.18215 * math.sqrt(abar[-1])
    # every step's state (the pack's own noise estimates: the t ≤ 800 mask switch, the LEDITS++ σ scaling), not
    # the final latent alone: the sampler's state before step i+1 = diffusers' latents after step i
    assert len(states) == len(ref_states) == len(ts)
    for i in range(len(ts) - 1):
        torch.testing.assert_close(states[i + 1] * math.sqrt(abar[i + 1]), ref_states[i], rtol=0, atol=2e-4,
                                   msg=f"state after step {i}")
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
    model, pipe = _ledits_pp_twin()
    embs: list = []
    h = pipe.unet.register_forward_pre_hook(lambda mod, a, kw: embs.append(kw["encoder_hidden_states"].clone()),
                                            with_kwargs=True)
    image = dp.blob_image()
    with torch.no_grad():
        pipe.invert(image=image, num_inversion_steps=10, skip=0.15, generator=torch.Generator().manual_seed(3))
        x0 = pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mode() * 0.18215
    h.remove()
    e_u = embs[0][:1]
    assert all(torch.equal(e[:1], e_u) for e in embs)  # the empty prompt only
    ts, abar, sig = dp.ddim_grid(pipe)
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


def _ledits_pp_twin():
    """A tiny SD1.5-shaped pack model and diffusers' LEDITS++ pipeline on its UNet twin."""
    from diffusers import LEditsPPPipelineStableDiffusion
    model = host.build_model(tiny_models.SD15_3LEVEL, latent_format="sd15", prediction="eps", seed=0)
    comps = dp.tiny_sd_components()
    comps["unet"] = unet_twin(model, tiny_models.SD15_3LEVEL)
    pipe = LEditsPPPipelineStableDiffusion(**comps)
    pipe.set_progress_bar_config(disable=True)
    add_noise = pipe.scheduler.add_noise
    pipe.scheduler.add_noise = lambda x, n, t: add_noise(x, n, t.long())  # diffusers 0.39 on torch 2.14
    return model, pipe
