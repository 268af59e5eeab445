"""Writes docs/drag_schema_errors.md: the error text of every bad drag JSON of tests/test_drag_schema.py,
tests/test_bad_inputs.py and issue 23's classes 1-5, side by side for
  before   - the hand-written parser of commit aff4d11 (read with `git show`),
  pydantic - pydantic v2's own message for the same document (DragDoc.model_validate, first error, loc + msg),
  after    - core/drag_schema.py now (pydantic models + the translation table of core/drag_json.py).

Run: .venv/bin/python -m tools.drag_schema_errors [--check]   (--check: exit 1 when an 'after' text is a raw
Python error instead of a DragSchemaError)."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "aff4d11"
SIZE = (256, 256)


def _old_module() -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:core/drag_schema.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType("drag_schema_before")
    sys.modules[mod.__name__] = mod
    exec(compile(src, "drag_schema_before.py", "exec"), mod.__dict__)
    return mod


def cases() -> list[tuple[str, str, tuple[int, int]]]:
    """(source, JSON text, image size) of every bad document."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("test_drag_schema", ROOT / "tests" / "unit" / "test_drag_schema.py")
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    out: list[tuple[str, str, tuple[int, int]]] = []
    mark = next(m for m in t.test_violation_names_field.pytestmark if m.name == "parametrize")
    for obj, field, _words in mark.args[1]:
        out.append((f"test_drag_schema: {field}", obj if isinstance(obj, str) else json.dumps(obj), SIZE))
    for token in ("NaN", "Infinity", "-Infinity"):
        out.append(("test_drag_schema: non-finite", '{"version": 1, "points": [{"handle": [1, 2], "target": [%s, 4]}]}'
                    % token, SIZE))
    out += [
        ("test_drag_schema: invalid JSON", '{"version": 1, "points": [}', SIZE),
        ("test_drag_schema: 65 points", json.dumps([[1, 1, 2, 2]] * 65), SIZE),
        ("test_drag_schema: mask counts", json.dumps({"version": 1, "mask": {"size": [10, 8], "counts": [81]}}),
         (10, 8)),
        ("test_drag_schema: mask size", json.dumps({"version": 1, "mask": {"size": [10, 8], "counts": [80]}}),
         (20, 16)),
        ("test_drag_schema: negative run", json.dumps({"version": 1, "mask": {"size": [10, 8], "counts": [-1, 81]}}),
         (10, 8)),
        ("test_drag_schema: other aspect", json.dumps({"version": 1, "image_size": [200, 100],
                                                       "points": [[10, 20, 30, 40]]}), (200, 200)),
        ("test_bad_inputs: nesting", "[" * 60000 + "]" * 60000, SIZE),
        ("test_bad_inputs: nesting in ui", '{"ui": ' + '{"a": ' * 40 + "1" + "}" * 41, SIZE),
        # issue 23, classes 1-5
        ("class 1: lone surrogate in ui", '{"version": 1, "points": [[1, 2, 3, 4]], "ui": {"n": "\ud800"}}', SIZE),
        ("class 1: lone surrogate key", '{"version": 1, "p\ud800": []}', SIZE),
        ("class 1: escaped surrogate in ui", '{"version": 1, "points": [[1, 2, 3, 4]], "ui": {"n": "\\ud800"}}',
         SIZE),
        ("class 1: escaped surrogate kind", '{"version": 1, "regions": [{"kind": "\\udc00", "handle": []}]}', SIZE),
        ("class 1: escaped surrogate key", '{"version": 1, "p\\ud800": []}', SIZE),
        ("class 2: 400-digit point", '{"version": 1, "points": [[1, 2, 3, %s]]}' % ("9" * 400), SIZE),
        ("class 2: 400-digit image_size", '{"version": 1, "image_size": [%s, 10]}' % ("9" * 400), SIZE),
        ("class 2: 5000-digit point", '{"version": 1, "points": [[1, 2, 3, %s]]}' % ("9" * 5000), SIZE),
        ("class 3: NaN version", '{"version": NaN}', SIZE),
        ("class 3: Infinity version", '{"version": Infinity}', SIZE),
        ("class 3: 1.5 version", '{"version": 1.5}', SIZE),
        ("extra: string point", '{"version": 1, "points": ["abc"]}', SIZE),
        ("extra: mask list", '{"version": 1, "mask": [1, 2]}', SIZE),
        ("extra: mask float count", json.dumps({"version": 1, "mask": {"size": [2, 2], "counts": [1.5, 2.5]}}), SIZE),
        ("extra: region string", '{"version": 1, "regions": ["r"]}', SIZE),
        ("extra: region vertex list", '{"version": 1, "regions": [{"kind": "rect", "handle": 5, "target": []}]}', SIZE),
    ]
    return out


def _run(fn, text, size) -> str:
    try:
        fn(text, size)
    except Exception as e:      # noqa: BLE001 - the point is to record what escapes
        name = type(e).__name__
        return str(e) if name == "DragSchemaError" else f"RAW {name}: {str(e)[:160]}"
    return "(accepted)"


def _pydantic(text: str, size) -> str:
    from dragedit.core import drag_json
    from pydantic import ValidationError
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        return f"(json.loads: {type(e).__name__}: {str(e)[:80]})"
    if isinstance(obj, list):
        obj = {"version": 1, "points": obj}
    try:
        drag_json.DragDoc.model_validate(obj)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    except Exception as e:      # noqa: BLE001
        return f"RAW {type(e).__name__}: {str(e)[:120]}"
    return "(structure valid; geometry checked after)"


def _cell(text: str) -> str:
    text = text.encode("ascii", "backslashreplace").decode()
    return text.replace("|", "\\|").replace("\n", " ")[:240]


def main() -> int:
    from comfy_env import load_pack
    load_pack()
    from dragedit.core.drag_schema import DragInstructions
    old = _old_module().DragInstructions
    rows, raw_after = [], 0
    for src, text, size in cases():
        before = _run(lambda t, s: old.from_json(t, image_size=s), text, size)
        after = _run(lambda t, s: DragInstructions.from_json(t, image_size=s), text, size)
        raw_after += after.startswith("RAW")
        rows.append(f"| {_cell(src)} | {_cell(before)} | {_cell(_pydantic(text, size))} | {_cell(after)} |")
    doc = [
        "# Drag JSON error texts: before / pydantic / after",
        "",
        "Written by `.venv/bin/python -m tools.drag_schema_errors` (issue 23). *before*: the hand-written parser of "
        f"commit {BEFORE_COMMIT}; *pydantic*: pydantic v2's own first error for the same document (loc: msg) "
        "from the models in core/drag_json.py; *after*: core/drag_schema.py now. RAW marks a raw Python error "
        "(not a DragSchemaError).",
        "",
        "Decision: pydantic's own messages are less clear than the pack's (no hint how to fix, 'Input should be a "
        "valid number' for a 400-digit integer, 'Field required' for a target, union branches and tuple indices "
        "in the path), so the models do the typing and bounds and core/drag_json.py translates each error type "
        "back into the pack's wording with the same field path. Every case the tests assert keeps its field and "
        "words; the issue's classes 1-3 are now clear errors.",
        "",
        "| case | before | pydantic (raw) | after |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    (ROOT / "docs" / "drag_schema_errors.md").write_text("\n".join(doc), encoding="utf-8")
    print(f"{len(rows)} cases, {raw_after} raw errors after")
    return 1 if ("--check" in sys.argv and raw_after) else 0


if __name__ == "__main__":
    sys.exit(main())
