"""Frozen copies of the example workflows as users saved them: tests/data/saved_workflows/ui/<key>.json (UI format,
copied from example_workflows/ at aff4d11, under the short keys of tools/support/examples.py) and api/<name>.json (their API-format conversion by workflow_api.ui_to_api
against that code's /object_info). tests/server/test_saved_workflows.py checks that today's nodes still load and run them.

They are written once (`python -m tools.saved_workflows`, which starts a server of its own; `python -m
tools.saved_workflows NAME...` freezes only newly added workflows) and never regenerated: a change that breaks them
breaks users' saved workflows."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
FROZEN = ROOT / "tests" / "data" / "saved_workflows"
UI, API = FROZEN / "ui", FROZEN / "api"


def names() -> list[str]:
    """Names of the frozen workflows."""
    return sorted(p.stem for p in UI.glob("*.json"))


def load(kind: Path, name: str) -> dict:
    return json.loads((kind / f"{name}.json").read_text())


def main(new: Sequence[str] = ()) -> None:  # pragma: no cover - run once by hand
    """Freeze every example workflow, or only the `new` ones (names given on the command line: a workflow added
    later is frozen as it is first published; the others keep their frozen copies)."""
    from tools.support.comfy_server import ComfyServer
    from tools.support.workflow_api import ui_to_api

    UI.mkdir(parents=True, exist_ok=True)
    API.mkdir(parents=True, exist_ok=True)
    from tools.support import examples
    for key in examples.EXAMPLES:
        if not new or key in new:
            shutil.copyfile(examples.path(key), UI / f"{key}.json")
    srv = ComfyServer(extra_nodes=False).start()
    try:
        info = srv.get("/object_info")
        for name in (list(new) or names()):
            api = ui_to_api(load(UI, name), info)
            (API / f"{name}.json").write_text(json.dumps(api, indent=1, sort_keys=True) + "\n")
    finally:
        srv.cleanup()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
