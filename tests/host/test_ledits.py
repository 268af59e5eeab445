"""LEDITS on real ComfyUI code: edit-friendly DDPM inversion + sampler through stock sampling, SEGA / LEDITS++
guidance nodes: batching, chaining, any sampler, attention maps, errors, the all-in-one on the shapes model (diffusers
parity: tests/parity/test_ledits_parity.py; the server: tests/server/test_ledits_server.py)."""
from __future__ import annotations

import math

import pytest
import torch

from tools.support import tiny_models
from tools.support.node_calls import run_node, sample_custom, stock_sampler_custom, ksampler, sega_node, counted
from dragedit.core import ddpm_inversion as ef
from dragedit.core import host, ledits
from dragedit.core import sega as S
from dragedit.nodes._errors import NodeInputError
from dragedit.nodes.ddpm_inversion import DDPMInversion, EditFriendlyDDPMSampler
from dragedit.nodes.sega import LEDITSEdit


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
        (plain,) = comfy_nodes.KSampler().sample(sd15_model, 0, 4, 1.0, sampler, "normal", pos, neg,
                                                 tiny_models.latent(0))
        (zero,) = comfy_nodes.KSampler().sample(sega_node(sd15_model, tiny_models.conditioning(7), scale=0.0,
                                                          warmup=1), 0, 4, 1.0, sampler, "normal", pos, neg,
                                                tiny_models.latent(0))
    assert torch.isfinite(out["samples"]).all()
    assert counter.calls and all(c == (3, [2, 1, 0]) for c in counter.calls)  # cfg 1 still evaluates uncond
    # the edit is applied by every sampler: scale 0 is the plain sample, scale 5 moves away from it
    torch.testing.assert_close(zero["samples"], plain["samples"], rtol=0, atol=1e-3)   # batched-call rounding
    assert float((out["samples"] - plain["samples"]).abs().max()) > 0.05


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
    # the edit, not the sampling: scale 8 ends far from the same run at scale 0 (SEGA: the reconstruction)
    zero = sample_custom(sega_node(model, tiny_models.conditioning(7, pooled=pooled), "add", 0.0, 0.8, warmup=1,
                                   mode=mode), pos, neg, 2.0, sampler, sig, start["samples"])
    if mode == "SEGA":
        assert float((zero - lat["samples"]).abs().max()) < 1e-3
    assert float((out - zero).abs().max()) > 0.05


@pytest.mark.parametrize("start", [1, 0])
def test_attention_maps_sum_the_concept_tokens(start):
    """The probe's map for concept_tokens = k is the mean over heads and 1/4-resolution layers of the attention
    probabilities of the concept's first k tokens, computed here from the layers' own q/k projections: tokens 1..k
    for a text encoder with a start token (CLIP: SD1.5 / SDXL), 0..k-1 for one without (the shapes model)."""
    model = host.build_model(tiny_models.SD15_3LEVEL, latent_format="sd15", prediction="eps", seed=1, text_start_tokens=start)
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
    # on ShapesBench case concept_recolour-02 (public seed) with the bench's LEDITS++ settings: the purple square
    # turns green, the rest of the scene stays (measured: classified green square, 32.9 dB outside the edit region)
    from bench import shapes_cases as S
    from bench import shapes_scoring as M
    case = [c for c in S.build_cases() if c.id == "concept_recolour-02"][0]
    src = S.input_image(case)
    (new, _), (old, _) = case.concepts
    assert (new, old) == ("green square", "purple square")
    image2, _ = run_node(LEDITSEdit, model=model, vae=vae, source=enc(renderer.prompt(case.scene)),
                         negative=enc(""), steps=20, skip=2, source_cfg=3.5, target_cfg=3.5, mode="LEDITS++", seed=0,
                         threshold=0.8, warmup=0, image=src.permute(1, 2, 0).unsqueeze(0).contiguous(),
                         concept_1=enc(new), scale_1=15.0, concept_2=enc(old), direction_2="remove", scale_2=15.0)
    got = image2[0].permute(2, 0, 1)
    others = [s for j, s in enumerate(case.scene.shapes) if j != case.obj]
    assert M.classify_object(src, M.object_region(case.shape, others))[0] == "purple"
    assert M.classify_object(got, M.object_region(case.shape, others)) == ("green", "square")
    assert M.psnr(got, src, ~M.edit_region(case)) > 30.0


def test_ledits_edit_user_mask_keeps_the_new_colour_on_the_object():
    """LEDITS Edit's mask confines the concepts (LEDITS++'s user mask). ShapesBench seed 202 concept_recolour-01, at
    the shipped settings (scene concepts, 40 steps, skip 4, scale 14, warm-up 8, threshold 0.95): unmasked, the
    green circle stays green and the scene around it changes (bench: 21 dB outside); with the object's box as the
    mask it turns red in place, and outside the mask the latent is the input's own (the sampler keeps the
    inversion's states there). An all-black mask is no mask; a mask of another size, or a mask with no concept, is refused."""
    from bench import shapes_cases as SC
    from bench import shapes_scoring as M
    from dragedit.demo.shapes import renderer
    model, clip, vae = _shapes()

    def enc(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    case = [c for c in SC.build_cases(seed=202) if c.kind == "concept_recolour"][1]
    src = SC.input_image(case)
    others = [sh for j, sh in enumerate(case.scene.shapes) if j != case.obj]
    kw = dict(model=model, vae=vae, source=enc(case.prompt), negative=enc(""), steps=40, skip=4, source_cfg=3.5,
              target_cfg=3.5, mode="SEGA", seed=0, threshold=0.95, warmup=8,
              image=src.permute(1, 2, 0).unsqueeze(0).contiguous(),
              concept_1=enc(renderer.prompt(case.target)), scale_1=14.0, concept_2=enc(case.prompt),
              direction_2="remove", scale_2=14.0)
    box = case.handle_mask().float()[None]
    plain, _ = run_node(LEDITSEdit, **kw)
    masked, masked_lat = run_node(LEDITSEdit, mask=box, **kw)
    region = M.object_region(case.shape, others)
    assert M.classify_object(src, region)[0] == "green"
    assert M.classify_object(plain[0].permute(2, 0, 1), region)[0] != "red"
    got = masked[0].permute(2, 0, 1)
    assert M.classify_object(got, region) == ("red", "circle")
    assert M.psnr(got, src, ~M.edit_region(case)) > 50.0     # unmasked concepts: 21 dB, masked alone: 38 dB
    z = vae.encode(kw["image"])                       # outside the mask the latent is the input's own
    outside = (S.user_mask_at(box[0], z) == 0).expand_as(z)
    assert outside.float().mean() > 0.5
    torch.testing.assert_close(masked_lat["samples"][outside], z[outside], rtol=0, atol=1e-5)
    black, _ = run_node(LEDITSEdit, mask=torch.zeros_like(box), **kw)
    assert torch.equal(black, plain)
    with pytest.raises(NodeInputError, match=r"\[LEDITS Edit\] input 'mask'.*20x20 but the image is 32x32"):
        run_node(LEDITSEdit, mask=torch.ones(1, 20, 20), **dict(kw, steps=4, skip=0, warmup=0))
    no_concepts = {k: v for k, v in kw.items() if not k.endswith(("_1", "_2"))}
    with pytest.raises(NodeInputError, match=r"\[LEDITS Edit\] input 'mask'.*none is connected"):
        run_node(LEDITSEdit, mask=box, target=enc(renderer.prompt(case.target)), **no_concepts)


def test_sega_guidance_mask_equals_ledits_edit_mask_and_is_checked_when_sampling():
    """SEGA Guidance takes the same mask per concept: DDPM Inversion + two masked SEGA Guidance nodes + the
    Edit-friendly DDPM sampler in stock SamplerCustom give LEDITS Edit's masked result exactly, the input kept
    outside the masks (the sampler reads them from the model it samples). The latent is known
    only when sampling, so a mask that fits neither the image nor the latent is refused there, naming SEGA Guidance's
    'mask'; an all-black mask is no mask."""
    from dragedit.demo.shapes import renderer
    model, clip, vae = _shapes()

    def enc(text):
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    scene = renderer.random_scene(4, two_p=0.0)
    img = renderer.render(scene).permute(1, 2, 0).unsqueeze(0).contiguous()
    src, neg = enc(renderer.prompt(scene)), enc("")
    add, rem = enc("blue square"), enc("red circle")
    mask = torch.zeros(1, 32, 32)
    mask[:, 4:20, 8:30] = 1.0
    set_ = dict(threshold=0.9, warmup=1, momentum_scale=0.1, momentum_beta=0.4)
    want, want_lat = run_node(LEDITSEdit, model=model, vae=vae, source=src, negative=neg, steps=8, skip=2,
                              source_cfg=3.5, target_cfg=3.5, mode="SEGA", seed=0, image=img, concept_1=add,
                              scale_1=8.0, concept_2=rem, direction_2="remove", scale_2=8.0, mask=mask, **set_)
    start, inv, sig = run_node(DDPMInversion, model=model, latent={"samples": vae.encode(img)}, positive=src,
                               steps=8, skip=2, source_cfg=3.5, eta=1.0, seed=0, negative=neg)
    (sampler,) = run_node(EditFriendlyDDPMSampler, inversion=inv)
    m = sega_node(model, add, scale=8.0, mask=mask, **set_)
    m = sega_node(m, rem, direction="remove", scale=8.0, mask=mask, **set_)
    got = stock_sampler_custom(m, src, neg, 3.5, sampler, sig, start)
    torch.testing.assert_close(got, want_lat["samples"], rtol=0, atol=1e-5)
    z = vae.encode(img)                                # the sampler keeps the input outside the masks' union
    outside = (S.user_mask_at(mask[0], z) == 0).expand_as(z)
    torch.testing.assert_close(got[outside], z[outside], rtol=0, atol=1e-5)
    assert (got - z)[~outside].abs().max() > 1e-2
    unmasked = stock_sampler_custom(sega_node(model, add, scale=8.0, **set_), src, neg, 3.5, sampler, sig, start)
    black = stock_sampler_custom(sega_node(model, add, scale=8.0, mask=torch.zeros(1, 40, 24), **set_), src, neg,
                                 3.5, sampler, sig, start)
    assert torch.equal(black, unmasked) and (unmasked - got).abs().max() > 1e-3
    bad = sega_node(model, add, scale=8.0, mask=torch.ones(1, 20, 20), **set_)
    with pytest.raises(NodeInputError, match=r"\[SEGA Guidance\] input 'mask'.*20x20.*16x16 latent"):
        stock_sampler_custom(bad, src, neg, 3.5, sampler, sig, start)
    with pytest.raises(NodeInputError, match=r"\[SEGA Guidance\] input 'mask'.*MASK"):
        sega_node(model, add, mask=torch.ones(2, 3, 32, 32))


def test_mask_region_is_the_union_of_the_concepts_masks_read_from_the_sampled_model():
    """ledits.mask_region (what the edit-friendly samplers keep outside) reads the SEGA patch from the extra_args a
    KSAMPLER function gets in stock SamplerCustom (ComfyUI merges the patcher's wrappers into them when sampling:
    host.cond_guidance_payload_in; this fails if that stops): the max of the concepts' masks, area-resized to the
    latent; None when one concept has no mask, and None for a model without SEGA."""
    import comfy.samplers
    model, clip, _vae = _shapes()
    c = clip.encode_from_tokens_scheduled(clip.tokenize("red circle"))
    a, b = torch.zeros(1, 32, 32), torch.zeros(1, 32, 32)
    a[:, :16, :] = 1.0
    b[:, :, :8] = 1.0

    def region(m):
        seen = []

        def grab(model_fn, x, sigmas, extra_args=None, callback=None, disable=None, **_):
            seen.append(ledits.mask_region(extra_args, x))
            return x

        stock_sampler_custom(m, c, c, 1.0, comfy.samplers.KSAMPLER(grab), torch.tensor([1.0, 0.0]),
                             {"samples": torch.zeros(1, 4, 16, 16)})
        return seen[0]

    two = sega_node(sega_node(model, c, mask=a), c, mask=b)
    want = torch.zeros(1, 1, 16, 16)
    want[..., :8, :] = 1.0
    want[..., :, :4] = 1.0
    assert torch.equal(region(two), want)
    assert region(sega_node(two, c)) is None
    assert region(model) is None and ledits.mask_region({}, torch.zeros(1, 4, 16, 16)) is None


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


