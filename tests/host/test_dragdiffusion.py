"""DragDiffusion on real ComfyUI code (tiny models): the optimisation loop on the host, the truncated forward,
the mask term, a stock-loader LoRA, Cancel, the "Motion Supervision" / "DragDiffusion" nodes (the server:
tests/server/)."""
from __future__ import annotations

import math

import pytest
import torch

from tools.support import tiny_models
from tools.support.node_calls import run_node
from dragedit.core import dragdiffusion as dd
from dragedit.core import host
from dragedit.core.drag_schema import DragInstructions
from dragedit.core.geometry import point_tensors
from dragedit.nodes import dragdiffusion as ddn
from dragedit.nodes._errors import NodeInputError
from dragedit.nodes.dragdiffusion import DragDiffusion, MotionSupervision
from dragedit.nodes.inversion import DDIMInversion

IMAGE = (128, 128)                      # latent 16x16 x VAE factor 8 -> feature grid 64x64 (2 px per cell)
DRAG = [[44, 68, 92, 68]]               # planted blob at latent (5, 8) -> 6 latent cells right (24 grid cells)


def planted_latent(seed: int = 0, cx: float = 5, cy: float = 8, size: int = 16) -> dict:
    """A LATENT with a strong blob (alternating sign per channel) at latent cell (cx, cy) over a weak pattern."""
    lat = tiny_models.latent(seed, size)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 1.5 ** 2))
    lat["samples"] = lat["samples"] * 0.3 + 6 * blob * torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None, None]
    return lat


def centre_of_mass(samples: torch.Tensor) -> tuple[float, float]:
    """(x, y) latent-cell centre of mass of channel 0's positive part (squared: the blob dominates)."""
    m = samples[0, 0].clamp(min=0) ** 2
    ys, xs = torch.meshgrid(torch.arange(m.shape[0]).float(), torch.arange(m.shape[1]).float(), indexing="ij")
    return float((m * xs).sum() / m.sum()), float((m * ys).sum() / m.sum())


def inverted(model, pos, seed: int = 0, record_kv: bool = False, steps: int = 50, strength: float = 0.7):
    """DDIM Inversion node outputs (LATENT at t, INVERSION, SIGMAS) of the planted latent."""
    return run_node(DDIMInversion, model=model, latent=planted_latent(seed), positive=pos, steps=steps,
                    strength=strength, record_kv=record_kv)


def drag_cells(points=DRAG, image=IMAGE):
    drag = DragInstructions.from_obj(points, image_size=image)
    grid = dd.feature_grid((16, 16), drag.image_size)
    h, t = dd.points_on_grid(*point_tensors(drag), grid)
    return drag, grid, h, t


def optimize(model, pos, x_t, sigmas, settings=None, mask=None, on_iteration=None, points=DRAG):
    _, grid, h, t = drag_cells(points)
    with torch.inference_mode():
        return dd.optimize(model, pos, x_t["samples"], sigmas, h, t, grid, settings or dd.DragSettings(), mask=mask,
                           on_iteration=on_iteration)


# ---------------------------------------------------------------- grids, blocks, layers

def test_supervision_grid_is_four_cells_per_latent_cell():
    """The reference's sup_res = half the image = 4x the latent (and the default feature map) on SD1.5; the pack keeps
    that ratio to the features on any VAE factor, so r_m / r_p / threshold mean the same relative to the features."""
    g = dd.feature_grid((64, 64))                                    # SD1.5 at 512: 256x256, 2 px per cell
    assert g.hw == (256, 256) and g.scale == (2.0, 2.0)
    g = dd.feature_grid((16, 16), (32, 32))                          # shapes demo: 2x VAE -> 64x64, 0.5 px per cell
    assert g.hw == (64, 64) and g.scale == (0.5, 0.5)
    assert g.cell_of(torch.tensor([[11.0, 8.0], [19.0, 8.0]])).tolist() == [[22, 16], [38, 16]]
    g = dd.feature_grid((64, 96), (771, 515))                        # crop to a multiple of 8 is centred
    assert g.hw == (256, 384) and g.offset == (1.0, 1.0)
    assert g.cell_of(torch.tensor([[1.0, 1.0], [770.0, 514.0]])).tolist() == [[0, 0], [383, 255]]
    with pytest.raises(ValueError, match="does not belong"):
        dd.feature_grid((16, 16), (128, 64))


def test_editable_mask_only_when_it_constrains():
    grid = dd.feature_grid((16, 16), IMAGE)
    assert dd.editable_mask(None, grid, (16, 16)) is None
    assert dd.editable_mask(torch.ones(128, 128), grid, (16, 16)) is None
    assert dd.editable_mask(torch.zeros(1, 128, 128), grid, (16, 16)) is None   # empty = no mask (reference)
    m = torch.zeros(1, 128, 128)
    m[:, :, :64] = 0.4
    lm = dd.editable_mask(m, grid, (16, 16))
    assert lm.shape == (1, 1, 16, 16) and lm[0, 0, :, :8].eq(1).all() and lm[0, 0, :, 8:].eq(0).all()


def test_blocks_and_reference_layers_on_sd15_layout():
    cfg = dict(tiny_models.SD15_UNET, model_channels=32, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
               transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
               num_heads=2)
    model = host.build_model(cfg)                                     # the real SD1.5 block layout, small channels
    assert dd.feature_block_index(model, -2) == 8 == dd.feature_block_index(model, 2)   # up_blocks[2]
    assert [l.number for l in dd.reference_layers(model)] == [6, 7, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="4 up blocks"):
        dd.feature_block_index(model, 4)


def test_reference_layers_sdxl_and_tiny(sdxl_model, sd15_model):
    assert {l.level for l in dd.reference_layers(sdxl_model)} == {2, 4}          # no attention at level 1
    assert len(dd.reference_layers(sd15_model)) == len(host.select_layers(sd15_model, part="output"))


# ---------------------------------------------------------------- optimisation on the host

@pytest.mark.parametrize("seed", [0, 1])
def test_planted_drag_converges(seed):
    model, pos = tiny_models.sd15(seed), tiny_models.conditioning(1)
    x_t, _inv, sig = inverted(model, pos, seed)
    out = optimize(model, pos, x_t, sig)
    res = out.result
    assert res.reached and res.iterations < 80                       # every handle within 2 cells of its target
    assert math.dist(res.handles[0].tolist(), (46, 34)) < 2.0
    assert res.history[0].tolist() == [[22.0, 34.0]]
    (x0, y0), (x1, y1) = centre_of_mass(x_t["samples"]), centre_of_mass(out.samples)
    assert x1 - x0 > 0.5 and abs(y1 - y0) < 1.0                     # the planted blob itself moved right
    assert not out.masked and out.stats["unet_calls"] == res.iterations + 2   # F0 + one per step + final track


def test_no_mask_stops_the_forward_after_the_feature_block(sd15_model, cond):
    pos = cond[0]
    x_t, _inv, sig = inverted(sd15_model, pos)
    last = sd15_model.model.diffusion_model.out                 # the UNet's final layer
    calls = []
    hook = last.register_forward_hook(lambda *a: calls.append(1))
    try:
        optimize(sd15_model, pos, x_t, sig, dd.DragSettings(iterations=3))
        assert calls == []                                           # truncated: the decoder tail never ran
        mask = torch.zeros(128, 128)
        mask[40:100, 16:112] = 1
        out = optimize(sd15_model, pos, x_t, sig, dd.DragSettings(iterations=3), mask=mask)
        assert out.masked and len(calls) == out.stats["unet_calls"]  # with a mask x_{t-1} needs the whole UNet
    finally:
        hook.remove()


def test_mask_term_keeps_unmasked_latent_nearly_unchanged(sd15_model, cond):
    pos = cond[0]
    x_t, _inv, sig = inverted(sd15_model, pos)
    mask = torch.zeros(128, 128)
    mask[40:100, 16:112] = 1
    grid = dd.feature_grid((16, 16), IMAGE)
    keep = dd.editable_mask(mask, grid, (16, 16))[0, 0] == 0
    change = {}
    for lam in (0.0, 0.1):
        out = optimize(sd15_model, pos, x_t, sig, dd.DragSettings(iterations=20, lam=lam), mask=mask)
        d = (out.samples - x_t["samples"]).abs()[0]
        change[lam] = (float(d[:, keep].mean()), float(d[:, ~keep].mean()))
    assert change[0.0][0] > 0.5                                       # the drag alone changes the whole latent
    assert change[0.1][0] < 0.1 * change[0.0][0]                      # the mask term holds the outside
    assert change[0.1][1] > 5 * change[0.1][0]                        # while the editable part still moves


def test_half_precision_autocast_runs(sd15_model, cond):
    pos = cond[0]
    x_t, _inv, sig = inverted(sd15_model, pos)
    out = optimize(sd15_model, pos, x_t, sig, dd.DragSettings(iterations=4, half_precision=True))
    assert out.result.iterations == 4 and out.samples.dtype == x_t["samples"].dtype
    assert torch.isfinite(out.samples).all() and not torch.equal(out.samples, x_t["samples"])


def _lora(model, rank: int = 4, seed: int = 0) -> dict:
    """A LoRA state dict (kohya key format, as a .safetensors LoRA holds) on every attn1 q/k/v/out of the UNet."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.model.state_dict().items():
        if ".attn1.to_" in k and k.endswith(".weight") and v.ndim == 2:
            name = "lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_")
            sd[name + ".lora_up.weight"] = torch.randn(v.shape[0], rank, generator=g) * 0.5
            sd[name + ".lora_down.weight"] = torch.randn(rank, v.shape[1], generator=g) * 0.5
            sd[name + ".alpha"] = torch.tensor(float(rank))
    return sd


def test_stock_lora_patched_model_gets_gradients_through_patched_weights():
    import comfy.sd
    with torch.inference_mode():                                     # loaded like a stock loader: inference weights
        model = tiny_models.sd15()
        sd = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
        model.model.diffusion_model.load_state_dict(sd, assign=True)
    pos = tiny_models.conditioning(1)
    lora = _lora(model)
    with torch.inference_mode():                                     # what LoraLoader does with the file's dict
        lora_on, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
        lora_off, _ = comfy.sd.load_lora_for_models(model, None, lora, 0.0, 0.0)
    assert len(lora_on.patches) >= 10
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    x_t, _inv, sig = inverted(model, pos)
    settings = dd.DragSettings(iterations=5, lr=0.05)
    base = optimize(model, pos, x_t, sig, settings)
    on = optimize(lora_on, pos, x_t, sig, settings)
    off = optimize(lora_off, pos, x_t, sig, settings)
    for out in (base, on, off):
        assert out.result.iterations == 5 and all(math.isfinite(v) and v > 0 for v in out.result.losses)
        assert (out.samples - x_t["samples"]).abs().mean() > 1e-3      # gradient reached the latent
    torch.testing.assert_close(off.samples, base.samples)            # strength 0 = the base model
    assert (on.samples - base.samples).abs().max() > 1e-2            # the patched weights were used
    assert on.result.losses[0] != base.result.losses[0]
    for k, v in model.model.state_dict().items():                    # weights unpatched and restored afterwards
        assert torch.equal(v, before[k]), k
    assert next(model.model.parameters()).is_inference()


def test_cancel_between_iterations_raises_interrupt(sd15_model, cond):
    import comfy.model_management as mm
    from dragedit.nodes._ui import Progress
    pos = cond[0]
    x_t, _inv, sig = inverted(sd15_model, pos)
    bar = Progress(80)
    seen = []

    def on_iteration(k, handles, loss):
        seen.append(k)
        if k == 1:
            mm.interrupt_current_processing()                         # the user presses Cancel
        bar.update(1)

    params = [id(p) for p in sd15_model.model.parameters()]
    try:
        with pytest.raises(mm.InterruptProcessingException):
            optimize(sd15_model, pos, x_t, sig, dd.DragSettings(iterations=80, lr=0.001), on_iteration=on_iteration)
    finally:
        mm.interrupt_current_processing(False)
    assert seen == [0, 1]
    assert [id(p) for p in sd15_model.model.parameters()] == params   # grad aliases put back


def test_node_cancel(sd15_model, cond, monkeypatch):
    import comfy.model_management as mm

    class CancelOnSecond(ddn.Progress):
        def update(self, n: int = 1) -> None:
            self.count = getattr(self, "count", 0) + 1
            if self.count == 2:
                mm.interrupt_current_processing()
            super().update(n)

    monkeypatch.setattr(ddn, "Progress", CancelOnSecond)
    x_t, inv, _sig = inverted(sd15_model, cond[0])
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(MotionSupervision, model=sd15_model, positive=cond[0], drag=DRAG, inversion=inv, latent=x_t,
                     learning_rate=0.001)
    finally:
        mm.interrupt_current_processing(False)


# ---------------------------------------------------------------- nodes

def test_motion_supervision_node_and_reference_kv(sd15_model, cond):
    pos = cond[0]
    x_t, inv, sig = inverted(sd15_model, pos, record_kv=True)
    drag = DragInstructions.from_obj(DRAG, image_size=IMAGE)
    lat, tracked, model = run_node(MotionSupervision, model=sd15_model, positive=pos, drag=drag, inversion=inv,
                                   reference_kv=True)
    assert lat["samples"].shape == x_t["samples"].shape and not torch.equal(lat["samples"], x_t["samples"])
    assert isinstance(tracked, DragInstructions) and tracked.image_size == IMAGE
    (hx, hy), (tx, ty) = tracked.points[0]
    assert (tx, ty) == (92, 68) and hx > 80                          # handle tracked toward the target
    assert model is not sd15_model and "attn1" in model.model_options["transformer_options"]["patches_replace"]
    assert "patches_replace" not in sd15_model.model_options.get("transformer_options", {})
    # the output MODEL denoises with the source K/V (every decoder layer at the two top levels, every step)
    inj = [i for p in model.model_options["transformer_options"]["patches_replace"]["attn1"].values()
           for i in p.injections]
    final = dd.denoise(model, pos, None, 1.0, lat["samples"], sig)
    assert inj[0].hits == len(dd.reference_layers(sd15_model)) * (len(sig) - 1) and inj[0].misses == 0
    assert torch.isfinite(final).all()
    # same with the latent taken from the INVERSION only, and from a LATENT + steps/strength only
    lat2, _, m2 = run_node(MotionSupervision, model=sd15_model, positive=pos, drag=drag, inversion=inv, iterations=2)
    lat3, _, m3 = run_node(MotionSupervision, model=sd15_model, positive=pos, drag=drag, latent=x_t, iterations=2,
                           steps=50, strength=0.7)
    for m in (m2, m3):   # reference_kv off: a clone whose only patch is the schedule check (issue 14)
        assert m is not sd15_model and "patches_replace" not in m.model_options.get("transformer_options", {})
    torch.testing.assert_close(lat2["samples"], lat3["samples"], atol=1e-4, rtol=1e-4)


def test_threshold_input_sets_the_stop_distance(sd15_model, cond):
    """The node's threshold (supervision cells) is the stop distance: a drag of 24 cells stops before any Adam step
    with threshold 30, and runs with the reference's 2.0."""
    x_t, inv, _sig = inverted(sd15_model, cond[0], steps=10)
    seen = []
    orig = dd.optimize

    def spy(*a, **k):
        out = orig(*a, **k)
        seen.append((a[7].threshold, out.result.iterations, out.result.reached))
        return out
    import unittest.mock as um
    with um.patch.object(dd, "optimize", spy):
        for thr in (30.0, 2.0):
            run_node(MotionSupervision, model=sd15_model, positive=cond[0], drag=DRAG, inversion=inv, latent=x_t,
                     iterations=2, threshold=thr)
    assert seen[0] == (30.0, 0, True) and seen[1][0] == 2.0 and seen[1][1] == 2 and not seen[1][2]


@pytest.mark.slow
def test_dragdiffusion_all_in_one(sd15_model, cond):
    pos, neg = cond
    lat = planted_latent(0)
    out, tracked = run_node(DragDiffusion, model=sd15_model, latent=lat, positive=pos, drag=DRAG, steps=20,
                            strength=0.7, iterations=30)
    assert out["samples"].shape == lat["samples"].shape and torch.isfinite(out["samples"]).all()
    assert tracked.points[0][0][0] > 60
    no_ref, _ = run_node(DragDiffusion, model=sd15_model, latent=lat, positive=pos, drag=DRAG, steps=20,
                         strength=0.7, iterations=30, reference_kv=False)
    assert (no_ref["samples"] - out["samples"]).abs().max() > 1e-3    # the source K/V changed the denoising
    cfg, _ = run_node(DragDiffusion, model=sd15_model, latent=lat, positive=pos, drag=DRAG, steps=10, strength=0.5,
                      iterations=2, negative=neg, cfg=3.0, half_precision=True)
    assert torch.isfinite(cfg["samples"]).all()


def test_all_in_one_on_sdxl_and_vpred(sdxl_model, vpred_model, cond, cond_xl):
    for model, pos in ((sdxl_model, cond_xl[0]), (vpred_model, cond[0])):
        out, tracked = run_node(DragDiffusion, model=model, latent=planted_latent(0), positive=pos, drag=DRAG,
                                steps=10, strength=0.6, iterations=3)
        assert torch.isfinite(out["samples"]).all() and len(tracked.points) == 1


@pytest.mark.parametrize("change, match", [
    (dict(drag=DragInstructions.from_obj([[200, 10, 20, 20]])), r"input 'drag'.*points\[0\]\.handle.*outside the 128x128"),
    (dict(drag={"image_size": [128, 128], "points": [[10, 10, 20, 300]]}), r"input 'drag'.*target.*outside"),
    (dict(drag=[[40, 40, 40, 40]]), r"input 'drag'.*points\[0\]: handle and target are the same point"),
    (dict(drag=[[40, 40, 41, 41]]), r"input 'drag'.*same feature cell"),
    (dict(drag=[]), r"input 'drag'.*no point pairs"),
    (dict(drag={"regions": [{"kind": "rect", "handle": [[0, 0], [9, 9]], "target": [[20, 20], [29, 29]]}]}),
     r"input 'drag'.*RegionDrag"),
    (dict(drag=DragInstructions.from_obj(DRAG, image_size=(256, 128))), r"input 'drag'.*does not belong"),
    (dict(iterations=0), r"input 'iterations'.*at least 1"),
    (dict(feature_block=5), r"input 'feature_block'.*2 up blocks"),
    (dict(latent={"samples": torch.zeros(2, 4, 16, 16)}), r"input 'latent'.*batch size 2"),
    (dict(reference_kv=True), r"input 'reference_kv'.*record_kv"),
    (dict(inversion=None, latent=None), r"input 'latent'.*connect"),
    (dict(mask=torch.ones(2, 128, 128)), r"input 'mask'.*batch of 2"),
    (dict(threshold=float("inf")), r"input 'threshold'.*finite"),
])
def test_motion_supervision_bad_inputs(sd15_model, cond, change, match):
    x_t, inv, _sig = inverted(sd15_model, cond[0], steps=10)
    inputs = dict(model=sd15_model, positive=cond[0], drag=DRAG, inversion=inv, latent=x_t)
    inputs.update(change)
    with pytest.raises(NodeInputError, match=r"^\[Motion Supervision\] " + match):
        run_node(MotionSupervision, **inputs)


@pytest.mark.parametrize("change, match", [
    (dict(latent={"samples": torch.zeros(2, 4, 16, 16)}), r"input 'latent'.*batch size 2"),
    (dict(iterations=0), r"input 'iterations'"),
    (dict(drag=[[10, 10, 500, 10]]), r"input 'drag'.*outside"),
    (dict(strength=0.01, steps=10), r"input 'strength'"),
    (dict(cfg=3.0), r"input 'cfg'"),
    (dict(positive=tiny_models.conditioning(1, width=64)), r"input 'positive'"),
    (dict(threshold=0.0), r"input 'threshold'.*between"),
    (dict(threshold=float("nan")), r"input 'threshold'.*finite"),
])
def test_dragdiffusion_bad_inputs(sd15_model, cond, change, match):
    inputs = dict(model=sd15_model, latent=planted_latent(0), positive=cond[0], drag=DRAG, steps=10, strength=0.5)
    inputs.update(change)
    with pytest.raises(NodeInputError, match=r"^\[DragDiffusion\] " + match):
        run_node(DragDiffusion, **inputs)


# ---------------------------------------------------------------- the real server


