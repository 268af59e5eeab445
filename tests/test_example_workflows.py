"""example_workflows/ as templates: every workflow has a note, a thumbnail the template browser finds
(<name>.jpg next to <name>.json), readable titles, no two nodes drawn on top of each other (sizes at least what the
frontend computes for their widgets), and groups framing the branches of a workflow with more than one result."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from support.workflow_layout import NOTE_TYPES, inside, overlaps

ROOT = Path(__file__).resolve().parents[1]
WF = ROOT / "example_workflows"
FILES = sorted(WF.glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


def test_there_are_example_workflows():
    names = {p.stem for p in FILES}
    assert {"regiondrag", "dragdiffusion", "dragondiffusion_move", "dragondiffusion_drag", "ledits",
            "sd15_regiondrag", "sd15_dragdiffusion", "sd15_ledits", "sdxl_regiondrag", "sdxl_ledits"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_no_overlapping_nodes(path, object_info):
    """Node boxes (title bar + body, body at least the frontend's computeSize) do not intersect."""
    assert overlaps(_load(path), object_info) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_has_a_note(path):
    notes = [n for n in _load(path)["nodes"] if n["type"] in NOTE_TYPES]
    assert notes, f"{path.name} has no Note / MarkdownNote"
    assert any(len(str((n.get("widgets_values") or [""])[0]).strip()) > 80 for n in notes), path.name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_has_a_thumbnail(path):
    """The frontend asks for /api/workflow_templates/<pack>/<name>.jpg (mediaSubtype "jpg")."""
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"no thumbnail {thumb.name}"
    with Image.open(thumb) as im:
        assert im.format == "JPEG"
        assert 200 <= im.width <= 1024 and 0.75 <= im.width / im.height <= 1.34, im.size
    assert thumb.stat().st_size < 150_000


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_same_type_nodes_are_told_apart_by_titles(path):
    """Two nodes of one type (two CLIP Text Encode, two Save Image) carry different titles."""
    wf = _load(path)
    by_type: dict = {}
    for n in wf["nodes"]:
        if n["type"] not in NOTE_TYPES and n["type"] not in ("VAEDecode", "VAEEncode"):
            by_type.setdefault(n["type"], []).append(n.get("title"))
    for t, titles in by_type.items():
        if len(titles) > 1:
            assert None not in titles and len(set(titles)) == len(titles), f"{path.name}: {t} titles {titles}"


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
