"""core/host/dit_grad.py on a real tiny FLUX: out-of-place block forwards installed as dit replaces match the stock
blocks exactly and let a gradient w.r.t. the latent flow; feature capture through dit replaces."""
import pytest
import torch

from tools.support import tiny_models
from dragedit.core import host
from dragedit.core.host import dit, dit_grad


@pytest.fixture(scope="module")
def flux():
    return tiny_models.flux(seed=2)


def _forward(model, x, sigma=0.5):
    """The model's denoised output x̂0 at sigma, called through BaseModel.apply_model with the clone's
    transformer_options (dit replaces) and wrappers."""
    import comfy.patcher_extension
    cond = tiny_models.dit_conditioning()
    to = comfy.patcher_extension.copy_nested_dicts(model.model_options.get("transformer_options", {}))
    to["wrappers"] = comfy.patcher_extension.copy_nested_dicts(model.wrappers)
    s = torch.full((x.shape[0],), sigma)
    return model.model.apply_model(x, s, c_crossattn=cond[0][0], y=cond[0][1]["pooled_output"],
                                   transformer_options=to)


def test_out_of_place_blocks_match_and_pass_gradients(flux):
    x0 = tiny_models.dit_latent(1, size=16)["samples"]
    with torch.inference_mode(False), torch.no_grad():
        ref = _forward(flux, x0)
    run = dit_grad.patch_out_of_place(host.clone(flux))
    with torch.inference_mode(False), torch.no_grad():
        assert torch.equal(_forward(run, x0), ref)
    with torch.inference_mode(False), torch.enable_grad():
        x = x0.clone().requires_grad_(True)
        with pytest.raises(RuntimeError, match="inplace"):
            _forward(flux, x).square().mean().backward()
        x = x0.clone().requires_grad_(True)
        out = _forward(run, x)
        out.square().mean().backward()
    assert torch.equal(out.detach(), ref)
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_out_of_place_gradient_matches_finite_differences(flux):
    run = dit_grad.patch_out_of_place(host.clone(flux))
    x0 = tiny_models.dit_latent(1, size=8)["samples"]
    d = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    eps = 1e-2
    with torch.inference_mode(False):
        x = x0.clone().requires_grad_(True)
        with torch.enable_grad():
            _forward(run, x).square().mean().backward()
        with torch.no_grad():
            fd = (_forward(run, x0 + eps * d).square().mean() - _forward(run, x0 - eps * d).square().mean()) / (2 * eps)
    assert float((x.grad * d).sum()) == pytest.approx(float(fd), rel=1e-2)


def test_feature_capture_through_dit_replaces(flux):
    x0 = tiny_models.dit_latent(1, size=16)["samples"]
    store = dit_grad.DitFeatureStore()
    blocks = dit.select_blocks(flux, orders=[1, 3])
    run = dit_grad.patch_dit_feature_capture(host.clone(flux), store, blocks)
    with torch.inference_mode(False), torch.no_grad():
        ref = _forward(flux, x0)
        assert torch.equal(_forward(run, x0), ref)
    assert sorted(store.features) == [("double", 1), ("single", 1)]
    assert store.features[("single", 1)].shape == (1, 64, 128)
    assert store.grid_features(("double", 1), (8, 8)).shape == (1, 128, 8, 8)
    # with out-of-place blocks underneath, the captured features carry the gradient to the latent
    both = dit_grad.patch_out_of_place(dit_grad.patch_dit_feature_capture(host.clone(flux), store, blocks))
    with torch.inference_mode(False), torch.enable_grad():
        x = x0.clone().requires_grad_(True)
        _forward(both, x)
        store.features[("double", 1)].square().sum().backward()
    assert x.grad.abs().sum() > 0
