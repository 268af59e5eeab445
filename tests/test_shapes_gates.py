"""bench/shapes_gates.py (the Shapes v2 feasibility gates) runs on the shipped model and reports every gate."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gates_script_reports_g1_and_g2_on_one_scene(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("shapes_gates", ROOT / "bench" / "shapes_gates.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod._util, "OUT", tmp_path)
    res = mod.run(None, "gates_test", n_scenes=1)
    assert math.isfinite(res["G1_background_psnr_db"]["median"])
    g2 = res["G2_cos_obj_obj_minus_obj_bg"]
    assert any(k.startswith("dragdiffusion") for k in g2) and any(k.startswith("dragondiffusion") for k in g2)
    assert (tmp_path / "gates_test.json").exists()
