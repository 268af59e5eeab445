"""ShapesBench case sets by seed and the generalisation summary (bench/generalise.py), without a server."""
from bench import generalise as G
from bench import shapes_cases as S
from bench import shapes_scoring as M


def test_a_seed_draws_its_own_case_set_and_always_the_same_one():
    a, b = S.build_cases(101), S.build_cases(202)
    assert S.fingerprint(a) == S.fingerprint(S.build_cases(101))
    assert S.fingerprint(a) != S.fingerprint(b) != S.fingerprint(S.build_cases())
    assert [c.kind for c in a] == [c.kind for c in b]          # same stratified order, other scenes


def test_summary_counts_success_only_at_28_db_and_reports_the_moved_share():
    case = next(c for c in S.build_cases(101) if c.kind == "move")
    gt = S.gt_image(case)
    m = M.case_metrics(case, gt)                                  # a perfect edit: moved 100 %
    recs = [{"config": "x", "method": "m", "kind": "move", "seed": 101, "case": case.id, "status": "ok",
             "seconds": 1.0, **m}]
    recs += [{"config": "x", "method": "l", "kind": "concept_recolour", "seed": 101, "case": f"c{i}", "status": "ok",
              "seconds": 1.0, "psnr_out": p, "ghost": 0.0, "success": ok}
             for i, (p, ok) in enumerate([(30.0, True), (25.0, True), (35.0, False), (29.0, True)])]
    rows = {r["method"]: r for r in G.summary(recs)}
    assert rows["l"]["success"] == 0.75 and rows["l"]["success_28db"] == 0.5
    assert abs(rows["m"]["moved_med"] - 1.0) < 0.1 and rows["m"]["moved_lt2px"] == 1.0
    assert "| x | l | concept_recolour | 101 | 4 | 75% | 50% |" in G.markdown(G.summary(recs))


def test_ledits_recolour_is_masked_with_object_words_by_default_and_whole_scenes_on_request():
    """ShapesBench's LEDITS graph of a two-object recolour, as the example workflow does it: the object's box as LEDITS
    Edit's mask and the case's own object words; concept_words "scene" adds the target scene's words and removes the
    input scene's (the unmasked recipe); LEDITS++ keeps object words without a mask; removal has no mask."""
    from bench import shapesbench as SB
    from dragedit.demo.shapes import renderer
    case = next(c for c in S.build_cases(101) if c.kind == "concept_recolour" and len(c.scene.shapes) == 2)
    by = {m.name: m for m in SB.methods()}
    texts = lambda g: [(g[k]["inputs"]["text"], g["edit"]["inputs"][f"direction_{k[1]}"])  # noqa: E731
                       for k in ("c1", "c2", "c3") if k in g]
    files = {"image": "x.png", "mask": "m.png"}
    g = SB._graph_ledits(case, "words", by["ledits"].settings, files, "p")
    assert texts(g) == list(case.concepts)
    assert g["edit"]["inputs"]["mask"] == ["umask", 0] and g["umask"]["inputs"]["image"] == "m.png"
    assert (g["edit"]["inputs"]["threshold"], g["edit"]["inputs"]["warmup"]) == (0.9, 4)
    assert "target" not in g["edit"]["inputs"]
    g = SB._graph_ledits(case, "words", dict(by["ledits"].settings, concept_words="scene", user_mask="none"), files,
                         "p")
    assert texts(g) == [(renderer.prompt(case.target), "add"), (case.prompt, "remove")]
    assert " and " in texts(g)[0][0] and texts(g)[0][0] != texts(g)[1][0] and "mask" not in g["edit"]["inputs"]
    g = SB._graph_ledits(case, "words", by["ledits++"].settings, files, "p")
    assert texts(g) == list(case.concepts) and "mask" not in g["edit"]["inputs"]
    remove = next(c for c in S.build_cases(101) if c.kind == "concept_remove")
    assert "mask" not in SB._graph_ledits(remove, "target", by["ledits"].settings, files, "p")["edit"]["inputs"]


def test_ledits_steps_per_path_and_design():
    """The shipped LEDITS recolour runs 40 steps (skip 4); removal by the target prompt keeps 20 steps at skip 1, and
    --steps sets both; the demo DiT and LEDITS++ mode keep their own 20-step settings (docs/generalisation.md)."""
    from bench import shapesbench as SB
    by = {m.name: m for m in SB.methods()}
    recolour = next(c for c in S.build_cases(101) if c.kind == "concept_recolour")
    remove = next(c for c in S.build_cases(101) if c.kind == "concept_remove")
    edit = lambda m, c, how: SB._graph_ledits(c, how, m.settings, {"image": "x.png"}, "p")["edit"]["inputs"]  # noqa: E731
    assert (edit(by["ledits"], recolour, "words")["steps"], edit(by["ledits"], recolour, "words")["skip"]) == (40, 4)
    assert (edit(by["ledits"], remove, "target")["steps"], edit(by["ledits"], remove, "target")["skip"]) == (20, 1)
    dit = by["ledits"].for_design("dit")
    assert (dit.settings["steps"], dit.settings["skip"], dit.settings["scale"]) == (20, 2, 14.0)
    assert dit.settings["user_mask"] == "box" and edit(dit, remove, "target")["skip"] == 4
    assert by["ledits++"].settings["steps"] == 20 and by["ledits++"].settings["skip"] == 2
    SB.apply_overrides([by["ledits"]], ["ledits=6"])
    assert edit(by["ledits"], remove, "target")["steps"] == 6


def test_ledits_recipe_options_tried_on_the_seeds_below_target():
    """concept_words "diff": the input scene is the negative and the target scene the one added concept;
    --set ledits.remove_scale=N sets the remove concept's scale alone (docs/generalisation.md)."""
    from bench import shapesbench as SB
    from dragedit.demo.shapes import renderer
    case = next(c for c in S.build_cases(101) if c.kind == "concept_recolour")
    by = {m.name: m for m in SB.methods()}
    SB.apply_overrides([by["ledits"]], sets=["ledits.concept_words=diff"])
    g = SB._graph_ledits(case, "words", by["ledits"].settings, {"image": "x.png"}, "p")
    assert g["neg"]["inputs"]["text"] == case.prompt
    assert g["c1"]["inputs"]["text"] == renderer.prompt(case.target) and "c2" not in g
    by = {m.name: m for m in SB.methods()}
    SB.apply_overrides([by["ledits"]], sets=["ledits.remove_scale=7"])
    e = SB._graph_ledits(case, "words", by["ledits"].settings, {"image": "x.png"}, "p")["edit"]["inputs"]
    assert (e["direction_1"], e["scale_1"], e["direction_2"], e["scale_2"]) == ("add", 14.0, "remove", 7.0)
