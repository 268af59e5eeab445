"""Write the real-image example workflows (SD1.5 and SDXL checkpoints) to example_workflows/.

Widget values are laid out from the server's /object_info (the order the frontend uses), so a change to a node's
inputs is picked up by running this again:
    .venv/bin/python -m tools.sd_workflows [--object-info FILE] [--sizes FILE]
--sizes: a JSON {node type: [w, h]} of minimum node sizes measured in the browser (tools/measure_nodes.py); without it
the sizes are estimates. The layout is columns of nodes stacked top to bottom, groups around each stage.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]

from tools import example_image  # noqa: E402
from tools.support import examples  # noqa: E402
from tools.support.workflow_layout import note_height, view_ds, with_scroll_hint  # noqa: E402
from tools.support.sd_checkpoints import SD15_NAME as SD15, SDXL_NAME as SDXL  # noqa: E402

# Where the frontend's missing-model panel downloads each checkpoint from (node properties "models": [{name, url,
# directory}]; the frontend offers a download for huggingface.co / civitai.com URLs of .safetensors files).
MODEL_URLS = {
    SD15: "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
          "v1-5-pruned-emaonly-fp16.safetensors?download=true",
    SDXL: "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
          "sd_xl_base_1.0.safetensors?download=true",
}
IMAGE = example_image.DEST.name   # the pack's own drawing, copied into ComfyUI's input/ when the pack loads
PROMPT = example_image.PROMPT
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
GAP = 40          # px between stacked nodes (the title bar, 30 px, sits above pos)
COL_GAP = 50


def _is_widget(spec: Any) -> bool:
    t = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return not opts.get("forceInput") and (isinstance(t, list) or t in WIDGET_TYPES)


class Graph:
    """A UI-format workflow under construction."""

    def __init__(self, info: dict, sizes: dict):
        self.info, self.sizes = info, sizes
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def _ordered(self, ntype: str) -> list[tuple[str, Any]]:
        spec = self.info[ntype]
        order = spec.get("input_order") or {}
        out = []
        for sec in ("required", "optional"):
            specs = spec["input"].get(sec, {})
            out += [(n, specs[n]) for n in order.get(sec, list(specs)) if n in specs]
        return out

    def add(self, ntype: str, values: Optional[dict] = None, title: Optional[str] = None,
            width: Optional[int] = None, height: Optional[int] = None) -> dict:
        values = dict(values or {})
        inputs, widgets = [], []
        for name, spec in self._ordered(ntype):
            if _is_widget(spec):
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if name in values:
                    v = values.pop(name)
                elif "default" in opts:
                    v = opts["default"]
                elif isinstance(spec[0], list) and spec[0]:
                    v = spec[0][0]
                else:
                    raise KeyError(f"{ntype}.{name}: no value and no default")
                widgets.append(v)
                if opts.get("control_after_generate") or (spec[0] == "INT" and name in ("seed", "noise_seed")):
                    widgets.append("fixed")
                if ntype == "LoadImage" and name == "image":
                    widgets.append("image")
            else:
                inputs.append({"name": name, "type": spec[0] if not isinstance(spec[0], list) else "COMBO",
                               "link": None})
        if values:
            raise KeyError(f"{ntype}: unknown widgets {sorted(values)}")
        spec = self.info[ntype]
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (t, n) in enumerate(zip(spec["output"], spec.get("output_name") or spec["output"]))]
        w, h = self.size_of(ntype, len(inputs), len(outputs), len(widgets))
        node = {"id": len(self.nodes) + 1, "type": ntype, "pos": [0, 0], "size": [width or w, height or h],
                "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": ntype}, "widgets_values": widgets}
        if title:
            node["title"] = title
        if ntype == "CheckpointLoaderSimple":
            name = node["widgets_values"][0]
            node["properties"]["models"] = [{"name": name, "url": MODEL_URLS[name], "directory": "checkpoints"}]
        self.nodes.append(node)
        return node

    def note(self, text: str, width: int = 400, height: int = 400, title: str = "About this workflow") -> dict:
        height = min(max(height, note_height(text, width)), 1000)     # all of the text shows where it fits
        text = with_scroll_hint(text, width, height)
        node = {"id": len(self.nodes) + 1, "type": "MarkdownNote", "pos": [0, 0], "size": [width, height],
                "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                "widgets_values": [text], "title": title}
        self.nodes.append(node)
        return node

    def size_of(self, ntype: str, n_in: int, n_out: int, n_widgets: int) -> tuple[int, int]:
        if ntype in self.sizes:
            return tuple(self.sizes[ntype])
        return 320, 30 + 22 * max(n_in, n_out) + 26 * n_widgets

    def link(self, src: dict, out_name: str, dst: dict, in_name: str) -> None:
        so = next(i for i, o in enumerate(src["outputs"]) if o["name"] == out_name)
        di = next(i for i, o in enumerate(dst["inputs"]) if o["name"] == in_name)
        lid = len(self.links) + 1
        t = src["outputs"][so]["type"]
        self.links.append([lid, src["id"], so, dst["id"], di, t])
        src["outputs"][so]["links"].append(lid)
        dst["inputs"][di]["link"] = lid

    def column(self, x: int, y: int, nodes: list[dict]) -> int:
        """Stack nodes from (x, y) down; returns the x of the next column."""
        for n in nodes:
            n["pos"] = [x, y]
            y += n["size"][1] + GAP
        return x + max(n["size"][0] for n in nodes) + COL_GAP

    def group(self, title: str, nodes: list[dict], color: str = "#3f789e") -> None:
        pad, head = 20, 36
        x0 = min(n["pos"][0] for n in nodes) - pad
        y0 = min(n["pos"][1] for n in nodes) - 30 - head
        x1 = max(n["pos"][0] + n["size"][0] for n in nodes) + pad
        y1 = max(n["pos"][1] + n["size"][1] for n in nodes) + pad
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    def workflow(self) -> dict:
        for n in self.nodes:
            for o in n["outputs"]:
                if not o["links"]:
                    o["links"] = None
        wf = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
              "links": self.links, "groups": self.groups, "config": {}, "extra": {}, "version": 0.4}
        wf["extra"]["ds"] = view_ds(wf)
        return wf


SHIFT = 150       # px of the 768 px picture: the ball moves this far to the right


def _drag(size: int, kind: str) -> str:
    """Drag data on the example picture resized to size x size: move the red ball to the right."""
    s = size / example_image.SIZE
    r = lambda *v: [round(c * s) for c in v]
    x0, y0, x1, y1 = example_image.BALL
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    d = {"version": 1, "image_size": [size, size], "points": [], "regions": []}
    if kind == "points":
        d["points"] = [{"handle": r(cx, cy), "target": r(cx + SHIFT, cy)}]
    else:
        d["regions"] = [{"kind": "rect", "handle": [r(x0, y0), r(x1, y1)],
                         "target": [r(x0 + SHIFT, y0), r(x1 + SHIFT, y1)]}]
    return json.dumps(d, separators=(",", ":"))


def _inputs(g: Graph, ckpt: str, size: int, arch: str):
    ck = g.add("CheckpointLoaderSimple", {"ckpt_name": ckpt}, title=f"Load Checkpoint ({arch})")
    img = g.add("LoadImage", {"image": IMAGE}, title="Load Image (your photo)", height=320)
    sc = g.add("ImageScale", {"upscale_method": "lanczos", "width": size, "height": size, "crop": "center"},
               title=f"Resize to {size} x {size}")
    g.link(img, "IMAGE", sc, "image")
    return ck, img, sc


def _text(g: Graph, ck: dict, text: str, title: str) -> dict:
    t = g.add("CLIPTextEncode", {"text": text}, title=title, height=150)
    g.link(ck, "CLIP", t, "clip")
    return t


def _save(g: Graph, ck: dict, latent_src: Optional[dict], image_src: Optional[dict], prefix: str,
          original: dict):
    outs = []
    if latent_src is not None:
        dec = g.add("VAEDecode")
        g.link(latent_src, "LATENT", dec, "samples")
        g.link(ck, "VAE", dec, "vae")
        outs.append(dec)
        image_src, out_name = dec, "IMAGE"
    else:
        out_name = "IMAGE"
    save = g.add("SaveImage", {"filename_prefix": prefix}, title="Save Image (result)", width=380, height=360)
    g.link(image_src, out_name, save, "images")
    prev = g.add("PreviewImage", title="Input (resized)", width=380, height=360)
    g.link(original, "IMAGE", prev, "images")
    return outs, save, prev


def regiondrag(info: dict, sizes: dict, arch: str) -> dict:
    size, ckpt = (512, SD15) if arch == "SD1.5" else (1024, SDXL)
    g = Graph(info, sizes)
    ck, img, sc = _inputs(g, ckpt, size, arch)
    pos = _text(g, ck, PROMPT, "Prompt (describe the image)")
    di = g.add("DragInstructions", {"drag_data": _drag(size, "regions")}, width=460, height=560)
    g.link(sc, "IMAGE", di, "image")
    rd = g.add("DragEditRegionDrag", {"steps": 20, "strength": 0.5, "noise_scale": 1.0, "seed": 42}, width=340)
    g.link(ck, "MODEL", rd, "model")
    g.link(pos, "CONDITIONING", rd, "positive")
    g.link(di, "DRAG", rd, "drag")
    g.link(di, "MASK", rd, "mask")
    g.link(sc, "IMAGE", rd, "image")
    g.link(ck, "VAE", rd, "vae")
    (dec,), save, prev = _save(g, ck, rd, None, f"regiondrag_{arch.lower().replace('.', '')}", sc)
    note = g.note(_note_regiondrag(arch, size, ckpt), width=420, height=560)
    x = g.column(0, 0, [note])
    x2 = g.column(x, 60, [ck, img, sc])
    x3 = g.column(x2, 60, [pos, di])
    x4 = g.column(x3, 60, [rd, dec])
    g.column(x4, 60, [save, prev])
    g.group("1. Model and image", [ck, img, sc])
    g.group("2. Prompt and drag (draw here)", [pos, di])
    g.group("3. Edit", [rd, dec], color="#a1309b")
    g.group("4. Result", [save, prev], color="#3f8f4f")
    return g.workflow()


def dragdiffusion(info: dict, sizes: dict, arch: str = "SD1.5") -> dict:
    size, ckpt = (512, SD15) if arch == "SD1.5" else (1024, SDXL)
    g = Graph(info, sizes)
    ck, img, sc = _inputs(g, ckpt, size, arch)
    pos = _text(g, ck, PROMPT, "Prompt (describe the image)")
    enc = g.add("VAEEncode")
    g.link(sc, "IMAGE", enc, "pixels")
    g.link(ck, "VAE", enc, "vae")
    tr = g.add("TrainLoraNode", {"batch_size": 1, "grad_accumulation_steps": 1, "steps": 80, "learning_rate": 0.0005,
                                 "rank": 16, "optimizer": "AdamW", "loss_function": "MSE", "seed": 0,
                                 "training_dtype": "bf16", "lora_dtype": "bf16", "algorithm": "LoRA",
                                 "gradient_checkpointing": True, "existing_lora": "[None]"},
               title="Train LoRA (on this image, 80 steps)", width=360)
    # ComfyUI 0.3.7x's Train LoRA takes its latents as a list and fails on a list of one (Comfy-Org/ComfyUI#11124:
    # 'multi_res' unbound): give it the image twice, as a list of two one-image batches (same training data).
    rep = g.add("RepeatLatentBatch", {"amount": 2}, title="Repeat Latent Batch (x2, see note)")
    g.link(enc, "LATENT", rep, "samples")
    reb = g.add("RebatchLatents", {"batch_size": 1}, title="Rebatch Latents (list of 2, see note)")
    g.link(rep, "LATENT", reb, "latents")
    g.link(ck, "MODEL", tr, "model")
    g.link(reb, "LATENT", tr, "latents")
    g.link(pos, "CONDITIONING", tr, "positive")
    lo = g.add("LoraModelLoader", {"strength_model": 1.0}, title="Load LoRA Model (the trained one)", width=360)
    g.link(ck, "MODEL", lo, "model")
    g.link(tr, "lora", lo, "lora")
    di = g.add("DragInstructions", {"drag_data": _drag(size, "points")}, width=460, height=520)
    g.link(sc, "IMAGE", di, "image")
    dd = g.add("DragEditDragDiffusion", {"steps": 50, "strength": 0.7, "iterations": 80, "learning_rate": 0.01,
                                         "r_m": 1, "r_p": 3, "lam": 0.1, "feature_block": -2, "reference_kv": True},
               width=340)
    g.link(lo, "model", dd, "model")
    g.link(enc, "LATENT", dd, "latent")
    g.link(pos, "CONDITIONING", dd, "positive")
    g.link(di, "DRAG", dd, "drag")
    g.link(di, "MASK", dd, "mask")
    (dec,), save, prev = _save(g, ck, dd, None, f"dragdiffusion_{arch.lower().replace('.', '')}", sc)
    note = g.note(_note_dragdiffusion(arch, size, ckpt), width=420, height=640)
    x = g.column(0, 0, [note])
    x2 = g.column(x, 60, [ck, img, sc, pos])
    x3 = g.column(x2, 60, [enc, rep, reb, tr, lo])
    x4 = g.column(x3, 60, [di, prev])
    g.column(x4, 60, [dd, dec, save])
    g.group("1. Model, image, prompt", [ck, img, sc, pos])
    g.group("2. LoRA on the image", [enc, rep, reb, tr, lo], color="#b58b2a")
    g.group("3. Drag (draw here)", [di])
    g.group("4. Edit and result", [dd, dec, save], color="#a1309b")
    return g.workflow()


def _ball_mask_drag(size: int) -> str:
    """Point pair of the ball's move plus an editable mask on the ball (its box with a 12 px margin, at size x size):
    DragonDiffusion's move mode moves what the mask covers along the point pair."""
    import torch
    from core.drag_schema import rle_encode
    s = size / example_image.SIZE
    x0, y0, x1, y1 = (round(v * s) for v in example_image.BALL)
    m = round(12 * s)
    mask = torch.zeros(size, size)
    mask[max(y0 - m, 0):y1 + m, max(x0 - m, 0):x1 + m] = 1.0
    d = json.loads(_drag(size, "points"))
    d["mask"] = {"size": [size, size], "counts": list(rle_encode(mask, (size, size)))}
    return json.dumps(d, separators=(",", ":"))


def dragondiffusion(info: dict, sizes: dict) -> dict:
    size, ckpt, arch = 512, SD15, "SD1.5"
    g = Graph(info, sizes)
    ck, img, sc = _inputs(g, ckpt, size, arch)
    pos = _text(g, ck, PROMPT, "Prompt (describe the image)")
    neg = _text(g, ck, "", "Negative (empty)")
    enc = g.add("VAEEncode")
    g.link(sc, "IMAGE", enc, "pixels")
    g.link(ck, "VAE", enc, "vae")
    inv = g.add("DragEditDDIMInversion", {"steps": 50, "strength": 1.0, "record_kv": True}, width=340)
    g.link(ck, "MODEL", inv, "model")
    g.link(enc, "LATENT", inv, "latent")
    g.link(pos, "CONDITIONING", inv, "positive")
    di = g.add("DragInstructions", {"drag_data": _ball_mask_drag(size)}, width=460, height=520)
    g.link(sc, "IMAGE", di, "image")
    dg = g.add("DragEditDragonDiffusion", {"mode": "move"}, width=340)
    g.link(ck, "MODEL", dg, "model")
    g.link(pos, "CONDITIONING", dg, "positive")
    g.link(neg, "CONDITIONING", dg, "negative")
    g.link(inv, "INVERSION", dg, "inversion")
    g.link(di, "DRAG", dg, "drag")
    g.link(di, "MASK", dg, "mask")
    (dec,), save, prev = _save(g, ck, dg, None, "dragondiffusion_sd15", sc)
    note = g.note(_note_dragondiffusion(size, ckpt), width=420, height=600)
    x = g.column(0, 0, [note])
    x2 = g.column(x, 60, [ck, img, sc])
    x3 = g.column(x2, 60, [pos, neg, enc, inv])
    x4 = g.column(x3, 60, [di, prev])
    g.column(x4, 60, [dg, dec, save])
    g.group("1. Model and image", [ck, img, sc])
    g.group("2. Inversion", [pos, neg, enc, inv], color="#b58b2a")
    g.group("3. Mask + move (draw)", [di])
    g.group("4. Edit and result", [dg, dec, save], color="#a1309b")
    return g.workflow()


def ledits(info: dict, sizes: dict, arch: str) -> dict:
    size, ckpt = (512, SD15) if arch == "SD1.5" else (1024, SDXL)
    g = Graph(info, sizes)
    ck, img, sc = _inputs(g, ckpt, size, arch)
    src = _text(g, ck, PROMPT, "Source prompt (describe the image)")
    neg = _text(g, ck, "", "Negative (empty)")
    con = _text(g, ck, "snow", "Concept 1 to add")
    le = g.add("DragEditLEDITSEdit", {"steps": 50, "skip": 15, "source_cfg": 3.5, "target_cfg": 7.5, "mode": "SEGA",
                                      "seed": 0, "direction_1": "add", "scale_1": 7.0, "threshold": 0.9,
                                      "warmup": 5, "momentum_scale": 0.1, "momentum_beta": 0.4}, width=360)
    g.link(ck, "MODEL", le, "model")
    g.link(ck, "VAE", le, "vae")
    g.link(src, "CONDITIONING", le, "source")
    g.link(neg, "CONDITIONING", le, "negative")
    g.link(sc, "IMAGE", le, "image")
    g.link(con, "CONDITIONING", le, "concept_1")
    _, save, prev = _save(g, ck, None, le, f"ledits_{arch.lower().replace('.', '')}", sc)
    note = g.note(_note_ledits(arch, size, ckpt), width=420, height=560)
    x = g.column(0, 0, [note])
    x2 = g.column(x, 60, [ck, img, sc])
    x3 = g.column(x2, 60, [src, neg, con])
    x4 = g.column(x3, 60, [le])
    g.column(x4, 60, [save, prev])
    g.group("1. Model and image", [ck, img, sc])
    g.group("2. Prompts and concepts", [src, neg, con])
    g.group("3. Edit", [le], color="#a1309b")
    g.group("4. Result", [save, prev], color="#3f8f4f")
    return g.workflow()


def _common(arch: str, size: int, ckpt: str, drag: bool = True) -> str:
    other = ("Any SD1.x fine-tune works the same (SD2.x too, incl. v-prediction, at 768 px)." if arch == "SD1.5"
             else "SDXL fine-tunes work the same; keep 1024 px (or another SDXL bucket, e.g. 896 x 1152).")
    where = (f" (the drag's points are stored for {size} x {size}; the editor shows them on the resized image)"
             if drag else "")
    return (f"**Made for:** `{ckpt}` ({arch}) in `models/checkpoints`; if it is missing, the frontend's "
            f"missing-model panel offers its download. {other}\n\n"
            f"**Image:** *Load Image* takes any photo; *Resize to {size} x {size}* scales and centre-crops it to "
            f"the model's native {size} px{where}. The example picture `{IMAGE}` (a red ball on a hill) comes with "
            f"the pack, which copies it into ComfyUI's `input` folder when it loads.\n\n")


def _note_regiondrag(arch: str, size: int, ckpt: str) -> str:
    return (f"## RegionDrag on a real image ({arch}, {size} px)\n\n" + _common(arch, size, ckpt) +
            "**Run it once**, then draw in *Drag Instructions*: a rectangle or polygon on what to move (handle) "
            "and one where it should go (target); paint a mask to limit what may change. The example moves the "
            "red ball to the right.\n\n"
            "**Settings:** steps 20, strength 0.5 (invert 10 of 20 steps), noise_scale 1.0 (refills the vacated "
            "area; 0.6 keeps more of it), seed 42. One inversion + one denoising pass: about 20 UNet calls, the "
            f"cheapest of the methods. {'At 1024 px on SDXL each call costs about 4x the SD1.5 one.' if arch == 'SDXL' else ''}\n\n"
            "Stronger moves: raise strength to 0.6-0.7. Describe the image in the prompt (RegionDrag uses it for "
            "inversion and denoising).")


def _note_dragdiffusion(arch: str, size: int, ckpt: str) -> str:
    xl = ("**SDXL:** the supervised features are the decoder's second-to-last block (feature_block -2: 640 "
          "channels at latent resolution, as SD1.5's up_blocks[2]); the paper's settings were tuned on SD1.5, so "
          "expect to tune iterations and learning_rate. Train LoRA at 1024 px needs a large GPU.\n\n"
          if arch == "SDXL" else "")
    return (f"## DragDiffusion on a real image ({arch}, {size} px)\n\n" + _common(arch, size, ckpt) + xl +
            "**1. LoRA on the image** (DragDiffusion's first step): *Train LoRA* fine-tunes a rank-16 LoRA on the "
            "image's latent with the prompt (80 steps, lr 5e-4, as in the paper); *Load LoRA Model* applies it to "
            "the checkpoint. It keeps the identity of the image through the edit. ComfyUI caches it: it is trained "
            "once per image, not per drag. (Train LoRA is an experimental ComfyUI node; bf16 training wants a GPU "
            "with bf16, else set training_dtype / lora_dtype to fp32.) To skip it, connect Load Checkpoint's MODEL "
            "to DragDiffusion directly.\n\n"
            "*Repeat Latent Batch* + *Rebatch Latents* hand Train LoRA the image twice as a list of two: ComfyUI "
            "0.3.7x's Train LoRA fails on a single latent (\"cannot access local variable 'multi_res'\", "
            "Comfy-Org/ComfyUI#11124). The two copies are the same training data. On ComfyUI 0.3.64 and older "
            "(Train LoRA without list inputs) they make it train twice: connect VAE Encode to Train LoRA directly "
            "there.\n\n"
            "**2. Drag:** run once so the editor shows the image, then click handle -> target point pairs (the "
            "example moves the red ball to the right); paint a mask to keep everything else unchanged.\n\n"
            "**3. DragDiffusion:** DDIM inversion to 70 % (35 of 50 steps), up to 80 steps of motion supervision "
            "with point tracking on the UNet's decoder features (lr 0.01, r_m 1, r_p 3, lam 0.1), then denoising "
            "with the source's self-attention K/V. These are the paper's settings: 80 LoRA steps plus up to 80 "
            "optimisation steps with gradients through the UNet, the slowest of the methods (GPU work).")


def _note_dragondiffusion(size: int, ckpt: str) -> str:
    return (f"## DragonDiffusion on a real image (SD1.5, {size} px)\n\n" + _common("SD1.5", size, ckpt) +
            "**1. Inversion:** *DDIM Inversion* inverts the image all the way (50 steps, strength 1.0, as in the "
            "paper) and, with record_kv on, records the self-attention K/V of every step: the memory bank that "
            "keeps the picture's look during the edit.\n\n"
            "**2. Move:** in *Drag Instructions* paint a mask over the object and click one point pair from the "
            "object to where it goes (the example moves the red ball to the right). Mode drag drags content "
            "along point pairs instead (no mask needed).\n\n"
            "**3. DragonDiffusion** denoises from the inversion with the memory bank and the feature guidance "
            "that pulls the object's features to the target and keeps the rest. The node's defaults are the "
            "official code's for SD checkpoints (cfg 4, energy_scale 1, DiffEditor's start-latent paste on). "
            "One guided sampling pass with a gradient per step: slower than RegionDrag, faster than "
            "DragDiffusion.")


MASK_NOTE = ("\n\n**One object only:** connect a MASK to LEDITS Edit's mask input (Load Image: right-click the image, Open in MaskEditor, paint over the object): the concepts act only there and everything outside the mask stays exactly as it was.")


def _note_ledits(arch: str, size: int, ckpt: str) -> str:
    return (f"## LEDITS on a real image ({arch}, {size} px)\n\n" + _common(arch, size, ckpt, drag=False) +
            "**Prompts:** the source prompt describes the image (used for the inversion); the negative stays "
            "empty; *Concept 1* is what to add (direction add) or remove (direction remove). Connect "
            "concept_2 / concept_3 for more.\n\n"
            "**Settings:** 50 steps, skip 15 (keeps the layout; more skip keeps more of the image), source_cfg "
            "3.5, target_cfg 7.5, SEGA mode, concept scale 7, threshold 0.9 (the concept changes the top 10 % of "
            "positions), warm-up 5 steps, momentum 0.1 / 0.4. mode LEDITS++ masks each concept by its attention "
            "instead. No training, no optimisation: one inversion and one sampling pass." + MASK_NOTE)


def build(info: dict, sizes: dict) -> dict[str, dict]:
    return {"sd15_regiondrag": regiondrag(info, sizes, "SD1.5"), "sd15_dragdiffusion": dragdiffusion(info, sizes),
            "sd15_dragondiffusion": dragondiffusion(info, sizes), "sd15_ledits": ledits(info, sizes, "SD1.5"),
            "sdxl_regiondrag": regiondrag(info, sizes, "SDXL"), "sdxl_dragdiffusion": dragdiffusion(info, sizes, "SDXL"),
            "sdxl_ledits": ledits(info, sizes, "SDXL")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--object-info", type=Path, help="a saved /object_info (default: start a server and ask it)")
    ap.add_argument("--sizes", type=Path, help="measured node sizes {type: [w, h]}")
    a = ap.parse_args()
    from tools.support.comfy_server import object_info
    info = object_info(a.object_info)
    sizes = json.loads(a.sizes.read_text()) if a.sizes else {}
    for name, wf in build(info, sizes).items():
        examples.path(name).write_text(json.dumps(wf, indent=2) + "\n")
        print(f"wrote example_workflows/{examples.file_name(name)} ({len(wf['nodes'])} nodes)")


if __name__ == "__main__":
    main()
