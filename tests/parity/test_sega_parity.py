"""SEGA / LEDITS++ guidance math against diffusers: the attention mask (its smoothing and quantile), the SEGA
pipeline's guidance and the LEDITS++ edit, replayed on tiny random-weight pipelines."""
from __future__ import annotations

import math

import pytest
import torch

from tools.support.diffusers_pipelines import tiny_sega_pipeline, ledits_pp_inverted, ddim_grid
from dragedit.core import sega


Concept = sega.SegaConcept


def rnd(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def test_attention_mask_matches_diffusers_smoothing_and_quantile():
    pytest.importorskip("diffusers")
    import torch.nn.functional as F
    from diffusers.pipelines.ledits_pp.pipeline_leditspp_stable_diffusion import LeditsGaussianSmoothing

    attn = rnd(2, 4, 4, seed=9, dtype=torch.float32).abs()
    got = sega.attention_mask(attn, 0.75, (8, 8))
    # the same steps as the pipeline's loop, with its own smoothing class
    m = LeditsGaussianSmoothing("cpu")(F.pad(attn.unsqueeze(1), (1, 1, 1, 1), mode="reflect")).squeeze(1)
    q = torch.quantile(m.flatten(start_dim=1), 0.75, dim=1)
    want = torch.where(m >= q.unsqueeze(1).unsqueeze(1).repeat(1, 4, 4), 1.0, 0.0)
    want = F.interpolate(want.unsqueeze(1), (8, 8)).repeat(1, 4, 1, 1)
    assert torch.equal(got, want)
    assert got.shape == (2, 4, 8, 8) and int(got[0, 0].sum()) == 4 * 4  # 4 of 16 cells, each 2×2


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", ["lists", "scalars_batch2"])
def test_sega_matches_diffusers_pipeline_guidance(case):
    """Run diffusers' pipeline, record its per-step ε_uncond/ε_prompt/ε_c and the noise_pred it hands to the
    scheduler, then replay our sega_guidance on the recorded estimates."""
    pipe = tiny_sega_pipeline()
    steps, s_g = 12, 7.5
    if case == "lists":
        kw = dict(editing_prompt=["glasses", "snow", "hat"], reverse_editing_direction=[False, True, False],
                  edit_guidance_scale=[3.0, 4.0, 5.0], edit_threshold=[0.8, 0.9, 0.95], edit_warmup_steps=[0, 2, 4],
                  edit_cooldown_steps=[9, 12, 7], edit_weights=[1.0, 0.5, -0.7], edit_momentum_scale=0.3,
                  edit_mom_beta=0.6)
        prompt = "a cat"
        concepts = [Concept(scale=3.0, threshold=0.8, reverse=False, warmup=0, cooldown=9, weight=1.0),
                    Concept(scale=4.0, threshold=0.9, reverse=True, warmup=2, cooldown=12, weight=0.5),
                    Concept(scale=5.0, threshold=0.95, reverse=False, warmup=4, cooldown=7, weight=-0.7)]
    else:
        kw = dict(editing_prompt=["glasses", "snow"], reverse_editing_direction=True, edit_guidance_scale=4.5,
                  edit_threshold=0.9, edit_warmup_steps=3, edit_cooldown_steps=None, edit_momentum_scale=0.1,
                  edit_mom_beta=0.4)
        prompt = ["a cat", "a dog"]
        concepts = [Concept(scale=4.5, threshold=0.9, reverse=True, warmup=3)] * 2
    recorded = []
    step = pipe.scheduler.step

    def recording_step(noise_pred, t, latents, **k):
        recorded.append(noise_pred.detach().clone())
        return step(noise_pred, t, latents, **k)

    pipe.scheduler.step = recording_step
    with torch.no_grad():
        pipe(prompt=prompt, height=16, width=16, num_inference_steps=steps, guidance_scale=s_g,
             generator=torch.Generator().manual_seed(0), output_type="latent", **kw)
    assert len(recorded) == steps
    state = sega.SegaState()
    applied_any = 0
    for i in range(steps):
        eu, ep = pipe.uncond_estimates[i], pipe.text_estimates[i]
        ecs = list(pipe.edit_estimates[i])
        got = sega.sega_guidance(i, eu, ep, ecs, concepts, state, s_g, kw["edit_momentum_scale"], kw["edit_mom_beta"])
        torch.testing.assert_close(got, recorded[i], rtol=1e-5, atol=1e-6)
        gamma = got - (eu + s_g * (ep - eu))
        torch.testing.assert_close(gamma, pipe.sem_guidance[i], rtol=1e-4, atol=1e-5)
        applied_any += int(pipe.sem_guidance[i].abs().sum() > 0)
    assert applied_any >= steps - 3  # the replay covers steps with guidance applied


@pytest.mark.filterwarnings("ignore")
def test_ledits_pp_edit_matches_diffusers_pipeline():
    """LEDITS++ (noise-quantile masks, no cross-attention masks): replay our guidance on the pipeline's recorded
    estimates, and run our DDPM sampler with its noise maps on those estimates: every state our sampler reaches is
    the one the pipeline fed its UNet, and the edited latent equals the pipeline's.

    The sampler is driven by the pipeline's recorded ε (teacher forcing), not by a fresh UNet call on our state: the
    noise-quantile mask is a hard threshold, and on these random weights two positions straddle it within 4e-6 at
    step 3 (concept 0), below the float32 rounding of the chain (our x-form step vs diffusers' ᾱ-form step differ
    by ~1e-5). A fresh UNet call there flips them, and the flip moves the result by 0.23 — as much as the pipeline
    moves against itself when its start latent is perturbed by 1e-6. The states are compared at every step, so
    the chain is still checked end to end."""
    from dragedit.core import ddpm_inversion as ddpm
    pipe, _ = ledits_pp_inverted()
    ts, abar, sig = ddim_grid(pipe)
    kw = dict(editing_prompt=["glasses", "snow"], reverse_editing_direction=[False, True],
              edit_guidance_scale=[4.0, 3.0], edit_threshold=[0.8, 0.9], edit_warmup_steps=[0, 2],
              edit_cooldown_steps=[8, 6], use_cross_attn_mask=False, use_intersect_mask=False)
    concepts = [Concept(scale=4.0, threshold=0.8, warmup=0, cooldown=8),
                Concept(scale=3.0, threshold=0.9, reverse=True, warmup=2, cooldown=6)]
    rec: list = []

    def hook(mod, args, kwargs, out):
        x = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        rec.append(dict(x=x.chunk(3)[0].clone(), t=int(t), eps=out.sample.clone()))

    handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        edited = pipe(output_type="latent", **kw).images
    handle.remove()
    assert len(rec) == len(ts) and [r["t"] for r in rec] == ts
    for i, r in enumerate(rec):
        eu, *ecs = r["eps"].chunk(3)
        got = sega.ledits_pp_term(i, eu, ecs, concepts, use_intersect_mask=False)
        torch.testing.assert_close(got, pipe.sem_guidance[i], rtol=1e-5, atol=1e-6)

    states: list = []

    def den(x, s):
        i = sega.step_index_of(s, sig)
        states.append(x * math.sqrt(abar[i]))  # the UNet input z_t this state stands for
        eu, *ecs = rec[i]["eps"].chunk(3)
        return x - float(s) * sega.ledits_pp_guidance(i, eu, ecs, concepts, use_intersect_mask=False)

    inv = ddpm.Inversion(sigmas=sig, xts=torch.stack([pipe.init_latents / math.sqrt(abar[0])] * (len(ts) + 1)),
                         zs=pipe.zs.clone(), eta=1.0)  # diffusers' own noise maps (same scale as ours)
    ours = ddpm.sample_edit_friendly(den, inv)
    assert len(states) == len(ts)
    for i, z in enumerate(states):
        torch.testing.assert_close(z, rec[i]["x"], rtol=1e-4, atol=1e-4, msg=lambda m, i=i: f"step {i}: {m}")
    torch.testing.assert_close(ours * math.sqrt(abar[-1]), edited, rtol=1e-4, atol=1e-4)


def test_user_mask_matches_diffusers_ledits_pp_user_mask():
    """LEDITS Edit's mask is diffusers LEDITS++'s `user_mask`: the concept's scaled guidance times the mask, before
    the noise-quantile threshold. Replayed on the pipeline's recorded estimates with a soft latent-size mask; the
    guidance without the mask differs (the test sees the mask)."""
    pipe, _ = ledits_pp_inverted()
    ts, _abar, _sig = ddim_grid(pipe)
    rec: list = []

    def hook(mod, args, kwargs, out):
        rec.append(out.sample.clone())

    handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)
    h, w = pipe.init_latents.shape[-2:]
    mask = torch.zeros(h, w, dtype=pipe.init_latents.dtype)
    mask[h // 4: 3 * h // 4, w // 3:] = 1.0
    mask[0, 0] = 0.5                                                   # a soft value: multiplied, not thresholded
    kw = dict(editing_prompt=["glasses", "snow"], reverse_editing_direction=[False, True],
              edit_guidance_scale=[4.0, 3.0], edit_threshold=[0.8, 0.9], edit_warmup_steps=[0, 2],
              use_cross_attn_mask=False, use_intersect_mask=False, user_mask=mask)
    concepts = [Concept(scale=4.0, threshold=0.8, warmup=0), Concept(scale=3.0, threshold=0.9, reverse=True, warmup=2)]
    with torch.no_grad():
        pipe(output_type="latent", **kw)
    handle.remove()
    assert len(rec) == len(ts)
    differs = 0.0
    for i, eps in enumerate(rec):
        eu, *ecs = eps.chunk(3)
        got = sega.ledits_pp_term(i, eu, [sega.masked_concept(e, eu, mask) for e in ecs], concepts,
                                  use_intersect_mask=False)
        torch.testing.assert_close(got, pipe.sem_guidance[i], rtol=1e-5, atol=1e-6)
        differs = max(differs, float((sega.ledits_pp_term(i, eu, ecs, concepts, use_intersect_mask=False)
                                      - pipe.sem_guidance[i]).abs().max()))
    assert differs > 1e-3
