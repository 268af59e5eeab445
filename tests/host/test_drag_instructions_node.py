"""Node "Drag Instructions" called directly, as the executor does (inside torch.inference_mode), no server."""
from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
# the pack as conftest loads it (package `dragedit`), else a bare package over the checkout: no ComfyUI needed
PKG = "dragedit" if "dragedit" in sys.modules else "dragedit_pack_under_test"


def _load():
    """Import nodes/drag_instructions.py as part of the pack (its imports are relative, like in ComfyUI)."""
    if PKG not in sys.modules:
        pkg = types.ModuleType(PKG)
        pkg.__path__ = [str(ROOT)]
        sys.modules[PKG] = pkg
    return importlib.import_module(f"{PKG}.nodes.drag_instructions")


mod = _load()
schema = importlib.import_module(f"{PKG}.core.drag_schema")
NodeInputError = importlib.import_module(f"{PKG}.nodes._errors").NodeInputError


def run(**inputs):
    with torch.inference_mode():
        return mod.DragInstructionsNode().build(**inputs)


def image(h=256, w=256, b=1):
    return torch.rand(b, h, w, 3)


def test_registration_and_tooltips():
    assert mod.NODE_CLASS_MAPPINGS == {"DragInstructions": mod.DragInstructionsNode}
    assert mod.NODE_DISPLAY_NAME_MAPPINGS == {"DragInstructions": "Drag Instructions"}
    cls = mod.DragInstructionsNode
    assert cls.CATEGORY == "DragEdit" and cls.RETURN_TYPES == ("DRAG", "MASK")
    assert len(cls.OUTPUT_TOOLTIPS) == 2
    spec = cls.INPUT_TYPES()
    names = []
    for section in spec.values():
        for name, entry in section.items():
            names.append(name)
            assert entry[1].get("tooltip"), name
    assert sorted(names) == ["drag_data", "drag_json", "image", "mask"]
    assert spec["required"]["drag_data"][1]["multiline"] and spec["required"]["drag_data"][1]["dynamicPrompts"] is False
    assert spec["optional"]["drag_json"][1]["forceInput"]
    json.loads(spec["required"]["drag_data"][1]["default"])


def test_outputs_for_widget_json():
    text = json.dumps({"version": 1, "points": [{"handle": [10, 20], "target": [30, 40.5]}],
                       "regions": [{"kind": "rect", "handle": [[0, 0], [16, 16]], "target": [[100, 64], [116, 80]]}]})
    drag, mask = run(image=image(136, 200), drag_data=text)
    assert isinstance(drag, schema.DragInstructions)
    assert drag.image_size == (200, 136)
    assert drag.points == (((10.0, 20.0), (30.0, 40.5)),) and len(drag.regions) == 1
    assert mask.shape == (1, 136, 200) and mask.dtype == torch.float32 and bool((mask == 1).all())


def test_drag_json_input_wins_over_widget():
    drag, _ = run(image=image(), drag_data="[[1, 1, 2, 2]]", drag_json="[[5, 6, 7, 8], [9, 9, 9, 9]]")
    assert drag.points[0] == ((5.0, 6.0), (7.0, 8.0)) and len(drag.points) == 2
    drag, _ = run(image=image(), drag_data="")
    assert drag.is_empty


def test_error_names_node_input_and_field():
    text = json.dumps({"version": 1, "points": [[1, 1, 2, 2], {"handle": [5, 5], "target": [300, 12]}]})
    with pytest.raises(NodeInputError) as e:
        run(image=image(), drag_data=text)
    assert str(e.value) == ("[Drag Instructions] input 'drag_data': points[1].target (300, 12) lies outside the "
                            "256x256 image")
    with pytest.raises(NodeInputError, match=r"input 'drag_json': JSON is not valid JSON"):
        run(image=image(), drag_data="[]", drag_json="{oops")
    with pytest.raises(NodeInputError, match=r"regions\[0\]\.target is missing"):
        run(image=image(), drag_data=json.dumps({"regions": [{"kind": "rect", "handle": [[0, 0], [9, 9]]}]}))


def test_batch_and_bad_image():
    with pytest.raises(NodeInputError, match=r"input 'image': a batch of 2 images"):
        run(image=image(b=2), drag_data="[]")
    with pytest.raises(NodeInputError, match=r"input 'image': expected an IMAGE"):
        run(image=torch.rand(64, 64, 3), drag_data="[]")


def test_mask_input_checks():
    m = torch.zeros(1, 128, 128)
    m[:, 10:20, 10:20] = 1
    with pytest.raises(NodeInputError, match=r"input 'mask': is 128x128 but the image is 256x256"):
        run(image=image(), drag_data="[]", mask=m)
    with pytest.raises(NodeInputError, match=r"input 'mask': a batch of 2 masks"):
        run(image=image(), drag_data="[]", mask=torch.ones(2, 256, 256))
    # Load Image gives a 64x64 zero mask for images without alpha: that means "no mask"
    _, out = run(image=image(), drag_data="[]", mask=torch.zeros(64, 64))
    assert out.shape == (1, 256, 256) and bool((out == 1).all())
    good = torch.zeros(256, 256)
    good[50:100, 60:90] = 1
    _, out = run(image=image(), drag_data="[]", mask=good)
    assert torch.equal(out[0], good)


def test_json_mask_is_used_and_combined():
    painted = torch.zeros(32, 48)
    painted[4:20, 8:40] = 1
    text = schema.DragInstructions(image_size=(48, 32)).with_mask(painted).to_json()
    drag, out = run(image=image(32, 48), drag_data=text)
    assert drag.has_mask and torch.equal(out[0], painted)
    extra = torch.zeros(32, 48)
    extra[10:30, 0:20] = 1
    _, out = run(image=image(32, 48), drag_data=text, mask=extra[None])
    assert torch.equal(out[0], painted * extra)
    apart = torch.zeros(32, 48)
    apart[25:30, 0:5] = 1
    with pytest.raises(NodeInputError, match="do not overlap"):
        run(image=image(32, 48), drag_data=text, mask=apart)


def test_same_aspect_instructions_are_rescaled_other_aspect_refused():
    text = json.dumps({"version": 1, "image_size": [128, 128], "points": [[10, 20, 30, 40]]})
    drag, _ = run(image=image(), drag_data=text)
    assert drag.points == (((20.0, 40.0), (60.0, 80.0)),)
    with pytest.raises(NodeInputError, match=r"drawn on a 128x128 image but the image is 256x128"):
        run(image=image(128, 256), drag_data=text)


def test_save_preview_is_failure_safe(tmp_path, monkeypatch):
    img = image(8, 12)
    try:
        import folder_paths  # noqa: F401  (present only when ComfyUI is on sys.path)
    except Exception:
        assert mod.save_preview(img) == []
        return
    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: str(tmp_path))
    out = mod.save_preview(img)
    assert out and out[0]["type"] == "temp" and (tmp_path / out[0]["filename"]).is_file()
    monkeypatch.setattr(folder_paths, "get_temp_directory", lambda: (_ for _ in ()).throw(RuntimeError("x")))
    assert mod.save_preview(img) == []
