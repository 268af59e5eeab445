"""Convert a UI-format workflow (what ComfyUI's Save writes) to the API format POST /prompt takes, using the
server's /object_info for each node's widget order — the same mapping the frontend does."""
from __future__ import annotations

from typing import Any

CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
SKIP_TYPES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _is_widget(spec: Any) -> bool:
    t = spec[0] if isinstance(spec, (list, tuple)) else spec
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return isinstance(t, list) or t in WIDGET_TYPES


def _ordered_inputs(info: dict) -> list[tuple[str, Any]]:
    out = []
    order = info.get("input_order")
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section, {})
        names = order.get(section, list(specs)) if order else list(specs)
        out += [(n, specs[n]) for n in names if n in specs]
    return out


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """API-format prompt for a UI-format workflow; raises KeyError naming a node type the server lacks."""
    links = {l[0]: l for l in workflow.get("links", [])}
    prompt: dict = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if ntype in SKIP_TYPES or node.get("mode", 0) in (2, 4):
            continue
        if ntype not in object_info:
            raise KeyError(f"workflow node {node['id']} has type {ntype!r}, which the server does not know")
        info = object_info[ntype]
        inputs: dict = {}
        linked = {}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                l = links[inp["link"]]
                linked[inp["name"]] = [str(l[1]), l[2]]
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            values = []
            inputs.update({k: v for k, v in node["widgets_values"].items()})
        vi = 0
        for name, spec in _ordered_inputs(info):
            if name in linked:
                inputs[name] = linked[name]
                if _is_widget(spec) and vi < len(values):  # widget converted to an input keeps its slot
                    vi += 1
                    vi += _control_slot(spec, name, values, vi)
                continue
            if not _is_widget(spec):
                continue
            if vi < len(values):
                inputs[name] = values[vi]
                vi += 1
                vi += _control_slot(spec, name, values, vi)
                if ntype == "LoadImage" and name == "image" and vi < len(values) and values[vi] in ("image", None):
                    vi += 1
        prompt[str(node["id"])] = {"class_type": ntype, "inputs": inputs}
    return prompt


def _control_slot(spec: Any, name: str, values: list, vi: int) -> int:
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    has_control = opts.get("control_after_generate") or name in ("seed", "noise_seed")
    return 1 if has_control and vi < len(values) and values[vi] in CONTROL_VALUES else 0
