"""Node UI in-process: the example workflows store the current output names, the "Drag Preview" node and the
image the editor gets (what the server reports and runs: tests/server/test_node_ui_server.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tools.support.node_calls import run_node
from dragedit.core import preview
from dragedit.core.drag_schema import DragInstructions
from dragedit.nodes._errors import NodeInputError
from dragedit.nodes.dragdiffusion import DragDiffusion
from dragedit.nodes.preview import DragPreview
from dragedit.nodes.regiondrag import RegionDrag

ROOT = Path(__file__).resolve().parents[2]
POINT_JSON = json.dumps({"version": 1, "image_size": [32, 32], "points": [{"handle": [11, 8], "target": [19, 8]}],
                         "regions": []})


def test_example_workflows_store_the_current_output_names():
    from tools import workflow_outputs
    names = workflow_outputs.return_names()
    for f in sorted((ROOT / "example_workflows").glob("*.json")):
        edits = workflow_outputs.renames(f.read_text(), names)
        assert not edits, f"{f.name}: run `python -m tools.workflow_outputs` ({[(e[2], e[3]) for e in edits]})"


def test_workflow_output_rename_keeps_the_text():
    from tools import workflow_outputs
    text = ('{\n  "nodes": [\n    {\n      "id": 4,\n      "type": "DragEditRegionDrag",\n      "inputs": [\n'
            '        {"name": "latent", "type": "LATENT", "link": 1}\n      ],\n      "outputs": [\n'
            '        {\n          "name": "latent",\n          "type": "LATENT",\n          "links": [2]\n        }\n'
            '      ],\n      "widgets_values": ["a ] { \\" string"]\n    }\n  ]\n}\n')
    edits = workflow_outputs.renames(text, workflow_outputs.return_names())
    out = workflow_outputs.apply(text, edits)
    assert out == text.replace('"name": "latent",\n', '"name": "LATENT",\n')     # the input keeps its name


# ---------------------------------------------------------------------------------------------------- IMAGE + VAE
def test_image_and_vae_or_latent_checked_once(sd15_model, cond):
    """The shared rule (nodes/_inputs.image_or_latent) names the node and the input on every all-in-one."""
    img = torch.rand(1, 128, 128, 3)
    lat = {"samples": torch.randn(1, 4, 16, 16)}
    drag = DragInstructions.from_json(POINT_JSON).scaled(128, 128)
    for cls, node, extra in ((DragDiffusion, "DragDiffusion", {"drag": drag}), (RegionDrag, "RegionDrag", {"drag": drag})):
        base = dict(model=sd15_model, positive=cond[0], **extra)
        with pytest.raises(NodeInputError, match=rf"^\[{node}\] input 'latent': both a LATENT and an IMAGE"):
            run_node(cls, latent=lat, image=img, vae=object(), **base)
        with pytest.raises(NodeInputError, match=rf"^\[{node}\] input 'vae': an IMAGE is connected but no VAE"):
            run_node(cls, image=img, **base)
        with pytest.raises(NodeInputError, match=rf"^\[{node}\] input 'image': a VAE is connected but no IMAGE"):
            run_node(cls, vae=object(), **base)
        with pytest.raises(NodeInputError, match=rf"^\[{node}\] input 'latent': connect the image to edit"):
            run_node(cls, **base)
        with pytest.raises(NodeInputError, match=rf"^\[{node}\] input 'image': a batch of 2 images"):
            run_node(cls, image=torch.rand(2, 128, 128, 3), vae=object(), **base)


# ---------------------------------------------------------------------------------------------------- Drag Preview
def test_preview_drawing_colours_and_size():
    img = torch.full((32, 48, 3), 0.5)
    d = DragInstructions.from_json(json.dumps({"version": 1, "points": [{"handle": [5, 5], "target": [30, 5]}],
                                               "regions": [{"kind": "rect", "handle": [[4, 16], [14, 28]],
                                                            "target": [[30, 16], [40, 28]]}]}), (48, 32))
    mask = torch.zeros(32, 48)
    mask[:, :24] = 1
    tracked = DragInstructions.from_json(json.dumps({"version": 1, "points": [{"handle": [20, 5], "target": [30, 5]}]}),
                                         (48, 32))
    out = preview.draw_preview(img, d, mask=mask, tracked=tracked, min_size=480)
    k = preview.upscale_factor((48, 32), 480)
    assert k == 10 and out.shape == (320, 480, 3)
    px = lambda x, y: (out[int(y * k), int(x * k)] * 255).round().tolist()
    assert px(5, 5) == list(preview.HANDLE)             # handle dot
    assert px(30, 5) == list(preview.TARGET)            # target dot
    assert px(25, 5) == list(preview.ARROW)              # the arrow between them
    assert px(20, 4.5) == list(preview.TRACKED)          # the ring around the tracked handle at (20, 5)
    assert px(4, 22) == list(preview.HANDLE) and px(40, 22) == list(preview.TARGET)     # region outlines
    assert abs(px(12, 12)[0] - 128) <= 1 and abs(px(44, 12)[0] - round(128 * preview.DIM)) <= 1    # mask dims outside
    assert preview.upscale_factor((48, 32), 0) == 1 and preview.upscale_factor((4, 4), 10_000) == preview.MAX_FACTOR


def test_preview_node_errors_name_the_input():
    img = torch.rand(1, 32, 32, 3)
    d = DragInstructions.from_json(POINT_JSON)
    with pytest.raises(NodeInputError, match=r"^\[Drag Preview\] input 'drag': .*drawn on a 32x32 image"):
        run_node(DragPreview, image=torch.rand(1, 32, 64, 3), drag=d)
    with pytest.raises(NodeInputError, match=r"^\[Drag Preview\] input 'mask': is 16x16 but the image is 32x32"):
        run_node(DragPreview, image=img, drag=d, mask=torch.ones(1, 16, 16))
    two = DragInstructions.from_json(json.dumps({"version": 1, "points": [{"handle": [1, 1], "target": [5, 5]}] * 2}))
    with pytest.raises(NodeInputError, match=r"^\[Drag Preview\] input 'tracked': has 2 point pairs"):
        run_node(DragPreview, image=img, drag=d, tracked=two)
    with pytest.raises(NodeInputError, match=r"^\[Drag Preview\] input 'drag': JSON must be an object"):
        run_node(DragPreview, image=img, drag=12)
    out = run_node(DragPreview, image=torch.rand(2, 32, 32, 3), drag=d, min_size=0)
    assert out["result"][0].shape == (2, 32, 32, 3)




# ---------------------------------------------------------------------------------------------------- tooltips
MATHS = re.compile(r"[αβγδεηλψσθ←√²∑]|\b[a-zA-Z]_[a-zA-Z0-9]+\b|\|[^|]+\|")


def test_tooltips_say_what_the_knob_does_before_the_symbol():
    """Every input of every node has a tooltip, and its opening words (up to the first bracket) are plain: no Greek
    letter, formula arrow, subscripted symbol or |x| before the words say what the knob does to the picture."""
    from dragedit import NODE_CLASS_MAPPINGS
    bad = []
    for name, cls in NODE_CLASS_MAPPINGS.items():
        for sec, inputs in cls.INPUT_TYPES().items():
            if sec == "hidden":
                continue
            for inp, spec in inputs.items():
                tip = spec[1].get("tooltip", "") if len(spec) > 1 and isinstance(spec[1], dict) else ""
                if not tip:
                    bad.append(f"{name}.{inp}: no tooltip")
                elif MATHS.search(tip.split("(")[0]):
                    bad.append(f"{name}.{inp}: {tip[:70]!r}")
    assert not bad, "\n".join(bad)
