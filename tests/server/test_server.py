"""The pack inside the real ComfyUI server: loads, gradients inside an executed node, inversion via POST /prompt."""
import pytest

from tools.support.comfy_server import PromptError

pytestmark = pytest.mark.slow


def _base_graph():
    return {
        "1": {"class_type": "DragEditTestTinyModel", "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "DragEditTestConditioning", "inputs": {"seed": 1, "pooled": False}},
        "3": {"class_type": "DragEditTestLatent", "inputs": {"seed": 0, "size": 16, "batch": 1}},
    }


def test_pack_nodes_registered(comfy_server):
    info = comfy_server.get("/object_info")
    assert "DragEditDDIMInversion" in info
    node = info["DragEditDDIMInversion"]
    assert node["category"] == "DragEdit/building blocks"
    assert all("tooltip" in spec[1] for spec in node["input"]["required"].values() if len(spec) > 1)
    failed = [l for l in comfy_server.log().splitlines() if "IMPORT FAILED" in l or "Cannot import" in l]
    assert not [l for l in failed if "ComfyUI-DragEdit" in l or "dragedit_test_nodes" in l], failed


def test_web_extension_served(comfy_server):
    exts = comfy_server.get("/extensions")
    assert any("ComfyUI-DragEdit" in e for e in exts), exts


def test_gradient_reaches_latent_inside_executed_node(comfy_server):
    g = _base_graph()
    g["4"] = {"class_type": "DragEditTestGradProbe", "inputs": {"model": ["1", 0], "latent": ["3", 0], "positive": ["2", 0]}}
    entry = comfy_server.run_prompt(g)
    assert entry["outputs"]["4"]["grad_norm"][0] > 0


def test_inversion_then_samplercustom_reconstructs(comfy_server):
    g = _base_graph()
    g["4"] = {"class_type": "DragEditDDIMInversion", "inputs": {
        "model": ["1", 0], "latent": ["3", 0], "positive": ["2", 0], "steps": 20, "strength": 0.5, "record_kv": True}}
    g["5"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    g["6"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["1", 0], "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": ["2", 0], "negative": ["2", 0],
        "sampler": ["5", 0], "sigmas": ["4", 2], "latent_image": ["4", 0]}}
    g["7"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "recon"}}
    g["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "orig"}}
    comfy_server.run_prompt(g)
    import safetensors.torch
    out = comfy_server.base / "output"
    rec = safetensors.torch.load_file(sorted(out.glob("recon*.latent"))[-1])["latent_tensor"]
    orig = safetensors.torch.load_file(sorted(out.glob("orig*.latent"))[-1])["latent_tensor"]
    assert rec.shape == orig.shape
    assert float((rec - orig).abs().max()) < 0.5 * float(orig.abs().max())


def test_bad_input_error_reaches_the_user(comfy_server):
    g = _base_graph()
    g["3"]["inputs"]["batch"] = 2
    g["4"] = {"class_type": "DragEditDDIMInversion", "inputs": {
        "model": ["1", 0], "latent": ["3", 0], "positive": ["2", 0], "steps": 10, "strength": 0.5, "record_kv": False}}
    g["5"] = {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "x"}}
    with pytest.raises(PromptError, match=r"\[DDIM Inversion\] input 'latent'"):
        comfy_server.run_prompt(g)
