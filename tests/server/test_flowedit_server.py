"""LEDITS-flow and FlowEdit through the real executor on a tiny SD3 checkpoint in models/diffusion_models loaded by the
stock UNETLoader: Edit-friendly Flow Inversion + SEGA Guidance (scale 0 gives the input back, scale 8 edits) and the
FlowEdit GUIDER (the source prompt as target gives the input back), each with stock BasicScheduler, KSamplerSelect
and SamplerCustomAdvanced; results read back from SaveLatent."""
import pytest
import safetensors.torch

from tools.support import tiny_models
from tools.support.comfy_server import ComfyServer
from tools.support.flow_calls import psnr

NAME = "dragedit_tiny_sd3_flowedit.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("flowedit-base")
    (base / "models" / "diffusion_models").mkdir(parents=True)
    sd = {k: v.half().contiguous() for k, v in tiny_models.sd3_state_dict(0).items()}
    safetensors.torch.save_file(sd, str(base / "models" / "diffusion_models" / NAME))
    srv = ComfyServer(base=base).start()
    yield srv
    srv.stop()


def _common() -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": NAME, "weight_dtype": "default"}},
        "2": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 1, "pooled": True}},
        "3": {"class_type": "DragEditTestDiTLatent", "inputs": {"seed": 0, "size": 8}},
        "4": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 6,
                                                         "denoise": 1.0}},
        "9": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 5, "pooled": True}},
    }


def _sega_graph(scale: float, prefix: str) -> dict:
    g = _common()
    g.update({
        "5": {"class_type": "DragEditEditFriendlyFlowInversion", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "positive": ["2", 0], "sigmas": ["4", 0], "eta": 1.0, "seed": 0,
            "cfg": 1.0}},
        "6": {"class_type": "DragEditSEGAGuidance", "inputs": {
            "model": ["1", 0], "concept": ["9", 0], "direction": "add", "scale": scale, "threshold": 0.9,
            "warmup": 0, "cooldown": 0, "weight": 1.0, "momentum_scale": 0.1, "momentum_beta": 0.4, "mode": "SEGA"}},
        "7": {"class_type": "BasicGuider", "inputs": {"model": ["6", 0], "conditioning": ["2", 0]}},
        "8": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["5", 0], "guider": ["7", 0],
                                                                "sampler": ["5", 1], "sigmas": ["4", 0],
                                                                "latent_image": ["3", 0]}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": f"latents/{prefix}"}},
    })
    return g


def _flowedit_graph(target: str, prefix: str) -> dict:
    g = _common()
    g.update({
        "5": {"class_type": "DragEditFlowEdit", "inputs": {
            "model": ["1", 0], "source": ["2", 0], "target": [target, 0], "source_cfg": 1.0, "target_cfg": 1.0,
            "n_avg": 1, "seed": 0}},
        "6": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "8": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["7", 0], "guider": ["5", 0],
                                                                "sampler": ["6", 0], "sigmas": ["4", 0],
                                                                "latent_image": ["3", 0]}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": f"latents/{prefix}"}},
    })
    return g


def _db(server, graph, prefix) -> float:
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    files = sorted((server.base / "output" / "latents").glob(f"{prefix}*.latent"))
    out = safetensors.torch.load_file(str(files[-1]))["latent_tensor"].float()
    return psnr(out, tiny_models.dit_latent(0, size=8)["samples"])


def test_sega_guidance_on_sd3_through_the_executor(server):
    assert _db(server, _sega_graph(0.0, "fe_sega0"), "fe_sega0") >= 60.0
    assert _db(server, _sega_graph(8.0, "fe_sega8"), "fe_sega8") < 40.0


def test_flowedit_on_sd3_through_the_executor(server):
    assert _db(server, _flowedit_graph("2", "fe_same"), "fe_same") >= 60.0
    assert _db(server, _flowedit_graph("9", "fe_edit"), "fe_edit") < 55.0         # another prompt edits
