"""DragonDiffusion through the real server: all-in-one and patch nodes, errors, the example workflows."""
from __future__ import annotations

import math

import pytest
import torch

from tools.support import examples

SIZE = 128  # image px of the 16x16 test latents (SD factor 8); energy grid 32x32 (4 px per cell)


@pytest.mark.slow
def test_server_prompt_all_in_one_and_patch_nodes(comfy_server):
    import safetensors.torch
    g = {
        "1": {"class_type": "DragEditTestTinyModel", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 1, "pooled": False}},
        "3": {"class_type": "DragEditTestLatent", "inputs": {"seed": 0, "size": 16, "batch": 1}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1, "color": 0}},
        "5": {"class_type": "DragInstructions", "inputs": {
            "image": ["4", 0], "drag_data": '{"version": 1, "points": [{"handle": [44, 52], "target": [76, 60]}]}'}},
        "6": {"class_type": "DragEditDDIMInversion", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "positive": ["2", 0], "steps": 10, "strength": 1.0,
            "record_kv": True}},
        "7": {"class_type": "DragEditDragonDiffusion", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "inversion": ["6", 1], "mode": "drag",
            "cfg": 4.0, "energy_scale": 1.0, "resize_scale": 1.0, "drag": ["5", 0], "mask": ["5", 1]}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "dragon_all"}},
        "9": {"class_type": "DragEditMemoryBankKV", "inputs": {
            "model": ["1", 0], "inversion": ["6", 1], "mode": "drag", "start_percent": 0.1, "end_percent": 1.0}},
        "10": {"class_type": "DragEditFeatureGuidance", "inputs": {
            "model": ["9", 0], "inversion": ["6", 1], "mode": "drag", "energy_scale": 1.0, "start_percent": 0.0,
            "end_percent": 0.6, "resize_scale": 1.0, "drag": ["5", 0]}},
        "11": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "12": {"class_type": "SamplerCustom", "inputs": {
            "model": ["10", 0], "add_noise": False, "noise_seed": 0, "cfg": 4.0, "positive": ["2", 0],
            "negative": ["2", 0], "sampler": ["11", 0], "sigmas": ["6", 2], "latent_image": ["6", 0]}},
        "13": {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "dragon_patch"}},
    }
    comfy_server.run_prompt(g)
    out = comfy_server.base / "output"
    for prefix in ("dragon_all", "dragon_patch"):
        t = safetensors.torch.load_file(sorted(out.rglob(f"{prefix}_*.latent"))[-1])["latent_tensor"]
        assert t.shape == (1, 4, 16, 16) and torch.isfinite(t).all()


@pytest.mark.slow
def test_server_reports_resize_leaving_image(comfy_server):
    from tools.support.comfy_server import PromptError
    g = {
        "1": {"class_type": "DragEditTestTinyModel", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 1, "pooled": False}},
        "3": {"class_type": "DragEditTestLatent", "inputs": {"seed": 0, "size": 16, "batch": 1}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1, "color": 0}},
        "5": {"class_type": "DragInstructions", "inputs": {
            "image": ["4", 0], "drag_data": '{"version": 1, "points": [{"handle": [44, 52], "target": [76, 60]}]}'}},
        "6": {"class_type": "DragEditDDIMInversion", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "positive": ["2", 0], "steps": 4, "strength": 1.0,
            "record_kv": True}},
        "7": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 40, "height": 40}},
        "8": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": SIZE, "height": SIZE}},
        "9": {"class_type": "MaskComposite", "inputs": {"destination": ["8", 0], "source": ["7", 0], "x": 32,
                                                        "y": 32, "operation": "add"}},
        "10": {"class_type": "DragEditDragonDiffusion", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "inversion": ["6", 1], "mode": "move",
            "cfg": 4.0, "energy_scale": 1.0, "resize_scale": 3.0, "drag": ["5", 0], "mask": ["9", 0]}},
        "11": {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(PromptError, match=r"\[DragonDiffusion\] input 'resize_scale'.*leaves the image"):
        comfy_server.run_prompt(g)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["move", "drag"])
def test_example_workflow_runs_on_server(comfy_server, mode):
    """The example workflow dragondiffusion_{mode} (UI format, shapes demo model, DiffEditor's start-latent paste on)
    converted the way the frontend does and run on the real server: a 32x32 image of the same scene whose white
    triangle has moved toward the target."""
    import json

    import numpy as np
    from PIL import Image

    from dragedit.demo.shapes import renderer
    from tools.support.workflow_api import ui_to_api
    wf = json.loads(examples.path(f"dragondiffusion_{mode}").read_text())
    prompt = ui_to_api(wf, comfy_server.get("/object_info"))
    assert prompt["8"]["class_type"] == "DragEditDragonDiffusion" and prompt["8"]["inputs"]["mode"] == mode
    assert prompt["8"]["inputs"]["inversion"] == ["7", 1] and prompt["8"]["inputs"]["drag"] == ["6", 0]
    comfy_server.run_prompt(prompt)
    src = renderer.render(renderer.random_scene(1, two_p=0.0))
    png = sorted((comfy_server.base / "output").glob(f"dragondiffusion_{mode}_*.png"))[-1]
    img = torch.from_numpy(np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    assert img.shape == (3, 32, 32)
    mse = float(((img - src) ** 2).mean())
    # still the same scene (move relocates a large triangle, so the whole-image PSNR drops more)
    assert 10 * math.log10(1.0 / max(mse, 1e-10)) > {"move": 10.0, "drag": 15.0}[mode]
    (sx, sy), (gx, gy) = renderer.centroid(src, "white"), renderer.centroid(img, "white")
    assert gx > sx + 0.5 and gy > sy + 0.5                                     # the triangle went right and down
