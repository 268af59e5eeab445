"""DRAG instructions schema: parsing, canonical JSON, validation errors with field paths, rescaling, RLE mask."""
from __future__ import annotations

import json

import pytest
import torch

from core.drag_schema import (MAX_JSON_BYTES, DragInstructions, DragSchemaError, RegionPair,  # noqa: E402
                              rle_decode, rle_encode)

SIZE = (256, 256)


def err(text, image_size=SIZE) -> DragSchemaError:
    with pytest.raises(DragSchemaError) as e:
        DragInstructions.from_json(text if isinstance(text, str) else json.dumps(text), image_size=image_size)
    return e.value


def doc(**kw) -> dict:
    return {"version": 1, **kw}


# ------------------------------------------------------------------ parsing and round trip
def test_full_document_round_trips():
    obj = doc(image_size=[256, 256],
              points=[{"handle": [10, 20.5], "target": [30, 40]}],
              regions=[{"kind": "rect", "handle": [[10, 10], [50, 40]], "target": [[100, 10], [140, 40]]},
                       {"kind": "polygon", "handle": [[0, 0], [20, 0], [10, 15]],
                        "target": [[50, 50], [70, 50], [60, 65]]},
                       {"kind": "polygon", "handle": [[0, 100], [40, 100], [40, 140], [0, 140]],
                        "points": [{"handle": [20, 120], "target": [33, 125]}]}])
    d = DragInstructions.from_json(json.dumps(obj))
    assert d.image_size == (256, 256)
    assert d.points == (((10.0, 20.5), (30.0, 40.0)),)
    assert d.regions[0] == RegionPair("rect", ((10.0, 10.0), (50.0, 40.0)), ((100.0, 10.0), (140.0, 40.0)))
    assert d.regions[2].moved_by_points and d.regions[2].points == (((20.0, 120.0), (33.0, 125.0)),)
    again = DragInstructions.from_json(d.to_json())
    assert again == d
    assert json.loads(d.to_json())["points"][0] == {"handle": [10, 20.5], "target": [30, 40]}


def test_bare_list_shorthand_and_point_list_form():
    d = DragInstructions.from_json("[[10, 20, 30, 40], [1.5, 2, 3, 4]]", image_size=SIZE)
    assert d.points == (((10.0, 20.0), (30.0, 40.0)), ((1.5, 2.0), (3.0, 4.0)))
    assert d.image_size == SIZE
    d2 = DragInstructions.from_json(json.dumps(doc(points=[[10, 20, 30, 40]])), image_size=SIZE)
    assert d2.points == d.points[:1]


def test_empty_text_and_missing_lists_mean_no_instructions():
    for text in ("", "   ", "{}", '{"version": 1}', "[]"):
        d = DragInstructions.from_json(text, image_size=(64, 48))
        assert d.is_empty and d.image_size == (64, 48) and not d.has_mask


def test_ui_state_is_ignored():
    d = DragInstructions.from_json(json.dumps(doc(points=[[1, 1, 2, 2]], ui={"zoom": 2, "tool": "rect"})),
                                   image_size=SIZE)
    assert len(d.points) == 1 and "ui" not in d.to_json()


def test_four_vertex_axis_aligned_rect_is_accepted():
    r = {"kind": "rect", "handle": [[10, 10], [50, 10], [50, 40], [10, 40]],
         "target": [[60, 10], [60, 40], [100, 40], [100, 10]]}
    d = DragInstructions.from_json(json.dumps(doc(regions=[r])), image_size=SIZE)
    assert d.regions[0].rect_box("handle") == (10, 10, 50, 40)
    assert d.regions[0].rect_box("target") == (60, 10, 100, 40)


def test_coordinates_on_the_far_edge_are_inside():
    d = DragInstructions.from_json("[[0, 0, 256, 256]]", image_size=SIZE)
    assert d.points[0][1] == (256.0, 256.0)


# ------------------------------------------------------------------ errors name the field
def test_outside_image_message():
    e = err(doc(points=[[1, 1, 2, 2], {"handle": [5, 5], "target": [300, 12]}]))
    assert e.field == "points[1].target"
    assert str(e) == "points[1].target (300, 12) lies outside the 256x256 image"


@pytest.mark.parametrize("obj, field, words", [
    (doc(points=[{"handle": [1, 2]}]), "points[0].target", "missing"),
    (doc(points=[{"handle": [1, 2], "target": None}]), "points[0].target", "missing"),
    ([[1, 2, 3]], "points[0]", "4 numbers"),
    (doc(points=[{"handle": [1, 2], "target": [3]}]), "points[0].target", "2 numbers"),
    (doc(points=[{"handle": [1, "a"], "target": [3, 4]}]), "points[0].handle[1]", "number"),
    (doc(points=[{"handle": [1, True], "target": [3, 4]}]), "points[0].handle[1]", "number"),
    (doc(points=[{"handle": [1, 2], "target": [3, 4], "radius": 3}]), "points[0].radius", "not a known key"),
    (doc(points={"a": 1}), "points", "must be a list"),
    (doc(pionts=[]), "pionts", "not a known key"),
    (doc(regions=[{"kind": "circle", "handle": [[1, 1]], "target": [[2, 2]]}]), "regions[0].kind", "rect"),
    (doc(regions=[{"kind": "polygon", "handle": [[1, 1], [5, 1]], "target": [[2, 2], [3, 3]]}]),
     "regions[0].handle", "3 to 16"),
    (doc(regions=[{"kind": "polygon", "handle": [[i, (i * 7) % 13] for i in range(17)],
                   "target": [[i, (i * 7) % 13] for i in range(17)]}]), "regions[0].handle", "3 to 16"),
    (doc(regions=[{"kind": "rect", "handle": [[1, 1], [5, 1], [5, 5]], "target": [[1, 1], [5, 1], [5, 5]]}]),
     "regions[0].handle", "2 opposite corners or 4"),
    (doc(regions=[{"kind": "polygon", "handle": [[0, 0], [10, 0], [5, 8]],
                   "target": [[0, 0], [10, 0], [10, 10], [0, 10]]}]), "regions[0].target", "same count"),
    (doc(regions=[{"kind": "polygon", "handle": [[0, 0], [10, 0], [5, 8]]}]), "regions[0].target", "missing"),
    (doc(regions=[{"kind": "polygon", "handle": [[0, 0], [10, 0], [5, 8]], "target": [[0, 0], [10, 0], [5, 8]],
                   "points": [[1, 1, 2, 2]]}]), "regions[0]", "both"),
    (doc(regions=[{"kind": "polygon", "handle": [[0, 0], [10, 0], [20, 0]], "target": [[0, 0], [10, 0], [5, 8]]}]),
     "regions[0].handle", "zero area"),
    (doc(regions=[{"kind": "polygon", "handle": [[0, 0], [10, 10], [10, 0], [0, 10]],
                   "target": [[0, 0], [10, 0], [10, 10], [0, 10]]}]), "regions[0].handle", "crosses itself"),
    (doc(regions=[{"kind": "polygon", "handle": [[0, 0], [10, 0], [20, 0], [5, 10]],
                   "target": [[0, 0], [10, 0], [10, 10], [0, 10]]}]), "regions[0].handle", "collinear"),
    (doc(regions=[{"kind": "polygon", "handle": [[0, 0], [0, 0], [5, 8]], "target": [[0, 0], [10, 0], [5, 8]]}]),
     "regions[0].handle[1]", "repeats vertex 0"),
    (doc(regions=[{"kind": "rect", "handle": [[10, 10], [10, 40]], "target": [[60, 10], [90, 40]]}]),
     "regions[0].handle", "zero width"),
    (doc(regions=[{"kind": "rect", "handle": [[10, 0], [20, 10], [10, 20], [0, 10]],
                   "target": [[10, 0], [20, 10], [10, 20], [0, 10]]}]), "regions[0].handle", "axis-aligned"),
    (doc(regions=[{"kind": "rect", "handle": [[10, 10], [50, 40]], "target": [[200, 10], [270, 40]]}]),
     "regions[0].target[1]", "lies outside the 256x256 image"),
    (doc(regions=[{"kind": "rect", "handle": [[10, 10], [50, 40]], "points": [[20, 20, 20, -1]]}]),
     "regions[0].points[0].target", "outside"),
    (doc(regions=[{"kind": "rect", "handle": [[10, 10], [50, 40]], "points": []}]), "regions[0].target", "missing"),
    ({"version": 2}, "version", "not supported"),
    ({"version": "1"}, "version", "integer"),
    ({"version": 1, "image_size": [0, 10]}, "image_size", "between 1"),
    ({"version": 1, "image_size": [10.5, 10]}, "image_size[0]", "whole number"),
    ('"hello"', "JSON", "object"),
    (7, "JSON", "object"),
])
def test_violation_names_field(obj, field, words):
    e = err(obj)
    assert e.field == field, str(e)
    assert words in e.message, str(e)
    assert str(e).startswith(field)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers(token):
    e = err('{"version": 1, "points": [{"handle": [1, 2], "target": [%s, 4]}]}' % token)
    assert e.field == "points[0].target[0]" and "finite" in e.message


def test_invalid_json_says_where():
    e = err('{"version": 1, "points": [}')
    assert e.field == "JSON" and "line 1 column" in e.message


def test_limits():
    e = err([[1, 1, 2, 2]] * 65)
    assert e.field == "points" and "64" in e.message
    region = {"kind": "rect", "handle": [[1, 1], [5, 5]], "target": [[6, 6], [9, 9]]}
    e = err(doc(regions=[region] * 33))
    assert e.field == "regions" and "32" in e.message
    moved = {"kind": "rect", "handle": [[1, 1], [50, 50]], "points": [[2, 2, 3, 3]] * 40}
    e = err(doc(points=[[1, 1, 2, 2]] * 30, regions=[moved]))      # 70 pairs counting the region's
    assert e.field == "points" and "in total" in e.message
    big = json.dumps(doc(points=[], ui={"pad": "x" * MAX_JSON_BYTES}))
    e = err(big)
    assert e.field == "JSON" and "256 KiB" in e.message


def test_validate_checks_directly_built_instances():
    d = DragInstructions(points=(((1.0, 2.0), (float("nan"), 3.0)),), image_size=(10, 10))
    with pytest.raises(DragSchemaError) as e:
        d.validate()
    assert e.value.field == "points[0].target[0]"
    d = DragInstructions(points=(((1.0, 2.0), (11.0, 3.0)),), image_size=(10, 10))
    with pytest.raises(DragSchemaError, match=r"points\[0\]\.target \(11, 3\) lies outside the 10x10 image"):
        d.validate()
    DragInstructions(points=(((1.0, 2.0), (11.0, 3.0)),)).validate()   # size unknown: no inside check


# ------------------------------------------------------------------ image size policy
def test_same_size_kept_other_aspect_refused_same_aspect_rescaled():
    text = json.dumps(doc(image_size=[200, 100], points=[[10, 20, 30, 40]],
                          regions=[{"kind": "rect", "handle": [[0, 0], [20, 10]], "target": [[40, 0], [60, 10]]}]))
    assert DragInstructions.from_json(text, image_size=(200, 100)).points[0] == ((10, 20), (30, 40))
    e = err(text, image_size=(200, 200))
    assert e.field == "image_size" and "200x100" in e.message and "200x200" in e.message
    d = DragInstructions.from_json(text, image_size=(400, 200))
    assert d.image_size == (400, 200)
    assert d.points[0] == ((20, 40), (60, 80))
    assert d.regions[0].handle == ((0, 0), (40, 20))


def test_scaled_moves_everything_and_the_mask():
    m = torch.zeros(4, 6)
    m[1:3, 2:5] = 1
    d = DragInstructions(points=(((3.0, 1.0), (6.0, 4.0)),), image_size=(6, 4)).with_mask(m)
    s = d.scaled(12, 8)
    assert s.image_size == (12, 8) and s.points == (((6.0, 2.0), (12.0, 8.0)),)
    big = s.mask_tensor()
    assert big.shape == (8, 12) and big.sum() == 4 * m.sum()
    assert torch.equal(big[::2, ::2], m)


# ------------------------------------------------------------------ mask run lengths
def test_rle_round_trip_and_layout():
    m = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    counts = rle_encode(m, (3, 2))
    assert counts == (0, 2, 3, 1)                 # starts with an (empty) 0-run, row-major
    assert torch.equal(rle_decode(counts, (3, 2)), m.bool())
    assert rle_encode(torch.zeros(2, 3), (3, 2)) == (6,)


def test_mask_in_json():
    m = torch.zeros(8, 10)
    m[2:5, 3:9] = 1
    d = DragInstructions(image_size=(10, 8)).with_mask(m)
    back = DragInstructions.from_json(d.to_json(), image_size=(10, 8))
    assert back.has_mask and torch.equal(back.mask_tensor(), m)
    bad = json.loads(d.to_json())
    bad["mask"]["counts"][-1] += 1
    e = err(json.dumps(bad), image_size=(10, 8))
    assert e.field == "mask.counts" and "81 pixels" in e.message
    e = err(json.dumps({"version": 1, "mask": {"size": [10, 8], "counts": [80]}}), image_size=(20, 16))
    assert e.field == "mask.size"
    e = err(json.dumps({"version": 1, "mask": {"size": [10, 8], "counts": [-1, 81]}}), image_size=(10, 8))
    assert e.field == "mask.counts[0]"


def test_coerce_accepts_objects_text_and_foreign_copies():
    d = DragInstructions.from_json("[[1, 2, 3, 4]]", image_size=(10, 10))
    assert DragInstructions.coerce(d) is d
    assert DragInstructions.coerce("[[1, 2, 3, 4]]", image_size=(10, 10)) == d
    assert DragInstructions.coerce([[1, 2, 3, 4]], image_size=(10, 10)) == d

    class Foreign:
        def to_json(self):
            return d.to_json()

    assert DragInstructions.coerce(Foreign()) == d
    with pytest.raises(DragSchemaError):
        DragInstructions.coerce(d, image_size=(30, 10))
