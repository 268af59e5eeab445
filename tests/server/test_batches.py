"""Issue 23, class 18: every node of the pack with batches of 2-4 latents / images through the real executor. The
batch rule (docs/limits.md, "Batches"): DDPM Inversion, the Edit-friendly DDPM sampler, SEGA Guidance, LEDITS Edit
and Drag Preview take batches; every other node edits one image and refuses a batch (`_inputs.check_batch`), and a
patch or sampler made from an INVERSION refuses a sampler latent of another batch size (`check_schedule`)."""
from __future__ import annotations

import pytest
import safetensors.torch
import torch

from test_bad_inputs_server import _base, _ddim, _ddpm, _fails, _ledits, _runs, _sampler_custom, _save

import test_flow_inversion_server as flow


def _batched(g: dict, b: int) -> dict:
    """The base graph with the scene image repeated b times (id 20) and its latent (id 21)."""
    g["20"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": b}}
    g["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["1", 2]}}
    return g


def _euler() -> dict:
    return {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}


def _regiondrag(b: int) -> tuple[dict, str]:
    g = _batched(_base(), b)
    g["10"] = {"class_type": "DragEditRegionDrag", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "steps": 4, "strength": 0.5, "noise_scale": 0.6, "seed": 0,
        "drag": ["6", 0], "image": ["20", 0], "vae": ["1", 2]}}
    g["11"] = _save(("10", 0), "batch")
    return g, rf"\[RegionDrag\] input 'image': a batch of {b} images was given"


def _drag_instructions(b: int) -> tuple[dict, str]:
    g = _batched(_base(), b)
    g["6"]["inputs"]["image"] = ["20", 0]
    g["10"] = {"class_type": "DragEditDragPreview", "inputs": {"image": ["2", 0], "drag": ["6", 0], "min_size": 64}}
    g["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "batch"}}
    return g, rf"\[Drag Instructions\] input 'image': a batch of {b} images was given"


def _ddim_inversion(b: int) -> tuple[dict, str]:
    g = _batched(_base(), b)
    g["10"] = _ddim(latent=("21", 0))
    g["11"] = _save(("10", 0), "batch")
    return g, rf"\[DDIM Inversion\] input 'latent': batch size {b}: this node edits one image at a time"


def _dragdiffusion(b: int) -> tuple[dict, str]:
    g = _batched(_base(), b)
    g["10"] = {"class_type": "DragEditDragDiffusion", "inputs": {
        "model": ["1", 0], "latent": ["21", 0], "positive": ["3", 0], "drag": ["6", 0], "steps": 4, "strength": 0.5,
        "iterations": 1, "learning_rate": 0.01, "r_m": 1, "r_p": 3, "lam": 0.1, "feature_block": -2,
        "reference_kv": True}}
    g["11"] = _save(("10", 0), "batch")
    return g, rf"\[DragDiffusion\] input 'latent': batch size {b}"


def _motion_supervision(b: int) -> tuple[dict, str]:
    g = _batched(_base(), b)
    g["10"] = {"class_type": "DragEditMotionSupervision", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "drag": ["6", 0], "latent": ["21", 0], "steps": 4, "strength": 0.5,
        "iterations": 1, "learning_rate": 0.01, "r_m": 1, "r_p": 3, "lam": 0.1, "feature_block": -2,
        "reference_kv": False}}
    g["11"] = _save(("10", 0), "batch")
    return g, rf"\[Motion Supervision\] input 'latent': batch size {b}"


def _sampled_from_inversion(node: str, b: int) -> dict:
    """A batch-1 DDIM Inversion (id 10), a patch / sampler of `node` made from it, SamplerCustom on a latent batch of
    b copies of the inversion's start latent (RepeatLatentBatch)."""
    g = _base()
    g["10"] = _ddim(strength=0.75, record_kv=True)
    g["12"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["10", 0], "amount": b}}
    g["13"] = _euler()
    model, sampler = ("1", 0), ("13", 0)
    if node == "Latent Copy-Paste":
        g["14"] = {"class_type": "DragEditLatentCopyPaste", "inputs": {
            "sampler": ["13", 0], "inversion": ["10", 1], "noise_scale": 0.6, "seed": 0, "paste_end": 0.2,
            "paste_every_step": False, "drag": ["6", 0]}}
        sampler = ("14", 0)
    elif node == "Attention K/V Swap":
        g["14"] = {"class_type": "DragEditAttentionKVSwap", "inputs": {"model": ["1", 0], "inversion": ["10", 1],
                                                                       "layers": "all", "mode": "replace"}}
        model = ("14", 0)
    elif node == "Memory Bank K/V":
        g["14"] = {"class_type": "DragEditMemoryBankKV", "inputs": {
            "model": ["1", 0], "inversion": ["10", 1], "mode": "drag", "start_percent": 0.0, "end_percent": 1.0}}
        model = ("14", 0)
    elif node == "Feature Guidance":
        g["14"] = {"class_type": "DragEditFeatureGuidance", "inputs": {
            "model": ["1", 0], "inversion": ["10", 1], "mode": "drag", "energy_scale": 1.0, "start_percent": 0.0,
            "end_percent": 0.6, "resize_scale": 1.0, "drag": ["6", 0]}}
        model = ("14", 0)
    g["15"] = _sampler_custom(model, sampler, ("10", 2), ("12", 0))
    g["16"] = _save(("15", 0), "batch")
    return g


def _inversion_patch(node: str):
    def make(b: int) -> tuple[dict, str]:
        return (_sampled_from_inversion(node, b),
                rf"\[{node}\] input 'inversion': the sampler node's latent is a batch of {b} but the INVERSION holds 1")
    return make


def _dragondiffusion(b: int) -> tuple[dict, str]:
    """DragonDiffusion takes no latent (its INVERSION is one image: DDIM Inversion refuses batches); a batch of masks
    is refused by the one mask rule."""
    g = _base()
    g["10"] = _ddim()
    g["12"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}}
    g["13"] = {"class_type": "MaskToImage", "inputs": {"mask": ["12", 0]}}
    g["14"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["13", 0], "amount": b}}
    g["15"] = {"class_type": "ImageToMask", "inputs": {"image": ["14", 0], "channel": "red"}}
    g["16"] = {"class_type": "DragEditDragonDiffusion", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0], "inversion": ["10", 1], "mode": "drag",
        "cfg": 1.0, "energy_scale": 1.0, "resize_scale": 1.0, "drag": ["6", 0], "mask": ["15", 0]}}
    g["17"] = _save(("16", 0), "batch")
    return g, rf"\[DragonDiffusion\] input 'mask': a batch of {b} masks was given"


REFUSED = {
    "Drag Instructions": _drag_instructions,
    "DDIM Inversion": _ddim_inversion,
    "RegionDrag": _regiondrag,
    "DragDiffusion": _dragdiffusion,
    "Motion Supervision": _motion_supervision,
    "Latent Copy-Paste": _inversion_patch("Latent Copy-Paste"),
    "Attention K/V Swap": _inversion_patch("Attention K/V Swap"),
    "Memory Bank K/V": _inversion_patch("Memory Bank K/V"),
    "Feature Guidance": _inversion_patch("Feature Guidance"),
    "DragonDiffusion": _dragondiffusion,
}


@pytest.mark.slow
@pytest.mark.parametrize("b", [2, 4])
@pytest.mark.parametrize("node", sorted(REFUSED))
def test_node_refuses_a_batch(comfy_server, node, b):
    graph, pattern = REFUSED[node](b)
    text = _fails(comfy_server, graph, pattern)
    assert "one image at a time" in text or "Connect the LATENT output" in text, text


def _latest(server, prefix: str) -> torch.Tensor:
    files = sorted((server.base / "output").glob(f"{prefix}*.latent"))
    return safetensors.torch.load_file(str(files[-1]))["latent_tensor"].float()


@pytest.mark.slow
def test_batch_nodes_edit_every_item(comfy_server):
    """DDPM Inversion + Edit-friendly DDPM reconstruct each of 3 different images of a batch; SEGA Guidance on that
    sampler and LEDITS Edit return 3 finite edits that differ from the input; Drag Preview shows 3 frames."""
    g = _base()
    for i, seed in enumerate((1, 2, 3)):
        g[f"2{i}"] = {"class_type": "DragEditShapesScene", "inputs": {"seed": seed, "shapes": "1"}}
    g["23"] = {"class_type": "ImageBatch", "inputs": {"image1": ["20", 0], "image2": ["21", 0]}}
    g["24"] = {"class_type": "ImageBatch", "inputs": {"image1": ["23", 0], "image2": ["22", 0]}}
    g["25"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["24", 0], "vae": ["1", 2]}}
    g["26"] = _save(("25", 0), "batch_in")
    g["10"] = _ddpm(latent=("25", 0))
    g["11"] = {"class_type": "DragEditEditFriendlyDDPM", "inputs": {"inversion": ["10", 1]}}
    g["12"] = _sampler_custom(("1", 0), ("11", 0), ("10", 2), ("10", 0))
    g["13"] = _save(("12", 0), "batch_ddpm")
    g["30"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blue", "clip": ["1", 1]}}
    g["31"] = {"class_type": "DragEditSEGAGuidance", "inputs": {
        "model": ["1", 0], "concept": ["30", 0], "direction": "add", "scale": 5.0, "threshold": 0.9, "warmup": 0,
        "cooldown": 0, "weight": 1.0, "momentum_scale": 0.1, "momentum_beta": 0.4, "mode": "SEGA"}}
    g["32"] = dict(_sampler_custom(("31", 0), ("11", 0), ("10", 2), ("10", 0)))
    g["32"]["inputs"]["cfg"] = 2.0
    g["33"] = _save(("32", 0), "batch_sega")
    g["40"] = _ledits(latent=("25", 0))
    g["41"] = _save(("40", 1), "batch_ledits")
    g["50"] = {"class_type": "DragEditDragPreview", "inputs": {"image": ["24", 0], "drag": ["6", 0], "min_size": 64}}
    g["51"] = {"class_type": "SaveImage", "inputs": {"images": ["50", 0], "filename_prefix": "batch_preview"}}
    entry = _runs(comfy_server, g)
    x = _latest(comfy_server, "batch_in")
    assert x.shape[0] == 3 and not torch.equal(x[0], x[1])
    rec = _latest(comfy_server, "batch_ddpm")
    assert rec.shape == x.shape and float((rec - x).abs().max()) < 1e-3
    for prefix in ("batch_sega", "batch_ledits"):
        out = _latest(comfy_server, prefix)
        assert out.shape == x.shape and bool(torch.isfinite(out).all()), prefix
        assert all(float((out[i] - x[i]).abs().mean()) > 1e-3 for i in range(3)), prefix
    assert len([p for p in comfy_server.output_images(entry) if p.name.startswith("batch_preview")]) == 3


@pytest.fixture(scope="module")
def tiny_sd3(comfy_server) -> str:
    """The tiny SD3 of the flow inversion tests, written into the shared server's models/diffusion_models (the
    folder's listing is re-read when it changes)."""
    from tools.support import tiny_models
    folder = comfy_server.base / "models" / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.half().contiguous() for k, v in tiny_models.sd3_state_dict(0).items()}
    safetensors.torch.save_file(sd, str(folder / flow.NAME))
    return flow.NAME


@pytest.mark.slow
@pytest.mark.parametrize("b", [2, 3])
@pytest.mark.parametrize("node", ["DragEditFlowInversion", "DragEditEditFriendlyFlowInversion"])
def test_flow_inversions_refuse_a_batch(comfy_server, tiny_sd3, node, b):
    """The flow inversions (and so their NOISE and SAMPLER) take one image: a batch is refused."""
    inputs = {"solver": "fireflow"} if node == "DragEditFlowInversion" else {"eta": 1.0, "seed": 0}
    g = flow._graph({"class_type": node, "inputs": inputs}, "batch_flow")
    g["9"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["3", 0], "amount": b}}
    g["5"]["inputs"]["latent"] = ["9", 0]
    g["7"]["inputs"]["latent_image"] = ["9", 0]
    name = "Flow Inversion" if node == "DragEditFlowInversion" else "Edit-friendly Flow Inversion"
    _fails(comfy_server, g, rf"\[{name}\] input 'latent': batch size {b}: this node edits one image at a time")
