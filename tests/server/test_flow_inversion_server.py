"""The flow inversion nodes through the real executor on a tiny SD3 checkpoint written to models/diffusion_models and
loaded by the stock UNETLoader: Edit-friendly Flow Inversion and Flow Inversion (FireFlow) with stock BasicScheduler,
BasicGuider and SamplerCustomAdvanced reconstruct the input latent (saved with SaveLatent)."""
import pytest
import safetensors.torch
import torch

from tools.support import tiny_models
from tools.support.comfy_server import ComfyServer
from tools.support.flow_calls import psnr

NAME = "dragedit_tiny_sd3.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("flow-base")
    (base / "models" / "diffusion_models").mkdir(parents=True)
    sd = {k: v.half().contiguous() for k, v in tiny_models.sd3_state_dict(0).items()}
    safetensors.torch.save_file(sd, str(base / "models" / "diffusion_models" / NAME))
    srv = ComfyServer(base=base).start()
    yield srv
    srv.stop()


def _graph(inversion: dict, prefix: str) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": NAME, "weight_dtype": "default"}},
        "2": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 1, "pooled": True}},
        "3": {"class_type": "DragEditTestDiTLatent", "inputs": {"seed": 0, "size": 8}},
        "4": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 6,
                                                         "denoise": 1.0}},
        "5": {"class_type": inversion["class_type"], "inputs": dict(
            inversion["inputs"], model=["1", 0], latent=["3", 0], positive=["2", 0], sigmas=["4", 0], cfg=1.0)},
        "6": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["2", 0]}},
        "7": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["5", 0], "guider": ["6", 0],
                                                                "sampler": ["5", 1], "sigmas": ["4", 0],
                                                                "latent_image": ["3", 0]}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": f"latents/{prefix}"}},
    }


@pytest.mark.parametrize("inversion,min_db", [
    ({"class_type": "DragEditEditFriendlyFlowInversion", "inputs": {"eta": 1.0, "seed": 0}}, 60.0),
    ({"class_type": "DragEditFlowInversion", "inputs": {"solver": "fireflow"}}, 40.0),
])
def test_flow_inversion_reconstructs_through_the_executor(server, inversion, min_db):
    prefix = inversion["class_type"].lower()
    entry = server.run_prompt(_graph(inversion, prefix))
    assert entry["status"]["status_str"] == "success", entry["status"]
    files = sorted((server.base / "output" / "latents").glob(f"{prefix}*.latent"))
    out = safetensors.torch.load_file(str(files[-1]))["latent_tensor"].float()
    ref = tiny_models.dit_latent(0, size=8)["samples"]
    assert psnr(out, ref) >= min_db
