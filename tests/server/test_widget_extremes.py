"""Issue 23, class 7: widget extremes that saturated silently, through the real executor on the Shapes Demo Model.
A blown-out result (latent RMS above 2x the input image's: `_inputs.check_result`) made with a knob beyond its
ordinary value is refused naming the knob;
SEGA's momentum_scale is declared below 1, where its momentum stops growing geometrically. Thresholds measured with
bench/saturation.py (docs/limits.md, "Widget extremes")."""
from __future__ import annotations

import pytest

from tools.support.comfy_server import PromptError
from test_bad_inputs_server import _base, _ddim, _fails, _ledits, _sampler_custom, _save

BLOWN = r"is blown out: its latent is [\d.]+x as strong \(RMS\) as the input image's, more than 2x"


def _dragdiffusion(lr: float) -> dict:
    return {"class_type": "DragEditDragDiffusion", "inputs": {
        "model": ["1", 0], "latent": ["5", 0], "positive": ["3", 0], "drag": ["6", 0], "steps": 10,
        "strength": 0.5, "iterations": 20, "learning_rate": lr, "r_m": 1, "r_p": 3, "lam": 0.1, "feature_block": -2,
        "reference_kv": False, "threshold": 0.1}}


@pytest.mark.slow
def test_dragdiffusion_learning_rate_blow_up(comfy_server):
    """learning_rate 1.0 spread the latent to 7.6x the image's (std 17 in the issue's run): refused, naming it."""
    g = _base()
    g["10"] = _dragdiffusion(1.0)
    g["11"] = _save(("10", 0), "extreme_lr")
    _fails(comfy_server, g, r"\[DragDiffusion\] input 'learning_rate': the edit " + BLOWN + r".*Lower learning_rate 1")


@pytest.mark.slow
def test_dragondiffusion_energy_scale_blow_up(comfy_server):
    """energy_scale 1000 gave 9.9x; refused naming energy_scale (cfg 1 is ordinary, so it is not listed)."""
    g = _base()
    g["10"] = _ddim(steps=10)
    g["11"] = {"class_type": "DragEditDragonDiffusion", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0], "inversion": ["10", 1], "mode": "drag",
        "cfg": 1.0, "energy_scale": 1000.0, "resize_scale": 1.0, "drag": ["6", 0]}}
    g["12"] = _save(("11", 0), "extreme_energy")
    _fails(comfy_server, g, r"\[DragonDiffusion\] input 'energy_scale': the edit " + BLOWN
           + r", so the picture would come out saturated or as noise\. Lower energy_scale 1000\.\s*$")


@pytest.mark.slow
def test_feature_guidance_energy_scale_blow_up(comfy_server):
    """The same through the building block: the sampler node's result is checked by the patched MODEL."""
    g = _base()
    g["10"] = _ddim(steps=10, record_kv=False)
    g["11"] = {"class_type": "DragEditFeatureGuidance", "inputs": {
        "model": ["1", 0], "inversion": ["10", 1], "mode": "drag", "energy_scale": 1000.0, "start_percent": 0.0,
        "end_percent": 0.6, "resize_scale": 1.0, "drag": ["6", 0]}}
    g["12"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    g["13"] = _sampler_custom(("11", 0), ("12", 0), ("10", 2), ("10", 0))
    g["14"] = _save(("13", 0), "extreme_fg")
    _fails(comfy_server, g, r"\[Feature Guidance\] input 'energy_scale': the sampler node's result " + BLOWN)


@pytest.mark.slow
def test_sega_momentum_scale_below_one(comfy_server):
    """momentum_scale 10 multiplied SEGA's momentum by 6.4 per step (latent 10^11 x the image's); the widget now
    stops below 1 (ComfyUI refuses the saved value), and the node refuses 1 or more when called directly."""
    g = _base()
    g["10"] = _ledits()
    g["10"]["inputs"]["momentum_scale"] = 10.0
    g["11"] = _save(("10", 1), "extreme_momentum")
    del g["6"]                   # Drag Instructions is an output node: ComfyUI would run it and skip only LEDITS
    with pytest.raises(PromptError, match=r"Value 10.0 bigger than max of 0\.99', 'details': 'momentum_scale'"):
        comfy_server.run_prompt(g)

    from tools.support.node_calls import run_node
    from tools.support import tiny_models
    from dragedit.nodes import NODE_CLASS_MAPPINGS
    from dragedit.nodes._errors import NodeInputError
    for beta, ok in ((0.4, False), (1.0, True)):
        try:
            run_node(NODE_CLASS_MAPPINGS["DragEditSEGAGuidance"], model=tiny_models.sd15(0),
                     concept=tiny_models.conditioning(2), direction="add", scale=5.0, threshold=0.9, warmup=0,
                     cooldown=0, weight=1.0, momentum_scale=1.5, momentum_beta=beta, mode="SEGA")
            assert ok
        except NodeInputError as e:
            assert not ok and "[SEGA Guidance] input 'momentum_scale': is 1.5: from 1 up the momentum grows" in str(e)
