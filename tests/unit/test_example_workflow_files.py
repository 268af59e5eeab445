"""The example workflow files: present, each with a note, a thumbnail, titles that tell same-type nodes apart."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from tools.support import examples
from tools.support.workflow_layout import NOTE_TYPES


ROOT = Path(__file__).resolve().parents[2]


WF = ROOT / "example_workflows"


FILES = sorted(WF.glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_example_workflows():
    names = {examples.key_of(p) for p in FILES}
    assert {"regiondrag", "dragdiffusion", "dragondiffusion_move", "dragondiffusion_drag", "ledits",
            "sd15_regiondrag", "sd15_dragdiffusion", "sd15_ledits", "sdxl_regiondrag", "sdxl_ledits"} <= names


def test_file_names_are_the_template_titles():
    """The template browser titles a custom node's template with its file name (issue 21 item 8): every file is one
    of tools/support/examples.py's readable names (no underscores, no file-system-unsafe characters), and in the
    alphabetical order the pack lists them (web/templates_order.js) the demo workflows, which need no download, come
    first (a new model family's prefix must sort after "Demo")."""
    assert sorted(p.name for p in FILES) == sorted(examples.file_name(k) for k in examples.EXAMPLES)
    titles = sorted((examples.EXAMPLES[k] for k in examples.EXAMPLES), key=str.casefold)
    for t in titles:
        assert "_" not in t and not re.search(r'[<>:"/\\|?*]', t), t
        assert re.fullmatch(r"[A-Za-z0-9.-]+ - [A-Za-z0-9 +]+", t), t         # "<model> - <what it does>"
    demo = [t.startswith(examples.DEMO_PREFIX) for t in titles]
    assert demo == sorted(demo, reverse=True), titles                          # the demo ones first


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
def test_checkpoints_carry_download_metadata(path):
    """Each Load Checkpoint lists its model as the frontend's missing-model panel reads it (node properties "models":
    [{name, url, directory}], name = the widget value; a download is offered for huggingface.co .safetensors URLs)."""
    for n in _load(path)["nodes"]:
        if n["type"] != "CheckpointLoaderSimple":
            continue
        models = n.get("properties", {}).get("models") or []
        assert [m["name"] for m in models] == [n["widgets_values"][0]], path.name
        for m in models:
            assert m["directory"] == "checkpoints", m
            assert m["url"].startswith("https://huggingface.co/"), m
            assert m["url"].split("?")[0].endswith("/" + m["name"]), m


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_input_images_ship_with_the_pack(path):
    """Every Load Image names a picture the pack ships in demo/images (copied into ComfyUI's input on load)."""
    for n in _load(path)["nodes"]:
        if n["type"] == "LoadImage":
            assert (ROOT / "demo" / "images" / n["widgets_values"][0]).is_file(), (path.name, n["widgets_values"][0])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_opens_at_a_readable_zoom(path):
    """The frontend opens a template fitted to the canvas (1.58: fitToBounds at 75 %); on a 1920 x 1080 screen that
    zoom, and the stored view (extra.ds) for frontends that use it, stay where titles and widgets are drawn."""
    from tools.support.workflow_layout import READABLE, fit_scale
    wf = _load(path)
    assert fit_scale(wf) >= READABLE, f"{path.name}: opens at {fit_scale(wf):.2f}"
    assert wf["extra"]["ds"]["scale"] >= READABLE, wf["extra"]["ds"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_notes_show_all_text_or_say_they_scroll(path):
    """A note whose text is longer than its box (workflow_layout.note_height) opens with a line saying it scrolls."""
    from tools.support.workflow_layout import SCROLL_HINT, note_height
    for n in _load(path)["nodes"]:
        if n["type"] in NOTE_TYPES:
            text = str(n["widgets_values"][0])
            assert note_height(text, n["size"][0]) <= n["size"][1] or text.startswith(SCROLL_HINT), (path.name, n["id"])


def test_real_image_notes_speak_of_drags_only_where_there_is_one():
    """The LEDITS notes describe prompts and concepts: no drag coordinates."""
    for path in FILES:
        if "ledits" in examples.key_of(path):
            notes = " ".join(str(n["widgets_values"][0]) for n in _load(path)["nodes"] if n["type"] in NOTE_TYPES)
            assert not re.search(r"\bdrag\b", notes.lower()), path.name
