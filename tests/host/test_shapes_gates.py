"""bench/shapes_gates.py (the Shapes v2 feasibility gates) runs on the shipped model and reports every gate."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import shapes_gates

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gates_script_reports_g1_and_g2_on_one_scene(tmp_path, monkeypatch):
    mod = shapes_gates
    monkeypatch.setattr(mod._util, "OUT", tmp_path)
    res = mod.run(None, "gates_test", n_scenes=1)
    assert math.isfinite(res["G1_background_psnr_db"]["median"])
    g2 = res["G2_cos_obj_obj_minus_obj_bg"]
    assert any(k.startswith("dragdiffusion") for k in g2) and any(k.startswith("dragondiffusion") for k in g2)
    assert (tmp_path / "gates_test.json").exists()


def _gates_module():
    return shapes_gates


def test_g3_g4_from_shapesbench_records(tmp_path):
    """G3's moved fraction is the output centroid's shift projected on the requested one (source = the no-edit
    output); G4 takes DragonDiffusion's move rows."""
    import json
    recs = [
        {"method": "no_edit", "case": "p0", "kind": "point_drag", "status": "ok", "centroid_out": [10.0, 10.0]},
        {"method": "dragdiffusion", "case": "p0", "kind": "point_drag", "status": "ok", "centroid_gt": [18.0, 10.0],
         "centroid_out": [14.0, 13.0], "psnr_out": 40.0},
        {"method": "no_edit", "case": "m0", "kind": "move", "status": "ok", "centroid_out": [5.0, 5.0]},
        {"method": "dragondiffusion", "case": "m0", "kind": "move", "status": "ok", "centroid_err": 1.5,
         "ghost": 0.02, "psnr_out": 31.0},
    ]
    p = tmp_path / "sb.json"
    p.write_text(json.dumps({"case_records": recs}))
    rows = {r["gate"]: r["value"] for r in _gates_module().method_gates(p)}
    assert rows["G3 DragDiffusion point drags: moved fraction (>= 0.7)"] == 0.5          # 4 px of 8 along x
    assert rows["G3 DragDiffusion 6-10 px drags: moved fraction (>= 0.7)"] == 0.5
    assert rows["G4 DragonDiffusion move: centroid error px (<= 2)"] == 1.5
    assert rows["G4 DragonDiffusion move: ghost (<= 0.1)"] == 0.02


@pytest.mark.slow
def test_gates_of_an_untrained_design_at_its_own_size(tmp_path, monkeypatch):
    mod = _gates_module()
    monkeypatch.setattr(mod._util, "OUT", tmp_path)
    res = mod.run(None, "gates_random", n_scenes=1, random_arch="v2-64")
    assert res["arch"] == "v2-64" and res["image_size"] == 64 and res["steps"] == 0
    assert math.isfinite(res["G1_background_psnr_db"]["median"])
