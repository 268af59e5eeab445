"""core/host (the host package) on real ComfyUI code: layer maps, K/V record/inject, feature capture, grad, clone safety."""
import copy

import pytest
import torch

from tools.support import tiny_models
from dragedit.core import host


def is_v_prediction(model) -> bool:
    """True for v-prediction models (SD2.x 768-v)."""
    import comfy.model_base
    return getattr(host.base_model(model), "model_type", None) == comfy.model_base.ModelType.V_PREDICTION


def sigma_of_alpha_bar(ab):
    """σ_t = sqrt((1−ᾱ_t)/ᾱ_t)."""
    ab = torch.as_tensor(ab, dtype=torch.float64)
    return torch.sqrt((1.0 - ab) / ab)


def _run(model, pos, neg, cfg, samples, sigma_index=3, steps=10):
    """One CFG denoiser call at a fixed noisy input, through host.session."""
    sig = host.ddim_sigmas(model, steps)
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(samples.shape, generator=g)

    def loop(den, x, s):
        return den.x0(x + s[sigma_index] * noise, s[sigma_index])

    with torch.inference_mode():
        return host.session(model, pos, neg, cfg, samples, sig, loop)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_record_fires_on_every_layer_and_half(kind):
    model = getattr(tiny_models, kind)()
    pooled = kind == "sdxl"
    pos, neg = tiny_models.conditioning(1, pooled=pooled), tiny_models.conditioning(2, pooled=pooled)
    run = host.clone(model)
    store = host.KVStore(dtype=torch.float32)
    host.patch_kv_record(run, store)
    _run(run, pos, neg, 3.0, tiny_models.latent(0)["samples"])
    layers = host.attention_layers(model)
    assert len(store) == 2 * len(layers)  # every layer, cond and uncond
    for layer in layers:
        for half in (0, 1):
            k, v = store.get(store.sigmas[0], layer, half)
            h, w = layer.tokens((16, 16))
            assert k.shape[1] == h * w and v.shape == k.shape
    if kind == "sdxl":  # SDXL layout: no attention at the latent resolution, stacks of depth 2
        assert all(l.level > 1 or l.part == "output" for l in layers)
        assert any(l.block_index == 1 for l in layers)


@pytest.mark.parametrize("mode", ["replace", "concat", "mix"])
def test_injecting_own_kv_is_identity(sd15_model, cond, mode):
    samples = tiny_models.latent(0)["samples"]
    pos, neg = cond
    rec = host.clone(sd15_model)
    store = host.KVStore(dtype=torch.float32)
    host.patch_kv_record(rec, store)
    ref = _run(rec, pos, neg, 3.0, samples)
    inj_model = host.clone(sd15_model)
    mix = host.masked_mix(torch.rand(16, 16)) if mode == "mix" else None
    inj = host.KVInjection(store, mode=mode, mix=mix)
    host.patch_kv_inject(inj_model, inj)
    out = _run(inj_model, pos, neg, 3.0, samples)
    assert inj.hits == 2 * len(host.attention_layers(sd15_model)) and inj.misses == 0
    # replace is exact; concat [K;K],[V;V] and mix re-associate float sums: relative 1e-5
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_injection_changes_output_with_foreign_kv(sd15_model, cond):
    pos, neg = cond
    rec = host.clone(sd15_model)
    store = host.KVStore(dtype=torch.float32)
    host.patch_kv_record(rec, store)
    _run(rec, pos, neg, 3.0, tiny_models.latent(5)["samples"])
    plain = _run(host.clone(sd15_model), pos, neg, 3.0, tiny_models.latent(0)["samples"])
    inj_model = host.clone(sd15_model)
    host.patch_kv_inject(inj_model, host.KVInjection(store, "replace"))
    out = _run(inj_model, pos, neg, 3.0, tiny_models.latent(0)["samples"])
    assert (out - plain).abs().max() > 1e-3


def test_store_survives_downstream_clone(sd15_model, cond):
    """ModelPatcher.clone() deep-copies model_options: the cache must be shared, not copied or detached."""
    pos, neg = cond
    run = host.clone(sd15_model)
    store = host.KVStore(dtype=torch.float32)
    host.patch_kv_record(run, store)
    downstream = run.clone()
    deep = copy.deepcopy(run.model_options)
    p1 = run.model_options["transformer_options"]["patches_replace"]["attn1"]
    p2 = downstream.model_options["transformer_options"]["patches_replace"]["attn1"]
    p3 = deep["transformer_options"]["patches_replace"]["attn1"]
    for key in p1:
        assert p2[key].recorders[0] is store and p3[key].recorders[0] is store
    _run(downstream, pos, neg, 3.0, tiny_models.latent(0)["samples"])
    assert len(store) > 0


def test_user_model_unchanged(sd15_model, cond):
    pos, neg = cond
    before_opts = repr(sd15_model.model_options)
    weights = {k: v.clone() for k, v in sd15_model.model.state_dict().items()}
    run = host.clone(sd15_model)
    host.patch_kv_record(run, host.KVStore())
    host.patch_feature_capture(run, host.FeatureStore(), [1])
    _run(run, pos, neg, 3.0, tiny_models.latent(0)["samples"])
    assert repr(sd15_model.model_options) == before_opts
    assert not sd15_model.wrappers
    for k, v in sd15_model.model.state_dict().items():
        assert torch.equal(v, weights[k])
    for blk in sd15_model.model.diffusion_model.output_blocks:
        assert not blk[-1]._forward_hooks


def test_feature_capture_truncated_equals_full_and_has_grad():
    with torch.inference_mode():  # weights as a stock loader leaves them: inference tensors
        model = tiny_models.sd15()
        sd = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
        model.model.diffusion_model.load_state_dict(sd, assign=True)
    assert next(model.model.parameters()).is_inference()
    pos = tiny_models.conditioning(1)
    run = host.clone(model)
    fs = host.FeatureStore()
    ups = host.up_block_outputs(model)
    host.patch_feature_capture(run, fs, [ups[0]])
    sig = host.ddim_sigmas(model, 10)
    got = {}

    def loop(den, x, s):
        den.x0(x, s[4])
        got["full"] = fs.half(ups[0]).clone()
        with host.grad_enabled(den):
            z = host.grad_input(x)
            fs.truncate = True
            den.x0(z, s[4])
            fs.truncate = False
            f = fs.half(ups[0])
            got["trunc"] = f.detach().clone()
            (f ** 2).mean().backward()
            got["grad"] = z.grad.clone()
        return x

    with torch.inference_mode():
        host.session(run, pos, None, 1.0, tiny_models.latent(0)["samples"], sig, loop)
    assert torch.allclose(got["full"], got["trunc"], atol=1e-6)
    assert torch.isfinite(got["grad"]).all() and got["grad"].abs().sum() > 0
    assert next(model.model.parameters()).is_inference()  # aliases restored


def test_bad_block_and_family_errors(sd15_model):
    with pytest.raises(host.HostError, match="output block"):
        host.patch_feature_capture(host.clone(sd15_model), host.FeatureStore(), [99])
    import comfy.model_base
    bm = sd15_model.model
    flow = host.clone(sd15_model)
    flow.add_object_patch("model_sampling", comfy.model_base.model_sampling(bm.model_config, comfy.model_base.ModelType.FLOW))
    with pytest.raises(host.HostError, match="unsupported"):
        host.check_supported(flow)


def test_layer_selection_by_resolution(sd15_model):
    hi = host.select_layers(sd15_model, part="output", levels=[1])
    assert hi and all(l.part == "output" and l.level == 1 for l in hi)
    by_tokens = host.select_layers(sd15_model, tokens=((16, 16), [256]))
    assert {l.key for l in by_tokens} == {l.key for l in host.select_layers(sd15_model, levels=[1])}


def test_vpred_alpha_bar_and_timesteps(vpred_model):
    assert is_v_prediction(vpred_model) and host.check_supported(vpred_model) == "v"
    sig = host.ddim_sigmas(vpred_model, 10)
    assert [round(host.timestep_of(vpred_model, s)) for s in sig[:-1]] == list(range(901, 0, -100))
    ab = host.alpha_bar(sig[0])
    assert abs(float(sigma_of_alpha_bar(ab)) - float(sig[0])) < 1e-5


