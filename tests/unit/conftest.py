"""Unit tests: pure math, schema, geometry and files; no ComfyUI import at all (core modules are imported as the
top-level package `core`, not through the pack). When only unit tests run, each one fails if ComfyUI or the pack
got imported."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent


def _unit_only(session: pytest.Session) -> bool:
    return all(Path(str(item.fspath)).resolve().is_relative_to(UNIT) for item in session.items)


@pytest.fixture(autouse=True)
def _no_comfyui(request):
    yield
    if _unit_only(request.session):
        loaded = sorted(m for m in ("comfy", "dragedit", "folder_paths") if m in sys.modules)
        if loaded:
            pytest.fail(f"a unit test imported {loaded}: move it to tests/host (in-process ComfyUI) or keep it pure")
