"""DDIM inversion on real ComfyUI code: reconstruction bound, the node (diffusers: tests/parity/)."""
import pytest
import torch

from tools.support import tiny_models
from dragedit.core import host
from dragedit.core import inversion as inv
from dragedit.core.schedule import eps_from_x0, rescale_to_sigma
from dragedit.nodes.inversion import DDIMInversion
from dragedit.nodes._errors import NodeInputError
from tools.support.node_calls import run_node


def _invert_and_measure(model, pos, samples, steps):
    """Invert then sample back with DDIM inside one session; also measure the per-step inversion mismatch
    d_i = Δ_i·‖ε̂(x_{i+1}, t_{i+1}) − ε̂(z_i, t_{i+1})‖∞ that the bound is made of."""
    sig = host.ddim_sigmas(model, steps)
    res = {}

    def loop(den, x, _s):
        lat = inv.invert(den, x, sig)
        asc = lat[::-1]
        s = torch.flip(sig, [0]).tolist()
        d = []
        for i in range(len(s) - 1):
            e_inv = eps_from_x0(rescale_to_sigma(asc[i], s[i], s[i + 1]), den.x0(rescale_to_sigma(asc[i], s[i], s[i + 1]), s[i + 1]), s[i + 1])
            e_smp = eps_from_x0(asc[i + 1], den.x0(asc[i + 1], s[i + 1]), s[i + 1])
            d.append((s[i + 1] - s[i]) * float((e_smp - e_inv).abs().max()))
        res["d"] = d
        res["x0"] = x.clone()
        res["rec"] = inv.sample(den, lat[0], sig)
        return res["rec"]

    with torch.inference_mode():
        host.session(host.clone(model), pos, None, 1.0, samples, sig, loop)
    return res


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd15", "vpred"])
def test_reconstruction_within_derived_bound(kind):
    """Bound: sampling back undoes step i exactly except that it evaluates ε̂ at x_{i+1} where inversion used
    z_i (both at t_{i+1}); so the error after the full pass is e_0 = Σ_i Δ_i·(ε̂_smp − ε̂_inv) + Σ_i Δ_i·(ε̂(x̃) − ε̂(x))
    along the path. The first sum is measured (Σ d_i); the second (propagation) is bounded by the first times the
    measured amplification, which for these step sizes stays below 1: we allow |e_0|∞ ≤ 2·Σ d_i."""
    model = getattr(tiny_models, kind)()
    samples = tiny_models.latent(0)["samples"]
    res = _invert_and_measure(model, tiny_models.conditioning(1), samples, steps=50)
    err = float((res["rec"] - res["x0"]).abs().max())
    bound = 2.0 * sum(res["d"])
    assert err <= bound, (err, bound)
    # the bound is tight, not vacuous: it is within a small factor of the error actually seen
    assert bound < 20 * max(err, 1e-6)


def test_node_outputs_and_kv(sd15_model, cond):
    pos, _ = cond
    lat = tiny_models.latent(0)
    out, result, sigmas = run_node(DDIMInversion, model=sd15_model, latent=lat, positive=pos, steps=20,
                                   strength=0.5, record_kv=True)
    assert len(sigmas) == 11 and float(sigmas[-1]) == 0.0
    assert len(result.latents) == 11 and result.kv is not None
    assert len(result.kv.sigmas) == 10          # one K/V set per sampling step
    assert out["samples"].shape == lat["samples"].shape
    assert torch.allclose(host.process_in(sd15_model, out["samples"]), result.start, atol=1e-5)
    assert not sd15_model.model_options.get("transformer_options")


@pytest.mark.parametrize("bad,match", [
    (dict(latent={"samples": torch.zeros(0, 4, 16, 16)}), "latent"),
    (dict(latent={"samples": torch.zeros(2, 4, 16, 16)}), "batch size 2"),
    (dict(strength=1.5), "strength"),
    (dict(strength=-0.1), "strength"),
    (dict(steps=0), "steps"),
    (dict(cfg=3.0), "negative"),
    (dict(positive=tiny_models.conditioning(1, width=64)), "another model family"),
])
def test_node_bad_inputs(sd15_model, cond, bad, match):
    args = dict(model=sd15_model, latent=tiny_models.latent(0), positive=cond[0], steps=10, strength=0.5, record_kv=False)
    args.update(bad)
    with pytest.raises(NodeInputError, match=match) as e:
        run_node(DDIMInversion, **args)
    assert "[DDIM Inversion]" in str(e.value)


def test_node_rejects_unsupported_family(sd15_model, cond):
    import comfy.model_base
    flow = sd15_model.clone()
    flow.add_object_patch("model_sampling", comfy.model_base.model_sampling(sd15_model.model.model_config,
                                                                            comfy.model_base.ModelType.FLOW))
    with pytest.raises(NodeInputError, match="model"):
        run_node(DDIMInversion, model=flow, latent=tiny_models.latent(0), positive=cond[0], steps=10, strength=0.5,
                 record_kv=False)


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "vpred"])
def test_node_runs_on_each_family(kind):
    model = getattr(tiny_models, kind)()
    pooled = kind == "sdxl"
    out, result, sigmas = run_node(DDIMInversion, model=model, latent=tiny_models.latent(0),
                                   positive=tiny_models.conditioning(1, pooled=pooled),
                                   negative=tiny_models.conditioning(2, pooled=pooled), cfg=2.0,
                                   steps=8, strength=1.0, record_kv=True)
    assert torch.isfinite(out["samples"]).all() and len(result.kv) > 0
