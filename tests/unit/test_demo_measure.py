"""demo/measure.py: the numbers `make demo` prints under each picture come from the scene's ground truth."""
from demo import measure as M
from demo.shapes import renderer as R

MOVE = {"s": {"class_type": "DragEditShapesScene", "inputs": {"seed": 1, "shapes": "1"}}}
DRAG = {"points": [{"handle": [11.3, 10.6], "target": [20.3, 16.6]}]}
LEDITS = {"s": {"class_type": "DragEditShapesScene", "inputs": {"seed": 4, "shapes": "1"}},
          "a": {"class_type": "CLIPTextEncode", "inputs": {"text": "blue square"}},
          "r": {"class_type": "CLIPTextEncode", "inputs": {"text": "red square"}}}


def test_a_perfect_move_is_measured_as_moved_and_kept():
    sc = M.scene_of(MOVE)
    m = M.measure(MOVE, R.render(sc), R.render(sc.moved(0, 9.0, 6.0)), DRAG)
    assert m["object"] == "white triangle" and m["moved_px"] > 10.0 and m["psnr_outside"] == 99.0 and m["kept"]


def test_nothing_moved_and_a_changed_background_are_reported():
    sc = M.scene_of(MOVE)
    m = M.measure(MOVE, R.render(sc), R.render(sc) * 0.8, DRAG)
    assert abs(m["moved_px"]) < 0.5 and m["psnr_outside"] < 30 and not m["kept"]
    lines = M.caption("DragonDiffusion move", m, "It cannot on the demo model.")
    assert "below 30 dB" in lines[1] and "0.0 of 10.8 px" in lines[0] and lines[2] == "It cannot on the demo model."
    assert len(M.caption("RegionDrag", M.measure(MOVE, R.render(sc), R.render(sc.moved(0, 9.0, 6.0)), DRAG))) == 2


def test_a_recolour_names_the_new_colour_and_a_failed_one_does_not():
    sc = M.scene_of(LEDITS)
    good = M.measure(LEDITS, R.render(sc), R.render(sc.recoloured(0, "blue")), None)
    assert good["now"] == "blue square" and good["kept"]
    bad = M.measure(LEDITS, R.render(sc), R.render(sc), None)
    assert bad["now"] == "red square"


def test_a_recolour_that_also_moves_the_object_is_not_a_clean_edit():
    sc = M.scene_of(LEDITS)
    m = M.measure(LEDITS, R.render(sc), R.render(sc.recoloured(0, "blue").moved(0, 5.0, 0.0)), None)
    assert m["now"] == "blue square" and m["off_px"] > 4.0 and not M.edit_reached(m)
    assert "px off its place" in M.caption("LEDITS", m)[0]
