"""The Shapes Demo Model nodes in prompts on the real server."""
from __future__ import annotations

import pytest


@pytest.mark.slow
def test_loader_node_in_a_prompt_on_the_real_server(comfy_server):
    """Shapes Demo Model -> CLIP Text Encode -> KSampler -> VAE Decode -> SaveImage, and the exact VAE round trip
    through stock VAE Encode / VAE Decode."""
    g = {
        "1": {"class_type": "DragEditShapesDemoModel", "inputs": {}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "red circle"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 0,
            "steps": 4, "cfg": 3.0, "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "shapes_gen"}},
        "8": {"class_type": "DragEditShapesScene", "inputs": {"seed": 3, "shapes": "2"}},
        "9": {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "shapes_rt"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "shapes_orig"}},
    }
    entry = comfy_server.run_prompt(g)
    assert entry["outputs"]["7"]["images"]
    from PIL import Image
    import numpy as np
    out = comfy_server.base / "output"
    gen = np.asarray(Image.open(sorted(out.glob("shapes_gen*.png"))[-1]))
    assert gen.shape == (32, 32, 3)
    rt = np.asarray(Image.open(sorted(out.glob("shapes_rt*.png"))[-1])).astype(int)
    orig = np.asarray(Image.open(sorted(out.glob("shapes_orig*.png"))[-1])).astype(int)
    assert np.abs(rt - orig).max() == 0


@pytest.mark.slow
def test_unknown_word_error_reaches_the_user(comfy_server):
    from tools.support.comfy_server import PromptError
    g = {
        "1": {"class_type": "DragEditShapesDemoModel", "inputs": {}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "red hexagon"}},
        "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 0,
            "steps": 1, "cfg": 1.0, "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    with pytest.raises(PromptError, match="hexagon"):
        comfy_server.run_prompt(g)
