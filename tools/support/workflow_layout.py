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
