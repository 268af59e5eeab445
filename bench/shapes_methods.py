"""ShapesBench's methods: the method nodes under test, the API graph each case is posted as, and their default
settings (those of the example workflows). bench/shapesbench.py runs and scores them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

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
    design_settings: dict = field(default_factory=dict)   # design -> settings that differ on it (e.g. "dit")

    def for_design(self, design: str) -> "Method":
        """This method with the settings it uses on the Shapes Demo Model design `design`."""
        return Method(self.name, self.nodes, self.kinds, {**self.settings, **self.design_settings.get(design, {})},
                      self.build, self.note, self.models, self.design_settings)


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
    scenes (add the target scene's words, remove the input scene's, so that what both share cancels); with "diff"
    the input scene is the negative and the target scene the one concept (ε(target) − ε(input), thresholded once); with
    concept_target also the target prompt (the scene as it should become: LEDITS' prompt switch plus concepts).
    how "target": no concept, the target prompt alone (removal by prompt switch: the remaining shapes' words), at
    skip `remove_skip`."""
    g = _base(case, files)
    skip = s.get("remove_skip", s["skip"]) if how == "target" else s["skip"]
    steps = s.get("remove_steps", s["steps"]) if how == "target" else s["steps"]
    inputs = {"model": ["model", 0], "vae": ["model", 2], "source": ["pos", 0], "negative": ["neg", 0],
              "steps": steps, "skip": skip, "source_cfg": s["source_cfg"], "target_cfg": s["target_cfg"],
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
    if how == "words" and s.get("concept_words") == "diff":    # the input scene as the negative, the target scene added
        from dragedit.demo.shapes import renderer
        g["neg"]["inputs"]["text"] = case.prompt
        concepts = ((renderer.prompt(case.target), "add"),)
    for i, (words, direction) in enumerate(concepts, 1):
        g[f"c{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": words, "clip": ["model", 1]}}
        inputs[f"concept_{i}"] = [f"c{i}", 0]
        inputs[f"direction_{i}"] = direction
        if direction == "remove" and s.get("remove_scale") is not None:
            inputs[f"scale_{i}"] = s["remove_scale"]
    if how == "words" and s.get("keep_structure"):   # flow DiTs: the source's attention maps in single blocks
        inputs["keep_structure"] = True
    if how == "words" and s.get("user_mask") == "box" and "mask" in files:   # the object's box as the user's mask
        g["umask"] = {"class_type": "LoadImageMask", "inputs": {"image": files["mask"], "channel": "red"}}
        inputs["mask"] = ["umask", 0]
    g["edit"] = {"class_type": "DragEditLEDITSEdit", "inputs": inputs}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["edit", 0], "filename_prefix": prefix}}
    return g


def methods() -> list[Method]:
    """The method nodes under test with their default settings: those of the example workflows (workflows/*.json);
    a full run (108 cases) took 11.5 min on one thread of a shared 2-core CPU."""
    # LEDITS recolour as the example workflow does it: the object's box as the mask, the object's words, threshold 0.9,
    # warm-up 4 (unmasked, the earlier recipe: user_mask=none, concept_words=scene, threshold=0.95, warmup=8)
    ledits = dict(steps=40, skip=4, source_cfg=3.5, target_cfg=3.5, seed=0, scale=14.0, threshold=0.9, warmup=4,
                  momentum_scale=0.1, momentum_beta=0.4, remove_steps=20, remove_skip=1, concept_target=False,
                  concept_words="object", remove_scale=None, user_mask="box")    # remove_scale None: the remove concept at `scale`
    ledits20 = dict(steps=20, scale=10.0, warmup=2)    # the demo DiT's (docs/flow.md)
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
               "LEDITS Edit, SEGA mode: LEDITS Edit's mask = the object's box (user_mask=box; the sampler keeps the "
               "image outside it), concepts add the object as it should become + remove it as it is ('blue square' - "
               "'red square'; concept_words=scene: whole scenes); removal by the target prompt of the remaining "
               "shapes (no concept, no mask); on the DiT: the flow path (edit-friendly flow inversion, SEGA on the "
               "velocity; recolours with keep_structure: the source's attention maps in the single blocks) at "
               "docs/flow.md's settings", models=("unet", "dit"),
               design_settings={"dit": dict(ledits20, skip=2, scale=14.0, threshold=0.8, warmup=1, source_cfg=1.0,
                                            target_cfg=1.0, remove_skip=4, keep_structure=True)}),
        Method("ledits++", ("DragEditLEDITSEdit",), word_kinds,
               dict(ledits, steps=20, skip=2, mode="LEDITS++", scale=15.0, threshold=0.8, warmup=0,
                    concept_words="object", user_mask="none"),
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
            if "remove_steps" in m.settings:
                m.settings["remove_steps"] = n
    for item in sets:
        key, _, val = item.partition("=")
        name, _, k = key.partition(".")
        if name not in by or k not in by[name].settings:
            raise ValueError(f"--set {item}: expected method.key=value with a known method and setting")
        old = by[name].settings[k]
        by[name].settings[k] = (val.lower() in ("1", "true", "yes") if isinstance(old, bool)
                                else type(old)(val) if isinstance(old, (int, float))
                                else float(val) if old is None else val)    # None: an optional number
