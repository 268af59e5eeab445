"""Coordinate convention and dense correspondences, against hand-computed cases.

Worked rule used below: on a latent grid (factor f, no crop offset) a translation by d image px sends target cell c
to source cell floor(((c + 0.5) f - d) / f) = c - s with s = ceil(d / f - 0.5) (d = 13, f = 8 -> s = 2; d = 5 -> 1;
d = 12 -> 1; d = 20 -> 2).
"""
from __future__ import annotations

import math

import pytest
import torch

from core import geometry as g  # noqa: E402
from core.drag_schema import DragInstructions, RegionPair  # noqa: E402

IMG = (200, 136)          # W, H: not multiples of 64; 25 x 17 latent cells at factor 8


def shift(d: float, f: int = 8) -> int:
    return math.ceil(d / f - 0.5)


def cells(pairs: g.CellPairs) -> set[tuple[int, int]]:
    return {tuple(c) for c in pairs.dst.tolist()}


def as_map(pairs: g.CellPairs) -> dict[tuple[int, int], tuple[int, int]]:
    return {tuple(d): tuple(s) for d, s in zip(pairs.dst.tolist(), pairs.src.tolist())}


# ------------------------------------------------------------------ the convention
def test_latent_grid_of_odd_sizes():
    grid = g.Grid.latent(IMG, 8)
    assert grid.hw == (17, 25) and grid.offset == (0.0, 0.0) and grid.scale == (8.0, 8.0)
    odd = g.Grid.latent((203, 141), 8)           # ComfyUI crops 3 and 5 px centred: offsets 1 and 2
    assert odd.hw == (17, 25) and odd.offset == (1.0, 2.0)
    assert odd.cell_of([9.0, 10.0]).tolist() == [1, 1]
    assert odd.cell_of([8.99, 9.99]).tolist() == [0, 0]
    assert g.Grid.latent((64, 40), 2).hw == (20, 32)
    with pytest.raises(g.GeometryError, match="expected 25x17"):
        g.Grid.latent(IMG, 8, hw=(16, 25))
    with pytest.raises(g.GeometryError):
        g.Grid.latent((7, 7), 8)


def test_conversions_hand_computed():
    xy = torch.tensor([[13.0, 5.0], [0.0, 0.0], [200.0, 136.0]], dtype=torch.float64)
    assert torch.allclose(g.image_to_latent(xy, 8), xy / 8)
    assert torch.allclose(g.latent_to_image(g.image_to_latent(xy, 8), 8), xy)
    assert g.image_to_latent([13.0, 5.0], 8, image_size=(203, 141)).tolist() == [1.5, 0.375]
    assert g.latent_to_image([1.5, 0.375], 8, image_size=(203, 141)).tolist() == [13.0, 5.0]
    # DragDiffusion's half-resolution feature grid: 100 x 68 over the 200 x 136 image
    assert g.image_to_grid([13.0, 5.0], IMG, (68, 100)).tolist() == [6.5, 2.5]
    assert g.grid_to_image([6.5, 2.5], IMG, (68, 100)).tolist() == [13.0, 5.0]
    full = g.Grid.fit(IMG, (136, 200))
    assert full.to_index([0.5, 0.5]).tolist() == [0.0, 0.0]              # pixel centre = integer index
    assert full.to_normalized([0.0, 136.0]).tolist() == [-1.0, 1.0]       # grid_sample, align_corners=False
    assert g.Grid.latent(IMG, 8).cell_center(torch.tensor([[0, 0], [24, 16]])).tolist() == [[4.0, 4.0],
                                                                                              [196.0, 132.0]]


def test_resized_grid_covers_the_same_rectangle():
    lat = g.Grid.latent((203, 141), 8)
    half = lat.resized((34, 50))                 # DragonDiffusion-style 4 px grid over the latent's area
    assert half.scale == (4.0, 4.0) and half.offset == (1.0, 2.0)
    assert half.cell_of([9.0, 10.0]).tolist() == [2, 2]
    assert lat.resized(lat.hw) == lat


def test_grid_sample_coordinates_pick_the_right_cell():
    grid = g.Grid.latent(IMG, 8)
    t = torch.arange(17 * 25, dtype=torch.float32).reshape(1, 1, 17, 25)
    pts = torch.tensor([[13.0, 5.0], [99.0, 70.0], [196.0, 132.0]], dtype=torch.float64)
    norm = grid.to_normalized(pts).float()[None, None]                    # [1, 1, N, 2]
    got = torch.nn.functional.grid_sample(t, norm, mode="nearest", align_corners=False).reshape(-1)
    c = grid.cell_of(pts)
    assert got.tolist() == (c[:, 1] * 25 + c[:, 0]).float().tolist()


def test_cell_of_clamps_and_is_half_open():
    grid = g.Grid.latent(IMG, 8)
    assert grid.cell_of([[8.0, 8.0], [7.999, 15.999], [-3.0, 500.0], [200.0, 136.0]]).tolist() == \
        [[1, 1], [0, 1], [0, 16], [24, 16]]


# ------------------------------------------------------------------ rasterisation
def test_rect_mask_half_open():
    m = g.rect_mask(1.0, 0.5, 3.0, 2.5, 4, 5)      # centres x in {1.5, 2.5}, y in {0.5, 1.5}
    expect = torch.zeros(4, 5, dtype=torch.bool)
    expect[0:2, 1:3] = True
    assert torch.equal(m, expect)


def test_rasterize_triangle_and_concave_polygon():
    tri = g.rasterize_polygon([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], 4, 4)
    # centre (x+.5, y+.5) inside x + y < 4; the anti-diagonal cells x + y = 3 have centre sum 4 -> on the edge
    expect = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(tri, expect)
    L = [[0, 0], [3, 0], [3, 1], [1, 1], [1, 3], [0, 3]]
    got = g.rasterize_polygon(L, 4, 4)
    expect = torch.zeros(4, 4, dtype=torch.bool)
    expect[0, 0:3] = True
    expect[1:3, 0] = True
    assert torch.equal(got, expect)
    square = g.rasterize_polygon([[1.2, 0.7], [3.9, 0.7], [3.9, 2.6], [1.2, 2.6]], 4, 5)
    assert torch.equal(square, g.rect_mask(1.2, 0.7, 3.9, 2.6, 4, 5))


def test_grid_shapes_in_image_pixels():
    grid = g.Grid.latent(IMG, 8)
    r = grid.rect_cells((13.0, 5.0, 45.0, 30.0))            # centres 20,28,36,44 | 12,20,28
    assert torch.nonzero(r)[:, [1, 0]].tolist() == [[x, y] for y in (1, 2, 3) for x in (2, 3, 4, 5)]
    poly = grid.polygon_cells([[13.0, 5.0], [45.0, 5.0], [45.0, 30.0], [13.0, 30.0]])
    assert torch.equal(poly, r)
    disc = grid.disc_cells([28.0, 20.0], 8.0)               # centre of cell (3, 2) and its 4 neighbours
    assert sorted(torch.nonzero(disc)[:, [1, 0]].tolist()) == [[2, 2], [3, 1], [3, 2], [3, 3], [4, 2]]


def test_mask_cells_coverage():
    grid = g.Grid.latent((203, 141), 8)                      # offset (1, 2)
    m = torch.zeros(141, 203)
    m[2:10, 1:13] = 1                                        # cell (0,0) full, cell (1,0) half
    cov = grid.coverage(m)
    assert cov[0, 0] == 1.0 and cov[0, 1] == 0.5 and cov.sum() == 1.5
    assert torch.nonzero(grid.mask_cells(m)).tolist() == [[0, 0], [0, 1]]
    tiny = torch.zeros(141, 203)
    tiny[50:52, 60:62] = 1                                   # 4 px: never vanishes
    assert grid.mask_cells(tiny).sum() == 1


# ------------------------------------------------------------------ transforms
def test_affine_and_homography_hit_their_points():
    src = torch.tensor([[10.0, 10.0], [50.0, 12.0], [30.0, 44.0]], dtype=torch.float64)
    dst = src * 1.5 + torch.tensor([3.0, -2.0], dtype=torch.float64)
    A = g.affine_from_points(src, dst)
    assert torch.allclose(A, torch.tensor([[1.5, 0, 3], [0, 1.5, -2], [0, 0, 1]], dtype=torch.float64))
    quad = torch.tensor([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]], dtype=torch.float64)
    trap = torch.tensor([[2.0, 0.0], [8.0, 0.0], [10.0, 10.0], [0.0, 10.0]], dtype=torch.float64)
    P = g.homography_from_points(quad, trap)
    assert torch.allclose(g.apply_transform(P, quad), trap, atol=1e-9)
    # a perspective map sends the diagonals' crossing to the diagonals' crossing
    cross_trap = torch.tensor([[5.0, 3.75]], dtype=torch.float64)      # (2,0)-(10,10) meets (8,0)-(0,10) at t = 6/16
    assert torch.allclose(g.apply_transform(P, torch.tensor([[5.0, 5.0]], dtype=torch.float64)), cross_trap)


def test_triangulation_covers_a_concave_polygon():
    poly = [[0, 0], [6, 0], [6, 6], [3, 2], [0, 6]]          # an arrow head, vertex 3 reflex
    tris = g.triangulate_polygon(poly)
    assert len(tris) == 3

    def area(t):
        (ax, ay), (bx, by), (cx, cy) = (poly[i] for i in t)
        return abs((bx - ax) * (cy - ay) - (by - ay) * (cx - ax)) / 2

    assert sum(area(t) for t in tris) == pytest.approx(6 * 6 - 6 * 4 / 2)    # 36 - notch 12 = 24
    pts = torch.tensor(poly, dtype=torch.float64)
    moved = pts * 2 + 1
    assert torch.allclose(g.piecewise_affine(pts, pts, moved), moved)


# ------------------------------------------------------------------ correspondences
def test_point_pair_odd_offset():
    grid = g.Grid.latent(IMG, 8)
    p = g.point_pair_cells((13.0, 21.0), (26.0, 26.0), grid, radius=0.0)
    assert p.dst.tolist() == [[3, 3]]                          # cell holding the target
    assert p.src.tolist() == [[1, 2]]                          # centre (28, 28) - (13, 5) = (15, 23)
    disc = g.point_pair_cells((13.0, 21.0), (28.0, 20.0), grid, radius=8.0)
    d = (28.0 - 13.0, 20.0 - 21.0)
    assert len(disc) == 5
    for (tx, ty), (sx, sy) in as_map(disc).items():
        assert (tx - sx, ty - sy) == (shift(d[0]), shift(d[1]))


@pytest.mark.parametrize("dx, dy", [(13, 5), (-13, 12), (20, -7), (3, 3)])
def test_rect_pair_translation_is_cell_exact(dx, dy):
    grid = g.Grid.latent(IMG, 8)
    hb = (41.0, 37.0, 83.0, 71.0)                            # not cell-aligned
    tb = (hb[0] + dx, hb[1] + dy, hb[2] + dx, hb[3] + dy)
    p = g.rect_pair_cells(hb, tb, grid)
    assert cells(p) == {tuple(c) for c in torch.nonzero(grid.rect_cells(tb))[:, [1, 0]].tolist()}
    for (tx, ty), (sx, sy) in as_map(p).items():
        assert (tx - sx, ty - sy) == (shift(dx), shift(dy))


def test_rect_pair_scaling_hand_computed():
    grid = g.Grid.latent((64, 16), 8)                        # 8 x 2 cells
    p = g.rect_pair_cells((0.0, 0.0, 16.0, 16.0), (32.0, 0.0, 64.0, 16.0), grid)
    # target centres x = 36, 44, 52, 60 -> 0 + (x - 32) / 2 = 2, 6, 10, 14 -> cells 0, 0, 1, 1
    m = as_map(p)
    assert sorted(m) == [(x, y) for x in range(4, 8) for y in (0, 1)]
    assert [m[(x, 0)][0] for x in range(4, 8)] == [0, 0, 1, 1]
    assert all(m[(x, y)][1] == y for x, y in m)


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_polygon_pair_translation_is_cell_exact(n):
    grid = g.Grid.latent(IMG, 8)
    ang = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    hv = torch.stack([60 + 30 * torch.cos(ang), 60 + 25 * torch.sin(ang)], dim=1) + 0.37
    d = torch.tensor([13.0, -5.0], dtype=torch.float64)
    p = g.polygon_pair_cells(hv, hv + d, grid)
    assert cells(p) == {tuple(c) for c in torch.nonzero(grid.polygon_cells(hv + d))[:, [1, 0]].tolist()}
    assert len(p) > 10
    for (tx, ty), (sx, sy) in as_map(p).items():
        assert (tx - sx, ty - sy) == (shift(13.0), shift(-5.0))


def test_polygon_pair_affine_scaling():
    grid = g.Grid.latent((96, 96), 8)                        # 12 x 12 cells
    hv = [[8.0, 8.0], [40.0, 8.0], [8.0, 40.0]]
    tv = [[16.0, 16.0], [80.0, 16.0], [16.0, 80.0]]           # x2 about (0, 0)
    m = as_map(g.polygon_pair_cells(hv, tv, grid))
    # target cell (3, 4): centre (28, 36) -> handle (14, 18) -> cell (1, 2)
    assert m[(3, 4)] == (1, 2)
    assert m[(2, 2)] == (1, 1)                               # (20, 20) -> (10, 10)
    assert (9, 9) not in m                                   # centre (76, 76) lies outside the target triangle


def test_polygon_pair_perspective_vertices_and_centre():
    grid = g.Grid.fit((64, 64), (64, 64))                    # 1 px cells: easy to hand-check
    tv = [[0.0, 0.0], [64.0, 0.0], [64.0, 64.0], [0.0, 64.0]]
    hv = [[16.0, 0.0], [48.0, 0.0], [64.0, 64.0], [0.0, 64.0]]
    m = as_map(g.polygon_pair_cells(hv, tv, grid))
    assert len(m) == 64 * 64
    assert m[(0, 0)] == (16, 0) and m[(63, 0)] == (47, 0)
    assert m[(63, 63)] == (63, 63) and m[(0, 63)] == (0, 63)
    # bottom row maps to itself (scale 1 along y = 64); the top row is squeezed 2x
    assert m[(10, 0)] == (21, 0)                              # 16 + 10.5 / 2 = 21.25


def test_mask_region_pair_translation_and_columns():
    grid = g.Grid.latent(IMG, 8)
    hm = torch.zeros(136, 200)
    hm[37:71, 41:83] = 1
    tm = torch.roll(hm, shifts=(5, 13), dims=(0, 1))
    p = g.mask_pair_cells(hm, tm, grid)
    assert cells(p) == {tuple(c) for c in torch.nonzero(grid.mask_cells(tm))[:, [1, 0]].tolist()}
    for (tx, ty), (sx, sy) in as_map(p).items():
        assert (tx - sx, ty - sy) == (shift(13), shift(5))


def test_mask_region_pair_x_then_column_y_hand_computed():
    grid = g.Grid.fit((8, 8), (8, 8))                        # 1 px cells
    hm = torch.zeros(8, 8)
    hm[0:2, 0] = 1                                           # column 0: rows 0-1
    hm[0:4, 1] = 1                                           # column 1: rows 0-3
    tm = torch.zeros(8, 8)
    tm[0:4, 4:8] = 1                                         # 4 x 4 square
    m = as_map(g.mask_pair_cells(hm, tm, grid))
    # x: [4, 8) -> [0, 2), scale 1/2: centres 4.5, 5.5, 6.5, 7.5 -> 0.25, 0.75, 1.25, 1.75 -> columns 0, 0, 1, 1
    # y: target column rows [0, 4) -> handle column 0 rows [0, 2) (scale 1/2) or column 1 rows [0, 4) (scale 1)
    assert [m[(4, y)] for y in range(4)] == [(0, 0), (0, 0), (0, 1), (0, 1)]
    assert [m[(7, y)] for y in range(4)] == [(1, 0), (1, 1), (1, 2), (1, 3)]


def test_mask_region_pair_empty_errors():
    grid = g.Grid.latent(IMG, 8)
    z = torch.zeros(136, 200)
    with pytest.raises(g.GeometryError, match="target region is empty"):
        g.mask_pair_cells(torch.ones(136, 200), z, grid)
    with pytest.raises(g.GeometryError, match="does not match"):
        g.mask_pair_cells(torch.ones(10, 10), torch.ones(10, 10), grid)


def test_region_moved_by_points():
    grid = g.Grid.latent(IMG, 8)
    outline = [[41.0, 37.0], [83.0, 37.0], [83.0, 71.0], [41.0, 71.0]]
    one = g.region_points_cells(outline, [((60.0, 50.0), (73.0, 56.0))], grid)
    two = g.region_points_cells(outline, [((50.0, 45.0), (63.0, 51.0)), ((75.0, 65.0), (88.0, 71.0))], grid)
    moved = grid.rect_cells((54.0, 43.0, 96.0, 77.0))
    for p in (one, two):                                     # same displacement everywhere = translation
        assert torch.equal(p.dst_mask(), moved)
        for (tx, ty), (sx, sy) in as_map(p).items():
            assert (tx - sx, ty - sy) == (shift(13), shift(6))
    # a stretch: the right edge moves 16 px right, the left edge stays -> the target region widens
    stretch = g.region_points_cells(outline, [((41.0, 54.0), (41.0, 54.0)), ((83.0, 54.0), (99.0, 54.0))], grid)
    # IDW of 2 points: the right edge reaches x = 99 at y = 54 and about 94.6 at the corners; the left edge
    # stays at 41 in the middle and bends to about 45.4 at the corners
    xs = stretch.dst[:, 0]
    assert xs.min() == 5 and xs.max() == 11                  # handle cells span 5..9: the region widened
    src = as_map(stretch)
    assert src[(5, 6)] == (5, 6)                             # next to the fixed point: takes its own content
    assert src[(11, 6)][0] == 9                              # right edge (92, 52) comes from about x = 77


def test_correspondences_for_a_document_and_merge():
    drag = DragInstructions.from_json(
        '{"version": 1, "points": [[20, 20, 33, 25]],'
        ' "regions": [{"kind": "rect", "handle": [[100, 40], [140, 80]], "target": [[113, 45], [153, 85]]},'
        '             {"kind": "polygon", "handle": [[20, 20], [60, 20], [40, 50]], "target": [[33, 25], [73, 25], [53, 55]]}]}',
        image_size=IMG)
    grid = g.Grid.latent(IMG, 8)
    parts = g.correspondences(drag, grid, point_radius=8.0)
    assert [p.label for p in parts] == ["points[0]", "regions[0]", "regions[1]"]
    merged = g.dense_correspondences(drag, grid, point_radius=8.0)
    flat = merged.dst_flat
    assert flat.unique().numel() == flat.numel()               # one source per target cell
    assert len(merged) == len(set().union(*(cells(p) for p in parts)))
    m, last = as_map(merged), as_map(parts[2])
    assert all(m[c] == s for c, s in last.items())            # the later instruction wins shared cells
    with pytest.raises(g.GeometryError, match="200x136"):
        g.correspondences(drag, g.Grid.latent((256, 256), 8))


def test_paste_moves_a_planted_pattern_cell_exactly():
    grid = g.Grid.latent(IMG, 8)
    lat = torch.randn(1, 4, 17, 25)
    drag = DragInstructions(regions=(RegionPair("rect", ((41.0, 37.0), (83.0, 71.0)),
                                                ((54.0, 42.0), (96.0, 76.0))),), image_size=IMG)
    pairs = g.dense_correspondences(drag, grid)
    out = pairs.paste(lat, lat)
    s = (shift(13), shift(5))
    for x, y in cells(pairs):
        assert torch.equal(out[..., y, x], lat[..., y - s[1], x - s[0]])
    untouched = ~pairs.dst_mask()
    assert torch.equal(out[..., untouched], lat[..., untouched])
    assert pairs.src_mask().sum() == len(pairs)                # a pure shift: sources are distinct too


def test_cellpairs_cat_last_wins_and_empty():
    a = g.CellPairs(torch.tensor([[0, 0], [1, 0]]), torch.tensor([[5, 5], [6, 5]]), (8, 8), "a")
    b = g.CellPairs(torch.tensor([[2, 2]]), torch.tensor([[5, 5]]), (8, 8), "b")
    m = g.CellPairs.cat([a, b])
    assert as_map(m) == {(6, 5): (1, 0), (5, 5): (2, 2)}
    empty = g.CellPairs.cat([], grid_hw=(8, 8))
    assert len(empty) == 0 and torch.equal(empty.paste(torch.ones(8, 8), torch.zeros(8, 8)), torch.zeros(8, 8))


def test_tiny_target_falls_back_to_its_cell():
    grid = g.Grid.latent(IMG, 8)
    p = g.polygon_pair_cells([[10.0, 10.0], [12.0, 10.0], [11.0, 12.0]], [[51.0, 50.0], [53.0, 50.0], [52.0, 52.0]],
                             grid)
    assert p.dst.tolist() == [[6, 6]] and p.src.tolist() == [[1, 1]]


def test_degenerate_shapes_give_geometry_errors():
    grid = g.Grid.latent(IMG, 8)
    with pytest.raises(g.GeometryError, match="degenerate"):
        g.polygon_pair_cells([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]], [[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]], grid)
    with pytest.raises(g.GeometryError, match="x0 < x1"):
        g.rect_pair_cells((0.0, 0.0, 10.0, 10.0), (5.0, 5.0, 5.0, 9.0), grid)
