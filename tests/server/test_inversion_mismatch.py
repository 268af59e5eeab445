"""Issue 23, classes 10-13, through the real executor: an INVERSION used with another model (Attention K/V Swap, Motion
Supervision), with another image's latent (Motion Supervision, Latent Copy-Paste, Memory Bank K/V, Edit-friendly
DDPM), or made at strength 0 (Latent Copy-Paste) is refused naming the node and input; the matching graph runs."""
from __future__ import annotations

import pytest

from test_bad_inputs_server import _base, _ddim, _ddpm, _fails, _motion, _runs, _sampler_custom, _save

ANOTHER_MODEL = r"input 'inversion': was made with another model"
ANOTHER_IMAGE = r"is not the latent this INVERSION starts from"


def _tiny(kind: str = "sd15", seed: int = 0) -> dict:
    return {"class_type": "DragEditTestTinyModel", "inputs": {"kind": kind, "seed": seed}}


def _tiny_inputs(g: dict, pooled: bool = False) -> None:
    """Conditioning (id 31) and a 16x16 latent (id 32) of the tiny test models."""
    g["31"] = {"class_type": "DragEditTestConditioning", "inputs": {"seed": 1, "pooled": pooled}}
    g["32"] = {"class_type": "DragEditTestLatent", "inputs": {"seed": 0, "size": 16, "batch": 1}}


def _tiny_ddim(model: str, cond: str = "31") -> dict:
    return {"class_type": "DragEditDDIMInversion", "inputs": {
        "model": [model, 0], "latent": ["32", 0], "positive": [cond, 0], "steps": 4, "strength": 0.5,
        "record_kv": True}}


def _kv_swap(model, inversion) -> dict:
    return {"class_type": "DragEditAttentionKVSwap", "inputs": {"model": list(model), "inversion": list(inversion),
                                                                "layers": "all", "mode": "replace"}}


def _custom(model, sampler, sigmas, latent, cond) -> dict:
    return {"class_type": "SamplerCustom", "inputs": {
        "model": list(model), "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": [cond, 0],
        "negative": [cond, 0], "sampler": list(sampler), "sigmas": list(sigmas), "latent_image": list(latent)}}


def _euler() -> dict:
    return {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}


def _kv_swap_graph(source: str, target: str, pooled: bool = False) -> dict:
    """DDIM Inversion (record_kv) on `source`, Attention K/V Swap on `target`, SamplerCustom with the inversion's
    SIGMAS and LATENT. Models: 'demo', 'sd15/0', 'sd15/1', 'sdxl/0'."""
    g = _base()
    _tiny_inputs(g, pooled)
    ids = {"demo": "1", "sd15/0": "40", "sd15/1": "41", "sdxl/0": "42"}
    g["40"], g["41"], g["42"] = _tiny("sd15", 0), _tiny("sd15", 1), _tiny("sdxl", 0)
    src_cond = "3" if source == "demo" else "31"
    if source == "demo":
        g["33"] = _ddim()
    else:
        g["33"] = _tiny_ddim(ids[source], src_cond)
    g["34"] = _kv_swap((ids[target], 0), ("33", 1))
    g["35"] = _euler()
    g["36"] = _custom(("34", 0), ("35", 0), ("33", 2), ("33", 0), "3" if target == "demo" else "31")
    g["37"] = _save(("36", 0), "kvswap_model")
    for k in [k for k in ("40", "41", "42") if k not in (ids[source], ids[target])]:
        del g[k]
    return g


# ============================================================================================== classes 10, 11
@pytest.mark.slow
@pytest.mark.parametrize("source, target, pooled", [
    ("sd15/0", "sd15/1", False),       # another SD1.5 checkpoint: same layers, silently other K/V before
    ("demo", "sd15/0", False),         # the demo model's K/V on an SD1.5
    ("sdxl/0", "sd15/0", True),        # an SDXL's K/V on an SD1.5
])
def test_kv_swap_refuses_another_models_inversion(comfy_server, source, target, pooled):
    _fails(comfy_server, _kv_swap_graph(source, target, pooled), r"\[Attention K/V Swap\] " + ANOTHER_MODEL)


@pytest.mark.slow
def test_kv_swap_runs_with_its_own_model(comfy_server):
    _runs(comfy_server, _kv_swap_graph("sd15/0", "sd15/0"))


@pytest.mark.slow
def test_motion_supervision_refuses_another_models_inversion(comfy_server):
    """Class 11: another SD1.5 (silent before) and the demo model's inversion on an SD1.5 (a raw reshape error in the
    attn1 patch inside SamplerCustom before)."""
    for source in ("sd15/1", "demo"):
        g = _base()
        _tiny_inputs(g)
        g["40"] = _tiny("sd15", 0)
        if source == "demo":
            g["33"] = _ddim()
        else:
            g["41"] = _tiny("sd15", 1)
            g["33"] = _tiny_ddim("41")
        g["34"] = dict(_motion(("33", 1)), inputs=dict(_motion(("33", 1))["inputs"], model=["40", 0],
                                                      positive=["31", 0]))
        g["35"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
        g["36"] = _custom(("34", 2), ("35", 0), ("33", 2), ("34", 0), "31")
        g["37"] = _save(("36", 0), "motion_model")
        _fails(comfy_server, g, r"\[Motion Supervision\] " + ANOTHER_MODEL)


# ============================================================================================== class 12
def _two_images() -> dict:
    """The base graph plus a second scene (id 40), its latent (41), and both images' DDIM (10, 42) and DDPM (11, 43)
    inversions."""
    g = _base()
    g["40"] = {"class_type": "DragEditShapesScene", "inputs": {"seed": 2, "shapes": "1"}}
    g["41"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["40", 0], "vae": ["1", 2]}}
    g["10"] = _ddim(strength=0.75)
    g["42"] = _ddim(latent=("41", 0), strength=0.75)
    g["11"] = _ddpm()
    g["43"] = _ddpm(latent=("41", 0))
    return g


def _prune(g: dict, keep: set[str]) -> dict:
    """Drop the inversions the graph does not use (ComfyUI runs only what outputs need; keeps the run short)."""
    return {k: v for k, v in g.items() if k not in {"10", "11", "42", "43"} - keep}


@pytest.mark.slow
def test_inversion_of_another_image_is_refused(comfy_server):
    """Class 12: image A's inversion with image B's latent (what the graph passes: Motion Supervision's latent
    input, the sampler node's latent_image) in Motion Supervision, Latent Copy-Paste, Memory Bank K/V and the
    Edit-friendly DDPM sampler."""
    g = _two_images()
    g["50"] = dict(_motion(("10", 1)), inputs=dict(_motion(("10", 1))["inputs"], latent=["42", 0]))
    g["51"] = _save(("50", 0), "motion_image")
    _fails(comfy_server, _prune(g, {"10", "42"}), r"\[Motion Supervision\] input 'latent': the latent " + ANOTHER_IMAGE)

    g = _two_images()
    g["50"] = _euler()
    g["51"] = {"class_type": "DragEditLatentCopyPaste", "inputs": {
        "sampler": ["50", 0], "inversion": ["10", 1], "noise_scale": 0.6, "seed": 0, "paste_end": 0.2,
        "paste_every_step": False, "drag": ["6", 0]}}
    g["52"] = _sampler_custom(("1", 0), ("51", 0), ("10", 2), ("42", 0))
    g["53"] = _save(("52", 0), "copy_paste_image")
    _fails(comfy_server, _prune(g, {"10", "42"}),
           r"\[Latent Copy-Paste\] input 'inversion': the sampler node's latent .*" + ANOTHER_IMAGE)

    g = _two_images()
    g["50"] = {"class_type": "DragEditMemoryBankKV", "inputs": {
        "model": ["1", 0], "inversion": ["10", 1], "mode": "drag", "start_percent": 0.0, "end_percent": 1.0}}
    g["51"] = _euler()
    g["52"] = _sampler_custom(("50", 0), ("51", 0), ("10", 2), ("42", 0))
    g["53"] = _save(("52", 0), "memory_bank_image")
    _fails(comfy_server, _prune(g, {"10", "42"}),
           r"\[Memory Bank K/V\] input 'inversion': the sampler node's latent .*" + ANOTHER_IMAGE)

    g = _two_images()
    g["50"] = {"class_type": "DragEditEditFriendlyDDPM", "inputs": {"inversion": ["11", 1]}}
    g["51"] = _sampler_custom(("1", 0), ("50", 0), ("11", 2), ("43", 0))
    g["52"] = _save(("51", 0), "ddpm_image")
    _fails(comfy_server, _prune(g, {"11", "43"}),
           r"\[Edit-friendly DDPM\] input 'inversion': the sampler node's latent .*" + ANOTHER_IMAGE)


@pytest.mark.slow
def test_inversion_with_its_own_latent_runs(comfy_server):
    """The legitimate graphs: each inversion with its own LATENT output (through process_out / process_in), Motion
    Supervision with the latent and the inversion of the same image, and a second sampler fed the first one's
    output on the rest of the schedule (SplitSigmas: its start is not compared)."""
    g = _two_images()
    g["50"] = _euler()
    g["51"] = {"class_type": "DragEditLatentCopyPaste", "inputs": {
        "sampler": ["50", 0], "inversion": ["42", 1], "noise_scale": 0.6, "seed": 0, "paste_end": 0.2,
        "paste_every_step": False, "drag": ["6", 0]}}
    g["52"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["42", 2], "step": 1}}
    g["53"] = _sampler_custom(("1", 0), ("51", 0), ("52", 0), ("42", 0))
    g["54"] = _sampler_custom(("1", 0), ("51", 0), ("52", 1), ("53", 0))
    g["55"] = _save(("54", 0), "copy_paste_own")
    g["60"] = {"class_type": "DragEditEditFriendlyDDPM", "inputs": {"inversion": ["43", 1]}}
    g["61"] = _sampler_custom(("1", 0), ("60", 0), ("43", 2), ("43", 0))
    g["62"] = _save(("61", 0), "ddpm_own")
    g["70"] = dict(_motion(("42", 1)), inputs=dict(_motion(("42", 1))["inputs"], latent=["42", 0]))
    g["71"] = _save(("70", 0), "motion_own")
    _runs(comfy_server, _prune(g, {"42", "43"}))


# ============================================================================================== class 13
@pytest.mark.slow
def test_copy_paste_refuses_strength_zero(comfy_server):
    """Class 13: a DDIM Inversion at strength 0 has no step and no noisy start; Latent Copy-Paste pasted raw vacate
    noise into the clean latent before."""
    g = _base()
    g["10"] = _ddim(strength=0.0, record_kv=False)
    g["11"] = _euler()
    g["12"] = {"class_type": "DragEditLatentCopyPaste", "inputs": {
        "sampler": ["11", 0], "inversion": ["10", 1], "noise_scale": 0.6, "seed": 0, "paste_end": 0.2,
        "paste_every_step": False, "drag": ["6", 0]}}
    g["13"] = _sampler_custom(("1", 0), ("12", 0), ("10", 2), ("10", 0))
    g["14"] = _save(("13", 0), "copy_paste_zero")
    _fails(comfy_server, g, r"\[Latent Copy-Paste\] input 'inversion': has no steps: it was made with strength 0")
