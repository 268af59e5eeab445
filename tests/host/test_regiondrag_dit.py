"""RegionDrag on DiTs (core/regiondrag_dit.py through core.regiondrag.run and the RegionDrag node) on a tiny FLUX
built from config and a tiny SD3 through ComfyUI's loader: the family seam picks the DiT path, the token-level
correspondence map, K/V hits on every recorded step, the paste moves content, the background outside the mask is the
input bit for bit, the layer sets and their K/V bytes, clear refusals (the server run: tests/server/)."""
import json

import pytest
import torch

from tools.support import tiny_models
from tools.support.node_calls import run_node
from dragedit.core import host
from dragedit.core import regiondrag as rd
from dragedit.core import regiondrag_dit as rdd
from dragedit.core.drag_schema import DragInstructions
from dragedit.nodes._errors import NodeInputError
from dragedit.nodes.regiondrag import AttentionKVSwap, LatentCopyPaste, RegionDrag

SIZE = 128                       # image px of a 16 x 16 latent at factor 8
RECT = {"kind": "rect", "handle": [[0, 0], [32, 32]], "target": [[64, 64], [96, 96]]}   # cells 0..3 -> 8..11


def _drag(**obj) -> DragInstructions:
    return DragInstructions.from_obj(obj, image_size=(SIZE, SIZE))


def _planted(seed: int = 0):
    s = tiny_models.dit_latent(seed, 16)["samples"].clone()
    g = torch.Generator().manual_seed(7)
    s[..., 0:4, 0:4] = 3.0 * torch.randn(1, 16, 4, 4, generator=g)
    return s


def test_token_plan_region_moves_whole_tokens(flux):
    plan = rd.make_plan(_drag(regions=[RECT]), (16, 16))
    tp = rdd.token_plan(flux, plan)
    assert tp.grid == (8, 8)
    moved = tp.moved.reshape(8, 8)
    assert moved[4:6, 4:6].all() and int(moved.sum()) == 4        # target cells 8..11 -> tokens 4..5
    idx = tp.index.reshape(8, 8)
    assert idx[4:6, 4:6].tolist() == [[0, 1], [8, 9]]               # from handle tokens 0..1
    # background: neither handle (tokens 0..1) nor target; the vacated handle tokens regenerate
    bg = tp.background.reshape(8, 8)
    assert not bg[0:2, 0:2].any() and not bg[4:6, 4:6].any() and int(bg.sum()) == 64 - 8


def test_nearest_handle_map_with_mask(flux):
    """LazyDrag's map: with point pairs and a mask, every masked cell moves with its nearest handle."""
    mask = torch.zeros(SIZE, SIZE)
    mask[8:40, 8:40] = 1.0
    drag = _drag(points=[[16, 16, 80, 16], [32, 32, 32, 96]])
    plan = rd.make_plan(drag, (16, 16), mask, follow_nearest_handle=True)
    d = (plan.pairs.dst - plan.pairs.src)
    assert set(map(tuple, d.tolist())) == {(8, 0), (0, 8)}
    assert len(plan.pairs) == 16                                  # 4 x 4 masked cells, all inside the image
    assert bool((plan.editable[plan.pairs.dst[:, 1], plan.pairs.dst[:, 0]] > 0.5).all())
    plain = rd.make_plan(drag, (16, 16), mask)                    # the UNet path: a disc per point
    assert len(plain.pairs) < 16


@pytest.mark.parametrize("layers", ["all", "single", "vital"])
def test_flux_run_hits_every_recorded_step_and_moves(flux, layers):
    samples = _planted()
    plan = rd.make_plan(_drag(regions=[RECT]), (16, 16), noise_scale=1.0)
    stats = {}
    with torch.inference_mode():
        out = rd.run(flux, tiny_models.dit_conditioning(), samples, plan, steps=8, strength=0.5, kv_dtype=torch.float32,
                     stats=stats, dit_layers=layers)
    n_blocks = len(rdd.select_blocks(flux, layers))
    assert stats["unet_calls"] == 2 * (4 + 1)                    # FireFlow: steps + 1 calls each way
    assert stats["kv_bytes"] == rdd.kv_bytes(flux, (16, 16), 4, torch.float32, layers)
    # every call but the pass's first (at the start sigma, never recorded) finds its step: bg on each, moved while
    # pasting (paste_end 0.2 of 4 steps: steps 0..3 paste -> calls at every midpoint)
    assert stats["kv_misses"] == 2 * n_blocks and stats["kv_hits"] == 2 * 4 * n_blocks
    assert out.shape == samples.shape and torch.isfinite(out).all()
    # the pasted pattern ends up nearer the target than the source's own copy at the old place
    src, dst = samples[..., 0:4, 0:4], out[..., 8:12, 8:12]
    assert float((dst - src).abs().mean()) < float((out[..., 0:4, 0:4] - src).abs().mean())


def test_kv_bytes_order_of_layer_sets(flux):
    b = {s: rdd.kv_bytes(flux, (16, 16), 10, torch.float16, s) for s in ("all", "double", "single", "vital")}
    assert b["all"] == b["double"] + b["single"] and b["vital"] == b["all"] // 2
    assert b["all"] == 11 * 4 * 2 * 64 * 128 * 2                  # calls x blocks x (K, V) x tokens x width x bytes


def test_outside_mask_is_the_input_bit_for_bit(flux):
    samples = _planted(1)
    mask = torch.zeros(SIZE, SIZE)
    mask[0:112, 0:112] = 1.0
    plan = rd.make_plan(_drag(regions=[RECT]), (16, 16), mask)
    with torch.inference_mode():
        out = rd.run(flux, tiny_models.dit_conditioning(), samples, plan, steps=6, strength=0.5)
    assert torch.equal(out[..., 14:, :], samples[..., 14:, :]) and torch.equal(out[..., :, 14:], samples[..., :, 14:])


def test_reencode_off_changes_the_moved_tokens_only_through_keys(flux):
    samples = _planted(2)
    plan = rd.make_plan(_drag(regions=[RECT]), (16, 16))
    outs = []
    for reencode in (True, False):
        with torch.inference_mode():
            outs.append(rd.run(flux, tiny_models.dit_conditioning(), samples, plan, steps=6, strength=0.5,
                               kv_dtype=torch.float32, reencode_keys=reencode))
    assert not torch.equal(outs[0], outs[1])


def test_sd3_run_values_only_for_moved_tokens(sd3):
    samples = _planted(3)
    plan = rd.make_plan(_drag(regions=[RECT]), (16, 16))
    bg, mv = rdd.injections(sd3, host.KVStore(), rdd.token_plan(sd3, plan), (16, 16), plan,
                            rdd.grid_sigmas(sd3, 6, 0.5))
    assert mv.values_only and mv.rope is None and not bg.values_only
    stats = {}
    with torch.inference_mode():
        out = rd.run(sd3, tiny_models.dit_conditioning(), samples, plan, steps=6, strength=0.5, stats=stats)
    assert torch.isfinite(out).all() and stats["kv_hits"] > 0
    with pytest.raises(rd.RegionDragError, match="no single blocks"):
        rdd.select_blocks(sd3, "single")


def test_regiondrag_node_on_flux(flux):
    lat = {"samples": _planted(4)}
    drag_json = json.dumps({"image_size": [SIZE, SIZE], "regions": [RECT]})
    out = run_node(RegionDrag, model=flux, positive=tiny_models.dit_conditioning(), steps=6, strength=0.5,
                   noise_scale=1.0, seed=1, drag_json=drag_json, latent=lat, dit_layers="vital")
    assert out[0]["samples"].shape == lat["samples"].shape
    with pytest.raises(NodeInputError, match=r"\[RegionDrag\] input 'positive'.*width"):
        run_node(RegionDrag, model=flux, positive=tiny_models.conditioning(0, width=48), steps=6, strength=0.5,
                 drag_json=drag_json, latent=lat)
    with pytest.raises(NodeInputError, match=r"\[RegionDrag\] input 'dit_layers'"):
        run_node(RegionDrag, model=flux, positive=tiny_models.dit_conditioning(), steps=6, strength=0.5,
                 drag_json=drag_json, latent=lat, dit_layers="decoder")


def test_building_blocks_refuse_dits_clearly(flux):
    with pytest.raises(NodeInputError, match=r"\[Attention K/V Swap\] input 'model'.*RegionDrag node"):
        run_node(AttentionKVSwap, model=flux, inversion=object(), layers="all", mode="replace")


def test_shapes_demo_model_dit_choice_and_a_drag_on_it():
    """The Shapes Demo Model's design widget: 'unet' (default, saved workflows) and 'dit' (the FLUX demo); RegionDrag
    on the demo DiT moves the scene's shape towards its target."""
    from dragedit.demo.shapes import renderer
    from dragedit.nodes.shapes_demo import ShapesDemoModel, ShapesScene
    spec = ShapesDemoModel.INPUT_TYPES()
    assert spec["required"] == {} and list(spec["optional"]) == ["design"]
    assert spec["optional"]["design"][1]["default"] == "unet"
    model, clip, vae = run_node(ShapesDemoModel, design="dit")
    assert host.dit.kind_of(model) == "flux" and host.is_flow(model)
    with pytest.raises(NodeInputError, match=r"\[Shapes Demo Model\] input 'design'"):
        run_node(ShapesDemoModel, design="vit")
    img, prompt = run_node(ShapesScene, seed=2, shapes="1")
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    scene = renderer.random_scene(2, two_p=0.0)
    s = scene.shapes[0]
    d = 7                                                                   # odd px: not a whole latent cell
    e = s.extent + 1
    box = [max(s.x - e, 0), max(s.y - e, 0), min(s.x + e, 32 - d), min(s.y + e, 32 - d)]
    drag_json = json.dumps({"image_size": [32, 32], "regions": [
        {"kind": "rect", "handle": [box[:2], box[2:]], "target": [[box[0] + d, box[1] + d], [box[2] + d, box[3] + d]]}]})
    out = run_node(RegionDrag, model=model, positive=cond, steps=20, strength=0.5, noise_scale=1.0, seed=42,
                   drag_json=drag_json, image=img, vae=vae)[0]["samples"]
    pic = vae.decode(out)[0].permute(2, 0, 1)
    got = renderer.centroid(pic, s.colour)
    want = renderer.centroid(renderer.render(scene.moved(0, d, d)), s.colour)
    assert got is not None and abs(got[0] - want[0]) < 2.5 and abs(got[1] - want[1]) < 2.5, (got, want)


def test_latent_copy_paste_wraps_a_flow_inversion(flux):
    """Latent Copy-Paste takes a Flow Inversion (FireFlow): its wrapped sampler in stock SamplerCustomAdvanced with
    the inversion's NOISE pastes the handle cells onto the targets; without a drag it reproduces the inversion's run."""
    import comfy.samplers
    from tools.support.flow_calls import psnr, sampler_custom_advanced, scheduler_sigmas
    from dragedit.nodes.flow_inversion import FlowInversion
    lat = {"samples": _planted(6)}
    cond = tiny_models.dit_conditioning()
    sigmas = scheduler_sigmas(flux, 8)
    noise, sampler, inv = run_node(FlowInversion, model=flux, latent=lat, positive=cond, sigmas=sigmas,
                                   solver="fireflow", cfg=1.0)
    euler = comfy.samplers.ksampler("euler")
    mask = torch.zeros(SIZE, SIZE)
    mask[0:112, 0:112] = 1.0
    wrapped = run_node(LatentCopyPaste, sampler=euler, inversion=inv, noise_scale=1.0, seed=1, paste_end=0.2,
                       paste_every_step=False, drag_json=json.dumps({"image_size": [SIZE, SIZE], "regions": [RECT]}),
                       mask=mask[None])[0]
    out = sampler_custom_advanced(flux, noise, wrapped, sigmas, lat, cond)
    src = lat["samples"][..., 0:4, 0:4]
    assert float((out[..., 8:12, 8:12] - src).abs().mean()) < float((lat["samples"][..., 8:12, 8:12] - src).abs().mean())
    assert torch.allclose(out[..., 14:, :], lat["samples"][..., 14:, :].to(out), atol=1e-5)   # restored outside the mask
    assert psnr(out[..., :8, 12:], lat["samples"][..., :8, 12:]) > 20.0


def test_qwen_image_core_run():
    """Qwen-Image (5-D Wan latents, centred RoPE ids) in the core path: moved keys re-encoded, K/V found on every
    recorded step; and through the RegionDrag node."""
    qwen = tiny_models.qwen_image()
    samples = _planted(7)[:, :, None]                            # [1, 16, 1, 16, 16]
    plan = rd.make_plan(_drag(regions=[RECT]), (16, 16), noise_scale=1.0)
    _, mv = rdd.injections(qwen, host.KVStore(), rdd.token_plan(qwen, plan), (16, 16), plan,
                           rdd.grid_sigmas(qwen, 6, 0.5))
    assert mv.rope is not None and not mv.values_only
    stats = {}
    with torch.inference_mode():
        out = rd.run(qwen, tiny_models.dit_conditioning(), samples, plan, steps=6, strength=0.5, stats=stats)
    assert out.shape == samples.shape and torch.isfinite(out).all()
    assert stats["kv_misses"] == 2 * len(host.dit.blocks(qwen)) and stats["kv_hits"] > 0
    # the node takes the same one-frame 5-D latent; several frames are refused by input name
    node_out = run_node(RegionDrag, model=qwen, positive=tiny_models.dit_conditioning(), steps=6, strength=0.5,
                        noise_scale=1.0, seed=1, drag_json=json.dumps({"image_size": [SIZE, SIZE], "regions": [RECT]}),
                        latent={"samples": samples})
    assert node_out[0]["samples"].shape == samples.shape and torch.isfinite(node_out[0]["samples"]).all()
    with pytest.raises(NodeInputError, match=r"\[RegionDrag\] input 'latent'.*image latent"):
        run_node(RegionDrag, model=qwen, positive=tiny_models.dit_conditioning(), steps=6, strength=0.5,
                 drag_json=json.dumps({"image_size": [SIZE, SIZE], "regions": [RECT]}),
                 latent={"samples": samples.expand(-1, -1, 2, -1, -1).clone()})
