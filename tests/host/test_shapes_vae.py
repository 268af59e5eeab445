"""The Shapes VAE as a comfy.sd.VAE (demo/shapes/vae.py make_comfy_vae), the one place the demo model goes past
ComfyUI's public VAE constructor: these tests fail with a message that says what changed in comfy.sd.VAE."""
from __future__ import annotations

import ast
import inspect
import textwrap

import torch

from dragedit.demo.shapes import vae as shapes_vae

# Attributes the constructor's pixel-space branch sets whose values also fit the unshuffle first stage.
SAME_FOR_UNSHUFFLE = {"latent_dim": 2, "output_channels": 3}


def _stock_pixel_space_vae():
    import comfy.sd
    return comfy.sd.VAE(sd={shapes_vae.PIXEL_SPACE_SD: torch.tensor(1.0)}, device=torch.device("cpu"),
                        dtype=torch.float32)


def _pixel_space_branch_attributes() -> set[str]:
    """`self.X = ...` names in comfy.sd.VAE.__init__'s branch for a '<PIXEL_SPACE_SD>' state dict."""
    import comfy.sd
    tree = ast.parse(textwrap.dedent(inspect.getsource(comfy.sd.VAE.__init__)))
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Constant) and node.test.left.value == shapes_vae.PIXEL_SPACE_SD):
            return {t.attr for stmt in node.body for sub in ast.walk(stmt) if isinstance(sub, ast.Assign)
                    for t in sub.targets if isinstance(t, ast.Attribute)}
    raise AssertionError(f"comfy.sd.VAE.__init__ has no branch for a '{shapes_vae.PIXEL_SPACE_SD}' state dict any more: "
                         "make_comfy_vae builds the Shapes VAE on it; find another public way to build it")


def test_comfyui_builds_the_pixel_space_vae_and_has_every_attribute_make_comfy_vae_sets():
    stock = _stock_pixel_space_vae()
    assert stock.first_stage_model is not None, (
        f"comfy.sd.VAE(sd={{'{shapes_vae.PIXEL_SPACE_SD}': ...}}) no longer builds a VAE: make_comfy_vae needs it")
    missing = [a for a in shapes_vae.FIRST_STAGE_ATTRIBUTES if not hasattr(stock, a)]
    assert not missing, (f"comfy.sd.VAE no longer has {missing}: make_comfy_vae sets them for the unshuffle first "
                         "stage; rename them there")


def test_every_first_stage_attribute_of_the_pixel_space_branch_is_set_for_the_unshuffle():
    """A new attribute in the constructor's pixel-space branch would keep its pixel-space value on the Shapes VAE."""
    new = _pixel_space_branch_attributes() - set(shapes_vae.FIRST_STAGE_ATTRIBUTES) - set(shapes_vae.OPTIONAL_ATTRIBUTES) - set(SAME_FOR_UNSHUFFLE)
    assert not new, (f"comfy.sd.VAE's pixel-space branch now sets {sorted(new)}: decide their values for the 2x2 "
                     "unshuffle in make_comfy_vae (FIRST_STAGE_ATTRIBUTES)")
    vae = shapes_vae.make_comfy_vae()
    for name, value in SAME_FOR_UNSHUFFLE.items():
        assert getattr(vae, name) == value, name


def test_built_by_the_public_constructor_with_the_unshuffle_first_stage():
    import comfy.sd
    vae = shapes_vae.make_comfy_vae()
    assert type(vae) is comfy.sd.VAE                                     # no subclass, no replaced __init__
    assert isinstance(vae.first_stage_model, shapes_vae.UnshuffleAE)
    assert vae.patcher.model is vae.first_stage_model
    assert (vae.downscale_ratio, vae.upscale_ratio, vae.latent_channels) == (2, 2, 12)
    assert vae.vae_dtype == torch.float32 and vae.device == torch.device("cpu")
    assert not hasattr(vae, "model_size") or vae.model_size() == 0
    img = torch.rand(1, 32, 32, 3)
    with torch.inference_mode():                                         # as the executor runs VAE Encode (Tiled)
        lat = vae.encode_tiled(img, tile_x=16, tile_y=16, overlap=4)
        out = vae.decode_tiled(lat, tile_x=8, tile_y=8, overlap=2)
    assert lat.shape == (1, 12, 16, 16) and float((out - img).abs().max()) < 1e-6
