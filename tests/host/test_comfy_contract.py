"""The ComfyUI behaviour that core/host/internals.py relies on, one test per reach past ComfyUI's public patch API.

Each test fails with a message that names the ComfyUI change, so a ComfyUI release that breaks one of them says
which host function to revisit."""
import pytest
import torch

from tools.support import tiny_models
from dragedit.core import host
from dragedit.core.host import internals


def _breaks(what: str) -> str:
    return f"ComfyUI changed {what}: revisit core/host/internals.py"


def _one_call(model, pos, neg, cfg=3.0, sigma_index=3, steps=10):
    """One CFG denoiser call through host.session; returns what the loop saw."""
    sig = host.ddim_sigmas(model, steps)
    seen = {}

    def loop(den, x, s):
        seen["den"] = den
        seen["x0"] = den.x0(x, s[sigma_index])
        seen["positive"] = internals.session_positive(den._model_k)
        return x

    with torch.inference_mode():
        host.session(model, pos, neg, cfg, tiny_models.latent(0)["samples"], sig, loop)
    return seen


def test_model_config_from_base(sd15_model):
    import comfy.latent_formats
    mc = internals.model_config(dict(tiny_models.SD15_UNET), comfy.latent_formats.SD15, 0)
    assert mc.unet_config["model_channels"] == tiny_models.SD15_UNET["model_channels"], \
        _breaks("supported_models_base.BASE(unet_config): the config no longer lands in .unet_config")
    assert isinstance(mc.latent_format, comfy.latent_formats.SD15), \
        _breaks("supported_models_base.BASE: the latent_format class attribute is no longer instantiated")
    assert mc.text_start_tokens == 0


def test_replace_patches_layout(sd15_model):
    m = sd15_model.clone()
    p = lambda q, k, v, extra: q  # noqa: E731
    m.set_model_attn1_replace(p, "output", 1, 0)
    assert internals.replace_patch(m.model_options, "attn1", ("output", 1, 0)) is p, \
        _breaks("where set_model_attn1_replace stores patches (transformer_options['patches_replace']['attn1'])")
    down = m.clone()
    internals.drop_replace_patch(m, "attn1", ("output", 1, 0))
    assert internals.replace_patch(m.model_options, "attn1", ("output", 1, 0)) is None
    assert internals.replace_patch(down.model_options, "attn1", ("output", 1, 0)) is p, \
        _breaks("ModelPatcher.clone(): clones now share the patches_replace dicts")
    assert not internals.replace_patches(sd15_model.model_options, "attn1")


def test_model_functions_layout(sd15_model):
    m = sd15_model.clone()
    f, g = (lambda args: args["cond"]), (lambda args: [])
    m.set_model_sampler_cfg_function(f)
    m.set_model_sampler_calc_cond_batch_function(g)
    assert internals.model_function(m.model_options, "sampler_cfg_function") is f, \
        _breaks("where set_model_sampler_cfg_function stores the function (model_options['sampler_cfg_function'])")
    assert internals.model_function(m.model_options, "sampler_calc_cond_batch_function") is g, \
        _breaks("where set_model_sampler_calc_cond_batch_function stores the function")


def test_run_sigmas_seen_by_cfg_function(sd15_model, cond):
    m = sd15_model.clone()
    seen = []

    def cfg_fn(args):
        seen.append(internals.run_sigmas(args["model_options"]))
        return args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]

    m.set_model_sampler_cfg_function(cfg_fn)
    pos, neg = cond
    sig = host.ddim_sigmas(sd15_model, 3)
    with torch.inference_mode():
        import comfy.samplers
        host.sample_with_sampler(m, pos, neg, 2.0, comfy.samplers.ksampler("euler"), sig,
                                 tiny_models.latent(0)["samples"])
    assert seen and all(s is not None for s in seen), \
        _breaks("CFGGuider.inner_sample: transformer_options['sample_sigmas'] is no longer set")
    assert torch.allclose(torch.as_tensor(seen[0]).float().cpu(), sig.float())


def test_output_blocks_patch_hook_and_early_stop(sd15_model, cond):
    """output_block_patch at ("output", i) sees output block i-1's output (the forward hook's value); an exception
    raised in a patch leaves the diffusion model call unchanged, so run_stoppable ends the call there."""
    import comfy.patcher_extension as pe
    m = sd15_model.clone()
    n = len(host.decoder_blocks(sd15_model))
    seen_patch, seen_hook, calls = {}, {}, []

    def block_patch(h, hsp, to):
        part, number = internals.current_block(to)
        assert part == "output", _breaks("transformer_options['block'] during output_block_patch")
        seen_patch[number - 1] = h.detach().clone()
        if number == n - 1 and stop["on"]:
            internals.stop_unet()
        return h, hsp

    def wrapper(executor, *args, **kwargs):
        x, to = internals.diffusion_model_call(args, kwargs)
        calls.append((tuple(x.shape), list(to.get("cond_or_uncond") or [])))
        unet = executor.class_obj
        with internals.output_block_hook(unet, n - 2, lambda out: seen_hook.setdefault(n - 2, out.detach().clone())):
            return internals.run_stoppable(executor, args, kwargs, unet)

    stop = {"on": False}
    m.set_model_output_block_patch(block_patch)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "contract", wrapper)
    pos, neg = cond
    full = _one_call(m, pos, neg)["x0"]
    assert calls and sorted(calls[0][1]) == [0, 1], \
        _breaks("the DIFFUSION_MODEL call signature (x, timesteps, context, y, control, transformer_options)")
    assert sorted(seen_patch) == list(range(-1, n - 1)), _breaks("when output_block_patch runs")
    assert torch.equal(seen_patch[n - 2], seen_hook[n - 2]), \
        _breaks("output_block_patch no longer receives the previous output block's output as h")
    stop["on"] = True
    stopped = _one_call(m, pos, neg)["x0"]
    assert torch.isfinite(stopped).all() and not torch.equal(stopped, full), \
        _breaks("exceptions from patches inside the UNet call (stop_unet no longer ends the call)")
    assert not sd15_model.model.diffusion_model.output_blocks[n - 2][-1]._forward_hooks


def test_differentiable_weights_on_inference_tensors():
    with torch.inference_mode():
        model = tiny_models.sd15()
        sd = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
        model.model.diffusion_model.load_state_dict(sd, assign=True)
    lin = next(mod for mod in model.model.diffusion_model.modules() if isinstance(mod, torch.nn.Linear))
    assert lin.weight.is_inference()
    with torch.inference_mode(False), torch.enable_grad(), internals.differentiable_weights(model.model):
        x = torch.randn(2, lin.in_features, requires_grad=True)
        lin(x).square().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, \
            _breaks("how comfy.ops layers read their weights (aliases swapped into _parameters are not used)")
    assert lin.weight.is_inference()


def test_session_positive_and_guider_extra_conds(sd15_model, cond):
    pos, neg = cond
    seen = _one_call(sd15_model.clone(), pos, neg)
    bm, positive = seen["positive"]
    assert bm is sd15_model.model and positive, \
        _breaks("KSamplerX0Inpaint.inner_model (the CFGGuider) / CFGGuider.conds['positive'] / .inner_model")

    import comfy.patcher_extension as pe
    m = sd15_model.clone()
    extra = tiny_models.conditioning(7)
    got = {}

    def outer(executor, *args, **kwargs):
        guider = executor.class_obj
        with internals.guider_extra_conds(guider, {"contract_extra": extra}) as keys:
            got["keys"] = keys
            got["guider"] = guider
            return executor(*args, **kwargs)

    def calc(args):
        got["extra"] = internals.guider_conds(got["guider"], got["keys"])
        import comfy.samplers
        return comfy.samplers.calc_cond_batch(args["model"], args["conds"], args["input"], args["sigma"],
                                              args["model_options"])

    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, "contract", outer)
    m.set_model_sampler_calc_cond_batch_function(calc)
    _one_call(m, pos, neg)
    assert got["extra"] and got["extra"][0] and "model_conds" in got["extra"][0][0], \
        _breaks("CFGGuider.outer_sample: conds added to guider.conds in an OUTER_SAMPLE wrapper are no longer processed")
    assert "contract_extra" not in (getattr(got["guider"], "conds", None) or {})


def test_memory_facts(sd15_model):
    assert isinstance(internals.vram_managed_normally(), bool), _breaks("comfy.model_management.vram_state / VRAMState")
    assert internals.weights_still_to_load(sd15_model) >= 0, _breaks("ModelPatcher.model_size() / loaded_size()")
    internals.release_pinned_host_memory()


@pytest.mark.parametrize("name", ["set_model_output_block_patch", "add_wrapper_with_key", "remove_wrappers_with_key",
                                  "get_wrappers", "set_model_patch_replace", "set_model_attn1_replace",
                                  "set_model_attn2_replace", "set_model_sampler_post_cfg_function",
                                  "set_model_sampler_cfg_function", "set_model_sampler_calc_cond_batch_function"])
def test_public_patch_api_present(sd15_model, name):
    """The public ModelPatcher methods the host uses (present in ComfyUI 0.3.64 and 0.3.75)."""
    assert callable(getattr(sd15_model, name, None)), f"ComfyUI removed ModelPatcher.{name}: the host uses it"


def test_dit_replace_layout_and_apply_model_options():
    """DiT hooks: where set_model_patch_replace(..., "dit", ...) stores block replaces, and the transformer_options
    an APPLY_MODEL wrapper finds in its arguments (the dict the diffusion model's blocks then see)."""
    import comfy.patcher_extension as pe
    flux = tiny_models.flux()
    m = flux.clone()
    p = lambda args, extra: extra["original_block"](args)  # noqa: E731
    m.set_model_patch_replace(p, "dit", "single_block", 1)
    assert internals.replace_patches(m.model_options, "dit").get(("single_block", 1)) is p, \
        _breaks("where set_model_patch_replace stores dit block replaces (patches_replace['dit'][(kind, i)])")
    seen = {}

    def wrapper(executor, x, *args, **kwargs):
        to = internals.apply_model_options(args, kwargs)
        to["dragedit_probe"] = True
        seen["to"] = to
        return executor(x, *args, **kwargs)

    def probe(args, extra):
        seen["block_sees"] = args["transformer_options"].get("dragedit_probe")
        return extra["original_block"](args)

    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "probe", wrapper)
    m.set_model_patch_replace(probe, "dit", "double_block", 0)
    lat = tiny_models.dit_latent(size=8)["samples"]
    import comfy.sample
    import comfy.samplers
    with torch.inference_mode():
        comfy.sample.sample_custom(m, torch.zeros_like(lat), 1.0, comfy.samplers.ksampler("euler"),
                                   torch.tensor([0.5, 0.0]), tiny_models.dit_conditioning(), [], lat, disable_pbar=True)
    assert isinstance(seen.get("to"), dict) and seen.get("block_sees") is True, \
        _breaks("BaseModel.apply_model's signature or the transformer_options its wrappers get")


def test_added_noise_is_the_noise_the_sampler_node_put_in(sd15_model, cond):
    """internals.added_noise reads k-diffusion's KSamplerX0Inpaint (latent_image, inner_model.inner_model's
    model_sampling) from inside a KSAMPLER function: it must return what the sampler node added to the latent, and
    ComfyUI's "ddim" (euler with random inpaint noise) must not change that."""
    import comfy.sample
    seen = {}

    def fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **kw):
        seen["noise"] = internals.added_noise(model, x, sigmas)
        return x

    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigmas = host.ddim_sigmas(sd15_model, 4)                      # starts below sigma_max: plain noise scaling
    for inpaint in ({}, {"random": True}):
        with torch.inference_mode():
            comfy.sample.sample_custom(sd15_model, noise, 1.0, host.ksampler(fn, inpaint_options=inpaint), sigmas,
                                       cond[0], cond[1], latent, disable_pbar=True, seed=0)
        assert seen["noise"] is not None, "KSamplerX0Inpaint no longer exposes latent_image / the model sampling"
        assert torch.allclose(seen["noise"], noise * sigmas[0], atol=1e-5), inpaint
