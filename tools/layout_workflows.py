"""Lay out the shapes-model example workflows (positions, sizes, titles, groups, notes) without touching widget
values, links or key order, and keeping each file's JSON formatting (indent, trailing newline):
    .venv/bin/python -m tools.layout_workflows [--object-info FILE]
Sizes become at least what the frontend computes for the node (tools/support/workflow_layout.py), nodes are stacked in
columns so that no two overlap, and groups frame the branches. The results are 32 x 32 px, which the frontend shows at
that size: each workflow also shows its result enlarged 8x (nearest neighbour, stock Upscale Image By -> Preview
Image "Result, 8x for viewing"); Save Image keeps the 32 px file. The columns keep the graph compact enough that the
frontend opens it at a zoom where titles and widgets render (workflow_layout.fit_scale), and extra.ds stores that
view. shapes_dit_regiondrag.json (the same graph on the demo DiT: Shapes Demo Model design 'dit') is written here from
regiondrag.json before it is laid out (`derive_dit_regiondrag`), shapes_dit_ledits.json likewise from ledits.json
(`derive_dit_ledits`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from tools.support import examples  # noqa: E402
from tools.support.workflow_layout import min_size, view_ds, with_scroll_hint  # noqa: E402

GAP, COL_GAP, TOP = 66, 50, 80      # GAP: Nodes 2.0 draws some nodes up to ~10 px taller than LiteGraph

# the notes of the two DragonDiffusion workflows (used when a workflow has none yet)
DRAGON_NOTE = {
    'move': "## DragonDiffusion: move an object (shapes demo model)\n\nRuns on the bundled shapes model, on a CPU: 8-33 s a run through the server on a 2-core machine shared with other jobs, longer the busier it is.\n\n1. *Shapes Scene* draws a 32x32 scene (seed 1) and its prompt; *Source prompt* encodes it, the *Negative* is empty.\n2. *DDIM Inversion* (50 steps, strength 0.6, cfg 1, record_kv on) inverts the image and records the self-attention K/V: the memory bank.\n3. *Drag Instructions*: the mask is the object, the point pair says where it goes.\n4. *DragonDiffusion*, mode **move**: denoises from the inversion with the memory bank's K/V and the feature-correspondence guidance that pulls the object's features to the target and keeps the rest (cfg 1 like the inversion; energy_scale 20: on this small model the reference's 1 has no measurable effect, 20 improves the centroid by about 0.3 px; DiffEditor's start-latent paste on, with vacate_noise 1 re-noising the place the object leaves, which removes the ghost). Centring features (center_features) is an option that measured worse here. The node defaults (cfg 4, energy_scale 1) are the official code's, for SD checkpoints.\n\nFor photos: *Load Checkpoint* (SD1.5 / SDXL) + *Load Image* -> *VAE Encode* instead of the shapes nodes; describe the image in the source prompt.",
    'drag': "## DragonDiffusion: drag content (shapes demo model)\n\nRuns on the bundled shapes model, on a CPU: 5-41 s a run through the server on a 2-core machine shared with other jobs, longer the busier it is.\n\n1. *Shapes Scene* draws a 32x32 scene (seed 1) and its prompt; *Source prompt* encodes it, the *Negative* is empty.\n2. *DDIM Inversion* (50 steps, strength 0.6, cfg 1, record_kv on) inverts the image and records the self-attention K/V: the memory bank.\n3. *Drag Instructions*: handle -> target point pairs (no mask: boxes around the points are editable).\n4. *DragonDiffusion*, mode **drag**: guidance moves the content under each handle to its target while the content term keeps the rest (cfg 1 like the inversion, energy_scale 5, start-latent paste on with vacate_noise 1). On this small model a drag moves the content but can stretch or shrink it; move mode is the cleaner way to relocate a whole object. The node defaults (cfg 4, energy_scale 1) are the official code's, for SD checkpoints.\n\nFor photos: *Load Checkpoint* (SD1.5 / SDXL) + *Load Image* -> *VAE Encode* instead of the shapes nodes; describe the image in the source prompt.",
}

WHY_TWO = (
    "### Why two branches?\n\n"
    "**A** is what you use: the all-in-one *DragDiffusion* node.\n\n"
    "**B** does exactly the same with the building blocks (*DDIM Inversion* -> *Motion Supervision* -> "
    "*SamplerCustom*), to show how to take it apart: swap the sampler, reuse one inversion for several drags, or "
    "chain another edit before denoising. Both run on Queue; delete the group you do not need (the two results "
    "agree closely).")

DIT_REGIONDRAG_NOTE = (
    "RegionDrag on the bundled shapes **DiT** (Shapes Demo Model, design *dit*: ComfyUI's FLUX class, 2 double + 2 "
    "single blocks, flow matching; runs on a CPU: about 1-4 s a run through the server on a 2-core machine shared "
    "with other jobs).\n\n"
    "1. Shapes Scene draws a 32x32 scene (seed 2: a blue triangle) and its prompt.\n"
    "2. In Drag Instructions, the rect region pair moves the box around the triangle (handle) to the target box; the "
    "painted mask limits what may change (outside it the image stays exactly as it was).\n"
    "3. RegionDrag, the same node as for UNets: a FireFlow inversion (10 of 20 steps) records the image tokens' K/V "
    "in every block; one pass pastes the handle cells onto the targets, the moved tokens take their source tokens' "
    "K/V with the keys rotated to the new place (RoPE), and outside the mask every token takes its own cached K/V "
    "(KV-Edit).\n\n"
    "The DiT settings at the end of RegionDrag: dit_layers (all / double / single / vital blocks: fewer blocks, "
    "less memory) and reencode_keys. The same node takes FLUX and SD3 / SD3.5 checkpoints (docs/regiondrag.md).")


DIT_LEDITS_NOTE = (
    "*(Longer than this box: scroll inside the note for the rest.)*\n\n"
    "LEDITS on the bundled shapes **DiT** (Shapes Demo Model, design *dit*: ComfyUI's FLUX class, 2 double + 2 single "
    "blocks, flow matching; runs on a CPU: about 1-3 s a run through the server on a 2-core machine).\n\n"
    "1. Shapes Scene draws a 32x32 scene (seed 4: a red square) and its prompt, the source prompt.\n"
    "2. The mask says where the edit may act: a white 10x11 box at x 12, y 6, over the square (two Solid Masks and "
    "Mask Composite). On your own image, paint it in Load Image's mask editor and connect Load Image's MASK instead. "
    "Outside the mask everything stays exactly as it was.\n"
    "3. LEDITS Edit inverts the image with the edit-friendly flow inversion (20 steps of the model's schedule, the "
    "first 2 skipped; cfg 1 both sides, so scale 0 gives the input back) and samples it back with two SEGA concepts "
    "on the velocity: add 'blue square', remove 'red square' (scale 14, threshold 0.8, from step 1 on).\n"
    "4. **keep_structure** is on: in the single-stream blocks every edit pass attends with the attention maps of "
    "the source image at the same step, so the square keeps its shape while its colour changes (one more model pass "
    "per step). Without it this model recolours a quarter to a half of ShapesBench's cases and draws the rest as "
    "blobs or loses them; with it 92-100 % (docs/flow.md).\n\n"
    "Leave keep_structure off to remove or reshape something (it keeps the shapes), and on SD1.5 / SDXL, SD3 or "
    "Qwen-Image, where it does nothing. For FLUX.1-dev on your photos see the FLUX.1-dev - LEDITS workflow (28 steps, "
    "FluxGuidance on the prompts).")


def derive_dit_ledits(wf: dict) -> dict:
    """shapes_dit_ledits from the ledits workflow: the Shapes Demo Model on design 'dit', LEDITS Edit at the demo DiT's
    settings with keep_structure on, its own note and file prefix; the scene, the concepts and the mask as in ledits."""
    wf = json.loads(json.dumps(wf))
    for n in wf["nodes"]:
        if n["type"] == "DragEditShapesDemoModel":
            n["widgets_values"] = ["dit"]
            n["title"] = "Shapes Demo Model (DiT)"
        elif n["type"] == "DragEditLEDITSEdit":
            v = list(n["widgets_values"])
            # steps, skip, source_cfg, target_cfg, mode, seed, control, (direction, scale) x 3, threshold, warmup,
            # momentum_scale, momentum_beta, keep_structure
            v[0:4] = [20, 2, 1.0, 1.0]
            v[8], v[10] = 14.0, 14.0
            v[13:15] = [0.8, 1]
            v[17] = True
            n["widgets_values"] = v
        elif n["type"] in ("MarkdownNote", "Note"):
            n["widgets_values"] = [DIT_LEDITS_NOTE]
        elif n["type"] == "SaveImage":
            n["widgets_values"] = ["shapes_dit_ledits"]
    return wf


def derive_dit_regiondrag(wf: dict) -> dict:
    """shapes_dit_regiondrag from the regiondrag workflow: the Shapes Demo Model on design 'dit', its own note and
    file prefix; everything else (scene, drag, RegionDrag settings) as in regiondrag."""
    wf = json.loads(json.dumps(wf))
    for n in wf["nodes"]:
        if n["type"] == "DragEditShapesDemoModel":
            n["widgets_values"] = ["dit"]
            n["title"] = "Shapes Demo Model (DiT)"
        elif n["type"] in ("MarkdownNote", "Note"):
            n["widgets_values"] = [DIT_REGIONDRAG_NOTE]
        elif n["type"] == "SaveImage":
            n["widgets_values"] = ["shapes_dit_regiondrag"]
    return wf


# key (tools/support/examples.py) -> columns (node ids top to bottom), titles, groups (title, ids, colour), notes to add
LAYOUTS = {
    "regiondrag": {
        "columns": [[1, 2, 3, 9], [4, 10], [5, 6, "enlarge"], ["big", 7, 8]],
        "titles": {3: "Prompt (from the scene)"},
        "result": 6,
    },
    "ledits": {
        "columns": [[1, 2, 9], [3, 4, 5, 10], [13, 14, 15], [6, "enlarge"], ["big", 7, 8]],
        "titles": {13: "Mask: black 32x32", 14: "Mask: white 10x11 box", 15: "Mask: the box at x 12, y 6"},
        "result": 6,
        "sizes": {9: [300, 560]},
    },
    "dragdiffusion_lora": {
        "columns": [[1, 2, 3, 13], [4, 6, 14, 8, 7], [5, 12], [9, 10, "enlarge"], ["big", 11]],
        "result": 10,
        "sizes": {13: [300, 560]},
        "titles": {3: "Prompt (from the scene)", 6: "The image twice (Train LoRA needs a list)",
                   14: "One latent per list item", 13: "About this workflow", 11: "Dragged", 12: "Original"},
        "groups": [("LoRA step: fine-tune the model on the input image (stock Train LoRA)", [4, 6, 14, 8, 7],
                    "#3f789e")],
    },
    "dragondiffusion_move": {
        "columns": [[1, 2, "note"], [3, 4, 5, 6], [7, 8], [9, "enlarge", "big", 10]],
        "result": 9,
        "titles": {3: "Source prompt (from the scene)", 4: "Negative (empty prompt)", 10: "Moved"},
        "note": DRAGON_NOTE["move"],
    },
    "dragondiffusion_drag": {
        "columns": [[1, 2, "note"], [3, 4, 5, 6], [7, 8], [9, "enlarge", "big", 10]],
        "result": 9,
        "titles": {3: "Source prompt (from the scene)", 4: "Negative (empty prompt)", 10: "Dragged"},
        "note": DRAGON_NOTE["drag"],
    },
}
# the DiT workflows are the UNet demos' graphs on the demo DiT (written by DERIVED below), laid out the same way
LAYOUTS["shapes_dit_regiondrag"] = LAYOUTS["regiondrag"]
LAYOUTS["shapes_dit_ledits"] = LAYOUTS["ledits"]


def _fmt(text: str) -> tuple[int, str]:
    """(indent, trailing) that reproduce the file's text with json.dumps; (2, newline) if none does."""
    obj = json.loads(text)
    for indent in (2, 1, 4):
        for tail in ("\n", ""):
            if json.dumps(obj, indent=indent) + tail == text:
                return indent, tail
    return 2, "\n"


def _title(node: dict, title: str) -> None:
    """Set the title, as a key right after "type" (away from widgets_values, which others edit)."""
    if "title" in node:
        node["title"] = title
        return
    items = list(node.items())
    node.clear()
    for k, v in items:
        node[k] = v
        if k == "type":
            node["title"] = title


def _fit(node: dict, info: dict) -> None:
    mw, mh = min_size(node, info)
    if node["type"] in ("MarkdownNote", "Note") and node.get("widgets_values"):
        node["widgets_values"][0] = with_scroll_hint(str(node["widgets_values"][0]), *node["size"])
    node["size"] = [max(node["size"][0], mw), max(node["size"][1], mh)]
    node["size"] = [int(v) if float(v).is_integer() else v for v in node["size"]]


def _note(wf: dict, text: str, title: str, w: int = 380, h: int = 420) -> dict:
    nid = max(n["id"] for n in wf["nodes"]) + 1
    node = {"id": nid, "type": "MarkdownNote", "pos": [0, 0], "size": [w, h], "flags": {},
            "order": len(wf["nodes"]), "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [text], "title": title}
    wf["nodes"].append(node)
    wf["last_node_id"] = max(wf.get("last_node_id", 0), nid)
    return node


def _columns(nodes: dict, columns: list[list], x: int = 0, y: int = TOP) -> int:
    for col in columns:
        yy = y
        for nid in col:
            n = nodes[nid]
            n["pos"] = [x, yy]
            yy += n["size"][1] + GAP
        x += max(nodes[nid]["size"][0] for nid in col) + COL_GAP
    return x


def _group(wf: dict, title: str, members: list[dict], color: str) -> None:
    pad, head = 20, 40
    x0 = min(n["pos"][0] for n in members) - pad
    y0 = min(n["pos"][1] for n in members) - 30 - head
    x1 = max(n["pos"][0] + n["size"][0] for n in members) + pad
    y1 = max(n["pos"][1] + n["size"][1] for n in members) + pad
    wf.setdefault("groups", []).append({"id": len(wf["groups"]) + 1, "title": title,
                                        "bounding": [x0, y0, x1 - x0, y1 - y0], "color": color, "font_size": 24,
                                        "flags": {}})


ENLARGE_TITLE = "Enlarge 8x (for viewing)"
BIG_TITLE = "Result, 8x for viewing"
SMALL = [260, 150]          # the 32 px Save Image / Preview Image nodes


def _link(wf: dict, src: dict, slot: int, dst: dict, dslot: int, typ: str) -> None:
    lid = max([l[0] for l in wf["links"]] + [wf.get("last_link_id", 0)]) + 1
    wf["links"].append([lid, src["id"], slot, dst["id"], dslot, typ])
    wf["last_link_id"] = lid
    out = src["outputs"][slot]
    out["links"] = (out.get("links") or []) + [lid]
    dst["inputs"][dslot]["link"] = lid


def _new_node(wf: dict, ntype: str, title: str, inputs: list, outputs: list, values: list, size: list) -> dict:
    nid = max(n["id"] for n in wf["nodes"]) + 1
    node = {"id": nid, "type": ntype, "title": title, "pos": [0, 0], "size": size, "flags": {},
            "order": len(wf["nodes"]), "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": ntype}, "widgets_values": values}
    wf["nodes"].append(node)
    wf["last_node_id"] = max(wf.get("last_node_id", 0), nid)
    return node


def _enlargement(wf: dict, result_id: int) -> tuple[dict, dict]:
    """(Upscale Image By, Preview Image) showing node result_id's IMAGE 8x (nearest-exact); added once."""
    by_title = {n.get("title"): n for n in wf["nodes"]}
    if ENLARGE_TITLE in by_title:
        return by_title[ENLARGE_TITLE], by_title[BIG_TITLE]
    src = next(n for n in wf["nodes"] if n["id"] == result_id)
    up = _new_node(wf, "ImageScaleBy", ENLARGE_TITLE, [{"name": "image", "type": "IMAGE", "link": None}],
                   [{"name": "IMAGE", "type": "IMAGE", "links": [], "slot_index": 0}], ["nearest-exact", 8.0],
                   [260, 82])
    big = _new_node(wf, "PreviewImage", BIG_TITLE, [{"name": "images", "type": "IMAGE", "link": None}], [], [],
                    [300, 330])
    _link(wf, src, 0, up, 0, "IMAGE")
    _link(wf, up, 0, big, 0, "IMAGE")
    return up, big


def _label_linked_text(wf: dict) -> None:
    """A CLIP Text Encode whose text comes from Shapes Scene is drawn collapsed (its title says where the prompt comes
    from): frontend 1.58 hides a linked text box and draws its socket without a name, which left an unnamed socket
    over an empty body; the input's label is kept for the renderers that draw it (Nodes 2.0)."""
    for n in wf["nodes"]:
        if n["type"] == "CLIPTextEncode":
            for inp in n.get("inputs") or []:
                if inp["name"] == "text" and inp.get("link") is not None:
                    inp["label"] = "text (the scene's prompt)"
                    n["flags"] = {**(n.get("flags") or {}), "collapsed": True}


def layout(name: str, wf: dict, info: dict) -> dict:
    nodes = {n["id"]: n for n in wf["nodes"]}
    _label_linked_text(wf)
    spec = LAYOUTS.get(name, {"result": 7})
    up, big = _enlargement(wf, spec["result"])
    nodes.update({up["id"]: up, big["id"]: big})
    for n in wf["nodes"]:
        if n["type"] in ("SaveImage", "PreviewImage") and n is not big:
            n["size"] = list(SMALL)
        for nid, size in spec.get("sizes", {}).items():
            if n["id"] == nid:
                n["size"] = list(size)
        _fit(n, info)
    wf["groups"] = []
    if name == "dragdiffusion":
        _layout_dragdiffusion(wf, nodes, up, big)
        wf.setdefault("extra", {})["ds"] = view_ds(wf, info)
        return wf
    for nid, title in spec["titles"].items():
        _title(nodes[nid], title)
    cols = []
    for col in spec["columns"]:
        ids = []
        for nid in col:
            if nid in ("enlarge", "big"):
                nid = (up if nid == "enlarge" else big)["id"]
            elif nid == "note":
                existing = [n for n in wf["nodes"] if n["type"] in ("MarkdownNote", "Note")]
                note = existing[0] if existing else _note(wf, spec["note"], "About this workflow")
                nodes[note["id"]] = note
                nid = note["id"]
            ids.append(nid)
        cols.append(ids)
    _columns(nodes, cols)
    for title, ids, colour in spec.get("groups", []):
        _group(wf, title, [nodes[i] for i in ids], colour)
    wf.setdefault("extra", {})["ds"] = view_ds(wf, info)
    return wf


def _layout_dragdiffusion(wf: dict, nodes: dict, up: dict, big: dict) -> dict:
    """Inputs in two columns; branch A (all-in-one, with the enlarged result) above branch B (building blocks)."""
    _title(nodes[3], "Prompt (from the scene)")
    _title(nodes[6], "DragDiffusion (all-in-one)")
    why = [n for n in wf["nodes"] if n.get("title") == "Why two branches?"]
    why = why[0] if why else _note(wf, WHY_TWO, "Why two branches?", w=380, h=300)
    nodes[why["id"]] = why
    x = _columns(nodes, [[1, 2, 3, 4, 16], [5, 9, why["id"]]])
    top = TOP + 10
    nodes[up["id"]], nodes[big["id"]] = up, big
    _columns(nodes, [[6], [7, up["id"], 8], [big["id"]]], x=x, y=top)
    col2 = sum(nodes[i]["size"][1] + GAP for i in (7, up["id"], 8))
    low = top + max(nodes[6]["size"][1], col2, nodes[big["id"]]["size"][1]) + 110
    _columns(nodes, [[10, 12], [11], [13], [14, 15]], x=x, y=low)
    _group(wf, "A. All-in-one: the DragDiffusion node", [nodes[i] for i in (6, 7, up["id"], big["id"], 8)],
           "#a1309b")
    _group(wf, "B. The same from building blocks: DDIM Inversion -> Motion Supervision -> SamplerCustom",
           [nodes[i] for i in (10, 11, 12, 13, 14, 15)], "#3f789e")
    return wf


# derived workflow -> (the workflow it is written from, how)
DERIVED = {"shapes_dit_regiondrag": ("regiondrag", derive_dit_regiondrag),
           "shapes_dit_ledits": ("ledits", derive_dit_ledits)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--object-info", type=Path)
    ap.add_argument("names", nargs="*", default=["regiondrag", "dragdiffusion", "dragdiffusion_lora",
                                                  "dragondiffusion_move", "dragondiffusion_drag", "ledits",
                                                  "shapes_dit_regiondrag", "shapes_dit_ledits"])
    a = ap.parse_args()
    from tools.support.comfy_server import object_info
    info = object_info(a.object_info)
    for name in a.names:
        path = examples.path(name)
        if name in DERIVED:                              # written from the UNet demo it derives from, then laid out
            source, derive = DERIVED[name]
            src = examples.path(source).read_text()
            indent, tail = _fmt(src)
            text = json.dumps(derive(json.loads(src)), indent=indent) + tail
        else:
            text = path.read_text()
        indent, tail = _fmt(text)
        wf = layout(name, json.loads(text), info)
        path.write_text(json.dumps(wf, indent=indent) + tail)
        print(f"laid out {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
