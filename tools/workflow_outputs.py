"""Keep the output names stored in UI-format workflows in step with the nodes' RETURN_NAMES.

`python -m tools.workflow_outputs [files...]` rewrites, in place, only the `"name"` (and a matching
`"localized_name"` / `"label"`) of each output of this pack's nodes whose stored name differs from the node's
RETURN_NAMES for that slot (same type only). Everything else in the file, formatting included, is left byte for
byte: the edit is a text substitution inside the output's own object, located with a small JSON scanner.
`--check` only lists what would change (exit 1 if anything would). Default files: example_workflows/*.json."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _skip_string(text: str, i: int) -> int:
    """Index just past the JSON string starting at text[i] == '"'."""
    i += 1
    while text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _end_of(text: str, i: int) -> int:
    """Index just past the JSON object/array starting at text[i] ('{' or '[')."""
    depth = 0
    while True:
        c = text[i]
        if c == '"':
            i = _skip_string(text, i)
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def _elements(text: str, start: int) -> list[tuple[int, int]]:
    """(start, end) spans of the object elements of the JSON array starting at text[start] == '['."""
    spans, i, end = [], start + 1, _end_of(text, start)
    while i < end - 1:
        c = text[i]
        if c == "{":
            j = _end_of(text, i)
            spans.append((i, j))
            i = j
        elif c == '"':
            i = _skip_string(text, i)
        elif c == "[":
            i = _end_of(text, i)
        else:
            i += 1
    return spans


def _member(text: str, span: tuple[int, int], key: str) -> int | None:
    """Index of the value of top-level member `key` of the object at span (None when absent)."""
    i, end, depth = span[0] + 1, span[1] - 1, 0
    while i < end:
        c = text[i]
        if c == '"':
            j = _skip_string(text, i)
            if depth == 0 and text[i + 1:j - 1] == key:
                k = j
                while text[k] in " \t\r\n:":
                    k += 1
                return k
            i = j
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return None


def return_names() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """{node id: (RETURN_TYPES, RETURN_NAMES)} of this pack (RETURN_NAMES defaults to the types, as in ComfyUI)."""
    from tools.support.comfy_env import load_pack
    pack = load_pack()
    out = {}
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        types = tuple(cls.RETURN_TYPES)
        out[name] = (types, tuple(getattr(cls, "RETURN_NAMES", None) or types))
    return out


def renames(text: str, names: dict) -> list[tuple[int, int, str, str]]:
    """(start, end, old, new) of every output-name string to change in a UI-format workflow text."""
    wf = json.loads(text)
    top = (0, len(text.rstrip()))
    nodes_at = _member(text, top, "nodes")
    if nodes_at is None:
        return []
    edits = []
    node_spans = _elements(text, nodes_at)
    assert len(node_spans) == len(wf["nodes"]), "scanner and parser disagree on the node list"
    for node, span in zip(wf["nodes"], node_spans):
        spec = names.get(node.get("type"))
        outs_at = _member(text, span, "outputs")
        if spec is None or outs_at is None:
            continue
        types, new_names = spec
        for slot, (out, ospan) in enumerate(zip(node.get("outputs", []), _elements(text, outs_at))):
            if slot >= len(types) or out.get("type") != types[slot] or out.get("name") == new_names[slot]:
                continue
            old = out.get("name")
            for key in ("name", "localized_name", "label"):
                if out.get(key) != old:
                    continue
                at = _member(text, ospan, key)
                j = _skip_string(text, at)
                edits.append((at, j, text[at:j], json.dumps(new_names[slot])))
    return edits


def apply(text: str, edits: list) -> str:
    for at, j, _old, new in sorted(edits, reverse=True):
        text = text[:at] + new + text[j:]
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true", help="list the changes, write nothing, exit 1 if any")
    a = ap.parse_args()
    files = a.files or sorted((ROOT / "example_workflows").glob("*.json"))
    names = return_names()
    pending = 0
    for f in files:
        text = f.read_text()
        edits = renames(text, names)
        for _at, _j, old, new in edits:
            print(f"{f.name}: {old} -> {new}")
        pending += len(edits)
        if edits and not a.check:
            new_text = apply(text, edits)
            json.loads(new_text)
            f.write_text(new_text)
    if a.check and pending:
        sys.exit(1)


if __name__ == "__main__":
    main()
