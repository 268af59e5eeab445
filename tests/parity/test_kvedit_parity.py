"""Parity of the pack's DiT background K/V restore (host.dit_kv through ComfyUI's attention override, as RegionDrag
on DiTs uses it) with a port of KV-Edit's attention (tests/parity/kvedit_reference.py) on a tiny FLUX built from
config: record the image K/V of one image at σ, then denoise another image at σ with the background tokens' K/V taken
from the record. KV-Edit feeds only the foreground tokens; the pack runs every token and swaps the background rows,
so the foreground velocities must agree."""
import pytest
import torch

from tools.support import tiny_models
from dragedit.core import host
from dragedit.core.host import dit_kv
import kvedit_reference as ref  # noqa: E402  (tests/parity is on sys.path: rootdir conftest)

SIGMA = 0.6


@pytest.fixture(scope="module")
def flux():
    return tiny_models.flux(seed=3)


def _call(model, lat, cond):
    """x̂0 (LATENT samples) of one model call at SIGMA through ComfyUI's sampling (one Euler step to 0)."""
    import comfy.sample
    import comfy.samplers
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, torch.zeros_like(lat), 1.0, comfy.samplers.ksampler("euler"),
                                          torch.tensor([SIGMA, 0.0]), cond, [], lat, disable_pbar=True)


def _tokens(model, out, lat):
    """The model's velocity output as image tokens [1, n, C·p·p] from a call's x̂0: v = (x − x̂0)/σ, x = (1 − σ)·z."""
    dm = host.dit.diffusion_model(model)
    x = (1 - SIGMA) * host.process_in(model, lat)
    v = (x - host.process_in(model, out)) / SIGMA
    return dm.process_img(v)[0]


def _reference(model, lat_src, lat_edit, cond, fg):
    dm = host.dit.diffusion_model(model)
    txt, y = cond[0][0], cond[0][1]["pooled_output"]
    txt_ids = torch.zeros(1, txt.shape[1], 3)
    t = torch.tensor([SIGMA])
    info = {"feature": {}, "t": 0, "inverse": True}
    with torch.inference_mode():
        img, ids = dm.process_img((1 - SIGMA) * host.process_in(model, lat_src))
        ref.forward(dm, img, ids, txt, txt_ids, t, y, info)
        info.update(inverse=False, mask_indices=fg)
        img, ids = dm.process_img((1 - SIGMA) * host.process_in(model, lat_edit))
        return ref.forward(dm, img[:, fg], ids, txt, txt_ids, t, y, info)


def _pack(model, lat_src, lat_edit, cond, background):
    store = host.KVStore(dtype=torch.float32)
    rec = host.clone(model)
    dit_kv.patch_dit_kv_record(rec, store)
    _call(rec, lat_src, cond)
    run = host.clone(model)
    inj = dit_kv.DitKVInjection(store, mask=background)
    dit_kv.patch_dit_kv_inject(run, inj)
    out = _call(run, lat_edit, cond)
    assert inj.hits == len(host.dit.blocks(model)) and inj.misses == 0
    return _tokens(model, out, lat_edit)


@pytest.mark.parametrize("fg_rows", [(2, 5), (0, 8)])
def test_background_kv_restore_matches_kvedit(flux, fg_rows):
    cond = tiny_models.dit_conditioning(1)
    src = tiny_models.dit_latent(0, 16)["samples"]
    edit = tiny_models.dit_latent(5, 16)["samples"]
    grid = torch.zeros(8, 8, dtype=torch.bool)
    grid[fg_rows[0]:fg_rows[1], 1:6] = True                        # the foreground tokens (KV-Edit's mask)
    fg = torch.nonzero(grid.reshape(-1)).reshape(-1)
    want = _reference(flux, src, edit, cond, fg)
    got = _pack(flux, src, edit, cond, ~grid.reshape(-1))[:, fg]
    plain = _tokens(flux, _call(flux, edit, cond), edit)[:, fg]     # no restore: what the background changes
    err = float((got - want).abs().max())
    assert err <= 1e-4 * float(want.abs().max()), err
    assert float((plain - want).abs().max()) > 100 * max(err, 1e-7)
