"""Node boxes of a UI-format workflow as the frontend draws them: a node is never smaller than its widgets need
(the frontend grows it on load), and its title bar sits above `pos`. Shared by the layout tests and
tools/layout_workflows.py; the minimum sizes follow LiteGraph's computeSize as measured with frontend 1.32.9
(tools/measure_nodes.py): 26 px for the first slot row, 20 px per further row, 24 px per widget plus 8."""
from __future__ import annotations

from typing import Optional

TITLE_H = 30
MIN_W = 210
# Widgets taller than one row: (node type, widget index) -> height.
TALL = {"CLIPTextEncode": 54, "DragInstructions": 264, "MarkdownNote": 54, "Note": 54}
NOTE_TYPES = ("MarkdownNote", "Note")


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _slot_count(node: dict, info: Optional[dict]) -> int:
    """Input sockets drawn as rows: every non-widget input the node type has (the frontend adds the optional ones
    a saved workflow may leave out), else those the workflow lists."""
    spec = (info or {}).get(node["type"])
    if spec is None:
        return len([i for i in node.get("inputs") or [] if not i.get("widget")])
    n = 0
    for sec in ("required", "optional"):
        for s in spec.get("input", {}).get(sec, {}).values():
            opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
            if opts.get("forceInput") or not (isinstance(s[0], list) or s[0] in WIDGET_TYPES):
                n += 1
    return n


def min_size(node: dict, info: Optional[dict] = None) -> tuple[float, float]:
    """The smallest (w, h) the frontend gives this node (body only, without the title bar); info: /object_info."""
    rows = max(_slot_count(node, info), len(node.get("outputs") or []), 1)
    h = 26 + 20 * (rows - 1)
    values = node.get("widgets_values")
    n = len(values) if isinstance(values, list) else len(values or {})
    if n:
        tall = TALL.get(node["type"])
        h += (24 * (n - 1) + tall if tall else 24 * n) + 8
    w = 268 if node["type"] == "TrainLoraNode" else MIN_W
    return float(w), float(h)


def box(node: dict, info: Optional[dict] = None) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the node as drawn, title bar included."""
    mw, mh = min_size(node, info)
    w, h = max(float(node["size"][0]), mw), max(float(node["size"][1]), mh)
    x, y = float(node["pos"][0]), float(node["pos"][1])
    return x, y - TITLE_H, x + w, y + h


def overlaps(workflow: dict, info: Optional[dict] = None) -> list[str]:
    """Pairs of nodes whose drawn boxes intersect."""
    nodes = workflow.get("nodes", [])
    out = []
    for i, a in enumerate(nodes):
        ax0, ay0, ax1, ay1 = box(a, info)
        for b in nodes[i + 1:]:
            bx0, by0, bx1, by1 = box(b, info)
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                out.append(f"node {a['id']} ({a.get('title') or a['type']}) overlaps node {b['id']} "
                           f"({b.get('title') or b['type']})")
    return out


def inside(node: dict, group: dict, info: Optional[dict] = None) -> bool:
    """The node's drawn box lies within the group's bounding box."""
    x0, y0, x1, y1 = box(node, info)
    gx, gy, gw, gh = group["bounding"]
    return gx <= x0 and gy <= y0 and x1 <= gx + gw and y1 <= gy + gh


# How the frontend opens a template (1.58: fitView -> DragAndScale.fitToBounds(bounds, zoom 0.75)): the graph's
# bounds fill 75 % of the canvas. SCREEN is the canvas of a 1920 x 1080 screen (less the side bar and menus);
# below READABLE the frontend draws nodes as blank boxes (MinFontSizeForLOD 8 px of a 14 px title: 0.57).
FIT_ZOOM = 0.75
SCREEN = (1850.0, 950.0)
READABLE = 0.6


def extent(workflow: dict, info: Optional[dict] = None) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) around every node (title bar included) and group."""
    boxes = [box(n, info) for n in workflow.get("nodes", [])]
    for g in workflow.get("groups") or []:
        x, y, w, h = g["bounding"]
        boxes.append((x, y, x + w, y + h))
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def fit_scale(workflow: dict, info: Optional[dict] = None, screen: tuple[float, float] = SCREEN) -> float:
    """The zoom the frontend opens the workflow at on that canvas (fitToBounds with zoom FIT_ZOOM)."""
    x0, y0, x1, y1 = extent(workflow, info)
    return FIT_ZOOM * min(screen[0] / max(x1 - x0, 300.0), screen[1] / max(y1 - y0, 300.0))


def view_ds(workflow: dict, info: Optional[dict] = None, screen: tuple[float, float] = SCREEN) -> dict:
    """extra.ds for frontends that open a workflow at its stored view: the same fit, graph centred on the canvas."""
    x0, y0, x1, y1 = extent(workflow, info)
    s = round(fit_scale(workflow, info, screen), 3)
    off = [round(screen[0] / 2 / s - (x0 + x1) / 2, 1), round(screen[1] / 2 / s - (y0 + y1) / 2, 1)]
    return {"scale": s, "offset": off}


def note_height(text: str, width: float) -> int:
    """Height a Markdown note needs to show all of its text without scrolling: an estimate, a little generous, from
    notes drawn by frontend 1.58 (about 5 px per character and 13 px per line of its note text, 10 px between
    paragraphs, headings taller)."""
    import math
    per_line = max(int((width - 28) / 5.0), 10)
    h = 40
    for para in text.split("\n"):
        if not para.strip():
            h += 10
            continue
        lines = math.ceil(len(para) / per_line)
        h += lines * (24 if para.startswith("#") else 13)
    return int(h)


SCROLL_HINT = "*(Longer than this box: scroll inside the note for the rest.)*\n\n"


def with_scroll_hint(text: str, width: float, height: float) -> str:
    """The note's text, opening with SCROLL_HINT when it does not fit its box (note_height), without it otherwise."""
    body = text[len(SCROLL_HINT):] if text.startswith(SCROLL_HINT) else text
    return SCROLL_HINT + body if note_height(body, width) > height else body
