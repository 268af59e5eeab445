"""Property-based fuzzing of the pack's nodes (issue 23): Hypothesis draws drag JSON, widget values across and beyond
their declared ranges, images (sizes 1..96, batches, RGBA) and masks, and runs them through the nodes in-process on
the Shapes Demo Model (run_node, like the executor). Every case must end as: success with finite outputs, a clear
NodeInputError naming the node and one of its inputs, or a value ComfyUI itself refuses before the node runs; never
a raw Python / torch error, NaN output or a peak RSS growth beyond DRAGEDIT_FUZZ_MEMORY_MB (1500).

Profiles (DRAGEDIT_FUZZ_PROFILE): "ci" (default, in `make test`): fixed seed (derandomized), about 320 cases, cost
widgets capped (steps <= 6, iterations <= 2) inside their ranges; "long" (`make fuzz`): random seed, 10x the cases,
larger images and caps. DRAGEDIT_FUZZ_SURVEY=1 records bad cases instead of failing and writes the tally to
out/fuzz/report.json (the figures of the issue's closing note)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_strategies as fz
from tools.support.node_calls import run_node

from dragedit.core.drag_schema import DragInstructions, DragSchemaError
from dragedit.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

PROFILE = os.environ.get("DRAGEDIT_FUZZ_PROFILE", "ci")
SURVEY = os.environ.get("DRAGEDIT_FUZZ_SURVEY", "") not in ("", "0")
LONG = PROFILE == "long"
SCALE = 10 if LONG else 1
CAPS = {"steps": 12 if LONG else 6, "iterations": 6 if LONG else 2, "warmup": 20, "cooldown": 20,
        "min_size": 4096 if LONG else 768}
MAX_SIDE = 128 if LONG else 48
ROOT = Path(__file__).resolve().parents[2]


def fuzz_settings(n: int):
    """Hypothesis settings of one target: n cases per SCALE; fixed seed in the ci profile; no deadline (CPU)."""
    return settings(max_examples=n * SCALE, derandomize=not LONG, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


_ENV: dict = {}


def env() -> dict:
    """The Shapes Demo Model, its prompts and a scratch temp folder, built once per session."""
    if not _ENV:
        import folder_paths
        import nodes as comfy_nodes
        folder_paths.set_temp_directory(tempfile.mkdtemp(prefix="dragedit-fuzz-"))
        model, clip, vae = run_node(NODE_CLASS_MAPPINGS["DragEditShapesDemoModel"])
        enc = comfy_nodes.CLIPTextEncode()
        _ENV.update(model=model, clip=clip, vae=vae, pos=enc.encode(clip, "red circle")[0],
                    neg=enc.encode(clip, "")[0])
    return _ENV


def check(key: str, inputs: dict, widgets: dict | None = None) -> str:
    """Run NODE_CLASS_MAPPINGS[key] on inputs and assert the outcome (or record it in survey mode)."""
    cls = NODE_CLASS_MAPPINGS[key]
    outcome = fz.classify(cls, NODE_DISPLAY_NAME_MAPPINGS[key], inputs, run_node, widgets)
    if outcome == "bad" or sum(fz.TALLY.counts.values()) % 20 == 0:
        write_report()
    if outcome == "bad" and not SURVEY:
        raise AssertionError(json.dumps(fz.TALLY.bad[-1], indent=1))
    return outcome


def drag_value(text: str, size: tuple[int, int], as_object: bool):
    """The DRAG input: parsed instructions when the text is valid and as_object, else the text itself (a script's
    JSON reaching a DRAG input)."""
    if as_object:
        try:
            return DragInstructions.from_json(text, image_size=size)
        except DragSchemaError:
            pass
    return text


def with_drag(strategy_of_image, valid_share: int = 0):
    """(image, drag text) with the text drawn for that image's size; valid_share in 4 draws are well-formed
    instructions (for the methods, which otherwise mostly stop at parsing)."""
    def text(im):
        W, H = im.shape[2], im.shape[1]
        return st.integers(0, 3).flatmap(lambda i: fz.valid_drag_text(W, H) if i < valid_share else fz.drag_text(W, H))
    return strategy_of_image.flatmap(lambda im: st.tuples(st.just(im), text(im)))


def write_report() -> None:
    """Write the tally (survey mode, or whenever DRAGEDIT_FUZZ_REPORT names a file): during the run and at its end."""
    dest = os.environ.get("DRAGEDIT_FUZZ_REPORT") or (str(ROOT / "out" / "fuzz" / "report.json") if SURVEY else "")
    if dest:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_text(json.dumps({"profile": PROFILE, "counts": fz.TALLY.counts,
                                          "tried": sum(fz.TALLY.counts.values()),
                                          "peak_rss_growth_mb": round(fz.TALLY.peak_growth_mb),
                                          "bad": fz.TALLY.bad}, indent=1))


@pytest.fixture(scope="module", autouse=True)
def report():
    """Write the tally after the module, and release what the module cached (its inversions hold K/V: later tests
    count the live K/V stores of the process)."""
    yield
    write_report()
    for _lat, inv in _INVERSIONS.values():
        inv.release()
    _INVERSIONS.clear()
    _ENV.clear()


# ============================================================================================== cheap nodes
@fuzz_settings(150)
@given(case=with_drag(fz.image(max_side=64), 1), use_json_input=st.booleans(), data=st.data())
def test_fuzz_drag_instructions(case, use_json_input, data):
    img, text = case
    mask = data.draw(fz.mask_for(img.shape[1], img.shape[2]))
    inputs = {"image": img, "drag_data": "" if use_json_input else text, "mask": mask}
    if use_json_input:
        inputs["drag_json"] = text
    check("DragInstructions", {k: v for k, v in inputs.items() if v is not None})


@fuzz_settings(50)
@given(case=with_drag(fz.image(max_side=96, max_batch=4, channels=(3, 4)), 2), as_object=st.booleans(),
       tracked=st.booleans(), data=st.data())
def test_fuzz_drag_preview(case, as_object, tracked, data):
    img, text = case
    size = (img.shape[2], img.shape[1])
    widgets = data.draw(fz.widget_values(NODE_CLASS_MAPPINGS["DragEditDragPreview"], CAPS))
    mask = data.draw(fz.mask_for(img.shape[1], img.shape[2]))
    d = drag_value(text, size, as_object)
    inputs = {"image": img, "drag": d, **widgets, "mask": mask, "tracked": d if tracked else None}
    check("DragEditDragPreview", {k: v for k, v in inputs.items() if v is not None}, widgets)


@fuzz_settings(30)
@given(widgets=fz.widget_values(NODE_CLASS_MAPPINGS["DragEditShapesScene"]))
def test_fuzz_shapes_scene(widgets):
    check("DragEditShapesScene", widgets, widgets)


# ============================================================================================== methods on the demo model
@fuzz_settings(30)
@given(case=with_drag(fz.image(max_side=MAX_SIDE, max_batch=2), 3), use_latent=st.booleans(), data=st.data())
def test_fuzz_regiondrag(case, use_latent, data):
    e = env()
    img, text = case
    cls = NODE_CLASS_MAPPINGS["DragEditRegionDrag"]
    widgets = data.draw(fz.widget_values(cls, CAPS))
    mask = data.draw(fz.mask_for(img.shape[1], img.shape[2]))
    src = ({"latent": {"samples": e["vae"].encode(img[..., :3])}} if use_latent else {"image": img, "vae": e["vae"]})
    inputs = {"model": e["model"], "positive": e["pos"], "drag_json": text, **src, **widgets, "mask": mask}
    check("DragEditRegionDrag", {k: v for k, v in inputs.items() if v is not None}, widgets)


@fuzz_settings(25)
@given(img=fz.image(max_side=MAX_SIDE, max_batch=2), channels=st.sampled_from([12, 12, 12, 4]), data=st.data())
def test_fuzz_ddim_inversion(img, channels, data):
    e = env()
    cls = NODE_CLASS_MAPPINGS["DragEditDDIMInversion"]
    widgets = data.draw(fz.widget_values(cls, CAPS))
    samples = e["vae"].encode(img[..., :3]) if channels == 12 else torch.zeros(img.shape[0], 4, 8, 8)
    inputs = {"model": e["model"], "latent": {"samples": samples}, "positive": e["pos"], **widgets}
    check("DragEditDDIMInversion", inputs, widgets)


@fuzz_settings(15)
@given(case=with_drag(fz.image(max_side=min(MAX_SIDE, 40), max_batch=2), 3), as_object=st.booleans(), data=st.data())
def test_fuzz_dragdiffusion(case, as_object, data):
    e = env()
    img, text = case
    cls = NODE_CLASS_MAPPINGS["DragEditDragDiffusion"]
    widgets = data.draw(fz.widget_values(cls, CAPS))
    mask = data.draw(fz.mask_for(img.shape[1], img.shape[2]))
    inputs = {"model": e["model"], "positive": e["pos"], "drag": drag_value(text, (img.shape[2], img.shape[1]),
                                                                             as_object),
              "image": img, "vae": e["vae"], **widgets, "mask": mask}
    check("DragEditDragDiffusion", {k: v for k, v in inputs.items() if v is not None}, widgets)


@fuzz_settings(20)
@given(case=with_drag(fz.image(max_side=min(MAX_SIDE, 40), max_batch=1, channels=(3,)), 3), as_object=st.booleans(),
       data=st.data())
def test_fuzz_dragondiffusion(case, as_object, data):
    e = env()
    img, text = case
    inv_cls = NODE_CLASS_MAPPINGS["DragEditDDIMInversion"]
    try:
        with torch.inference_mode():
            _lat, inversion, _sig = run_node(inv_cls, model=e["model"], positive=e["pos"], steps=3, strength=0.8,
                                             record_kv=False, latent={"samples": e["vae"].encode(img)})
    except Exception:                 # an image the inversion refuses (too large / too small) is its own case
        return
    cls = NODE_CLASS_MAPPINGS["DragEditDragonDiffusion"]
    widgets = data.draw(fz.widget_values(cls, CAPS))
    mask = data.draw(fz.mask_for(img.shape[1], img.shape[2]))
    inputs = {"model": e["model"], "positive": e["pos"], "negative": e["neg"], "inversion": inversion,
              "drag": drag_value(text, (img.shape[2], img.shape[1]), as_object), **widgets, "mask": mask}
    check("DragEditDragonDiffusion", {k: v for k, v in inputs.items() if v is not None}, widgets)


@fuzz_settings(15)
@given(img=fz.image(max_side=min(MAX_SIDE, 40), max_batch=2), data=st.data())
def test_fuzz_ledits(img, data):
    e = env()
    cls = NODE_CLASS_MAPPINGS["DragEditLEDITSEdit"]
    widgets = data.draw(fz.widget_values(cls, CAPS))
    mask = data.draw(fz.mask_for(img.shape[1], img.shape[2]))
    inputs = {"model": e["model"], "vae": e["vae"], "source": e["pos"], "negative": e["neg"], "image": img,
              "concept_1": e["pos"], **widgets, "mask": mask}
    check("DragEditLEDITSEdit", {k: v for k, v in inputs.items() if v is not None}, widgets)


# ============================================================================================== INVERSION consumers
_INVERSIONS: dict = {}


def inversion_of(which_model: str, seed: int, strength: float, record_kv: bool):
    """A DDIM Inversion (3 steps) of scene `seed` on the demo model or on a second load of it ('other': the same
    weights in another model object, which the "made with another model" rule counts as another model), cached."""
    e = env()
    if "other" not in e:
        e["other"] = run_node(NODE_CLASS_MAPPINGS["DragEditShapesDemoModel"])[0]
    key = (which_model, seed, strength, record_kv)
    if key not in _INVERSIONS:
        image = run_node(NODE_CLASS_MAPPINGS["DragEditShapesScene"], seed=seed, shapes="1")[0]
        lat, inv, _sig = run_node(NODE_CLASS_MAPPINGS["DragEditDDIMInversion"],
                                  model=e["model" if which_model == "same" else "other"], positive=e["pos"], steps=3,
                                  strength=strength, record_kv=record_kv,
                                  latent={"samples": e["vae"].encode(image[..., :3])})
        _INVERSIONS[key] = (lat, inv)
    return _INVERSIONS[key]


CONSUMERS = ("DragEditAttentionKVSwap", "DragEditMotionSupervision", "DragEditMemoryBankKV", "DragEditFeatureGuidance",
             "DragEditLatentCopyPaste")


@fuzz_settings(20)
@given(key=st.sampled_from(CONSUMERS), which_model=st.sampled_from(["same", "same", "other"]),
       seed=st.sampled_from([1, 2]), latent_seed=st.sampled_from([1, 2]), strength=st.sampled_from([0.0, 0.5, 1.0]),
       record_kv=st.booleans(), batch=st.integers(1, 3))
def test_fuzz_inversion_consumers(key, which_model, seed, latent_seed, strength, record_kv, batch):
    """Issue 23, classes 10-13 and 18: the nodes that read an INVERSION, given one from another model object, of
    another image (Motion Supervision's latent), at strength 0, without K/V, or with a latent batch."""
    import comfy.samplers
    e = env()
    _lat, inv = inversion_of(which_model, seed, strength, record_kv)
    drag = DragInstructions.from_json("[[8, 16, 20, 16]]", image_size=(32, 32))
    common = {"inversion": inv}
    if key == "DragEditAttentionKVSwap":
        inputs = {"model": e["model"], **common}
    elif key == "DragEditMotionSupervision":
        lat, _ = inversion_of("same", latent_seed, max(strength, 0.5), False)
        inputs = {"model": e["model"], "positive": e["pos"], "drag": drag, "iterations": 1, **common,
                  "latent": {"samples": lat["samples"].repeat(batch, 1, 1, 1)}}
    elif key == "DragEditMemoryBankKV":
        inputs = {"model": e["model"], "mode": "drag", "start_percent": 0.0, "end_percent": 1.0, **common}
    elif key == "DragEditFeatureGuidance":
        inputs = {"model": e["model"], "mode": "drag", "energy_scale": 1.0, "start_percent": 0.0, "end_percent": 0.6,
                  "resize_scale": 1.0, "drag": drag, **common}
    else:
        inputs = {"sampler": comfy.samplers.sampler_object("euler"), "drag": drag, **common}
    check(key, inputs)
