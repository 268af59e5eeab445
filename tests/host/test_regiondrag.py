"""RegionDrag on real ComfyUI code: exact no-op reconstruction, cell-exact copy-paste, K/V swap identity, the
three nodes, clear input errors, SD1.5 / SDXL shapes, caches freed (the server: tests/server/)."""
import gc
import json
import tracemalloc
import warnings
from types import SimpleNamespace

import pytest
import torch

from tools.support import tiny_models
from tools.support.node_calls import run_node
from dragedit.core import ddpm_inversion as ef
from dragedit.core import host
from dragedit.core import regiondrag as rd
from dragedit.core.drag_schema import DragInstructions
from dragedit.nodes._errors import NodeInputError
from dragedit.nodes.inversion import DDIMInversion
from dragedit.nodes.regiondrag import AttentionKVSwap, LatentCopyPaste, RegionDrag

SIZE = 128                                   # image px of tiny_models.latent(size=16): a 16x16 latent at factor 8
RECT = {"kind": "rect", "handle": [[8, 8], [40, 40]], "target": [[67, 59], [99, 91]]}   # odd, non-cell offsets


def _json(**obj) -> str:
    return json.dumps({"image_size": [SIZE, SIZE], **obj})


def _planted(seed: int = 0) -> dict:
    """A smooth latent with a strong 4x4-cell pattern planted at cells x 1..4, y 1..4 (the RECT handle)."""
    lat = tiny_models.latent(seed, 16)
    s = lat["samples"].clone()
    g = torch.Generator().manual_seed(7)
    s[..., 1:5, 1:5] = 6.0 * torch.randn(1, 4, 4, 4, generator=g)
    return {"samples": s}


def _sample(model, pos, sampler, sigmas, latent):
    import comfy.sample
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, torch.zeros_like(latent), 1.0, sampler, sigmas, pos, pos, latent,
                                          seed=0)


# ---------------------------------------------------------------------------------------------- core: exactness
@pytest.mark.parametrize("kv_dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-3)])
def test_noop_edit_reproduces_input(sd15_model, kv_dtype, tol):
    """No drag, whole image editable: inversion + denoising with the stored noise maps and the K/V swap gives the
    input latent back (fp32 cache: float tolerance; fp16 cache: its rounding)."""
    samples = tiny_models.latent(0, 16)["samples"]
    plan = rd.make_plan(DragInstructions.from_obj({}, image_size=(SIZE, SIZE)), (16, 16))
    assert plan.is_noop
    stats = {}
    with torch.inference_mode():
        out = rd.run(sd15_model, tiny_models.conditioning(1), samples, plan, steps=20, strength=0.5,
                             kv_dtype=kv_dtype, stats=stats)
    assert float((out - samples).abs().max()) <= tol * float(samples.abs().max())
    n_layers = len(host.attention_layers(sd15_model))
    assert stats["unet_calls"] == 20                         # 10 inversion + 10 denoising evaluations
    assert stats["kv_hits"] == 10 * n_layers and stats["kv_misses"] == 0


def test_cycle_sde_noise_maps_are_posterior_noise():
    """With an exact denoiser (x̂0 = the clean latent), the chained (cycle-SDE) inversion's noise maps are the DDPM
    posterior noise, N(0, I); the edit-friendly independent draws give variance (σ² + σ'²)/(σ² − σ'²) per step,
    which an edited region would carry to the end. Sampling either back reproduces the clean latent exactly."""
    x0 = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    sig = torch.tensor([1.376, 1.168, 0.99, 0.836, 0.698, 0.574, 0.458, 0.346, 0.228, 0.041, 0.0])
    oracle = (lambda x, s: x0.clone())
    chained = rd.invert_cycle_sde(oracle, x0, sig, seed=1)
    indep = ef.invert_edit_friendly(oracle, x0, sig, seed=1)
    for j in range(sig.numel() - 2):
        s, sn = float(sig[j]), float(sig[j + 1])
        assert abs(float(chained.zs[j].std()) - 1.0) < 0.03
        assert abs(float(indep.zs[j].std()) - ((s * s + sn * sn) / (s * s - sn * sn)) ** 0.5) < 0.1
    for inv in (chained, indep):
        torch.testing.assert_close(ef.sample_edit_friendly(oracle, inv), x0, rtol=0, atol=1e-5)


def test_noop_node_reproduces_input(sd15_model):
    """A drag that moves nothing (handle = target; empty instructions are refused, issue 23) gives the input back."""
    lat = tiny_models.latent(1, 16)
    out, = run_node(RegionDrag, model=sd15_model, positive=tiny_models.conditioning(1), latent=lat,
                    drag_json=_json(points=[[60, 60, 60, 60]]), kv_dtype="float32")
    torch.testing.assert_close(out["samples"], lat["samples"], rtol=0, atol=1e-5 * float(lat["samples"].abs().max()))


def test_paste_moves_planted_pattern_cell_exactly():
    """apply_step: every target cell holds the cached latent's handle cell, bit for bit, for an odd offset; cells
    outside the editable mask hold the cache; the rest is untouched."""
    drag = DragInstructions.from_obj({"regions": [RECT]}, image_size=(SIZE, SIZE))
    mask = torch.zeros(SIZE, SIZE)
    mask[:, :104] = 1                                      # latent columns 13..15 are protected
    plan = rd.make_plan(drag, (16, 16), mask)
    cached = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    y = rd.apply_step(x, cached, plan, 0, 10)
    # RECT: handle cells x,y 1..4; target box 67..99 x 59..91 -> cells whose centre lies inside: x 8..11, y 7..10
    assert torch.equal(y[..., 7:11, 8:12], cached[..., 1:5, 1:5])
    assert torch.equal(y[..., 13:], cached[..., 13:])
    keep = torch.ones(16, 16, dtype=torch.bool)
    keep[7:11, 8:12] = False
    keep[:, 13:] = False
    assert torch.equal(y[..., keep], x[..., keep])
    # the vacated handle cells are exactly the handle minus the targets
    assert plan.vacate.sum() == 16 and bool(plan.vacate[1:5, 1:5].all())


def test_paste_schedule_honours_end_fraction():
    drag = DragInstructions.from_obj({"regions": [RECT]}, image_size=(SIZE, SIZE))
    plan = rd.make_plan(drag, (16, 16), paste_end=0.2)
    assert [plan.pastes_at(i, 10) for i in range(10)] == [True] * 8 + [False] * 2
    assert rd.make_plan(drag, (16, 16), paste_end=0.2, paste_every_step=True).paste_steps(10) == 10
    assert rd.make_plan(drag, (16, 16), paste_end=1.0).paste_steps(10) == 0
    assert rd.make_plan(drag, (16, 16), paste_end=0.25).paste_steps(10) == 8     # i < 7.5


def test_renoise_strength():
    """α = 0 keeps, α ≥ 1 replaces by noise of std α·sqrt(1+σ²) (x-space form of the reference's z-space mix)."""
    x = torch.full((1, 4, 64, 64), 3.0)
    where = torch.zeros(64, 64, dtype=torch.bool)
    where[:32] = True
    assert torch.equal(rd.renoise(x, where, 0.0, 2.0, torch.Generator().manual_seed(0)), x)
    y = rd.renoise(x, where, 1.0, 2.0, torch.Generator().manual_seed(0))
    assert torch.equal(y[..., 32:, :], x[..., 32:, :])
    assert abs(float(y[..., :32, :].mean())) < 0.1 and abs(float(y[..., :32, :].std()) - 5 ** 0.5) < 0.1
    z = rd.renoise(x, where, 0.6, 2.0, torch.Generator().manual_seed(0))
    assert abs(float(z[..., :32, :].mean()) - 0.8 * 3.0) < 0.1


def test_region_drag_moves_planted_pattern(sd15_model):
    """End to end: pasting at every step, the planted handle content ends up on the target cells (up to the last
    step's σ_min noise), the protected area is the input bit for bit, the vacated area changed."""
    lat = _planted()
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, :, :104] = 1
    out, = run_node(RegionDrag, model=sd15_model, positive=tiny_models.conditioning(1), latent=lat,
                    drag_json=_json(regions=[RECT]), mask=mask, paste_every_step=True, noise_scale=1.0)
    o, s = out["samples"], lat["samples"]
    err = float((o[..., 7:11, 8:12] - s[..., 1:5, 1:5]).abs().max())
    assert err < 0.05 * float(s[..., 1:5, 1:5].abs().max())
    assert torch.equal(o[..., 13:], s[..., 13:])
    assert float((o[..., 1:5, 1:5] - s[..., 1:5, 1:5]).abs().mean()) > 1.0
    # the 4x4 window of the output that best matches the planted pattern sits exactly on the target cells
    pat = s[..., 1:5, 1:5]
    win = torch.nn.functional.unfold(o, 4)                      # [1, 4*16, 13*13]
    best = int(((win - pat.reshape(1, -1, 1)) ** 2).sum(1).argmin())
    assert divmod(best, 13) == (7, 8)                            # (row, column) of its top-left cell


# ---------------------------------------------------------------------------------------------- K/V swap
def test_kv_swap_with_own_cache_is_identity(sd15_model):
    """Record every layer's K/V during one sampling pass, then sample again with them swapped in: same result."""
    import comfy.samplers
    pos = tiny_models.conditioning(1)
    lat = tiny_models.latent(2, 16)["samples"]
    sig = host.ddim_sigmas(sd15_model, 10)[4:]
    store = host.KVStore(dtype=torch.float32)
    rec = host.patch_kv_record(host.clone(sd15_model), store)
    euler = comfy.samplers.sampler_object("euler")
    noisy = lat + float(sig[0]) * torch.randn(lat.shape, generator=torch.Generator().manual_seed(0))
    a = _sample(rec, pos, euler, sig, noisy)
    assert len(store) == 6 * len(host.attention_layers(sd15_model))
    swapped, = run_node(AttentionKVSwap, model=sd15_model, inversion=SimpleNamespace(kv=store))
    b = _sample(swapped, pos, euler, sig, noisy)
    assert torch.equal(a, b)
    # and it is really in use: another cache changes the result
    other = host.KVStore(dtype=torch.float32)
    _sample(host.patch_kv_record(host.clone(sd15_model), other), pos, euler, sig, noisy * 0.5)
    c = _sample(run_node(AttentionKVSwap, model=sd15_model, inversion=SimpleNamespace(kv=other))[0], pos, euler, sig,
                noisy)
    assert not torch.allclose(a, c)


def test_kv_swap_node_layers_and_errors(sd15_model):
    store = host.KVStore(dtype=torch.float32)
    with pytest.raises(NodeInputError, match=r"\[Attention K/V Swap\] input 'inversion'"):
        run_node(AttentionKVSwap, model=sd15_model, inversion=SimpleNamespace(kv=store))
    _, inv, _ = run_node(DDIMInversion, model=sd15_model, latent=tiny_models.latent(0, 16),
                         positive=tiny_models.conditioning(1), steps=4, strength=0.5, record_kv=False)
    with pytest.raises(NodeInputError, match="record_kv"):
        run_node(AttentionKVSwap, model=sd15_model, inversion=inv)
    _, inv, _ = run_node(DDIMInversion, model=sd15_model, latent=tiny_models.latent(0, 16),
                         positive=tiny_models.conditioning(1), steps=4, strength=0.5, record_kv=True)
    m, = run_node(AttentionKVSwap, model=sd15_model, inversion=inv, layers="decoder, two highest resolutions")
    rep = m.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert rep and all(k[0] == "output" for k in rep)
    assert "patches_replace" not in sd15_model.model_options.get("transformer_options", {})   # input untouched


# ---------------------------------------------------------------------------------------------- Latent Copy-Paste
def test_copy_paste_sampler_without_edit_equals_plain_sampler(sd15_model):
    import comfy.samplers
    pos = tiny_models.conditioning(1)
    x_t, inv, sig = run_node(DDIMInversion, model=sd15_model, latent=tiny_models.latent(0, 16), positive=pos,
                             steps=10, strength=0.5, record_kv=False)
    euler = comfy.samplers.sampler_object("euler")
    cp, = run_node(LatentCopyPaste, sampler=euler, inversion=inv, drag_json=_json())
    assert torch.equal(_sample(sd15_model, pos, euler, sig, x_t["samples"]),
                       _sample(sd15_model, pos, cp, sig, x_t["samples"]))


def test_copy_paste_and_kv_swap_compose_to_region_drag(sd15_model):
    """RegionDrag = its inversion + 'Attention K/V Swap' + 'Latent Copy-Paste' around the edit-friendly DDPM
    sampler in stock sample_custom: the same edit, up to the last step's residual that the all-in-one moves."""
    import comfy.samplers
    pos = tiny_models.conditioning(1)
    lat = _planted(3)
    sigmas = rd.grid_sigmas(sd15_model, 20, 0.5)
    with torch.inference_mode():
        inv = rd.invert(sd15_model, pos, lat["samples"], sigmas, seed=5, kv_dtype=torch.float32)
    drag = _json(regions=[RECT])
    plan = rd.make_plan(DragInstructions.from_json(drag), (16, 16), seed=5, paste_every_step=True)
    with torch.inference_mode():
        want = rd.denoise(sd15_model, pos, inv, plan)
    model, = run_node(AttentionKVSwap, model=sd15_model, inversion=inv)
    sampler, = run_node(LatentCopyPaste, sampler=comfy.samplers.KSAMPLER(ef.make_sampler_fn(inv.ef)), inversion=inv,
                        drag_json=drag, seed=5, paste_every_step=True)
    got = _sample(model, pos, sampler, inv.sigmas, host.process_out(sd15_model, inv.start.clone()))
    moved = plan.pairs.dst_mask() | plan.vacate
    torch.testing.assert_close(got[..., ~moved], want[..., ~moved], rtol=0, atol=1e-4)
    r = host.process_out(sd15_model, inv.ef.residual.clone())   # the last step's residual, in LATENT units
    assert float((got - want).abs().max()) <= 2 * float(r.abs().max()) + 1e-4
    inv.free()


def test_copy_paste_sigmas_must_match_inversion(sd15_model):
    import comfy.samplers
    pos = tiny_models.conditioning(1)
    x_t, inv, sig = run_node(DDIMInversion, model=sd15_model, latent=tiny_models.latent(0, 16), positive=pos,
                             steps=10, strength=0.5, record_kv=False)
    cp, = run_node(LatentCopyPaste, sampler=comfy.samplers.sampler_object("euler"), inversion=inv,
                   drag_json=_json(regions=[RECT]))
    with pytest.raises(NodeInputError, match=r"\[Latent Copy-Paste\] input 'inversion': .*do not match the INVERSION's"):
        _sample(sd15_model, pos, cp, host.ddim_sigmas(sd15_model, 7)[3:], x_t["samples"])
    with pytest.raises(NodeInputError, match=r"\[Latent Copy-Paste\] input 'sampler'"):
        run_node(LatentCopyPaste, sampler=object(), inversion=inv, drag_json=_json())


# ---------------------------------------------------------------------------------------------- input errors
def _rd(model, **kw):
    args = dict(model=model, positive=tiny_models.conditioning(1), latent=tiny_models.latent(0, 16), steps=4)
    args.update(kw)
    return run_node(RegionDrag, **args)


@pytest.mark.parametrize("drag,match", [
    ({"points": [{"handle": [10, 10], "target": [140, 20]}]}, r"input 'drag_json': points\[0\]\.target .* outside"),
    ({"points": [{"handle": [-3, 10], "target": [20, 20]}]}, r"input 'drag_json': points\[0\]\.handle .* outside"),
    ({"regions": [{"kind": "rect", "handle": [[10, 10], [10, 30]], "target": [[40, 40], [60, 60]]}]},
     r"input 'drag_json': regions\[0\]\.handle has zero width"),
    ({"regions": [{"kind": "rect", "handle": [[10, 10], [30, 30]], "target": [[0, 0], [200, 200]]}]},
     r"input 'drag_json': regions\[0\]\.target.*outside the 128x128 image"),
    ({"regions": [{"kind": "rect", "handle": [[10, 10], [40, 40]],
                   "points": [{"handle": [20, 20], "target": [120, 120]}]}]},
     r"input 'drag_json': regions\[0\]: the points move the region .* outside the 128x128 image"),
    ({"points": [{"handle": [10, 10]}]}, r"input 'drag_json': points\[0\]\.target is missing"),
])
def test_bad_drag_is_a_clear_error(sd15_model, drag, match):
    with pytest.raises(NodeInputError, match=r"\[RegionDrag\] " + match):
        _rd(sd15_model, drag_json=_json(**drag))


def test_other_input_errors(sd15_model):
    good = _json(regions=[RECT])
    with pytest.raises(NodeInputError, match=r"\[RegionDrag\] input 'latent': batch size 2"):
        _rd(sd15_model, drag_json=good, latent={"samples": tiny_models.latent(0, 16)["samples"].repeat(2, 1, 1, 1)})
    with pytest.raises(NodeInputError, match=r"input 'mask': is 64x64 but the image is 128x128"):
        _rd(sd15_model, drag_json=good, mask=torch.ones(1, 64, 64))
    with pytest.raises(NodeInputError, match=r"input 'mask': a batch of 2"):
        _rd(sd15_model, drag_json=good, mask=torch.ones(2, SIZE, SIZE))
    with pytest.raises(NodeInputError, match=r"input 'drag':"):
        _rd(sd15_model)
    with pytest.raises(NodeInputError, match=r"input 'drag_json': both"):
        _rd(sd15_model, drag_json=good, drag=DragInstructions.from_json(good))
    with pytest.raises(NodeInputError, match=r"input 'drag_json': .*not valid JSON"):
        _rd(sd15_model, drag_json="{regions: ")
    with pytest.raises(NodeInputError, match=r"input 'drag_json': the drag instructions are for a 100x128 image"):
        _rd(sd15_model, drag_json=json.dumps({"image_size": [100, 128], "points": []}))
    with pytest.raises(NodeInputError, match=r"input 'drag_json': has no image_size"):
        _rd(sd15_model, drag_json=json.dumps({"points": [[10, 10, 20, 20]]}))
    with pytest.raises(NodeInputError, match=r"input 'vae'"):
        _rd(sd15_model, drag_json=good, latent=None, image=torch.rand(1, SIZE, SIZE, 3))
    with pytest.raises(NodeInputError, match=r"input 'latent': both"):
        _rd(sd15_model, drag_json=good, image=torch.rand(1, SIZE, SIZE, 3))
    with pytest.raises(NodeInputError, match=r"input 'latent': the latent has 12 channels"):
        _rd(sd15_model, drag_json=_json(), latent={"samples": torch.zeros(1, 12, 16, 16)})
    with pytest.raises(NodeInputError, match=r"input 'strength'"):
        _rd(sd15_model, drag_json=good, steps=1, strength=0.3)
    with pytest.raises(NodeInputError, match=r"input 'positive'"):
        _rd(sd15_model, drag_json=good, positive=tiny_models.conditioning(1, width=48))


def test_image_and_vae_input(sd15_model):
    """IMAGE + VAE: the image is encoded with the VAE and the drag's pixel coordinates refer to it."""
    class HalfVAE:       # a stand-in VAE object: 8x average pooling to 4 channels
        def encode(self, pixels):
            p = pixels.movedim(-1, 1)
            return torch.nn.functional.avg_pool2d(torch.cat([p, p[:, :1]], 1), 8)
    # a flat image with a 0/1 pattern in 8x8 px blocks on the RECT handle (px 8..40 = latent cells 1..4)
    g = torch.Generator().manual_seed(0)
    cells = torch.full((1, 3, 16, 16), 0.5)
    cells[..., 1:5, 1:5] = (torch.rand(1, 3, 4, 4, generator=g) > 0.5).float()
    img = torch.nn.functional.interpolate(cells, scale_factor=8).movedim(1, -1).contiguous()
    s = HalfVAE().encode(img)
    mask = torch.zeros(1, 16, 16)             # a latent-size mask: it does not depend on the image size
    mask[:, :, :13] = 1
    out, = _rd(sd15_model, latent=None, image=img, vae=HalfVAE(), drag_json=json.dumps({"regions": [RECT]}),
               mask=mask, paste_every_step=True, noise_scale=1.0, steps=50)
    o = out["samples"]
    assert o.shape == (1, 4, 16, 16) and torch.isfinite(o).all()
    # the image's pattern ends up on the target cells the image px of the drag name, the rest stays
    # (up to the last step's σ_min noise on this 0/1 pattern: 0.29 measured)
    err = float((o[..., 7:11, 8:12] - s[..., 1:5, 1:5]).abs().max())
    assert err < 0.4, err
    assert torch.equal(o[..., 13:], s[..., 13:])
    win = torch.nn.functional.unfold(o, 4)
    best = int(((win - s[..., 1:5, 1:5].reshape(1, -1, 1)) ** 2).sum(1).argmin())
    assert divmod(best, 13) == (7, 8)


# ---------------------------------------------------------------------------------------------- model shapes
@pytest.mark.parametrize("kind", ["sd15", "sdxl", "vpred"])
def test_model_shapes_run(kind):
    model = getattr(tiny_models, kind)()
    pos = tiny_models.conditioning(1, pooled=(kind == "sdxl"))
    lat = _planted()
    out, = run_node(RegionDrag, model=model, positive=pos, latent=lat, drag_json=_json(regions=[RECT]), steps=10)
    o = out["samples"]
    assert o.shape == lat["samples"].shape and torch.isfinite(o).all()
    assert float((o[..., 7:11, 8:12] - lat["samples"][..., 7:11, 8:12]).abs().mean()) > 1.0   # something moved


def test_kv_cache_bytes_match_layer_shapes(sd15_model, sdxl_model):
    for model, pooled in ((sd15_model, False), (sdxl_model, True)):
        sig = rd.grid_sigmas(model, 8, 0.5)
        with torch.inference_mode():
            inv = rd.invert(model, tiny_models.conditioning(1, pooled=pooled), tiny_models.latent(0, 16)["samples"],
                            sig, kv_dtype=torch.float16)
        assert inv.kv.nbytes() == rd.kv_cache_bytes(host.attention_layers(model), (16, 16), 4, torch.float16)
        assert inv.kv.dtype == torch.float16 and inv.kv.device == torch.device(model.offload_device)
        inv.free()
        assert inv.kv.nbytes() == 0 and inv.nbytes() == 0


# ---------------------------------------------------------------------------------------------- caches freed
def _live(kind: type) -> list:
    """Live objects of a type (warnings of deprecated torch aliases that isinstance touches are muted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, kind)]


def _live_kv_bytes() -> tuple[int, int]:
    stores = _live(host.KVStore)
    return len([s for s in stores if len(s)]), sum(s.nbytes() for s in stores)


@pytest.mark.slow
def test_caches_freed_after_each_run(sd15_model):
    """Five runs of the node: no K/V store keeps tensors afterwards, live tensors and Python allocations stay flat."""
    args = dict(model=sd15_model, positive=tiny_models.conditioning(1), latent=_planted(),
                drag_json=_json(regions=[RECT]), steps=8)
    run_node(RegionDrag, **args)                           # warm-up (lazy imports, caches of ComfyUI)
    gc.collect()
    tracemalloc.start()
    counts, traced = [], []
    try:
        for _ in range(5):
            out, = run_node(RegionDrag, **args)
            del out
            gc.collect()
            assert _live_kv_bytes() == (0, 0)
            counts.append(len(_live(torch.Tensor)))
            traced.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert max(counts) - min(counts) <= 2, counts
    assert traced[-1] - traced[1] < 256 * 1024, traced


def test_cancel_stops_the_run_and_frees_the_cache(sd15_model):
    """Cancel (ComfyUI's interrupt flag) stops the node at its next step; the K/V cache is dropped all the same."""
    import comfy.model_management as mm
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _rd(sd15_model, drag_json=_json(regions=[RECT]))
    finally:
        mm.interrupt_current_processing(False)
    gc.collect()
    assert _live_kv_bytes() == (0, 0)


