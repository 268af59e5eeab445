"""RegionDrag on a DiT through the real executor: a tiny SD3 checkpoint written to models/diffusion_models and loaded
by the stock UNETLoader, the RegionDrag node (the same node as for UNets) on a 16 x 16 latent, SaveLatent."""
import json

import pytest
import safetensors.torch
import torch

from tools.support import tiny_models
from tools.support.comfy_server import ComfyServer

NAME = "dragedit_tiny_sd3_regiondrag.safetensors"
SIZE = 128                      # image px of a 16 x 16 latent at factor 8
RECT = {"kind": "rect", "handle": [[0, 0], [32, 32]], "target": [[64, 64], [96, 96]]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("regiondrag-dit-base")
    (base / "models" / "diffusion_models").mkdir(parents=True)
    sd = {k: v.half().contiguous() for k, v in tiny_models.sd3_state_dict(0).items()}
    safetensors.torch.save_file(sd, str(base / "models" / "diffusion_models" / NAME))
    srv = ComfyServer(base=base).start()
    yield srv
    srv.stop()


def _graph(prefix: str, **extra) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": NAME, "weight_dtype": "default"}},
        "2": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 1, "pooled": True}},
        "3": {"class_type": "DragEditTestDiTLatent", "inputs": {"seed": 0, "size": 16}},
        "4": {"class_type": "DragEditRegionDrag", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent": ["3", 0],
            "drag_json": json.dumps({"image_size": [SIZE, SIZE], "regions": [RECT]}),
            "steps": 6, "strength": 0.5, "noise_scale": 1.0, "seed": 42, **extra}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": f"latents/{prefix}"}},
    }


@pytest.mark.parametrize("layers", ["all", "vital"])
def test_regiondrag_on_tiny_sd3_through_the_executor(server, layers):
    prefix = f"regiondrag_dit_{layers}"
    entry = server.run_prompt(_graph(prefix, dit_layers=layers))
    assert entry["status"]["status_str"] == "success", entry["status"]
    files = sorted((server.base / "output" / "latents").glob(f"{prefix}*.latent"))
    out = safetensors.torch.load_file(str(files[-1]))["latent_tensor"].float()
    ref = tiny_models.dit_latent(0, size=16)["samples"]
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.equal(out, ref)


def test_single_blocks_on_sd3_is_refused_by_name(server):
    from tools.support.comfy_server import PromptError
    with pytest.raises(PromptError, match=r"\[RegionDrag\] input 'dit_layers'.*no single blocks"):
        server.run_prompt(_graph("regiondrag_dit_single", dit_layers="single"))
