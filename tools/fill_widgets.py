"""Append the default value of every widget a pack node gained since an example workflow was saved (new inputs
are appended at the end of a node's inputs, as the frontend does on load), keeping each file's JSON formatting:
    .venv/bin/python -m tools.fill_widgets [--check]
Without this the frontend fills them in on load and the saved workflow differs from the loaded one."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def widget_defaults(cls) -> list:
    """Widget slots of a pack node class in order, as their default values (a seed also has its control slot)."""
    from tools.support.workflow_api import _is_widget
    out = []
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, s in spec.get(section, {}).items():
            if not _is_widget(s):
                continue
            opts = s[1] if isinstance(s, (list, tuple)) and len(s) > 1 and isinstance(s[1], dict) else {}
            default = opts.get("default", s[0][0] if isinstance(s[0], list) and s[0] else None)
            out.append(default)
            if opts.get("control_after_generate"):
                out.append("fixed")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="list what would change, write nothing (exit 1 if any)")
    a = ap.parse_args()
    from tools.support.comfy_env import load_pack
    pack = load_pack()
    classes = pack.NODE_CLASS_MAPPINGS
    changed = []
    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        text = path.read_text()
        indent = len(text.split("\n", 2)[1]) - len(text.split("\n", 2)[1].lstrip(" "))
        wf = json.loads(text)
        touched = False
        for node in wf.get("nodes", []):
            cls = classes.get(node.get("type"))
            vals = node.get("widgets_values")
            if cls is None or not isinstance(vals, list):
                continue
            want = widget_defaults(cls)
            if len(vals) < len(want):
                node["widgets_values"] = vals + want[len(vals):]
                changed.append(f"{path.name}: node {node['id']} ({node['type']}) + {want[len(vals):]}")
                touched = True
        if touched and not a.check:
            path.write_text(json.dumps(wf, indent=indent or 2, ensure_ascii=False) + ("\n" if text.endswith("\n") else ""))
    print("\n".join(changed) or "all example workflows hold every widget")
    if a.check and changed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
