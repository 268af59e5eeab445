"""Bad inputs through the real executor (the comfy_server fixture, started once per session) on the bundled Shapes Demo
Model: every error names the node and the input."""
from __future__ import annotations

import json

import pytest

from tools.support.comfy_server import PromptError


DRAG = '{"version": 1, "points": [{"handle": [8, 16], "target": [20, 16]}]}'


# ============================================================================================== the real executor
def _base() -> dict:
    """Shapes Demo Model, a one-shape scene, its prompt, an empty negative, the encoded latent, drag instructions."""
    return {
        "1": {"class_type": "DragEditShapesDemoModel", "inputs": {}},
        "2": {"class_type": "DragEditShapesScene", "inputs": {"seed": 1, "shapes": "1"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": ["2", 1], "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "6": {"class_type": "DragInstructions", "inputs": {"image": ["2", 0], "drag_data": DRAG}},
    }


def _ddim(latent=("5", 0), steps=4, strength=1.0, record_kv=True, **kw) -> dict:
    return {"class_type": "DragEditDDIMInversion", "inputs": {
        "model": ["1", 0], "latent": list(latent), "positive": ["3", 0], "steps": steps, "strength": strength,
        "record_kv": record_kv, **kw}}


def _ddpm(latent=("5", 0), steps=4, skip=0) -> dict:
    return {"class_type": "DragEditDDPMInversion", "inputs": {
        "model": ["1", 0], "latent": list(latent), "positive": ["3", 0], "negative": ["4", 0], "steps": steps,
        "skip": skip, "source_cfg": 1.0, "eta": 1.0, "seed": 0}}


def _sampler_custom(model, sampler, sigmas, latent, add_noise=False) -> dict:
    return {"class_type": "SamplerCustom", "inputs": {
        "model": list(model), "add_noise": add_noise, "noise_seed": 0, "cfg": 1.0, "positive": ["3", 0],
        "negative": ["4", 0], "sampler": list(sampler), "sigmas": list(sigmas), "latent_image": list(latent)}}


def _save(samples, prefix="bad") -> dict:
    return {"class_type": "SaveLatent", "inputs": {"samples": list(samples), "filename_prefix": prefix}}


def _ledits(latent=("5", 0), steps=4, skip=1) -> dict:
    return {"class_type": "DragEditLEDITSEdit", "inputs": {
        "model": ["1", 0], "vae": ["1", 2], "source": ["3", 0], "negative": ["4", 0], "steps": steps, "skip": skip,
        "source_cfg": 1.0, "target_cfg": 1.0, "mode": "SEGA", "seed": 0, "latent": list(latent),
        "concept_1": ["3", 0], "direction_1": "add", "scale_1": 5.0, "direction_2": "add", "scale_2": 5.0,
        "direction_3": "add", "scale_3": 5.0, "threshold": 0.9, "warmup": 0, "momentum_scale": 0.1,
        "momentum_beta": 0.4}}


def _dragdiffusion(latent=("5", 0), mask=None) -> dict:
    inputs = {"model": ["1", 0], "latent": list(latent), "positive": ["3", 0], "drag": ["6", 0], "steps": 4,
              "strength": 0.5, "iterations": 1, "learning_rate": 0.01, "r_m": 1, "r_p": 3, "lam": 0.1,
              "feature_block": -2, "reference_kv": True}
    if mask is not None:
        inputs["mask"] = list(mask)
    return {"class_type": "DragEditDragDiffusion", "inputs": inputs}


def _motion(inversion=("10", 1), mask=None) -> dict:
    inputs = {"model": ["1", 0], "positive": ["3", 0], "drag": ["6", 0], "inversion": list(inversion),
              "iterations": 1, "learning_rate": 0.01, "r_m": 1, "r_p": 3, "lam": 0.1, "feature_block": -2,
              "reference_kv": False}
    if mask is not None:
        inputs["mask"] = list(mask)
    return {"class_type": "DragEditMotionSupervision", "inputs": inputs}


def _basic_sigmas(steps=3) -> dict:
    return {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": steps,
                                                       "denoise": 1.0}}


def _solid_mask(size, value=1.0) -> dict:
    return {"class_type": "SolidMask", "inputs": {"value": value, "width": size, "height": size}}


def _runs(server, graph):
    """Run a prompt that must succeed with every output node executed (ComfyUI runs the valid outputs of a prompt
    and only lists the invalid ones, so a typo in a graph would otherwise pass)."""
    entry = server.run_prompt(graph)
    outputs = {k for k, v in graph.items() if v["class_type"] in ("SaveLatent", "SaveImage", "PreviewImage")}
    assert outputs <= set(entry.get("outputs", {})), (outputs, list(entry.get("outputs", {})))
    return entry


def _fails(server, graph, pattern):
    """Run a prompt that must fail with a clear error matching pattern (names the pack's node and input)."""
    with pytest.raises(PromptError, match=pattern) as e:
        server.run_prompt(graph)
    text = str(e.value)
    assert "Traceback" not in text and len(text) < 1500, text
    return text


@pytest.mark.slow
def test_server_step_count_edges(comfy_server):
    """Item 1: 1000 steps (the widgets' maximum) works for DDPM Inversion + the Edit-friendly DDPM sampler and LEDITS
    Edit (only the last 2 steps run: the whole grid is still built and checked); 999, 7 and 1 for the inversions."""
    g = _base()
    g["10"] = _ddpm(steps=1000, skip=998)
    g["11"] = {"class_type": "DragEditEditFriendlyDDPM", "inputs": {"inversion": ["10", 1]}}
    g["12"] = _sampler_custom(("1", 0), ("11", 0), ("10", 2), ("10", 0))
    g["13"] = _save(("12", 0), "steps1000")
    g["14"] = _ledits(steps=1000, skip=998)
    g["15"] = _save(("14", 1), "ledits1000")
    g["16"] = _ddim(steps=999, strength=0.002, record_kv=False)
    g["17"] = _save(("16", 0), "ddim999")
    g["18"] = _ddpm(steps=7, skip=5)
    g["19"] = _save(("18", 0), "ddpm7")
    g["20"] = _ddim(steps=1, strength=1.0, record_kv=False)
    g["21"] = _save(("20", 0), "ddim1")
    _runs(comfy_server, g)


@pytest.mark.slow
def test_server_nan_weights(comfy_server):
    """Item 2: NaN reaches the nodes (ComfyUI's min/max check lets it through); every FLOAT is checked finite."""
    g = _base()
    g["10"] = _ddim()
    g["11"] = {"class_type": "DragEditFeatureGuidance", "inputs": {
        "model": ["1", 0], "inversion": ["10", 1], "mode": "drag", "energy_scale": 1.0, "start_percent": 0.0,
        "end_percent": 0.6, "resize_scale": 1.0, "drag": ["6", 0], "w_edit": float("nan")}}
    g["12"] = _sampler_custom(("11", 0), ("13", 0), ("10", 2), ("10", 0))
    g["13"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    g["14"] = _save(("12", 0))
    _fails(comfy_server, g, r"\[Feature Guidance\] input 'w_edit': must be a finite number, got nan")
    for name in ("w_edit", "w_content"):
        g = _base()
        g["10"] = _ddim()
        g["11"] = {"class_type": "DragEditDragonDiffusion", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0], "inversion": ["10", 1], "mode": "drag",
            "cfg": 1.0, "energy_scale": 1.0, "resize_scale": 1.0, "drag": ["6", 0], name: float("nan")}}
        g["12"] = _save(("11", 0))
        _fails(comfy_server, g, rf"\[DragonDiffusion\] input '{name}': must be a finite number")


@pytest.mark.slow
def test_server_schedule_mismatch(comfy_server):
    """Item 3: Feature Guidance, Memory Bank K/V and Motion Supervision sampled on other sigmas, and the Edit-friendly
    DDPM sampler with add_noise on, are refused naming the pack's node; the inversion's own sigmas (or a SplitSigmas
    part) still run."""
    def graph(patch, sigmas=("20", 0), add_noise=False, sampler=("13", 0), inversion=("10", 1), latent=("10", 0)):
        g = _base()
        g["10"] = _ddim()
        g["11"] = dict(patch, inputs=dict(patch["inputs"], inversion=list(inversion)))
        g["12"] = _sampler_custom(("11", 0), sampler, sigmas, latent, add_noise)
        g["13"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
        g["14"] = _save(("12", 0), "sched")
        g["20"] = _basic_sigmas()
        g["21"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["10", 2], "step": 2}}
        return g

    fg = {"class_type": "DragEditFeatureGuidance", "inputs": {
        "model": ["1", 0], "mode": "drag", "energy_scale": 1.0, "start_percent": 0.0, "end_percent": 0.6,
        "resize_scale": 1.0, "drag": ["6", 0]}}
    mb = {"class_type": "DragEditMemoryBankKV", "inputs": {
        "model": ["1", 0], "mode": "drag", "start_percent": 0.1, "end_percent": 1.0}}
    _fails(comfy_server, graph(mb), r"\[Memory Bank K/V\] input 'inversion': the sampler node runs sigmas \[.*\(3 "
                                    r"steps\), which do not match the INVERSION's .*\(4 steps\).*Connect the SIGMAS "
                                    r"output of DDIM Inversion")
    _fails(comfy_server, graph(fg), r"\[Feature Guidance\] input 'inversion': the sampler node's sigmas \[.*\(3 "
                                    r"steps\) start above the INVERSION's first sigma")
    g = graph(fg, sigmas=("22", 0))    # Feature Guidance follows another schedule below the inversion's start
    g["22"] = {"class_type": "KarrasScheduler", "inputs": {"steps": 3, "sigma_max": 1.0, "sigma_min": 0.1, "rho": 7.0}}
    _runs(comfy_server, g)
    for patch in (fg, mb):
        _runs(comfy_server, graph(patch, sigmas=("10", 2)))
        _runs(comfy_server, graph(patch, sigmas=("21", 1), latent=("5", 0)))    # the second half
    # chained: Memory Bank K/V on top of Feature Guidance, sampled on other sigmas
    g = graph(fg)
    g["15"] = dict(mb, inputs=dict(mb["inputs"], model=["11", 0], inversion=["10", 1]))
    g["12"]["inputs"]["model"] = ["15", 0]
    _fails(comfy_server, g, r"\[(Feature Guidance|Memory Bank K/V)\] input 'inversion': the sampler node")
    # Motion Supervision's MODEL output sampled on other sigmas
    g = _base()
    g["10"] = _ddim(record_kv=False)
    g["11"] = _motion()
    g["12"] = _sampler_custom(("11", 2), ("13", 0), ("20", 0), ("11", 0))
    g["13"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    g["14"] = _save(("12", 0))
    g["20"] = _basic_sigmas()
    _fails(comfy_server, g, r"\[Motion Supervision\] input 'inversion': the sampler node's sigmas .* start above")
    g["11"]["inputs"]["reference_kv"] = True    # with the source K/V: only the inversion's steps
    g["10"]["inputs"]["record_kv"] = True
    g["20"] = {"class_type": "KarrasScheduler", "inputs": {"steps": 3, "sigma_max": 1.0, "sigma_min": 0.1, "rho": 7.0}}
    _fails(comfy_server, g, r"\[Motion Supervision\] input 'inversion': the sampler node runs sigmas .* do not match")
    g["12"]["inputs"]["sigmas"] = ["10", 2]
    _runs(comfy_server, g)
    # the Edit-friendly DDPM sampler with add_noise on
    g = _base()
    g["10"] = _ddpm()
    g["11"] = {"class_type": "DragEditEditFriendlyDDPM", "inputs": {"inversion": ["10", 1]}}
    g["12"] = _sampler_custom(("1", 0), ("11", 0), ("10", 2), ("10", 0), add_noise=True)
    g["13"] = _save(("12", 0))
    _fails(comfy_server, g, r"\[Edit-friendly DDPM\] input 'inversion': the sampler node adds noise .*turn "
                            r"add_noise off")


@pytest.mark.slow
def test_server_mask_size(comfy_server):
    """Item 4: DragDiffusion and Motion Supervision refuse a 64x64 mask on the 32x32 image, as the other nodes do; a
    latent-size (16x16) mask is accepted everywhere."""
    g = _base()
    g["7"] = _solid_mask(64)
    g["10"] = _ddim(steps=4, strength=0.5, record_kv=False)
    g["11"] = _dragdiffusion(mask=("7", 0))
    g["12"] = _save(("11", 0))
    _fails(comfy_server, g, r"\[DragDiffusion\] input 'mask': is 64x64 but the image is 32x32; use a mask of the "
                            r"image's size or the latent's 16x16")
    g["11"] = _motion(mask=("7", 0))
    _fails(comfy_server, g, r"\[Motion Supervision\] input 'mask': is 64x64 but the image is 32x32")
    g["8"] = {"class_type": "MaskComposite", "inputs": {"destination": ["9", 0], "source": ["7", 0], "x": 32, "y": 0,
                                                        "operation": "add"}}
    g["9"] = _solid_mask(64, 0.0)
    g["11"] = _motion(mask=("8", 0))   # a partial 64x64 mask (the review's follow-up)
    _fails(comfy_server, g, r"\[Motion Supervision\] input 'mask': is 64x64 but the image is 32x32")
    g["7"] = _solid_mask(16)
    g["11"] = _dragdiffusion(mask=("7", 0))
    _runs(comfy_server, g)
    g = _base()
    g["7"] = _solid_mask(64)
    g["10"] = {"class_type": "DragEditRegionDrag", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "steps": 4, "strength": 0.5, "noise_scale": 0.6, "seed": 0,
        "drag": ["6", 0], "image": ["2", 0], "vae": ["1", 2], "mask": ["7", 0]}}
    g["11"] = _save(("10", 0))
    _fails(comfy_server, g, r"\[RegionDrag\] input 'mask': is 64x64 but the image is 32x32")


@pytest.mark.slow
def test_server_latent_channels(comfy_server):
    """Item 5: a 4-channel latent (Empty Latent Image) on the 12-channel demo model is a clear error in every node
    that takes a latent, not 'expected input ... to have 12 channels'."""
    for node_id, node, build in (("10", "DDIM Inversion", lambda: _ddim(latent=("7", 0))),
                                 ("10", "DDPM Inversion \\(edit-friendly\\)", lambda: _ddpm(latent=("7", 0))),
                                 ("10", "DragDiffusion", lambda: _dragdiffusion(latent=("7", 0))),
                                 ("10", "LEDITS Edit", lambda: _ledits(latent=("7", 0)))):
        g = _base()
        g["7"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}}
        g[node_id] = build()
        g["11"] = _save((node_id, 0) if "LEDITS" not in node else (node_id, 1))
        _fails(comfy_server, g, rf"\[{node}\] input 'latent': the latent has 4 channels but this model takes 12")
    g = _base()
    g["7"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}}
    g["10"] = _motion(inversion=("12", 1))
    g["10"]["inputs"]["latent"] = ["7", 0]
    g["12"] = _ddim(record_kv=False)
    g["11"] = _save(("10", 0))
    _fails(comfy_server, g, r"\[Motion Supervision\] input 'latent': the latent has 4 channels")


@pytest.mark.slow
def test_server_deep_json(comfy_server):
    """Item 6: JSON nested 50k levels deep (inside the 256 KiB limit) is a clear error, not a RecursionError."""
    g = _base()
    g["6"]["inputs"]["drag_data"] = "[" * 50000 + "]" * 50000
    g["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    g["8"] = {"class_type": "MaskToImage", "inputs": {"mask": ["6", 1]}}
    g["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    _fails(comfy_server, g, r"\[Drag Instructions\] input 'drag_data': JSON is nested more than 32 levels deep")


@pytest.mark.slow
def test_server_sampler_errors_name_the_pack_node(comfy_server):
    """Item 7: Latent Copy-Paste and Edit-friendly DDPM run inside SamplerCustom; a latent of another size or other
    sigmas is reported naming the pack's node and what to connect instead."""
    g = _base()
    g["10"] = _ddim(record_kv=False)
    g["11"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    g["12"] = {"class_type": "DragEditLatentCopyPaste", "inputs": {
        "sampler": ["11", 0], "inversion": ["10", 1], "noise_scale": 0.6, "seed": 0, "paste_end": 0.2,
        "paste_every_step": False, "drag": ["6", 0]}}
    g["13"] = _sampler_custom(("1", 0), ("12", 0), ("10", 2), ("8", 0))
    g["14"] = _save(("13", 0))
    g["20"] = _basic_sigmas()
    g["8"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["9", 0], "vae": ["1", 2]}}
    g["9"] = {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact",
                                                     "width": 48, "height": 48, "crop": "disabled"}}
    _fails(comfy_server, g, r"\[Latent Copy-Paste\] input 'inversion': the sampler node's latent is 24x24 but the "
                            r"INVERSION's is 16x16 .*Connect the LATENT output of the inversion node")
    g["13"] = _sampler_custom(("1", 0), ("12", 0), ("20", 0), ("10", 0))
    _fails(comfy_server, g, r"\[Latent Copy-Paste\] input 'inversion': the sampler node runs sigmas .*Connect the "
                            r"SIGMAS output of the inversion node")
    g["13"] = _sampler_custom(("1", 0), ("12", 0), ("10", 2), ("10", 0), add_noise=True)
    _fails(comfy_server, g, r"\[Latent Copy-Paste\] input 'inversion': the sampler node adds noise")
    g = _base()
    g["10"] = _ddpm()
    g["11"] = {"class_type": "DragEditEditFriendlyDDPM", "inputs": {"inversion": ["10", 1]}}
    g["12"] = _sampler_custom(("1", 0), ("11", 0), ("20", 0), ("10", 0))
    g["13"] = _save(("12", 0))
    g["20"] = _basic_sigmas()
    _fails(comfy_server, g, r"\[Edit-friendly DDPM\] input 'inversion': the sampler node runs sigmas .*not a "
                            r"contiguous run of the INVERSION's sigmas\).*Connect the SIGMAS output of DDPM "
                            r"Inversion \(edit-friendly\)")
    g["12"] = _sampler_custom(("1", 0), ("11", 0), ("10", 2), ("8", 0))
    g["8"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["9", 0], "vae": ["1", 2]}}
    g["9"] = {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact",
                                                     "width": 48, "height": 48, "crop": "disabled"}}
    _fails(comfy_server, g, r"\[Edit-friendly DDPM\] input 'inversion': the sampler node's latent is 24x24 but the "
                            r"INVERSION's is 16x16")


@pytest.mark.slow
def test_server_declared_image_size(comfy_server):
    """Item 8: a 200-byte JSON declaring a 16384x16384 one-run mask is rescaled to the 32x32 image without decoding it
    at that size; without an image (Latent Copy-Paste) such an image_size does not fit the latent and is refused."""
    big = json.dumps({"version": 1, "image_size": [16384, 16384], "points": [[4096, 8192, 10240, 8192]],
                      "mask": {"size": [16384, 16384], "counts": [0, 16384 * 16384]}})
    g = _base()
    g["6"]["inputs"]["drag_data"] = big
    g["7"] = {"class_type": "MaskToImage", "inputs": {"mask": ["6", 1]}}
    g["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "bigmask"}}
    entry = _runs(comfy_server, g)
    assert comfy_server.output_images(entry)
    g = _base()
    g["10"] = _ddim(record_kv=False)
    g["11"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    g["12"] = {"class_type": "DragEditLatentCopyPaste", "inputs": {
        "sampler": ["11", 0], "inversion": ["10", 1], "noise_scale": 0.6, "seed": 0, "paste_end": 0.2,
        "paste_every_step": False, "drag_json": big}}
    g["13"] = _sampler_custom(("1", 0), ("12", 0), ("10", 2), ("10", 0))
    g["14"] = _save(("13", 0))
    _fails(comfy_server, g, r"\[Latent Copy-Paste\] input 'drag_json': the drag instructions are for a 16384x16384 "
                            r"image, which does not match the 16x16 latent at any VAE factor up to 64")


@pytest.mark.slow
def test_server_kv_ram_guard(comfy_server):
    """Item 9: recording K/V beyond the limit is refused before the run, with the estimate and what to change."""
    g = _base()
    g["10"] = _ddim(steps=4, strength=1.0, record_kv=True, kv_max_gb=1e-5)
    g["11"] = _save(("10", 0))
    _fails(comfy_server, g, r"\[DDIM Inversion\] input 'record_kv': recording the self-attention K/V would keep about "
                            r"0\.00 GB in RAM \(4 steps, 16x16 latent, float16\), above the limit of 0\.00 GB "
                            r"\(kv_max_gb = 1e-05\): .*turn record_kv off")
    g["10"] = _ddim(steps=4, strength=1.0, record_kv=True, kv_max_gb=0.0)
    _runs(comfy_server, g)


@pytest.mark.slow
def test_server_demo_model_size_limit(comfy_server):
    """Item 10: the demo model refuses images above 128x128 (its self-attention at full latent resolution)."""
    g = _base()
    g["7"] = {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact",
                                                     "width": 256, "height": 256, "crop": "disabled"}}
    g["5"]["inputs"]["pixels"] = ["7", 0]
    g["10"] = _ddim(record_kv=False)
    g["11"] = _save(("10", 0))
    _fails(comfy_server, g, r"\[DDIM Inversion\] input 'latent': the latent is 128x128, larger than this model's "
                            r"limit of 64x64 \(the Shapes Demo Model is trained on 32x32 images and has self-attention")
    g["6"]["inputs"]["image"] = ["7", 0]
    g["10"] = {"class_type": "DragEditRegionDrag", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "steps": 4, "strength": 0.5, "noise_scale": 0.6, "seed": 0,
        "drag": ["6", 0], "image": ["7", 0], "vae": ["1", 2]}}
    _fails(comfy_server, g, r"\[RegionDrag\] input 'image': the latent is 128x128, larger than this model's limit")
