"""ShapesBench: the fixed case set, the metrics and the colour/shape classifier on rendered ground truth, and a quick
subset through the real ComfyUI server (numbers produced and sane; no quality thresholds)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from bench import shapes_cases as S

from bench import shapes_scoring as M
from bench import shapesbench as SB
from dragedit.core.drag_schema import DragInstructions  # noqa: E402
from dragedit.demo.shapes import renderer as R  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cases():
    return S.build_cases()


def _first_per_kind(cases, n):
    out = []
    for k in S.KINDS:
        out += [c for c in cases if c.kind == k][:n]
    return out


# ------------------------------------------------------------------------------------------------ the case set
def test_case_set_is_fixed_stratified_and_valid(cases):
    assert len(cases) >= 100
    assert S.fingerprint(S.build_cases()) == S.fingerprint(cases)            # same seed, same cases
    assert [c.kind for c in cases[:len(S.KINDS)]] == list(S.KINDS)           # a small N covers every kind
    assert len({c.id for c in cases}) == len(cases)
    for c in cases:
        if c.kind in S.GEOMETRIC:
            dx, dy = c.displacement
            # never a whole-latent-cell (even pixel) shift on both axes: that would make copy-paste exact
            assert not (float(dx).is_integer() and float(dy).is_integer() and dx % 2 == 0 and dy % 2 == 0), c.id
            assert math.hypot(dx, dy) >= 2.5, c.id
            forms = ["points"] + (["region", "move"] if c.region is not None else ["move"])
            for form in forms:
                d = DragInstructions.from_json(c.drag_json(form), image_size=(S.SIZE, S.SIZE))
                assert d.image_size == (S.SIZE, S.SIZE)
            for (hx, hy), (tx, ty) in c.points:                              # point pairs move by the displacement
                if c.kind != "resize":
                    assert abs(tx - hx - dx) < 0.02 and abs(ty - hy - dy) < 0.02, c.id
        else:
            assert c.concepts, c.id
    tags = {t for c in cases for t in c.tags}
    assert {"odd", "subpixel", "shaded", "distractor", "occlusion", "polygon", "2pts"} <= tags


def test_select_cases_and_overrides(cases):
    sub = SB.select_cases(cases, 9)
    assert [c.id for c in sub] == [c.id for c in cases[:9]]
    assert {c.kind for c in SB.select_cases(cases, None, ["move"])} == {"move"}
    ms = SB.methods()
    SB.apply_overrides(ms, ["7", "ledits=3"], ["dragdiffusion.iterations=5", "regiondrag.paste_every_step=true"])
    by = {m.name: m for m in ms}
    assert by["regiondrag"].settings["steps"] == 7 and by["ledits"].settings["steps"] == 3
    assert by["dragdiffusion"].settings["iterations"] == 5 and by["regiondrag"].settings["paste_every_step"] is True
    with pytest.raises(ValueError, match="nope"):
        SB.apply_overrides(ms, ["nope=3"])
    with pytest.raises(ValueError, match="method.key=value"):
        SB.apply_overrides(ms, [], ["regiondrag.bogus=1"])


# ------------------------------------------------------------------------------------------------ metrics on GT
def test_metrics_of_ground_truth_are_perfect(cases):
    for c in _first_per_kind(cases, 4):
        gt = S.gt_image(c)
        m = M.case_metrics(c, gt, gt)
        assert m["psnr_out"] == S.PSNR_CAP and m["psnr_all"] == S.PSNR_CAP and m["mae_out"] == 0.0, c.id
        assert m["ghost"] in (None, 0.0), (c.id, m["ghost"])
        assert m["others_ok"], c.id
        if c.kind in S.GEOMETRIC:
            assert m["centroid_err"] == 0.0 and m["area_err"] == 0.0 and m["kept"], c.id
        else:
            assert m["success"], (c.id, m["found"])


def test_metrics_see_a_missing_edit(cases):
    """'No edit' (the input) against the ground truth: the object is off by the displacement, its colour is left
    behind, concept edits fail, and nothing outside the edit region differs."""
    for c in _first_per_kind(cases, 4):
        m = M.case_metrics(c, S.input_image(c))
        assert m["mae_out"] == 0.0, c.id
        assert m["ghost"] is None or m["ghost"] > 0.5, (c.id, m["ghost"])
        if c.kind in ("point_drag", "region_drag", "move") and "occlusion" not in c.tags:
            assert abs(m["centroid_err"] - math.hypot(*c.displacement)) < 1.0, (c.id, m["centroid_err"])
        elif c.kind not in S.GEOMETRIC:
            assert not m["success"], c.id


def test_psnr_mae_and_residue_basics():
    a, b = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    assert M.psnr(a, a) == S.PSNR_CAP and M.psnr(a, b) == 0.0
    assert M.mae(a, b) == 1.0 and M.mae(a, b, torch.zeros(8, 8, dtype=torch.bool).fill_(True)) == 1.0
    assert abs(M.psnr(a, a + 0.1) - 20.0) < 1e-4


def test_copy_paste_baseline_moves_the_object(cases):
    """The numpy baseline follows the case's own regions: region pairs move a flat or shaded object to within a
    fraction of a pixel (sub-pixel shifts by bilinear sampling)."""
    for c in [c for c in cases if c.kind in ("region_drag", "move")][:8]:
        out = S.quantize(M.copy_paste(c, S.input_image(c)))
        m = M.case_metrics(c, out)
        assert m["centroid_err"] is not None and m["centroid_err"] < 0.5, (c.id, m["centroid_err"])
        assert m["ghost"] < 0.05, (c.id, m["ghost"])
    assert M.copy_paste(next(c for c in cases if c.kind == "concept_remove"), torch.zeros(3, 32, 32)) is None


# ------------------------------------------------------------------------------------------------ classifier
def test_classifier_right_on_rendered_scenes(cases):
    """Colour (mean of inner pixels -> palette) and kind (IoU with ideal coverages) of every clearly visible shape in
    150 random scenes (shaded ones included, sizes down to 2.8 px) and in the inputs / ground truths of the cases."""
    rng = random.Random(7)
    checked = 0
    scenes = []
    for _ in range(150):
        sc = R.random_scene(rng, two_p=0.6, shading_p=0.6)
        if rng.random() < 0.3:
            sc = sc.resized(0, 0.7)
        scenes.append(sc)
    scenes += [c.scene for c in cases[::3]] + [c.target for c in cases[::3]]
    for sc in scenes:
        img = S.quantize(R.render(sc))
        for i, s in enumerate(sc.shapes):
            if M.visible_fraction(sc, i) < 0.8:
                continue
            others = [o for j, o in enumerate(sc.shapes) if j != i]
            assert M.classify_object(img, M.object_region(s, others)) == (s.colour, s.kind), (sc, i)
            checked += 1
    assert checked > 250
    # nothing there: background only
    c = next(c for c in cases if c.kind == "concept_remove")
    gt = S.gt_image(c)
    assert M.classify_object(gt, M.object_region(c.shape, c.others("target"))) is None


# ------------------------------------------------------------------------------------------------ through the server
def test_quick_subset_through_the_real_server(comfy_server, cases):
    """First 7 cases (one per kind), RegionDrag and LEDITS with few steps, the baselines and one method whose node
    does not exist: every number is produced and in range, the missing method is listed, not skipped."""
    sub = SB.select_cases(cases, len(S.KINDS))
    ms = [m for m in SB.methods() if m.name in ("regiondrag", "ledits")]
    SB.apply_overrides(ms, ["6"])
    ghost = SB.Method("not_a_method", ("DragEditNoSuchNode",), {"move": "region"}, {}, SB._graph_regiondrag)
    # a prompt the node rejects (nothing inverted at this strength) is recorded as an error, not dropped
    broken = SB.Method("broken", ms[0].nodes, {"move": "region"}, dict(ms[0].settings, strength=0.01),
                       SB._graph_regiondrag)
    recs, facts = SB.run_bench(comfy_server, sub, ms + [ghost, broken], timeout=300, log=lambda s: None)
    assert facts["missing"] == {"not_a_method": "node class(es) not registered: DragEditNoSuchNode"}
    assert facts["vae_roundtrip"]["max_abs_levels"] <= 1
    failed = [r for r in recs if r["method"] == "broken"]
    assert len(failed) == 1 and failed[0]["status"] == "error" and "RegionDrag" in failed[0]["error"], failed
    recs = [r for r in recs if r["method"] != "broken"]
    errors = [(r["method"], r["case"], r.get("error")) for r in recs if r["status"] != "ok"]
    assert not errors, errors
    by = {}
    for r in recs:
        by.setdefault(r["method"], set()).add(r["kind"])
        assert 0.0 <= r["psnr_out"] <= S.PSNR_CAP and 0.0 <= r["mae_out"] <= 1.0, r
        assert r["ghost"] is None or 0.0 <= r["ghost"] <= 1.0, r
        assert math.isfinite(r["seconds"]) and r["seconds"] >= 0.0, r
        if r["kind"] in S.GEOMETRIC:
            assert r["centroid_err"] is None or (math.isfinite(r["centroid_err"]) and r["centroid_err"] >= 0), r
            assert isinstance(r["kept"], bool)
        else:
            assert isinstance(r["success"], bool)
        assert tuple(r["_image"].shape) == (3, S.SIZE, S.SIZE)
    assert by["regiondrag"] == {"point_drag", "region_drag", "move", "resize"}
    assert by["ledits"] == {"recolour", "concept_recolour", "concept_remove"}
    assert by["no_edit"] == set(S.KINDS) and "copy_paste" in by
    rows = SB.summarize(recs, ms + [ghost], facts["missing"], list(S.KINDS))
    assert any(r["method"] == "not_a_method" and r["kind"].startswith("MISSING") for r in rows)
    for r in rows:
        if r["n"]:
            assert r["fail"] == 0
            for key in ("<1px", "<2px", "kept", "concept ok"):
                assert r[key] is None or 0.0 <= r[key] <= 1.0, (r, key)
            assert r["PSNR out"] is not None and 0 <= r["PSNR out"] <= S.PSNR_CAP
