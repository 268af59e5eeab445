"""LEDITS / SEGA through the real server: reconstruction and SEGA edit, errors, the example workflow."""
from __future__ import annotations

import pytest
import torch

from tools.support import examples


def _graph():
    return {
        "1": {"class_type": "DragEditTestTinyModel", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 1, "pooled": False}},
        "3": {"class_type": "DragEditTestLatent", "inputs": {"seed": 0, "size": 16, "batch": 1}},
        "9": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 2, "pooled": False}},
        "4": {"class_type": "DragEditDDPMInversion", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "positive": ["2", 0], "negative": ["9", 0], "steps": 10, "skip": 2,
            "source_cfg": 3.5, "eta": 1.0, "seed": 4}},
        "5": {"class_type": "DragEditEditFriendlyDDPM", "inputs": {"inversion": ["4", 1]}},
    }


@pytest.mark.slow
def test_server_reconstruction_and_sega_edit(comfy_server):
    import safetensors.torch
    g = _graph()
    g["6"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["1", 0], "add_noise": False, "noise_seed": 0, "cfg": 3.5, "positive": ["2", 0], "negative": ["9", 0],
        "sampler": ["5", 0], "sigmas": ["4", 2], "latent_image": ["4", 0]}}
    g["7"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "ledits_recon"}}
    g["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "ledits_orig"}}
    g["10"] = {"class_type": "DragEditTestConditioning", "inputs": {"seed": 7, "pooled": False}}
    g["11"] = {"class_type": "DragEditSEGAGuidance", "inputs": {
        "model": ["1", 0], "concept": ["10", 0], "direction": "add", "scale": 6.0, "threshold": 0.9, "warmup": 1,
        "cooldown": 0, "weight": 1.0, "momentum_scale": 0.1, "momentum_beta": 0.4, "mode": "SEGA"}}
    g["12"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["11", 0], "add_noise": False, "noise_seed": 0, "cfg": 3.5, "positive": ["2", 0],
        "negative": ["9", 0], "sampler": ["5", 0], "sigmas": ["4", 2], "latent_image": ["4", 0]}}
    g["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "ledits_edit"}}
    g["14"] = {"class_type": "KSampler", "inputs": {
        "model": ["11", 0], "seed": 0, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["9", 0], "latent_image": ["3", 0], "denoise": 1.0}}
    g["15"] = {"class_type": "SaveLatent", "inputs": {"samples": ["14", 0], "filename_prefix": "ledits_ks"}}
    comfy_server.run_prompt(g)
    out = comfy_server.base / "output"
    load = lambda p: safetensors.torch.load_file(sorted(out.glob(f"{p}*.latent"))[-1])["latent_tensor"]  # noqa: E731
    orig, rec, edit = load("ledits_orig"), load("ledits_recon"), load("ledits_edit")
    torch.testing.assert_close(rec, orig, rtol=0, atol=2e-6 * float(orig.abs().max()))
    assert (edit - orig).abs().max() > 1e-3 and torch.isfinite(load("ledits_ks")).all()


@pytest.mark.slow
def test_server_reports_sega_errors(comfy_server):
    from tools.support.comfy_server import PromptError
    g = _graph()
    g["11"] = {"class_type": "DragEditSEGAGuidance", "inputs": {
        "model": ["1", 0], "concept": ["2", 0], "direction": "add", "scale": 6.0, "threshold": 0.9, "warmup": 5,
        "cooldown": 2, "weight": 1.0, "momentum_scale": 0.1, "momentum_beta": 0.4, "mode": "SEGA"}}
    g["12"] = {"class_type": "KSampler", "inputs": {
        "model": ["11", 0], "seed": 0, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["9", 0], "latent_image": ["3", 0], "denoise": 1.0}}
    g["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": "x"}}
    for k in ("4", "5"):
        g.pop(k)
    with pytest.raises(PromptError, match=r"\[SEGA Guidance\] input 'cooldown'"):
        comfy_server.run_prompt(g)


# example -> (steps, skip, cfg, keep_structure) of its LEDITS Edit: the UNet demo model's recipe, the demo DiT's
EXAMPLE_SETTINGS = {"ledits": (40, 4, 3.5, False), "shapes_dit_ledits": (20, 2, 1.0, True)}


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(EXAMPLE_SETTINGS))
def test_example_workflow_runs_on_server(comfy_server, key):
    """The example workflows ledits (shapes demo model) and shapes_dit_ledits (the demo DiT, keep_structure on), UI
    format, converted the way the frontend does and run on the real server: one progress bar for the whole edit; the
    red square turns into a blue square inside the example's mask and the image outside it is the scene's own."""
    import json

    import numpy as np
    from PIL import Image

    from dragedit.demo.shapes import renderer
    from tools.support.workflow_api import ui_to_api
    wf = json.loads(examples.path(key).read_text())
    prompt = ui_to_api(wf, comfy_server.get("/object_info"))
    edit = prompt["6"]
    steps, skip, cfg, lock = EXAMPLE_SETTINGS[key]
    assert prompt["1"]["inputs"]["design"] == ("dit" if key.startswith("shapes_dit") else "unet")
    assert edit["class_type"] == "DragEditLEDITSEdit" and edit["inputs"]["concept_1"] == ["5", 0]
    assert edit["inputs"]["steps"] == steps and edit["inputs"]["skip"] == skip and edit["inputs"]["mode"] == "SEGA"
    assert edit["inputs"]["concept_2"] and edit["inputs"]["direction_2"] == "remove"
    assert edit["inputs"]["target_cfg"] == edit["inputs"]["source_cfg"] == cfg
    assert edit["inputs"]["keep_structure"] is lock
    assert edit["inputs"]["mask"] == ["15", 0] and prompt["15"]["class_type"] == "MaskComposite"
    entry, msgs = comfy_server.run_prompt_messages(prompt)
    assert entry.get("status", {}).get("status_str") == "success", entry.get("status")
    # one progress bar for the whole edit (inversion + sampling), as the frontend receives it over the websocket
    bar = [(m["data"]["value"], m["data"]["max"]) for m in msgs if m["type"] == "progress" and m["data"]["node"] == "6"]
    total = 2 * (edit["inputs"]["steps"] - edit["inputs"]["skip"])
    assert bar == [(v, total) for v in range(1, total + 1)], bar
    png = sorted((comfy_server.base / "output").glob(f"{key}_*.png"))[-1]
    img = torch.from_numpy(np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    sc = renderer.random_scene(4, two_p=0.0)
    scene = renderer.render(sc)
    diff = (img - scene).abs()
    assert img.shape == (3, 32, 32) and 2e-3 < float(diff.mean()) < 0.25, float(diff.mean())
    # the red square became a blue square of about its size (the renderer's colour areas and shape classifier)
    assert sc.shapes[0].colour == "red" and sc.shapes[0].kind == "square"
    found, area = renderer.colours_present(img), float(renderer.coverage(sc.shapes[0]).sum())
    assert "red" not in found and 0.5 * area <= found.get("blue", 0.0) <= 2.0 * area, (found, area)
    assert renderer.classify(img, "blue")[0] == "square"
    # outside the latent cells the example's mask box touches (x 12-21, y 6-16) the image is the scene's own
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[6:18, 12:22] = False
    err = float(((img - scene)[:, outside] ** 2).mean())
    assert err < 1e-5, err
