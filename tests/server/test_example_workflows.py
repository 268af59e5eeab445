"""example_workflows/ against the server's /object_info: no two nodes drawn on top of each other (sizes at least
what the frontend computes for their widgets), and groups framing the branches of a workflow with more than one
result (the files alone: tests/unit/test_example_workflow_files.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.support.workflow_layout import inside, overlaps

ROOT = Path(__file__).resolve().parents[2]
WF = ROOT / "example_workflows"
FILES = sorted(WF.glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_no_overlapping_nodes(path, object_info):
    """Node boxes (title bar + body, body at least the frontend's computeSize) do not intersect."""
    assert overlaps(_load(path), object_info) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_branches_are_grouped(path, object_info):
    """A workflow with more than one saved result has groups, and each Save Image sits in one."""
    wf = _load(path)
    saves = [n for n in wf["nodes"] if n["type"] == "SaveImage"]
    if len(saves) < 2:
        return
    groups = wf.get("groups") or []
    assert len(groups) >= 2, path.name
    for s in saves:
        assert any(inside(s, g, object_info) for g in groups), f"{path.name}: node {s['id']} is in no group"
