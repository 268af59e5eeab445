"""RegionDrag through the real server: a prompt with the node, and its example workflow."""
from __future__ import annotations

import json

import pytest
import torch

from tools.support import examples

SIZE = 128                                   # image px of tiny_models.latent(size=16): a 16x16 latent at factor 8


RECT = {"kind": "rect", "handle": [[8, 8], [40, 40]], "target": [[67, 59], [99, 91]]}   # odd, non-cell offsets


def _json(**obj) -> str:
    return json.dumps({"image_size": [SIZE, SIZE], **obj})


# ---------------------------------------------------------------------------------------------- real server
@pytest.mark.slow
def test_region_drag_prompt_through_server(comfy_server):
    g = {
        "1": {"class_type": "DragEditTestTinyModel", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 1, "pooled": False}},
        "3": {"class_type": "DragEditTestLatent", "inputs": {"seed": 0, "size": 16, "batch": 1}},
        "4": {"class_type": "DragEditRegionDrag", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent": ["3", 0], "drag_json": _json(regions=[RECT]),
            "steps": 10, "strength": 0.5, "noise_scale": 0.6, "seed": 42}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "server_test_regiondrag_prompt"}},
    }
    comfy_server.run_prompt(g)
    import safetensors.torch
    out = sorted((comfy_server.base / "output").glob("server_test_regiondrag_prompt*.latent"))[-1]
    t = safetensors.torch.load_file(out)["latent_tensor"]
    assert t.shape == (1, 4, 16, 16) and torch.isfinite(t).all()
    info = comfy_server.get("/object_info/DragEditRegionDrag")["DragEditRegionDrag"]
    assert info["display_name"] == "RegionDrag" and info["category"] == "DragEdit/all-in-one"


@pytest.mark.slow
def test_example_workflow_runs_on_server(comfy_server):
    """The example workflow regiondrag (UI format) converted the way the frontend does, run on the real server: the blue
    triangle of the shapes scene ends up where the drag put it (cell-aligned +10, +10 px)."""
    import numpy as np
    from PIL import Image

    from dragedit.demo.shapes import renderer
    from tools.support.workflow_api import ui_to_api
    wf = json.loads(examples.path("regiondrag").read_text())
    prompt = ui_to_api(wf, comfy_server.get("/object_info"))
    assert prompt["5"]["class_type"] == "DragEditRegionDrag" and prompt["5"]["inputs"]["drag"] == ["4", 0]
    comfy_server.run_prompt(prompt)
    png = sorted((comfy_server.base / "output").glob("regiondrag*.png"))[-1]
    img = torch.from_numpy(np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    scene = renderer.random_scene(2, two_p=0.0)
    want = renderer.centroid(renderer.render(scene.moved(0, 10, 10)), "blue")
    got = renderer.centroid(img, "blue")
    assert got is not None and abs(got[0] - want[0]) < 2.0 and abs(got[1] - want[1]) < 2.0, (got, want)
