"""RF-Inversion through the real executor on the tiny SD3 checkpoint loaded by the stock UNETLoader (the graph of
test_flow_inversion_server.py): RF-Inversion (γ 0.5) with an RF-Inversion Sampler pulling to the image on every step
(η 1) returns the input latent; the node's own SAMPLER runs (η 0.9 on the first quarter)."""
import safetensors.torch

from tools.support import tiny_models
from tools.support.flow_calls import psnr

from test_flow_inversion_server import _graph, server  # noqa: F401  (the module's server fixture)


def _run(server, graph, prefix):  # noqa: F811
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    files = sorted((server.base / "output" / "latents").glob(f"{prefix}*.latent"))
    return safetensors.torch.load_file(str(files[-1]))["latent_tensor"].float()


def test_rf_inversion_through_the_executor(server):  # noqa: F811
    ref = tiny_models.dit_latent(0, size=8)["samples"]
    inv = {"class_type": "DragEditRFInversion", "inputs": {"gamma": 0.5, "seed": 0}}
    g = _graph(inv, "rf_full")
    g["9"] = {"class_type": "DragEditRFInversionSampler", "inputs": {"inversion": ["5", 2], "eta": 1.0, "start": 0.0,
                                                                     "stop": 1.0, "decay_power": 0.0}}
    g["7"]["inputs"]["sampler"] = ["9", 0]
    assert psnr(_run(server, g, "rf_full"), ref) >= 60.0
    out = _run(server, _graph(inv, "rf_default"), "rf_default")
    assert out.shape == ref.shape and bool(out.isfinite().all())
