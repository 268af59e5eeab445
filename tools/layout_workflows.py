"""Lay out the shapes-model example workflows (positions, sizes, titles, groups, notes) without touching widget
values, links or key order, and keeping each file's JSON formatting (indent, trailing newline):
    .venv/bin/python -m tools.layout_workflows [--object-info FILE]
Sizes become at least what the frontend computes for the node (tools/support/workflow_layout.py), nodes are stacked in
columns so that no two overlap, and groups frame the branches.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from tools.support.workflow_layout import min_size  # noqa: E402

WF = ROOT / "example_workflows"
GAP, COL_GAP, TOP = 50, 50, 80

# the notes of the two DragonDiffusion workflows (used when a workflow has none yet)
DRAGON_NOTE = {
    'move': "## DragonDiffusion: move an object (shapes demo model)\n\nRuns on the bundled shapes model, on a CPU in under a minute.\n\n1. *Shapes Scene* draws a 32x32 scene (seed 1) and its prompt; *Source prompt* encodes it, the *Negative* is empty.\n2. *DDIM Inversion* (50 steps, strength 0.6, cfg 1, record_kv on) inverts the image and records the self-attention K/V: the memory bank.\n3. *Drag Instructions*: the mask is the object, the point pair says where it goes.\n4. *DragonDiffusion*, mode **move**: denoises from the inversion with the memory bank's K/V and the feature-correspondence guidance that pulls the object's features to the target and keeps the rest (cfg 1 like the inversion; energy_scale 20: on this small model the reference's 1 has no measurable effect, 20 improves the centroid by about 0.3 px; DiffEditor's start-latent paste on, with vacate_noise 1 re-noising the place the object leaves, which removes the ghost). Centring features (center_features) is an option that measured worse here. The node defaults (cfg 4, energy_scale 1) are the official code's, for SD checkpoints.\n\nFor photos: *Load Checkpoint* (SD1.5 / SDXL) + *Load Image* -> *VAE Encode* instead of the shapes nodes; describe the image in the source prompt.",
    'drag': "## DragonDiffusion: drag content (shapes demo model)\n\nRuns on the bundled shapes model, on a CPU in under a minute.\n\n1. *Shapes Scene* draws a 32x32 scene (seed 1) and its prompt; *Source prompt* encodes it, the *Negative* is empty.\n2. *DDIM Inversion* (50 steps, strength 0.6, cfg 1, record_kv on) inverts the image and records the self-attention K/V: the memory bank.\n3. *Drag Instructions*: handle -> target point pairs (no mask: boxes around the points are editable).\n4. *DragonDiffusion*, mode **drag**: guidance moves the content under each handle to its target while the content term keeps the rest (cfg 1 like the inversion, energy_scale 5, start-latent paste on with vacate_noise 1). On this small model a drag moves the content but can stretch or shrink it; move mode is the cleaner way to relocate a whole object. The node defaults (cfg 4, energy_scale 1) are the official code's, for SD checkpoints.\n\nFor photos: *Load Checkpoint* (SD1.5 / SDXL) + *Load Image* -> *VAE Encode* instead of the shapes nodes; describe the image in the source prompt.",
}

WHY_TWO = (
    "### Why two branches?\n\n"
    "**A** is what you use: the all-in-one *DragDiffusion* node.\n\n"
    "**B** does exactly the same with the building blocks (*DDIM Inversion* -> *Motion Supervision* -> "
    "*SamplerCustom*), to show how to take it apart: swap the sampler, reuse one inversion for several drags, or "
    "chain another edit before denoising. Both run on Queue; delete the group you do not need (the two results "
    "agree closely).")

# name -> columns (node ids top to bottom), titles, groups (title, ids, colour), notes to add
LAYOUTS = {
    "regiondrag": {
        "columns": [[9], [1, 2, 3], [4, 10], [5, 6], [7, 8]],
        "titles": {3: "Prompt (from the scene)"},
    },
    "ledits": {
        "columns": [[9], [1, 2], [3, 4, 5, 10], [6], [7, 8]],
        "titles": {},
    },
    "dragdiffusion_lora": {
        "columns": [[13], [1, 2, 3, 12], [4, 6, 14], [7], [5], [8, 9], [10, 11]],
        "titles": {3: "Prompt (from the scene)", 6: "The image twice (Train LoRA needs a list)",
                   14: "One latent per list item", 13: "About this workflow"},
        "groups": [("LoRA step: fine-tune the model on the input image (stock Train LoRA)", [4, 6, 14, 7, 8],
                    "#3f789e")],
    },
    "dragondiffusion_move": {
        "columns": [["note"], [1, 2, 6], [3, 4, 5], [7], [8], [9, 10]],
        "titles": {3: "Source prompt (from the scene)", 4: "Negative (empty prompt)", 10: "Moved"},
        "note": DRAGON_NOTE["move"],
    },
    "dragondiffusion_drag": {
        "columns": [["note"], [1, 2, 6], [3, 4, 5], [7], [8], [9, 10]],
        "titles": {3: "Source prompt (from the scene)", 4: "Negative (empty prompt)", 10: "Dragged"},
        "note": DRAGON_NOTE["drag"],
    },
}


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


def layout(name: str, wf: dict, info: dict) -> dict:
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        _fit(n, info)
    wf["groups"] = []
    if name == "dragdiffusion":
        return _layout_dragdiffusion(wf, nodes)
    spec = LAYOUTS[name]
    for nid, title in spec["titles"].items():
        _title(nodes[nid], title)
    cols = []
    for col in spec["columns"]:
        ids = []
        for nid in col:
            if nid == "note":
                existing = [n for n in wf["nodes"] if n["type"] in ("MarkdownNote", "Note")]
                note = existing[0] if existing else _note(wf, spec["note"], "About this workflow")
                nodes[note["id"]] = note
                nid = note["id"]
            ids.append(nid)
        cols.append(ids)
    _columns(nodes, cols)
    for title, ids, colour in spec.get("groups", []):
        _group(wf, title, [nodes[i] for i in ids], colour)
    return wf


def _layout_dragdiffusion(wf: dict, nodes: dict) -> dict:
    _title(nodes[3], "Prompt (from the scene)")
    _title(nodes[6], "DragDiffusion (all-in-one)")
    x = _columns(nodes, [[16], [1, 2, 3, 4], [5, 9]])
    top = TOP
    xa = _columns(nodes, [[6], [7], [8]], x=x, y=top)
    low = top + max(nodes[i]["size"][1] for i in (6, 7, 8)) + 140
    _columns(nodes, [[10], [11, 12], [13], [14, 15]], x=x, y=low)
    why = [n for n in wf["nodes"] if n.get("title") == "Why two branches?"]
    why = why[0] if why else _note(wf, WHY_TWO, "Why two branches?", w=380, h=300)
    nodes[why["id"]] = why
    why["pos"] = [max(xa, x + 1200), top]
    _group(wf, "A. All-in-one: the DragDiffusion node", [nodes[i] for i in (6, 7, 8)], "#a1309b")
    _group(wf, "B. The same from building blocks: DDIM Inversion -> Motion Supervision -> SamplerCustom",
           [nodes[i] for i in (10, 11, 12, 13, 14, 15)], "#3f789e")
    return wf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--object-info", type=Path)
    ap.add_argument("names", nargs="*", default=["regiondrag", "dragdiffusion", "dragdiffusion_lora",
                                                  "dragondiffusion_move", "dragondiffusion_drag", "ledits"])
    a = ap.parse_args()
    from tools.support.comfy_server import object_info
    info = object_info(a.object_info)
    for name in a.names:
        path = WF / f"{name}.json"
        text = path.read_text()
        indent, tail = _fmt(text)
        wf = layout(name, json.loads(text), info)
        path.write_text(json.dumps(wf, indent=indent) + tail)
        print(f"laid out {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
