"""Shapes demo model: renderer ground truth, exact unshuffle VAE, prompt encoder, the nodes."""
from __future__ import annotations

import math
import random

import pytest
import torch

from tools.support.node_calls import run_node
from dragedit.demo.shapes import model as shapes_model
from dragedit.demo.shapes import prompt as shapes_prompt
from dragedit.demo.shapes import renderer as R
from dragedit.demo.shapes import vae as shapes_vae
from dragedit.nodes._errors import NodeInputError
from dragedit.nodes.shapes_demo import ShapesDemoModel, ShapesScene


# ------------------------------------------------------------------------------------------------ renderer

def _flat(scene: R.Scene) -> R.Scene:
    return R.Scene(scene.background, tuple(R.Shape(s.kind, s.colour, s.x, s.y, s.size) for s in scene.shapes), scene.gradient)


def test_render_shape_range_and_determinism():
    sc = R.random_scene(3)
    img = R.render(sc)
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert torch.equal(img, R.render(R.random_scene(3)))
    assert R.sample_scenes(5, 4) == R.sample_scenes(5, 4)
    assert R.render(sc, size=64).shape == (3, 64, 64)


def test_centroid_round_trip_within_quarter_pixel():
    """scene -> image -> measured centroid of each shape's colour, within 0.25 px of its parameters."""
    errs = []
    for sc in R.sample_scenes(11, 60, shading_p=0.0):
        img = R.render(sc)
        for s in sc.shapes:
            c = R.centroid(img, s.colour)
            assert c is not None, (sc, s)
            errs.append(math.hypot(c[0] - s.x, c[1] - s.y))
    assert max(errs) < 0.25, max(errs)


def test_subpixel_move_is_measured():
    """An odd, sub-cell move (1.5 px, -0.75 px) is recovered from the two renders."""
    sc = _flat(R.random_scene(21, two_p=1.0))
    mv = sc.moved(0, 1.5, -0.75)
    s = sc.shapes[0]
    a, b = R.centroid(R.render(sc), s.colour), R.centroid(R.render(mv), s.colour)
    assert abs((b[0] - a[0]) - 1.5) < 0.1 and abs((b[1] - a[1]) + 0.75) < 0.1
    assert mv.shapes[1] == sc.shapes[1]


def test_scene_edits_are_copies():
    sc = R.random_scene(4, two_p=1.0)
    assert sc.resized(0, 1.5).shapes[0].size == pytest.approx(sc.shapes[0].size * 1.5)
    assert sc.recoloured(1, "red").shapes[1].colour == "red"
    assert len(sc.without(0).shapes) == 1
    assert sc.moved_to(1, 10.0, 12.0).shapes[1].x == 10.0
    area0 = R.area(R.render(_flat(sc)), sc.shapes[0].colour)
    area1 = R.area(R.render(_flat(sc.resized(0, 1.2))), sc.shapes[0].colour)
    assert area1 / area0 == pytest.approx(1.44, rel=0.08)
    with pytest.raises(ValueError, match="colour"):
        R.Shape("circle", "teal", 5, 5, 3)
    import json
    assert R.Scene.from_dict(json.loads(json.dumps(sc.to_dict()))) == sc


def test_classifier_names_kind_and_colours():
    for sc in R.sample_scenes(12, 20):
        img = R.render(sc)
        assert set(R.colours_present(img)) == {s.colour for s in sc.shapes}
        for s in sc.shapes:
            kind, iou = R.classify(img, s.colour)
            assert kind == s.kind and iou > 0.6
    sc = R.random_scene(5, two_p=0.0)
    assert R.classify(R.render(sc.reshaped(0, "square")), sc.shapes[0].colour)[0] == "square"
    other = next(c for c in R.COLOURS if c != sc.shapes[0].colour)
    assert R.classify(R.render(sc), other) is None


def test_prompt_words():
    sc = R.Scene((0.5, 0.5, 0.5), (R.Shape("circle", "red", 8, 8, 4), R.Shape("triangle", "white", 20, 20, 4)))
    assert R.prompt(sc) == "red circle and white triangle"
    assert R.prompt(sc.without(1)) == "red circle"
    assert R.centroid(R.render(sc.without(1)), "white") is None


# ------------------------------------------------------------------------------------------------ VAE

def test_unshuffle_vae_round_trip_exact():
    imgs = torch.stack([R.render(s) for s in R.sample_scenes(1, 3)])
    z = shapes_vae.encode(imgs)
    assert z.shape == (3, 12, 16, 16)
    assert torch.allclose(shapes_vae.decode(z), imgs, atol=1e-6, rtol=0)


def test_comfy_vae_encode_decode_exact():
    """The ComfyUI VAE object (stock VAE Encode / VAE Decode call these) is exact on IMAGE tensors [B,H,W,C]."""
    vae = shapes_vae.make_comfy_vae()
    img = torch.stack([R.render(s) for s in R.sample_scenes(2, 2)]).permute(0, 2, 3, 1).contiguous()
    lat = vae.encode(img)
    assert lat.shape == (2, 12, 16, 16)
    out = vae.decode(lat)
    assert out.shape == img.shape
    assert float((out - img).abs().max()) < 1e-6
    assert vae.spacial_compression_encode() == 2 and vae.latent_channels == 12
    with pytest.raises(ValueError, match="12-channel"):
        vae.decode(torch.zeros(1, 4, 8, 8))


# ------------------------------------------------------------------------------------------------ prompt encoder

def test_prompt_encoder_tokens_and_errors():
    ids = shapes_prompt.tokenize("Red circle, and blue square")
    assert len(ids) == shapes_prompt.MAX_TOKENS
    assert ids[:5] == [shapes_prompt.WORD_ID[w] for w in ("red", "circle", "and", "blue", "square")]
    with pytest.raises(ValueError, match="'dog'"):
        shapes_prompt.tokenize("red dog")
    with pytest.raises(ValueError, match="at most"):
        shapes_prompt.tokenize(" ".join(["red"] * 9))
    enc = shapes_prompt.PromptEncoder()
    assert enc.encode(["red circle", ""]).shape == (2, shapes_prompt.MAX_TOKENS, shapes_prompt.CONTEXT_DIM)


def test_clip_stand_in_gives_conditioning():
    _, clip, _ = shapes_model.load_demo()
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("blue square and white triangle"))
    assert isinstance(cond, list) and len(cond) == 1
    c, extra = cond[0]
    assert c.shape == (1, shapes_prompt.MAX_TOKENS, shapes_prompt.CONTEXT_DIM) and isinstance(extra, dict)
    with pytest.raises(ValueError, match="'cat'"):
        clip.tokenize("red cat")


# ------------------------------------------------------------------------------------------------ model

def test_demo_model_loads_committed_weights():
    assert shapes_model.WEIGHTS.exists()
    model, clip, vae = shapes_model.load_demo(allow_random=False)
    from dragedit.core import host
    assert host.check_supported(model) == "eps"
    lf = host.latent_format(model)
    assert lf.latent_channels == 12 and lf.scale_factor == shapes_model.SCALE_FACTOR
    # attention (self + cross) at every level, including the highest latent resolution
    levels = {l.level for l in host.attention_layers(model)}
    assert levels == {1, 2, 4}
    unet = host.diffusion_model(model)
    with torch.no_grad():
        eps = unet(torch.randn(2, 12, 16, 16), timesteps=torch.tensor([10.0, 500.0]), context=clip.encoder.encode(["red circle", ""]))
    assert eps.shape == (2, 12, 16, 16) and torch.isfinite(eps).all()


def test_scene_node():
    img, text = run_node(ShapesScene, seed=7, shapes="2")
    assert img.shape == (1, 32, 32, 3) and " and " in text
    with pytest.raises(NodeInputError, match="Shapes Scene"):
        run_node(ShapesScene, seed=7, shapes="3")


def test_training_data_is_pinned():
    """The shipped weights are reproducible only while the scene sampler, renderer and prompt dropout draw the same
    batches: a change there must come with retrained weights (python -m tools.train_shapes)."""
    from tools import train_shapes as shapes_train
    z, ids = shapes_train.make_batch(random.Random(0), 8)
    assert float(z.double().sum()) == pytest.approx(-4496.663507401943, abs=1e-3)
    assert float(z.double().abs().sum()) == pytest.approx(19455.899360597134, abs=1e-3)
    assert ids[:3].tolist() == [[0] * 8, [9, 12, 1, 2, 0, 0, 0, 0], [5, 10, 0, 0, 0, 0, 0, 0]]
