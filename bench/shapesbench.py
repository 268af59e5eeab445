"""ShapesBench: drag / move / resize / recolour / concept edits on procedurally drawn scenes with exact ground truth
(the scene re-rendered with the edit applied), run through the REAL ComfyUI executor with the Shapes Demo Model.

One ComfyUI server for the whole run. Per case and method an API graph is posted:
LoadImage (the rendered scene, saved into the server's input folder) -> Drag Instructions (the case's JSON) ->
method node -> VAE Decode -> SaveImage; the PNG is read back from disk and scored against the ground truth
(bench/shapes_cases.py: centroid error, PSNR / MAE outside the edit region, ghosting, classifier success).
Baselines computed here in numpy/torch: "no edit" and "copy-paste" (pixels moved by the case's own handle/target
regions). Methods whose node class is not registered in /object_info are listed as missing.

Prints one table (method x case kind) and writes out/bench/shapesbench.json (settings, per-case records) and
contact sheets out/bench/shapesbench/<method>.png (input | ground truth | output, first cases of each kind).

    python -m bench.shapesbench                       # full run (108 cases, every method; ~12 min, 1 CPU thread)
    python -m bench.shapesbench --cases 14 --methods regiondrag,ledits
    python -m bench.shapesbench --steps 10 --steps dragondiffusion=12 --set dragdiffusion.iterations=20
    python -m bench.shapesbench --seed 101 --methods ledits --kinds concept_recolour,concept_remove --cases 20
                                                      # another drawn case set (generalisation: docs/generalisation.md)
    python -m bench.shapesbench --model dit --methods regiondrag --set regiondrag.dit_layers=vital
                                                      # the demo DiT (methods that take DiTs) -> shapesbench_dit.*
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from bench import _util  # noqa: E402

NAME = "shapesbench"
BASELINES = ("no_edit", "copy_paste")
BASE_NODES = ("DragEditShapesDemoModel", "LoadImage", "CLIPTextEncode", "VAEDecode", "SaveImage")  # every graph


# ======================================================================================================== methods
@dataclass
class Method:
    """A method node under test: the node classes it needs, which case kinds it takes (kind -> how: the
    instruction form or mode), its settings (steps etc.) and the graph builder."""
    name: str
    nodes: tuple[str, ...]
    kinds: dict[str, str]
    settings: dict
    build: Callable[..., dict] = field(repr=False)
    note: str = ""
    models: tuple[str, ...] = ("unet",)          # Shapes Demo Model designs the method runs on (--model)


def _base(case, files: dict) -> dict:
    """Nodes every graph shares: the demo model (design files["model"], default the UNet), the scene image, the
    source prompt and an empty negative."""
    design = files.get("model", "unet")
    return {
        "model": {"class_type": "DragEditShapesDemoModel", "inputs": {"design": design} if design != "unet" else {}},
        "load": {"class_type": "LoadImage", "inputs": {"image": files["image"]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": case.prompt, "clip": ["model", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["model", 1]}},
    }


def _drag_node(case, form: str) -> dict:
    return {"class_type": "DragInstructions", "inputs": {"image": ["load", 0], "drag_data": case.drag_json(form)}}


def _decode_save(g: dict, latent_ref: list, prefix: str) -> dict:
    g["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": latent_ref, "vae": ["model", 2]}}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": prefix}}
    return g


def _graph_regiondrag(case, how: str, s: dict, files: dict, prefix: str) -> dict:
    g = _base(case, files)
    g["drag"] = _drag_node(case, how)
    g["edit"] = {"class_type": "DragEditRegionDrag", "inputs": {
        "model": ["model", 0], "positive": ["pos", 0], "steps": s["steps"], "strength": s["strength"],
        "noise_scale": s["noise_scale"], "seed": s["seed"], "drag": ["drag", 0], "image": ["load", 0],
        "vae": ["model", 2], "mask": ["drag", 1], "paste_end": s["paste_end"],
        "paste_every_step": s["paste_every_step"], "kv_dtype": s["kv_dtype"], "dit_layers": s["dit_layers"],
        "reencode_keys": s["reencode_keys"]}}
    return _decode_save(g, ["edit", 0], prefix)


def dragdiffusion_mask(case, margin: int):
    """The editable mask a user paints for DragDiffusion: the box around the object's old and new pixels, grown by
    `margin` px (bool [H, W]); None when margin < 0 (no mask)."""
    import torch
    from bench import shapes_cases as S
    from dragedit.demo.shapes import renderer as R
    if margin < 0:
        return None
    m = R.coverage(case.shape, S.SIZE) > 1e-3
    if case.new_shape is not None:
        m |= R.coverage(case.new_shape, S.SIZE) > 1e-3
    ys, xs = torch.nonzero(m, as_tuple=True)
    box = torch.zeros_like(m)
    box[max(int(ys.min()) - margin, 0):int(ys.max()) + margin + 1,
        max(int(xs.min()) - margin, 0):int(xs.max()) + margin + 1] = True
    return box


def _dragdiffusion_drag_json(case, how: str, margin: int) -> str:
    """The case's point pairs plus (margin >= 0) the editable box mask, as Drag Instructions JSON."""
    from bench import shapes_cases as S
    from dragedit.core.drag_schema import DragInstructions, rle_encode
    m = dragdiffusion_mask(case, margin)
    if m is None:
        return case.drag_json(how)
    d = DragInstructions.coerce(case.drag_json(how))
    d = DragInstructions(points=d.points, image_size=d.image_size, mask_counts=rle_encode(m.float(), (S.SIZE, S.SIZE)))
    d.validate()
    return d.to_json()


def _graph_dragdiffusion(case, how: str, s: dict, files: dict, prefix: str) -> dict:
    g = _base(case, files)
    g["drag"] = {"class_type": "DragInstructions",
                 "inputs": {"image": ["load", 0], "drag_data": _dragdiffusion_drag_json(case, how, s["mask_margin"])}}
    g["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0], "vae": ["model", 2]}}
    model = ["model", 0]
    if s["lora_steps"] > 0:      # DragDiffusion's identity LoRA with ComfyUI's own Train LoRA + Load LoRA Model
        g["rep"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["enc", 0], "amount": s["lora_batch"]}}
        # Train LoRA (0.3.75) fails on a single LATENT input (multi_res unset): give it a list of batch-1 latents
        g["reb"] = {"class_type": "RebatchLatents", "inputs": {"latents": ["rep", 0], "batch_size": 1}}
        g["train"] = {"class_type": "TrainLoraNode", "inputs": {
            "model": ["model", 0], "latents": ["reb", 0], "positive": ["pos", 0], "batch_size": s["lora_batch"],
            "grad_accumulation_steps": 1, "steps": s["lora_steps"], "learning_rate": s["lora_lr"],
            "rank": s["lora_rank"], "optimizer": "AdamW", "loss_function": "MSE", "seed": 0,
            "training_dtype": "fp32", "lora_dtype": "fp32", "algorithm": "LoRA", "gradient_checkpointing": False,
            "existing_lora": "[None]"}}
        g["lora"] = {"class_type": "LoraModelLoader",
                     "inputs": {"model": ["model", 0], "lora": ["train", 1], "strength_model": 1.0}}
        model = ["lora", 0]
    g["edit"] = {"class_type": "DragEditDragDiffusion", "inputs": {
        "model": model, "latent": ["enc", 0], "positive": ["pos", 0], "drag": ["drag", 0], "mask": ["drag", 1],
        "steps": s["steps"], "strength": s["strength"], "iterations": s["iterations"],
        "learning_rate": s["learning_rate"], "r_m": s["r_m"], "r_p": s["r_p"], "lam": s["lam"],
        "feature_block": s["feature_block"], "reference_kv": s["reference_kv"], "threshold": s["threshold"]}}
    return _decode_save(g, ["edit", 0], prefix)


def _graph_dragondiffusion(case, how: str, s: dict, files: dict, prefix: str) -> dict:
    mode, _, form = how.partition(":")
    g = _base(case, files)
    g["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0], "vae": ["model", 2]}}
    g["inv"] = {"class_type": "DragEditDDIMInversion", "inputs": {
        "model": ["model", 0], "latent": ["enc", 0], "positive": ["pos", 0], "steps": s["steps"],
        "strength": s["strength"], "record_kv": True, "negative": ["neg", 0], "cfg": s["inv_cfg"]}}
    inputs = {"model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0], "inversion": ["inv", 1],
              "mode": mode, "cfg": s["cfg"],
              "energy_scale": s["energy_scale"] if mode == "move" else s["drag_energy_scale"],  # drag/appearance
              "resize_scale": float(case.scale) if mode == "move" else 1.0, "init_paste": s["init_paste"],
              "seed": s["seed"], "center_features": s["center_features"], "time_travel": s["time_travel"],
              "regional_sde": s["regional_sde"], "vacate_noise": s["vacate_noise"]}
    if mode in ("drag", "move"):
        g["drag"] = _drag_node(case, form)
        inputs.update(drag=["drag", 0], mask=["drag", 1])
    else:  # appearance: the object's box takes the look of the reference object's box, same image
        g["mask"] = {"class_type": "LoadImageMask", "inputs": {"image": files["mask"], "channel": "red"}}
        g["ref_mask"] = {"class_type": "LoadImageMask", "inputs": {"image": files["ref_mask"], "channel": "red"}}
        inputs.update(mask=["mask", 0], ref_mask=["ref_mask", 0], reference=["inv", 1])
    g["edit"] = {"class_type": "DragEditDragonDiffusion", "inputs": inputs}
    return _decode_save(g, ["edit", 0], prefix)


def _graph_ledits(case, how: str, s: dict, files: dict, prefix: str) -> dict:
    """how "words": the case's concepts (SEGA add / remove); with concept_words "scene" the concepts are whole
    scenes (add the target scene's words, remove the input scene's, so that what both share cancels); with
    concept_target also the target prompt (the scene as it should become: LEDITS' prompt switch plus concepts).
    how "target": no concept, the target prompt alone (removal by prompt switch: the remaining shapes' words), at
    skip `remove_skip`."""
    g = _base(case, files)
    skip = s.get("remove_skip", s["skip"]) if how == "target" else s["skip"]
    inputs = {"model": ["model", 0], "vae": ["model", 2], "source": ["pos", 0], "negative": ["neg", 0],
              "steps": s["steps"], "skip": skip, "source_cfg": s["source_cfg"], "target_cfg": s["target_cfg"],
              "mode": s["mode"], "seed": s["seed"], "threshold": s["threshold"], "warmup": s["warmup"],
              "momentum_scale": s["momentum_scale"], "momentum_beta": s["momentum_beta"], "image": ["load", 0]}
    for i in (1, 2, 3):
        inputs[f"direction_{i}"], inputs[f"scale_{i}"] = "add", s["scale"]
    if how == "target" or (how == "words" and s.get("concept_target")):
        from dragedit.demo.shapes import renderer
        g["tgt"] = {"class_type": "CLIPTextEncode", "inputs": {"text": renderer.prompt(case.target),
                                                               "clip": ["model", 1]}}
        inputs["target"] = ["tgt", 0]
    concepts = case.concepts[:3] if how == "words" else ()
    if how == "words" and s.get("concept_words") == "scene":   # whole scenes: add the target's, remove the input's
        from dragedit.demo.shapes import renderer
        concepts = ((renderer.prompt(case.target), "add"), (case.prompt, "remove"))
    for i, (words, direction) in enumerate(concepts, 1):
        g[f"c{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": words, "clip": ["model", 1]}}
        inputs[f"concept_{i}"] = [f"c{i}", 0]
        inputs[f"direction_{i}"] = direction
    g["edit"] = {"class_type": "DragEditLEDITSEdit", "inputs": inputs}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["edit", 0], "filename_prefix": prefix}}
    return g


def methods() -> list[Method]:
    """The method nodes under test with their default settings: those of the example workflows (workflows/*.json);
    a full run (108 cases) took 11.5 min on one thread of a shared 2-core CPU."""
    ledits = dict(steps=20, skip=2, source_cfg=3.5, target_cfg=3.5, seed=0, scale=10.0, threshold=0.95, warmup=2,
                  momentum_scale=0.1, momentum_beta=0.4, remove_skip=1, concept_target=False,
                  concept_words="scene")
    word_kinds = {"concept_recolour": "words", "concept_remove": "words", "recolour": "words"}
    target_kinds = dict(word_kinds, concept_remove="target")  # remove by the target prompt of what remains
    return [
        Method("regiondrag", ("DragEditRegionDrag", "DragInstructions"),
               {"point_drag": "points", "region_drag": "region", "move": "region", "resize": "region"},
               dict(steps=20, strength=0.5, noise_scale=1.0, seed=42, paste_end=0.2, paste_every_step=False,
                    kv_dtype="float16", dit_layers="all", reencode_keys=True), _graph_regiondrag,
               "RegionDrag all-in-one; points move a disc of one latent cell; on the DiT: FireFlow inversion, "
               "K/V of moved tokens re-encoded (dit_layers / reencode_keys: DiT only)", models=("unet", "dit")),
        Method("dragdiffusion", ("DragEditDragDiffusion", "DragInstructions"),
               {"point_drag": "points", "move": "points", "resize": "points"},
               dict(steps=50, strength=0.5, iterations=80, learning_rate=0.01, r_m=1, r_p=3, lam=0.1,
                    feature_block=-2, reference_kv=True, threshold=2.0, mask_margin=0,
                    lora_steps=0, lora_batch=4, lora_rank=16, lora_lr=0.0005), _graph_dragdiffusion,
               "DragDiffusion all-in-one; point pairs only (move: centre pair, resize: two edge pairs); editable "
               "mask = box around the object's old and new pixels grown by mask_margin px (-1: none); "
               "lora_steps > 0: identity LoRA first (Train LoRA on lora_batch copies of the image + Load LoRA Model)"),
        Method("dragondiffusion", ("DragEditDragonDiffusion", "DragEditDDIMInversion", "DragInstructions"),
               {"point_drag": "drag:points", "region_drag": "move:move", "move": "move:move", "resize": "move:move",
                "recolour": "appearance"},
               dict(steps=50, strength=0.6, cfg=1.0, energy_scale=20.0, drag_energy_scale=5.0, init_paste=True,
                    seed=0, inv_cfg=1.0, center_features=False, time_travel=False, regional_sde=False,
                    vacate_noise=1.0),
               _graph_dragondiffusion,
               "DDIM Inversion (record_kv) + DragonDiffusion: drag mode for points, move mode (object mask + centre "
               "pair, resize_scale) for regions/moves/resizes, appearance mode (reference = same image) for recolour"),
        Method("ledits", ("DragEditLEDITSEdit",), target_kinds, dict(ledits, mode="SEGA"), _graph_ledits,
               "LEDITS Edit, SEGA mode: concepts add the scene as it should become + remove the scene as it is "
               "('blue square and green circle' - 'red square and green circle'); removal by the target prompt of "
               "the remaining shapes (no concept)"),
        Method("ledits++", ("DragEditLEDITSEdit",), word_kinds,
               dict(ledits, mode="LEDITS++", scale=15.0, threshold=0.8, warmup=0, concept_words="object"),
               _graph_ledits,
               "LEDITS Edit, LEDITS++ mode (inverts with the empty prompt; masked concepts, no prompt CFG); removal "
               "by a 'remove' concept (a target prompt has no effect without prompt CFG)"),
    ]


BASELINE_KINDS = {
    "no_edit": ("point_drag", "region_drag", "move", "resize", "recolour", "concept_recolour", "concept_remove"),
    "copy_paste": ("point_drag", "region_drag", "move", "resize", "recolour"),
}


def apply_overrides(ms: Sequence[Method], steps: Sequence[str] = (), sets: Sequence[str] = ()) -> None:
    """--steps N | method=N and --set method.key=value, applied in place (ValueError naming a bad override)."""
    by = {m.name: m for m in ms}
    for item in steps:
        name, _, val = item.rpartition("=")
        if name and name not in by:
            raise ValueError(f"--steps {item}: no method {name!r} (methods: {', '.join(by)})")
        try:
            n = int(val)
        except ValueError:
            raise ValueError(f"--steps {item}: expected N or method=N with a whole number N") from None
        for m in ([by[name]] if name else ms):
            m.settings["steps"] = n
    for item in sets:
        key, _, val = item.partition("=")
        name, _, k = key.partition(".")
        if name not in by or k not in by[name].settings:
            raise ValueError(f"--set {item}: expected method.key=value with a known method and setting")
        old = by[name].settings[k]
        by[name].settings[k] = (val.lower() in ("1", "true", "yes") if isinstance(old, bool)
                                else type(old)(val) if isinstance(old, (int, float)) else val)


# ======================================================================================================== running
def _png_write(path: Path, arr) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _png_read(path: Path):
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _exec_seconds(entry: dict) -> Optional[float]:
    """Server-side execution time of a finished prompt (execution_start -> execution_success), seconds."""
    t = {ev: data.get("timestamp") for ev, data in entry.get("status", {}).get("messages", [])}
    if t.get("execution_start") is not None and t.get("execution_success") is not None:
        return (t["execution_success"] - t["execution_start"]) / 1000.0
    return None


def write_inputs(server: Any, cases: Sequence, S: Any, model: str = "unet") -> dict:
    """Save each case's scene (and recolour masks) into the server's input folder; {case id: {role: filename}},
    with the demo model design under "model"."""
    import torch
    inp = Path(server.base) / "input"
    files = {}
    for c in cases:
        f = {"image": f"shapesbench_{c.id}.png", "model": model}
        _png_write(inp / f["image"], S.to_uint8_hwc(S.input_image(c)))
        if c.kind == "recolour":
            for role, m in (("mask", c.handle_mask()), ("ref_mask", c.ref_mask())):
                f[role] = f"shapesbench_{c.id}_{role}.png"
                _png_write(inp / f[role], S.to_uint8_hwc(m.float()[None].expand(3, -1, -1).contiguous()))
        files[c.id] = f
    return files


def warmup(server: Any, case: Any, files: dict, S: Any) -> dict:
    """Load the model once (not timed in any method) and check the VAE round trip through the executor."""
    from bench import shapes_scoring as M
    g = _base(case, files)
    g["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0], "vae": ["model", 2]}}
    g = _decode_save(g, ["enc", 0], "shapesbench/warmup")
    del g["pos"], g["neg"]
    t0 = time.perf_counter()
    entry = server.run_prompt(g)
    out = S.from_uint8_hwc(_png_read(server.output_images(entry)[0]))
    inp = S.input_image(case)
    # SaveImage truncates 255·x to uint8, so float rounding in the VAE can cost one level on some pixels
    return {"vae_roundtrip": {"max_abs_levels": round(float((out - inp).abs().max()) * 255), "psnr": M.psnr(out, inp)},
            "warmup_s": round(time.perf_counter() - t0, 2)}


def run_method_case(server: Any, m: Method, case: Any, files: dict, S: Any, timeout: float) -> dict:
    """One (method, case): post the graph, read the PNG, score it. A failed prompt gives status 'error'."""
    from bench import shapes_scoring as M
    from tools.support.comfy_server import PromptError
    how = m.kinds[case.kind]
    g = m.build(case, how, m.settings, files, f"shapesbench/{m.name.replace('+', 'p')}_{case.id}")
    rec = {"method": m.name, "case": case.id, "kind": case.kind, "how": how}
    t0 = time.perf_counter()
    try:
        entry = server.run_prompt(g, timeout=timeout)
    except (PromptError, TimeoutError, RuntimeError) as e:   # rejected / failed prompt, time-out, dead server
        return {**rec, "status": "error", "error": f"{type(e).__name__}: {str(e)[:400]}",
                "seconds": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    paths = server.output_images(entry)
    if not paths:
        return {**rec, "status": "error", "error": "no image saved", "seconds": wall}
    out = S.from_uint8_hwc(_png_read(paths[0]))
    if tuple(out.shape) != (3, S.SIZE, S.SIZE):
        return {**rec, "status": "error", "error": f"output image has shape {tuple(out.shape)}", "seconds": wall}
    sec = _exec_seconds(entry)
    return {**rec, "status": "ok", "seconds": sec if sec is not None else wall, "client_seconds": wall,
            **M.case_metrics(case, out), "_image": out}


def run_baseline(name: str, case: Any, S: Any) -> dict:
    """A baseline on one case, computed here on the quantized input image."""
    from bench import shapes_scoring as M
    rec = {"method": name, "case": case.id, "kind": case.kind, "how": "numpy"}
    t0 = time.perf_counter()
    img = S.input_image(case)
    out = M.no_edit(case, img) if name == "no_edit" else M.copy_paste(case, img)
    sec = time.perf_counter() - t0
    out = S.quantize(out)
    return {**rec, "status": "ok", "seconds": sec, **M.case_metrics(case, out), "_image": out}


def run_bench(server: Any, cases: Sequence, ms: Sequence[Method], timeout: float = 600.0,
              log: Callable[[str], None] = print, checkpoint: Optional[Callable[[list], None]] = None,
              model: str = "unet") -> tuple[list[dict], dict]:
    """Run the baselines and every method on every case it takes, on a started ComfyServer. Returns the per-case
    records (images under '_image') and facts {missing, vae_roundtrip, warmup_s}; checkpoint(records) is called
    after each method (partial results survive an interrupted run)."""
    from bench import shapes_cases as S
    info = server.get("/object_info")
    facts: dict = {"missing": {}}
    present = []
    for m in ms:
        lacking = [n for n in BASE_NODES + m.nodes if n not in info]
        if lacking:
            facts["missing"][m.name] = f"node class(es) not registered: {', '.join(lacking)}"
        else:
            present.append(m)
    files = write_inputs(server, cases, S, model)
    if "DragEditShapesDemoModel" in info and cases:
        facts.update(warmup(server, cases[0], files[cases[0].id], S))
    recs: list[dict] = []
    for name in BASELINES:
        for c in cases:
            if c.kind in BASELINE_KINDS[name]:
                recs.append(run_baseline(name, c, S))
    for m in present:
        todo = [c for c in cases if c.kind in m.kinds]
        t_m = time.perf_counter()
        for i, c in enumerate(todo):
            if getattr(server, "proc", None) is not None and server.proc.poll() is not None:
                recs.append({"method": m.name, "case": c.id, "kind": c.kind, "how": m.kinds[c.kind],
                             "status": "error", "error": "the ComfyUI server is no longer running", "seconds": 0.0})
                continue
            r = run_method_case(server, m, c, files[c.id], S, timeout)
            recs.append(r)
            if r["status"] != "ok":
                log(f"[{m.name}] {c.id}: ERROR {r['error'][:200]}")
            else:
                ce = r.get("centroid_err")
                log(f"[{m.name}] {i + 1}/{len(todo)} {c.id}: {r['seconds']:.1f}s"
                    + (f" centroid {ce:.2f}px" if ce is not None else "")
                    + (f" success {r['success']}" if "success" in r else "")
                    + f" psnr_out {r['psnr_out']:.1f}")
        log(f"[{m.name}] {len(todo)} cases in {time.perf_counter() - t_m:.0f}s")
        if checkpoint is not None:
            checkpoint(recs)
    return recs, facts


# ======================================================================================================== table
def _mean(xs: list) -> Optional[float]:
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(recs: Sequence[dict], ms: Sequence[Method], missing: dict, kinds: Sequence[str]) -> list[dict]:
    """Rows method x kind: n, fail, lost, cen err, <1px, <2px, area err, PSNR out, MAE out, ghost, kept,
    concept ok, s/edit. Missing methods get one row saying so."""
    from bench import shapes_cases as S
    rows = []
    for name in list(BASELINES) + [m.name for m in ms]:
        if name in missing:
            rows.append({"method": name, "kind": f"MISSING ({missing[name]})", "n": 0})
            continue
        for k in kinds:
            rs = [r for r in recs if r["method"] == name and r["kind"] == k]
            if not rs:
                continue
            ok = [r for r in rs if r["status"] == "ok"]
            row: dict = {"method": name, "kind": k, "n": len(rs), "fail": len(rs) - len(ok)}
            geo = k in S.GEOMETRIC
            errs = [r.get("centroid_err") for r in ok] if geo else []
            row["lost"] = sum(1 for e in errs if e is None) if geo else None
            row["cen err"] = _mean(errs) if geo else None
            row["<1px"] = (sum(1 for e in errs if e is not None and e < 1.0) / len(rs)) if geo else None
            row["<2px"] = (sum(1 for e in errs if e is not None and e < 2.0) / len(rs)) if geo else None
            row["area err"] = _mean([r.get("area_err") for r in ok]) if geo else None
            row["PSNR out"] = _mean([r.get("psnr_out") for r in ok])
            row["MAE out"] = _mean([r.get("mae_out") for r in ok])
            row["ghost"] = _mean([r.get("ghost") for r in ok])
            row["kept"] = _mean([r.get("kept") for r in ok]) if geo else None
            row["concept ok"] = (sum(1 for r in ok if r.get("success")) / len(rs)) if not geo else None
            row["s/edit"] = _mean([r.get("seconds") for r in ok])
            rows.append({k: (round(v, DECIMALS.get(k, 3)) if isinstance(v, float) else v) for k, v in row.items()})
    return rows


DECIMALS = {"cen err": 2, "<1px": 2, "<2px": 2, "area err": 2, "PSNR out": 1, "MAE out": 4, "ghost": 3, "kept": 2,
            "concept ok": 2, "s/edit": 3}


def contact_sheets(recs: Sequence[dict], cases: Sequence, folder: Path, per_kind: int = 3) -> list[Path]:
    """Per method a PNG: rows of (input | ground truth | output) x4 for the first `per_kind` cases of each kind."""
    import torch
    from bench import shapes_cases as S
    chosen = []
    for k in S.KINDS:
        chosen += [c for c in cases if c.kind == k][:per_kind]
    by = {(r["method"], r["case"]): r for r in recs}
    paths = []
    for name in dict.fromkeys(r["method"] for r in recs):
        rows = []
        for c in chosen:
            r = by.get((name, c.id))
            if r is None:
                continue
            out = r.get("_image")
            out = torch.zeros(3, S.SIZE, S.SIZE) if out is None else out
            rows.append(torch.cat([S.input_image(c), S.gt_image(c), out], dim=2))
        if not rows:
            continue
        sheet = torch.nn.functional.interpolate(torch.cat(rows, dim=1)[None], scale_factor=4, mode="nearest")[0]
        p = folder / f"{name.replace('+', 'p')}.png"
        _png_write(p, S.to_uint8_hwc(sheet))
        paths.append(p)
    return paths


# ======================================================================================================== CLI
def weights_info(model: str = "unet") -> dict:
    """Which shapes weights the server loads for the design `model` (path, size, mtime, sha256 prefix)."""
    from dragedit.demo.shapes import model as shapes_model
    from dragedit.nodes import shapes_demo
    p = shapes_model.default_weights() if model == "unet" else shapes_demo.DIT_WEIGHTS
    if not p.exists():
        return {"path": str(p), "present": False}
    h = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    st = p.stat()
    mtime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
    return {"path": str(p), "bytes": st.st_size, "mtime": mtime, "sha256": h}


def select_cases(all_cases: Sequence, n: Optional[int], kinds: Optional[Sequence[str]] = None) -> list:
    """The first n cases of the stratified order (after an optional kind filter)."""
    cs = [c for c in all_cases if not kinds or c.kind in kinds]
    return cs[:n] if n else cs


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--cases", type=int, default=None,
                    help="first N cases of the stratified order (every kind from N=7)")
    ap.add_argument("--kinds", default="", help="comma list of case kinds to keep")
    ap.add_argument("--methods", default="", help="comma list of methods (default all); baselines always run")
    ap.add_argument("--steps", action="append", default=[], help="N (all methods) or method=N; repeatable")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="method.key=value; repeatable")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per prompt")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the bench process and the server")
    ap.add_argument("--model", choices=("unet", "dit"), default="unet",
                    help="Shapes Demo Model design: unet (v1) or dit (the FLUX demo; methods that take DiTs only)")
    ap.add_argument("--name", default=None, help="output name under out/bench/ (default shapesbench[_dit])")
    ap.add_argument("--sheet", type=int, default=3, help="cases per kind in the contact sheets (0 = none)")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the drawn case set (default: the public seed, bench/shapes_cases.py SEED)")
    args = ap.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    _util.setup()
    from bench import shapes_cases as S
    from tools.support.comfy_server import ComfyServer

    ms = [m for m in methods() if args.model in m.models]
    known = [m.name for m in ms]
    args.name = args.name or (NAME if args.model == "unet" else f"{NAME}_{args.model}")
    if args.methods:
        want = [w.strip() for w in args.methods.split(",") if w.strip() and w.strip() not in BASELINES]
        bad = [w for w in want if w not in known]
        if bad:
            ap.error(f"unknown method(s) {bad} for --model {args.model}; known: {known} (baselines "
                     f"{list(BASELINES)} always run)")
        ms = [m for m in ms if m.name in want]
    try:
        apply_overrides(ms, args.steps, args.sets)
    except ValueError as e:
        ap.error(str(e))
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in S.KINDS]
    if bad:
        ap.error(f"unknown kind(s) {bad}; known: {list(S.KINDS)}")
    seed = S.SEED if args.seed is None else args.seed
    all_cases = S.build_cases(seed)
    cases = select_cases(all_cases, args.cases, kinds)

    weights = weights_info(args.model)          # before the server loads them (another job may replace the file later)
    t0 = time.perf_counter()
    server = ComfyServer(extra_nodes=False).start()
    try:
        partial = _util.OUT / f"{args.name}.partial.json"

        def checkpoint(rs: list) -> None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rs],
                                          indent=1, default=str))

        recs, facts = run_bench(server, cases, ms, timeout=args.timeout, log=lambda s: print(s, flush=True),
                                checkpoint=checkpoint, model=args.model)
    finally:
        server.cleanup()
    total = time.perf_counter() - t0

    present_kinds = [k for k in S.KINDS if any(c.kind == k for c in cases)]
    rows = summarize(recs, ms, facts["missing"], present_kinds)
    sheets = contact_sheets(recs, cases, _util.OUT / args.name, args.sheet) if args.sheet else []
    extra = {
        "device": _util.device_name(),
        "model": args.model,
        "weights": weights,
        "cases": f"{len(cases)} of {len(all_cases)} (case set {S.fingerprint(all_cases)}, seed {seed})",
        "missing": facts["missing"] or "none",
        "vae_roundtrip (LoadImage -> VAE Encode -> VAE Decode -> SaveImage)": facts.get("vae_roundtrip"),
        "total_s": round(total, 1),
        "settings": {m.name: m.settings for m in ms},
        "sheets": [str(p) for p in sheets],
    }
    path = _util.report(args.name, rows, extra)
    data = json.loads(path.read_text())
    data["methods"] = {m.name: {"nodes": list(m.nodes), "kinds": m.kinds, "settings": m.settings, "note": m.note}
                       for m in ms}
    data["metrics"] = {
        "cen err": "mean centroid error (px) of the edited object vs the ground truth's measured centroid, over "
                   "cases where the object's colour is found; lost = not found",
        "<1px/<2px": "share of cases (all run, lost and failed count as misses) with centroid error under 1 / 2 px",
        "area err": "mean |area / area_gt - 1| of the object's colour",
        "PSNR out/MAE out": f"vs ground truth outside the edit region (object old ∪ new, grown {S.EDIT_DILATE} px); "
                            f"PSNR capped at {S.PSNR_CAP} dB",
        "ghost": "mean coverage of the object's old colour where it must be gone (old core outside the new place; "
                 f"whole old core for recolour/remove); coverage < {S.GHOST_FLOOR} counts 0",
        "kept": "share of cases where the classifier finds the object's colour and kind at its new place",
        "concept ok": "share of cases where the classifier finds the new colour + kind (recolour) or nothing "
                      "(remove) at the object's place, and the other shapes intact",
        "s/edit": "server-side execution seconds per prompt (model already loaded); baselines: in-process",
    }
    data["case_records"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in recs]
    data["case_set"] = [c.to_dict() for c in cases]
    path.write_text(json.dumps(data, indent=1, default=str))
    partial.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
