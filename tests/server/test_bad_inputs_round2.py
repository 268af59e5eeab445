"""Issue 23: bad input, round 2. Drag JSON classes 1-5 and derived seeds (class 6) through the real executor (the
comfy_server fixture, on the Shapes Demo Model), plus quick in-process checks of the rules behind them."""
from __future__ import annotations

import json

import pytest
import torch

from test_bad_inputs_server import _base, _ddim, _fails, _runs, _sampler_custom, _save

from dragedit.core import seeds
from dragedit.core.drag_schema import DragInstructions, DragSchemaError

SEED_MAX = 0xFFFF_FFFF_FFFF_FFFF
ZERO_MASK = {"size": [32, 32], "counts": [32 * 32]}
DRAG_ZERO_MASK = json.dumps({"version": 1, "points": [[8, 16, 20, 16]], "mask": ZERO_MASK})


# ============================================================================================== in-process rules
@pytest.mark.parametrize("text, field, words", [
    ('{"version": 1, "points": [[1, 2, 3, 4]], "ui": {"n": "\ud800"}}', "JSON", "lone UTF-16 surrogate"),
    ('{"version": 1, "p\\ud800": []}', "p\\ud800", "not a known key"),
    ('{"version": 1, "points": [[1, 2, 3, %s]]}' % ("9" * 400), "points[0][3]", "400 digits"),
    ('{"version": 1, "image_size": [%s, 10]}' % ("9" * 400), "image_size[0]", "400 digits"),
    ('{"version": 1, "points": [[1, 2, 3, %s]]}' % ("9" * 5000), "JSON", "too long"),
    ('{"version": NaN}', "version", "integer"),
    ('{"version": Infinity}', "version", "integer"),
    ('{"version": -Infinity}', "version", "integer"),
])
def test_drag_json_classes_1_to_3(text, field, words):
    with pytest.raises(DragSchemaError) as e:
        DragInstructions.from_json(text, image_size=(32, 32))
    assert e.value.field == field and words in e.value.message, str(e.value)
    str(e.value).encode("utf-8")         # printable by any log or JSON writer


def test_escaped_surrogate_in_ui_is_still_accepted():
    """JSON.stringify writes a lone surrogate escaped; the text is then valid and 'ui' is ignored, as before."""
    d = DragInstructions.from_json('{"version": 1, "points": [[1, 2, 3, 4]], "ui": {"n": "\\ud800"}}', (8, 8))
    assert len(d.points) == 1


def test_all_black_mask_is_no_mask_and_empty_is_refused():
    d = DragInstructions.from_json(DRAG_ZERO_MASK, image_size=(32, 32))
    assert not d.has_mask and d.mask_tensor() is None and d.image_size == (32, 32)
    assert not DragInstructions(image_size=(4, 4)).with_mask(torch.zeros(4, 4)).has_mask
    for text in ("{}", '{"points": [], "points": []}', "[]", ""):
        with pytest.raises(DragSchemaError, match="nothing to drag"):
            DragInstructions.from_json(text, image_size=(32, 32)).require_moves()


def test_derived_seeds_wrap():
    assert seeds.derive_seed(SEED_MAX, 1) == 0 and seeds.derive_seed(5, 2) == 7 and seeds.derive_seed(-1) == SEED_MAX
    assert seeds.generator(SEED_MAX, 3).initial_seed() == 2
    assert torch.equal(torch.randn(3, generator=seeds.generator(41, 1)),
                       torch.randn(3, generator=torch.Generator().manual_seed(42)))   # in range: unchanged


# ============================================================================================== the real executor
def _regiondrag(drag=("6", 0)) -> dict:
    return {"class_type": "DragEditRegionDrag", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "steps": 4, "strength": 0.5, "noise_scale": 0.6, "seed": SEED_MAX,
        "drag": list(drag), "image": ["2", 0], "vae": ["1", 2]}}


def _dragon(mode="drag", seed=SEED_MAX) -> dict:
    return {"class_type": "DragEditDragonDiffusion", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0], "inversion": ["10", 1], "mode": mode,
        "cfg": 1.0, "energy_scale": 1.0, "resize_scale": 1.0, "drag": ["6", 0], "seed": seed, "init_paste": True,
        "vacate_noise": 0.5}}


@pytest.mark.slow
def test_server_drag_json_classes(comfy_server):
    """Classes 1-3: a lone surrogate, a 400-digit integer, a NaN version reach Drag Instructions through /prompt and
    come back as clear errors naming the node and input."""
    for text, pattern in (
            ('{"version": 1, "points": [[8, 16, 20, 16]], "ui": {"n": "\ud800"}}', r"lone UTF-16 surrogate"),
            ('{"version": 1, "points": [[8, 16, 20, %s]]}' % ("1" * 400), r"points\[0\]\[3\] is an integer of about"),
            ('{"version": 1, "image_size": [%s, 32]}' % ("3" * 400), r"image_size\[0\] is an integer of about"),
            ('{"version": NaN, "points": [[8, 16, 20, 16]]}', r"version must be an integer, got NaN")):
        g = _base()
        g["6"]["inputs"]["drag_data"] = text
        g["7"] = _regiondrag()
        g["8"] = _save(("7", 0))
        _fails(comfy_server, g, r"\[Drag Instructions\] input 'drag_data': .*" + pattern)


@pytest.mark.slow
def test_server_empty_instructions_and_black_mask(comfy_server):
    """Class 4: '{}' or duplicate keys ending empty are refused by every drag method (RegionDrag ran and returned
    the input before). Class 5: an all-black RLE mask is no mask everywhere: RegionDrag and DragonDiffusion run."""
    for text in ("{}", '{"version": 1, "points": [[8, 16, 20, 16]], "points": []}'):
        g = _base()
        g["6"]["inputs"]["drag_data"] = text
        g["7"] = _regiondrag()
        g["8"] = _save(("7", 0))
        _fails(comfy_server, g, r"\[RegionDrag\] input 'drag': instructions are empty .*nothing to drag")
        g = _base()
        g["6"]["inputs"]["drag_data"] = text
        g["10"] = _ddim()
        g["11"] = _dragon()
        g["12"] = _save(("11", 0))
        _fails(comfy_server, g, r"\[DragonDiffusion\] input 'drag': instructions are empty")
    g = _base()
    g["6"]["inputs"]["drag_data"] = DRAG_ZERO_MASK
    g["7"] = _regiondrag()
    g["8"] = _save(("7", 0))
    g["9"] = {"class_type": "MaskToImage", "inputs": {"mask": ["6", 1]}}
    g["10"] = _ddim()
    g["11"] = _dragon()
    g["12"] = _save(("11", 0), "dragon")
    g["13"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "zero_mask"}}
    entry = _runs(comfy_server, g)
    from PIL import Image
    import numpy as np
    mask_png = comfy_server.output_images(entry)
    assert mask_png and np.asarray(Image.open(mask_png[0])).min() == 255     # no mask = all editable


@pytest.mark.slow
def test_server_seed_at_widget_maximum(comfy_server):
    """Class 6: seeds at 2^64 - 1: DragonDiffusion's vacate noise (seed + 1) and Latent Copy-Paste's per-step seeds
    (noise_seed + i through an ancestral sampler) run."""
    g = _base()
    g["10"] = _ddim()
    g["11"] = _dragon()
    g["12"] = _save(("11", 0), "dragon_seed")
    g["13"] = _regiondrag()
    g["14"] = _save(("13", 0), "regiondrag_seed")
    g["20"] = _ddim(record_kv=False)
    g["21"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}}
    g["22"] = {"class_type": "DragEditLatentCopyPaste", "inputs": {
        "sampler": ["21", 0], "inversion": ["20", 1], "noise_scale": 0.6, "seed": SEED_MAX, "paste_end": 0.2,
        "paste_every_step": False, "drag": ["6", 0]}}
    g["23"] = _sampler_custom(("1", 0), ("22", 0), ("20", 2), ("20", 0))
    g["23"]["inputs"]["noise_seed"] = SEED_MAX
    g["24"] = _save(("23", 0), "copy_paste_seed")
    _runs(comfy_server, g)


# ============================================================================================== Drag Preview, temp PNGs
def test_preview_batch_enlargement_is_bounded(tmp_path, monkeypatch):
    """Class 14: a batch is enlarged only while the whole batch stays within MAX_OUTPUT_PIXELS; one image keeps the
    old factor. The frames are drawn one by one into the output (bench/preview_memory.py gives the RSS figures)."""
    import folder_paths
    from tools.support.node_calls import run_node
    from dragedit.core import preview
    from dragedit.nodes.preview import DragPreview
    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path))
    assert preview.upscale_factor((128, 128), 4096) == 16
    assert preview.upscale_factor((128, 128), 4096, batch=64) == 4
    assert preview.upscale_factor((4096, 4096), 8192, batch=4) == 1        # never below the image's own size
    drag = DragInstructions.from_json("[[10, 10, 100, 60]]", image_size=(128, 128))
    out = run_node(DragPreview, image=torch.rand(16, 128, 128, 3), drag=drag, min_size=4096)
    img = out["result"][0]
    assert tuple(img.shape) == (16, 1024, 1024, 3) and img.numel() <= 3 * preview.MAX_OUTPUT_PIXELS
    assert len(out["ui"]["images"]) == 16 and bool(torch.isfinite(img).all()) and 0 <= float(img.min())
    one = run_node(DragPreview, image=img[:1, :128, :128].clone(), drag=drag, min_size=4096)["result"][0]
    assert tuple(one.shape) == (1, 2048, 2048, 3)


def test_temp_pngs_follow_the_host(tmp_path, monkeypatch):
    """Class 16: the editor's and Drag Preview's PNGs go to folder_paths.get_temp_directory() as "type": "temp" (the
    folder ComfyUI empties at start-up and exit, like PreviewImage's files), named by content: the same image
    queued again reuses its file."""
    import folder_paths
    from tools.support.node_calls import run_node
    from dragedit.nodes import NODE_CLASS_MAPPINGS
    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path))
    node = NODE_CLASS_MAPPINGS["DragInstructions"]
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    refs = [run_node(node, image=image, drag_data=f"[[1, 1, {x}, 2]]")["ui"]["drag_image"][0] for x in (3, 4, 5)]
    assert all(r == refs[0] for r in refs) and refs[0]["type"] == "temp" and refs[0]["subfolder"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [refs[0]["filename"]]
    other = run_node(node, image=image.flip(1), drag_data="")["ui"]["drag_image"][0]
    assert other["filename"] != refs[0]["filename"] and len(list(tmp_path.iterdir())) == 2


@pytest.mark.slow
def test_server_preview_batch_and_temp_files(comfy_server):
    """Classes 14 and 16 through the server: Drag Preview on 64 images at 128 px with min_size 4096 gives 512 px
    frames (64 x 512^2 within the bound, not 64 x 2048^2 = 3 GB); re-queueing the same images with other
    instructions adds no temp files; every file is in the host's temp folder."""
    temp = comfy_server.base / "temp"

    def graph(x: int) -> dict:
        g = _base()
        g["6"]["inputs"]["drag_data"] = f"[[8, 16, {x}, 16]]"
        g["7"] = {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact",
                                                         "width": 128, "height": 128, "crop": "disabled"}}
        g["8"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["7", 0], "amount": 64}}
        g["9"] = {"class_type": "DragEditDragPreview", "inputs": {"image": ["8", 0], "drag": ["6", 0],
                                                                  "min_size": 4096}}
        g["10"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "bounded"}}
        return g

    entry = _runs(comfy_server, graph(20))
    from PIL import Image
    saved = [p for p in comfy_server.output_images(entry) if p.parent.name == "output"]
    assert len(saved) == 64 and Image.open(saved[0]).size == (512, 512)
    shown = entry["outputs"]["9"]["images"]
    assert len(shown) == 64 and all(r["type"] == "temp" and (temp / r["filename"]).is_file() for r in shown)
    before = {p.name for p in temp.iterdir() if p.name.startswith("dragedit_instructions")}
    _runs(comfy_server, graph(24))
    after = {p.name for p in temp.iterdir() if p.name.startswith("dragedit_instructions")}
    assert before == after and len(after) >= 1


# ============================================================================================== tiny images (class 8)
@pytest.mark.slow
def test_server_tiny_images(comfy_server):
    """Class 8: 1x1, 2x2 and 4x4 images (and a 22x4 one) are refused with the cause - below the model's smallest
    latent - by every method node, naming the image or latent input, not as '3 channels but this model takes 12'
    or group norm's 'Expected more than 1 value per channel'. 16x16 (an 8x8 latent, the demo's minimum) runs."""
    def scaled(w: int, h: int) -> dict:
        return {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact",
                                                       "width": w, "height": h, "crop": "disabled"}}

    for w, h in ((1, 1), (2, 2), (4, 4), (22, 4)):
        g = _base()
        g["7"] = scaled(w, h)
        g["6"]["inputs"]["image"] = ["7", 0]
        g["6"]["inputs"]["drag_data"] = "[[0, 0, 1, 1]]"
        g["10"] = dict(_regiondrag(), inputs=dict(_regiondrag()["inputs"], image=["7", 0]))
        g["11"] = _save(("10", 0))
        _fails(comfy_server, g, r"\[RegionDrag\] input 'image': the latent is \d+x\d+, smaller than this model's "
                                r"minimum of 8x8")
        g = _base()
        g["7"] = scaled(w, h)
        g["5"]["inputs"]["pixels"] = ["7", 0]
        g["10"] = _ddim(record_kv=False)
        g["11"] = _save(("10", 0))
        _fails(comfy_server, g, r"\[DDIM Inversion\] input 'latent': the latent is \d+x\d+, smaller than this "
                                r"model's minimum of 8x8")
        g["10"] = {"class_type": "DragEditLEDITSEdit", "inputs": {
            "model": ["1", 0], "vae": ["1", 2], "source": ["3", 0], "negative": ["4", 0], "steps": 4, "skip": 0,
            "source_cfg": 1.0, "target_cfg": 1.0, "mode": "LEDITS++", "seed": 0, "image": ["7", 0],
            "concept_1": ["3", 0], "direction_1": "add", "scale_1": 5.0, "direction_2": "add", "scale_2": 5.0,
            "direction_3": "add", "scale_3": 5.0, "threshold": 0.9, "warmup": 0, "momentum_scale": 0.1,
            "momentum_beta": 0.4}}
        g["11"] = _save(("10", 1))
        _fails(comfy_server, g, r"\[LEDITS Edit\] input 'image': the latent is \d+x\d+, smaller than")
    g = _base()
    g["7"] = scaled(16, 16)
    g["6"]["inputs"]["image"] = ["7", 0]
    g["6"]["inputs"]["drag_data"] = "[[4, 8, 10, 8]]"
    g["10"] = dict(_regiondrag(), inputs=dict(_regiondrag()["inputs"], image=["7", 0]))
    g["11"] = _save(("10", 0))
    _runs(comfy_server, g)


# ============================================================================================== ddim sampler (class 9)
@pytest.mark.slow
def test_server_copy_paste_with_comfy_ddim(comfy_server):
    """Class 9: ComfyUI's "ddim" is euler with inpaint_options random (its model.noise is fresh noise for inpainting
    even with add_noise off). Latent Copy-Paste checks the noise actually added to the start latent, so ddim with
    add_noise off runs, as euler does; add_noise on is still refused."""
    def graph(sampler: str, add_noise: bool) -> dict:
        g = _base()
        g["10"] = _ddim(record_kv=False)
        g["11"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
        g["12"] = {"class_type": "DragEditLatentCopyPaste", "inputs": {
            "sampler": ["11", 0], "inversion": ["10", 1], "noise_scale": 0.6, "seed": 0, "paste_end": 0.2,
            "paste_every_step": False, "drag": ["6", 0]}}
        g["13"] = _sampler_custom(("1", 0), ("12", 0), ("10", 2), ("10", 0), add_noise)
        g["14"] = _save(("13", 0), f"cp_{sampler}")
        return g

    for sampler in ("ddim", "euler"):
        _runs(comfy_server, graph(sampler, False))
        _fails(comfy_server, graph(sampler, True), r"\[Latent Copy-Paste\] input 'inversion': the sampler node adds "
                                                   r"noise")
