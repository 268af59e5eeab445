"""Image pixels <-> grid cells, and drag instructions -> dense per-cell correspondences (plain torch).

The one coordinate convention of the pack (every conversion goes through `Grid`):
- Image coordinates are continuous pixels, x right, y down: pixel column i / row j covers [i, i+1) x [j, j+1),
  its centre is (i + 0.5, j + 0.5). The drag schema stores coordinates in this form.
- A `Grid` lays h x w cells over the image rectangle [ox, ox + w*sx) x [oy, oy + h*sy): cell (cx, cy) covers
  [ox + cx*sx, ox + (cx+1)*sx) x [oy + cy*sy, oy + (cy+1)*sy). Continuous grid coordinate u = (x - ox) / sx;
  the cell of a point is floor(u) (clamped into the grid); a cell's centre is u = cx + 0.5.
- Latent grid for downscale factor f (8 for SD, 2 for the shapes demo): h = H // f, w = W // f, sx = sy = f and
  offset ((W % f) // 2, (H % f) // 2), because ComfyUI's VAE Encode crops the image centred to a multiple of f.
- Feature maps at any resolution: `Grid.resized` keeps the covered rectangle and changes the cell count
  (DragDiffusion's half-resolution grid, DragonDiffusion's 4-px grid).
- Integer cells are (x, y) = (column, row) pairs: index a tensor as t[..., y, x].

Dense correspondences (RegionDrag): every target cell gets exactly one source
(handle) cell. Target cells are those whose centre lies inside the target shape (half-open edges); each target
centre is mapped back to image pixels through the inverse transform and its source is the cell holding that point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .drag_schema import DragInstructions, PointPair, RegionPair

XY = Union[torch.Tensor, Sequence[float], Sequence[Sequence[float]]]
IDW_NEIGHBOURS = 4
IDW_EPS = 1e-4
MAX_IDW_REFERENCES = 4096   # warped samples used to invert a region-by-points warp
SNAP = 1e-6   # cell units: a point this close below a cell boundary counts as on it (float error of transforms)


class GeometryError(ValueError):
    """Geometry that cannot be mapped (grid does not fit the image, empty mask region...)."""


def _xy(xy: XY) -> torch.Tensor:
    """Coordinates as a float tensor [..., 2] (float64 unless already a floating tensor)."""
    if isinstance(xy, torch.Tensor) and xy.is_floating_point():
        return xy
    return torch.as_tensor(xy, dtype=torch.float64)


# ====================================================================== the grid (the single conversion)
@dataclass(frozen=True)
class Grid:
    """h x w cells laid over image pixels: the only place image px <-> cell coordinates are converted."""

    image_size: tuple[int, int]          # (W, H) of the image the coordinates refer to
    hw: tuple[int, int]                  # (h, w) cells, the tensor's spatial shape
    scale: tuple[float, float]           # (sx, sy) image px per cell
    offset: tuple[float, float] = (0.0, 0.0)  # (ox, oy) image px of the grid's top-left corner

    @classmethod
    def latent(cls, image_size: Sequence[int], factor: int, hw: Optional[Sequence[int]] = None) -> "Grid":
        """The latent grid of an image (W, H) at downscale `factor`, with ComfyUI's centred crop to a multiple."""
        W, H = int(image_size[0]), int(image_size[1])
        f = int(factor)
        if f < 1:
            raise GeometryError(f"factor must be >= 1, got {factor}")
        expect = (H // f, W // f)
        if expect[0] < 1 or expect[1] < 1:
            raise GeometryError(f"a {W}x{H} image is smaller than one {f}x{f} latent cell")
        if hw is not None and tuple(int(v) for v in hw) != expect:
            raise GeometryError(f"a latent of {hw[1]}x{hw[0]} cells does not belong to a {W}x{H} image at factor {f} "
                                f"(expected {expect[1]}x{expect[0]}); was the image resized after the drag was drawn?")
        return cls((W, H), expect, (float(f), float(f)), (float((W % f) // 2), float((H % f) // 2)))

    @classmethod
    def fit(cls, image_size: Sequence[int], hw: Sequence[int]) -> "Grid":
        """A grid of hw cells stretched over the whole image (a feature map resized to the image)."""
        W, H = int(image_size[0]), int(image_size[1])
        h, w = int(hw[0]), int(hw[1])
        return cls((W, H), (h, w), (W / w, H / h), (0.0, 0.0))

    def resized(self, hw: Sequence[int]) -> "Grid":
        """Same covered image rectangle, hw cells (e.g. a 2x-upsampled or half-resolution feature map)."""
        h, w = int(hw[0]), int(hw[1])
        return Grid(self.image_size, (h, w), (self.hw[1] * self.scale[0] / w, self.hw[0] * self.scale[1] / h),
                    self.offset)

    # ------------------------------------------------------------ conversions
    def _so(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.tensor(self.scale, dtype=ref.dtype, device=ref.device)
        o = torch.tensor(self.offset, dtype=ref.dtype, device=ref.device)
        return s, o

    def to_grid(self, xy: XY) -> torch.Tensor:
        """Image px (x, y) -> continuous grid coordinates (cell cx covers [cx, cx+1))."""
        xy = _xy(xy)
        s, o = self._so(xy)
        return (xy - o) / s

    def to_image(self, uv: XY) -> torch.Tensor:
        """Continuous grid coordinates -> image px."""
        uv = _xy(uv)
        s, o = self._so(uv)
        return uv * s + o

    def to_index(self, xy: XY) -> torch.Tensor:
        """Image px -> grid index space with cell centres at integers (bilinear sampling, DragDiffusion's (col,row))."""
        return self.to_grid(xy) - 0.5

    def to_normalized(self, xy: XY) -> torch.Tensor:
        """Image px -> [-1, 1] coordinates for F.grid_sample(..., align_corners=False) on this grid's tensor."""
        uv = self.to_grid(xy)
        wh = torch.tensor([self.hw[1], self.hw[0]], dtype=uv.dtype, device=uv.device)
        return 2.0 * uv / wh - 1.0

    def cell_of(self, xy: XY) -> torch.Tensor:
        """Image px -> integer cell (x, y) = floor(grid coordinate), clamped into the grid; long tensor [..., 2]."""
        uv = torch.floor(self.to_grid(xy) + SNAP).long()
        return torch.stack([uv[..., 0].clamp(0, self.hw[1] - 1), uv[..., 1].clamp(0, self.hw[0] - 1)], dim=-1)

    def cell_center(self, cells: torch.Tensor) -> torch.Tensor:
        """Integer cells (x, y) -> image px of their centres (float64)."""
        return self.to_image(cells.to(torch.float64) + 0.5)

    def centers(self) -> torch.Tensor:
        """Image px of every cell centre, [h, w, 2] float64."""
        h, w = self.hw
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
        return self.to_image(torch.stack([xs, ys], dim=-1) + 0.5)

    # ------------------------------------------------------------ shapes -> cells
    def rect_cells(self, box: Sequence[float]) -> torch.Tensor:
        """Bool [h, w]: cells whose centre lies in the image-px box (x0, y0, x1, y1), half-open."""
        u0, v0 = self.to_grid([box[0], box[1]]).tolist()
        u1, v1 = self.to_grid([box[2], box[3]]).tolist()
        return rect_mask(min(u0, u1), min(v0, v1), max(u0, u1), max(v0, v1), *self.hw)

    def polygon_cells(self, vertices: XY) -> torch.Tensor:
        """Bool [h, w]: cells whose centre lies inside the image-px polygon (even-odd rule)."""
        return rasterize_polygon(self.to_grid(vertices), *self.hw)

    def disc_cells(self, center: XY, radius: float) -> torch.Tensor:
        """Bool [h, w]: cells whose centre lies within `radius` image px of `center`."""
        d = self.centers() - _xy(center).to(torch.float64)
        return (d * d).sum(-1) <= float(radius) ** 2

    def mask_cells(self, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """Bool [h, w]: cells at least `threshold` covered by an image-size mask (>0.5 = inside).

        A region smaller than that keeps its best-covered cells so it never vanishes; an empty mask gives none."""
        m = _image_mask(mask, self.image_size)
        cov = self.coverage(m)
        hit = cov >= threshold
        if not hit.any() and cov.max() > 0:
            hit = cov >= 0.5 * cov.max()
        return hit

    def coverage(self, mask: torch.Tensor) -> torch.Tensor:
        """Float [h, w]: fraction of each cell covered by an image-size mask."""
        m = _image_mask(mask, self.image_size).float()
        (sx, sy), (ox, oy), (h, w) = self.scale, self.offset, self.hw
        x0, y0 = int(round(ox)), int(round(oy))
        x1, y1 = int(round(ox + w * sx)), int(round(oy + h * sy))
        crop = m[y0:y1, x0:x1][None, None]
        if sx == int(sx) and sy == int(sy) and crop.shape[-2:] == (h * int(sy), w * int(sx)):
            return F.avg_pool2d(crop, (int(sy), int(sx)))[0, 0]
        return F.adaptive_avg_pool2d(crop, (h, w))[0, 0]


def _image_mask(mask: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Bool [H, W] from a [H, W] / [1, H, W] mask of the image size."""
    m = torch.as_tensor(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    W, H = image_size
    if m.ndim != 2 or tuple(m.shape) != (H, W):
        raise GeometryError(f"mask of shape {tuple(m.shape)} does not match the {W}x{H} image")
    return m > 0.5 if m.dtype != torch.bool else m


# ====================================================================== brief-style helpers
def latent_grid(image_size: Sequence[int], factor: int) -> Grid:
    """Shortcut for Grid.latent(image_size, factor)."""
    return Grid.latent(image_size, factor)


def image_to_latent(xy: XY, factor: int, image_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Image px -> continuous latent coordinates; with image_size the centred crop offset is honoured."""
    if image_size is None:
        return _xy(xy) / float(factor)
    return Grid.latent(image_size, factor).to_grid(xy)


def latent_to_image(uv: XY, factor: int, image_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Continuous latent coordinates -> image px (inverse of image_to_latent)."""
    if image_size is None:
        return _xy(uv) * float(factor)
    return Grid.latent(image_size, factor).to_image(uv)


def image_to_grid(xy: XY, image_size: Sequence[int], grid_hw: Sequence[int]) -> torch.Tensor:
    """Image px -> continuous coordinates of an h x w grid stretched over the whole (W, H) image."""
    return Grid.fit(image_size, grid_hw).to_grid(xy)


def grid_to_image(uv: XY, image_size: Sequence[int], grid_hw: Sequence[int]) -> torch.Tensor:
    """Inverse of image_to_grid."""
    return Grid.fit(image_size, grid_hw).to_image(uv)


def rect_mask(x0: float, y0: float, x1: float, y1: float, H: int, W: int) -> torch.Tensor:
    """Bool [H, W]: cells whose centre (j+0.5, i+0.5) lies in [x0, x1) x [y0, y1), all in grid units."""
    xs = torch.arange(W, dtype=torch.float64) + 0.5
    ys = torch.arange(H, dtype=torch.float64) + 0.5
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def rasterize_polygon(vertices: XY, H: int, W: int) -> torch.Tensor:
    """Bool [H, W]: cells whose centre lies inside the polygon (grid units, even-odd rule, half-open edges)."""
    v = _xy(vertices).to(torch.float64).reshape(-1, 2)
    if v.shape[0] < 3:
        return torch.zeros(H, W, dtype=torch.bool)
    a, b = v, torch.roll(v, -1, dims=0)                               # edges a -> b, [E, 2]
    px = (torch.arange(W, dtype=torch.float64) + 0.5)[None, None, :]  # [1, 1, W]
    py = (torch.arange(H, dtype=torch.float64) + 0.5)[None, :, None]  # [1, H, 1]
    crossings = torch.zeros(H, W, dtype=torch.long)
    for s in range(0, a.shape[0], 64):                                # edge chunks bound the memory
        ax, ay, bx, by = (t[s:s + 64, None, None] for t in (a[:, 0], a[:, 1], b[:, 0], b[:, 1]))
        spans = (ay > py) != (by > py)                                # [E, H, 1]
        dy = torch.where(by == ay, torch.ones_like(by), by - ay)
        x_cross = ax + (py - ay) * (bx - ax) / dy                     # [E, H, 1]
        crossings += (spans & (px < x_cross)).sum(0)                  # [H, W]
    return crossings % 2 == 1


# ====================================================================== transforms (torch.linalg, no OpenCV)
def affine_from_points(src: XY, dst: XY) -> torch.Tensor:
    """3x3 matrix A (last row 0 0 1) with dst = A @ [src, 1] for 3 point correspondences."""
    s, d = _xy(src).to(torch.float64).reshape(3, 2), _xy(dst).to(torch.float64).reshape(3, 2)
    S = torch.cat([s, torch.ones(3, 1, dtype=torch.float64)], dim=1)   # [3, 3]
    top = torch.linalg.solve(S, d).T                                    # [2, 3]
    return torch.cat([top, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)], dim=0)


def homography_from_points(src: XY, dst: XY) -> torch.Tensor:
    """3x3 perspective matrix P (P[2,2] = 1) with dst ~ P @ [src, 1] for 4 point correspondences (DLT)."""
    s, d = _xy(src).to(torch.float64).reshape(4, 2), _xy(dst).to(torch.float64).reshape(4, 2)
    rows, rhs = [], []
    for (x, y), (u, v) in zip(s.tolist(), d.tolist()):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
        rhs += [u, v]
    h = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([h, torch.ones(1, dtype=torch.float64)]).reshape(3, 3)


def apply_transform(M: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 affine/perspective matrix to points [..., 2]."""
    p = torch.cat([xy.to(M.dtype), torch.ones_like(xy[..., :1], dtype=M.dtype)], dim=-1) @ M.T
    return p[..., :2] / p[..., 2:3]


def triangulate_polygon(vertices: Sequence[Sequence[float]]) -> list[tuple[int, int, int]]:
    """Ear-clipping triangulation of a simple polygon: vertex index triples (degenerate ears dropped)."""
    v = [tuple(map(float, p)) for p in vertices]
    n = len(v)

    def cross(o: int, a: int, b: int) -> float:
        return (v[a][0] - v[o][0]) * (v[b][1] - v[o][1]) - (v[a][1] - v[o][1]) * (v[b][0] - v[o][0])

    area2 = sum(v[i][0] * v[(i + 1) % n][1] - v[(i + 1) % n][0] * v[i][1] for i in range(n))
    orient = 1.0 if area2 >= 0 else -1.0
    idx, tris = list(range(n)), []
    while len(idx) > 3:
        for k in range(len(idx)):
            i0, i1, i2 = idx[k - 1], idx[k], idx[(k + 1) % len(idx)]
            c = cross(i0, i1, i2) * orient
            if abs(c) < 1e-12:                      # collinear: the ear has no area
                idx.pop(k)
                break
            if c < 0:                               # reflex vertex
                continue
            if any(j not in (i0, i1, i2) and cross(i0, i1, j) * orient >= 0 and cross(i1, i2, j) * orient >= 0
                   and cross(i2, i0, j) * orient >= 0 for j in idx):
                continue
            tris.append((i0, i1, i2))
            idx.pop(k)
            break
        else:                                       # not simple (validation forbids this): fan the rest
            tris += [(idx[0], idx[m], idx[m + 1]) for m in range(1, len(idx) - 1)]
            return tris
    if abs(cross(*idx)) > 1e-12:
        tris.append((idx[0], idx[1], idx[2]))
    return tris


def _barycentric(q: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """Barycentric coordinates [N, 3] of points q [N, 2] in triangle tri [3, 2]."""
    a, b, c = tri[0], tri[1], tri[2]
    T = torch.stack([b - a, c - a], dim=1)                  # [2, 2] columns
    lb = torch.linalg.solve(T, (q - a).T).T                 # [N, 2] weights of b, c
    return torch.cat([1.0 - lb.sum(1, keepdim=True), lb], dim=1)


def piecewise_affine(q: torch.Tensor, src_poly: torch.Tensor, dst_poly: torch.Tensor) -> torch.Tensor:
    """Map points q inside src_poly to dst_poly through the triangles of src_poly's ear-clipping triangulation."""
    tris = triangulate_polygon(src_poly.tolist())
    bary = torch.stack([_barycentric(q, src_poly[list(t)]) for t in tris])      # [T, N, 3]
    best = bary.min(-1).values.argmax(0)                                         # most-inside triangle per point
    out = torch.empty_like(q)
    for k, t in enumerate(tris):
        sel = best == k
        if sel.any():
            out[sel] = bary[k, sel] @ dst_poly[list(t)]
    return out


# ====================================================================== inverse-distance weighting
def idw(query: torch.Tensor, ref: torch.Tensor, values: torch.Tensor, k: int = IDW_NEIGHBOURS,
        chunk: int = 512) -> torch.Tensor:
    """Inverse-distance-weighted mean of `values` at the k nearest `ref` points, for every query point [N, 2]."""
    k = min(k, ref.shape[0])
    out = []
    for s in range(0, query.shape[0], chunk):
        d = torch.cdist(query[s:s + chunk], ref)                          # [n, R]
        dist, ind = torch.topk(d, k, dim=1, largest=False)
        w = 1.0 / (dist + IDW_EPS)
        w = w / w.sum(1, keepdim=True)
        out.append((w[..., None] * values[ind]).sum(1))
    return torch.cat(out) if out else query.new_zeros(0, values.shape[-1])


# ====================================================================== correspondences
@dataclass(frozen=True)
class CellPairs:
    """Dense correspondences on a grid: target cell dst[i] takes the content of source (handle) cell src[i].

    src, dst: long [N, 2] as (x, y) = (column, row). Within one instruction targets are unique;
    `cat` merges instructions so that the later instruction wins a shared target cell."""

    src: torch.Tensor
    dst: torch.Tensor
    grid_hw: tuple[int, int]
    label: str = ""

    def __len__(self) -> int:
        return int(self.dst.shape[0])

    @property
    def dst_flat(self) -> torch.Tensor:
        """Target cells as flat indices y * w + x."""
        return self.dst[:, 1] * self.grid_hw[1] + self.dst[:, 0]

    def _mask(self, cells: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(self.grid_hw, dtype=torch.bool, device=cells.device)
        m[cells[:, 1], cells[:, 0]] = True
        return m

    def dst_mask(self) -> torch.Tensor:
        """Bool [h, w] of target cells."""
        return self._mask(self.dst)

    def src_mask(self) -> torch.Tensor:
        """Bool [h, w] of source (handle) cells, e.g. the area to vacate / re-noise."""
        return self._mask(self.src)

    def unique_targets(self) -> "CellPairs":
        """Keep one pair per target cell: the last one listed."""
        if len(self) == 0:
            return self
        flat = self.dst_flat
        order = torch.arange(flat.numel(), device=flat.device)
        last = torch.full((self.grid_hw[0] * self.grid_hw[1],), -1, dtype=torch.long, device=flat.device)
        last = last.scatter_reduce(0, flat, order, reduce="amax")
        keep = torch.sort(last[last >= 0]).values
        return CellPairs(self.src[keep], self.dst[keep], self.grid_hw, self.label)

    @staticmethod
    def cat(pairs: Sequence["CellPairs"], grid_hw: Optional[Sequence[int]] = None, label: str = "all") -> "CellPairs":
        """Merge several instructions' pairs (same grid); later instructions win shared target cells."""
        if not pairs:
            if grid_hw is None:
                raise GeometryError("CellPairs.cat needs grid_hw when there are no pairs")
            z = torch.zeros(0, 2, dtype=torch.long)
            return CellPairs(z, z.clone(), (int(grid_hw[0]), int(grid_hw[1])), label)
        hw = pairs[0].grid_hw
        if any(p.grid_hw != hw for p in pairs):
            raise GeometryError("cannot merge cell pairs of different grids")
        return CellPairs(torch.cat([p.src for p in pairs]), torch.cat([p.dst for p in pairs]), hw, label).unique_targets()

    def to(self, device: Union[str, torch.device]) -> "CellPairs":
        """Copy on another device."""
        return CellPairs(self.src.to(device), self.dst.to(device), self.grid_hw, self.label)

    def paste(self, source: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
        """Copy-paste: a clone of `into` [..., h, w] whose target cells hold `source`'s source cells."""
        if tuple(source.shape[-2:]) != self.grid_hw or tuple(into.shape[-2:]) != self.grid_hw:
            raise GeometryError(f"tensors {tuple(source.shape)} / {tuple(into.shape)} do not match the "
                                f"{self.grid_hw[0]}x{self.grid_hw[1]} grid")
        pairs = self.unique_targets().to(into.device)
        out = into.clone()
        out[..., pairs.dst[:, 1], pairs.dst[:, 0]] = source[..., pairs.src[:, 1], pairs.src[:, 0]].to(out.dtype)
        return out


def _pairs(grid: Grid, target: torch.Tensor, source_px: torch.Tensor, label: str) -> CellPairs:
    """CellPairs from target cells [N, 2] and the image-px points [N, 2] their centres map back to."""
    return CellPairs(grid.cell_of(source_px), target.long(), grid.hw, label)


def _cells_or_fallback(grid: Grid, cells: torch.Tensor, anchor_px: torch.Tensor) -> torch.Tensor:
    """Indices (x, y) [N, 2] of a bool [h, w] cell set; an empty set falls back to the cell holding anchor_px."""
    yx = torch.nonzero(cells)
    if yx.shape[0] == 0:
        return grid.cell_of(anchor_px.reshape(1, 2))
    return yx[:, [1, 0]]


def point_pair_cells(handle: Sequence[float], target: Sequence[float], grid: Grid, radius: float,
                     label: str = "point") -> CellPairs:
    """Plain point drag: the disc of cells within `radius` px of the target takes the same disc around the handle."""
    h, t = _xy(handle).to(torch.float64), _xy(target).to(torch.float64)
    cells = grid.disc_cells(t, radius)
    tc = grid.cell_of(t)
    cells[tc[1], tc[0]] = True                     # the target's own cell always moves
    dst = _cells_or_fallback(grid, cells, t)
    return _pairs(grid, dst, grid.cell_center(dst) - (t - h), label)


def rect_pair_cells(handle_box: Sequence[float], target_box: Sequence[float], grid: Grid,
                    label: str = "rect") -> CellPairs:
    """Axis-aligned rect -> rect: each target cell's centre is scaled linearly back into the handle rect."""
    hx0, hy0, hx1, hy1 = (float(v) for v in handle_box)
    tx0, ty0, tx1, ty1 = (float(v) for v in target_box)
    if tx1 <= tx0 or ty1 <= ty0 or hx1 <= hx0 or hy1 <= hy0:
        raise GeometryError(f"{label}: rects need x0 < x1 and y0 < y1 (got {handle_box} -> {target_box})")
    centre = torch.tensor([(tx0 + tx1) / 2, (ty0 + ty1) / 2], dtype=torch.float64)
    dst = _cells_or_fallback(grid, grid.rect_cells((tx0, ty0, tx1, ty1)), centre)
    q = grid.cell_center(dst)
    sx, sy = (hx1 - hx0) / (tx1 - tx0), (hy1 - hy0) / (ty1 - ty0)
    src = torch.stack([hx0 + (q[:, 0] - tx0) * sx, hy0 + (q[:, 1] - ty0) * sy], dim=1)
    return _pairs(grid, dst, src, label)


def polygon_pair_cells(handle: XY, target: XY, grid: Grid, label: str = "polygon") -> CellPairs:
    """Polygon -> polygon with matching vertices: affine (3), perspective (4), piecewise affine (5..16)."""
    hv, tv = _xy(handle).to(torch.float64).reshape(-1, 2), _xy(target).to(torch.float64).reshape(-1, 2)
    if hv.shape != tv.shape or hv.shape[0] < 3:
        raise GeometryError(f"{label}: handle and target need the same number (>= 3) of vertices")
    dst = _cells_or_fallback(grid, grid.polygon_cells(tv), tv.mean(0))
    q = grid.cell_center(dst)
    n = hv.shape[0]
    try:
        if n == 3:
            src = apply_transform(affine_from_points(tv, hv), q)
        elif n == 4:
            src = apply_transform(homography_from_points(tv, hv), q)
        else:
            src = piecewise_affine(q, tv, hv)
    except RuntimeError as e:   # torch.linalg.LinAlgError: singular system
        raise GeometryError(f"{label}: the target polygon is degenerate (collinear vertices): {e}") from None
    if not torch.isfinite(src).all():
        raise GeometryError(f"{label}: the polygon map sends cells to infinity (degenerate quadrilateral)")
    return _pairs(grid, dst, src, label)


def _nearest_filled(filled: torch.Tensor) -> torch.Tensor:
    """For every index of a bool vector, the nearest index where it is True."""
    idx = torch.nonzero(filled).reshape(-1)
    pos = torch.arange(filled.numel())
    j = torch.searchsorted(idx, pos).clamp(max=idx.numel() - 1)
    left = idx[(j - 1).clamp(min=0)]
    right = idx[j]
    return torch.where((pos - left).abs() <= (right - pos).abs(), left, right)


def mask_pair_cells(handle_mask: torch.Tensor, target_mask: torch.Tensor, grid: Grid,
                    label: str = "region") -> CellPairs:
    """Brush region pair: x maps linearly between the masks' x-ranges, then y per column between column y-ranges."""
    hm, tm = _image_mask(handle_mask, grid.image_size), _image_mask(target_mask, grid.image_size)
    if not tm.any():
        raise GeometryError(f"{label}: the target region is empty")
    if not hm.any():
        raise GeometryError(f"{label}: the handle region is empty")
    H = tm.shape[0]
    cells = grid.mask_cells(tm)
    if not cells.any():
        raise GeometryError(f"{label}: the target region lies outside the area the grid covers")
    dst = torch.nonzero(cells)[:, [1, 0]]
    q = grid.cell_center(dst)
    rows = torch.arange(H, dtype=torch.float64)[:, None]

    def extents(m: torch.Tensor) -> tuple[float, float, torch.Tensor, torch.Tensor, torch.Tensor]:
        cols = m.any(0)
        c = torch.nonzero(cols).reshape(-1)
        y0 = torch.where(m, rows, torch.full_like(rows, math.inf)).min(0).values
        y1 = torch.where(m, rows, torch.full_like(rows, -math.inf)).max(0).values + 1.0
        return float(c[0]), float(c[-1] + 1), y0, y1, _nearest_filled(cols)

    tx0, tx1, ty0, ty1, tnear = extents(tm)
    hx0, hx1, hy0, hy1, hnear = extents(hm)
    Wimg = tm.shape[1]
    x_src = hx0 + (q[:, 0] - tx0) * (hx1 - hx0) / (tx1 - tx0)
    tcol = tnear[torch.floor(q[:, 0]).long().clamp(0, Wimg - 1)]
    hcol = hnear[torch.floor(x_src).long().clamp(0, Wimg - 1)]
    y_src = hy0[hcol] + (q[:, 1] - ty0[tcol]) * (hy1[hcol] - hy0[hcol]) / (ty1[tcol] - ty0[tcol])
    return _pairs(grid, dst, torch.stack([x_src, y_src], dim=1), label)


def region_outline(region: RegionPair, which: str = "handle") -> torch.Tensor:
    """Polygon vertices [n, 2] (image px) of a region's handle or target shape (rects as 4 corners)."""
    if region.kind == "rect":
        x0, y0, x1, y1 = region.rect_box(which)
        return torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=torch.float64)
    return torch.tensor(region.handle if which == "handle" else region.target, dtype=torch.float64)


def _densify(poly: torch.Tensor, step: float) -> torch.Tensor:
    """Closed polyline resampled with spacing <= step (original vertices kept)."""
    out = []
    for a, b in zip(poly, torch.roll(poly, -1, dims=0)):
        n = max(1, int(math.ceil(float(torch.linalg.norm(b - a)) / step)))
        t = torch.arange(n, dtype=torch.float64)[:, None] / n
        out.append(a + t * (b - a))
    return torch.cat(out)


def region_points_cells(outline: XY, pairs: Sequence[PointPair], grid: Grid, label: str = "region") -> CellPairs:
    """Region moved by point pairs: IDW of the 4 nearest displacements warps it; each target cell gets a source."""
    poly = _xy(outline).to(torch.float64).reshape(-1, 2)
    hp = torch.tensor([p[0] for p in pairs], dtype=torch.float64).reshape(-1, 2)
    disp = torch.tensor([p[1] for p in pairs], dtype=torch.float64).reshape(-1, 2) - hp
    if hp.shape[0] == 0:
        raise GeometryError(f"{label}: a region moved by points needs at least one point pair")
    boundary = _densify(poly, 0.5 * min(grid.scale))
    inside = grid.centers()[grid.polygon_cells(poly)]
    samples = torch.cat([inside, boundary])
    moved = samples + idw(samples, hp, disp)                         # forward warp of the handle region
    warped_outline = boundary + idw(boundary, hp, disp)
    dst = _cells_or_fallback(grid, grid.polygon_cells(warped_outline), warped_outline.mean(0))
    q = grid.cell_center(dst)
    if samples.shape[0] > MAX_IDW_REFERENCES:                        # evenly thinned: bounded cost, same field
        keep = torch.linspace(0, samples.shape[0] - 1, MAX_IDW_REFERENCES).round().long()
        samples, moved = samples[keep], moved[keep]
    src = q + idw(q, moved, samples - moved)                         # inverse map, references = warped samples
    return _pairs(grid, dst, src, label)


def region_cells(region: RegionPair, grid: Grid, label: str = "region") -> CellPairs:
    """Dense pairs of one schema region (rect pair, polygon pair, or region moved by points)."""
    if region.moved_by_points:
        return region_points_cells(region_outline(region, "handle"), region.points, grid, label)
    if region.kind == "rect":
        return rect_pair_cells(region.rect_box("handle"), region.rect_box("target"), grid, label)
    return polygon_pair_cells(region.handle, region.target, grid, label)


def correspondences(drag: DragInstructions, grid: Grid, point_radius: Optional[float] = None) -> list[CellPairs]:
    """Per-instruction dense pairs: points[i] (disc of `point_radius` px, default one cell), then regions[i]."""
    if drag.image_size is not None and tuple(drag.image_size) != tuple(grid.image_size):
        raise GeometryError(f"the drag instructions are for a {drag.image_size[0]}x{drag.image_size[1]} image but "
                            f"the grid covers {grid.image_size[0]}x{grid.image_size[1]}")
    r = float(max(grid.scale)) if point_radius is None else float(point_radius)
    out = [point_pair_cells(h, t, grid, r, f"points[{i}]") for i, (h, t) in enumerate(drag.points)]
    out += [region_cells(reg, grid, f"regions[{i}]") for i, reg in enumerate(drag.regions)]
    return out


def dense_correspondences(drag: DragInstructions, grid: Grid, point_radius: Optional[float] = None) -> CellPairs:
    """All instructions merged into one CellPairs (later instructions win shared target cells)."""
    return CellPairs.cat(correspondences(drag, grid, point_radius), grid_hw=grid.hw)


def point_tensors(drag: DragInstructions) -> tuple[torch.Tensor, torch.Tensor]:
    """Handles and targets of the plain point pairs, float64 [N, 2] image px (for point-based methods)."""
    h = torch.tensor([p[0] for p in drag.points], dtype=torch.float64).reshape(-1, 2)
    t = torch.tensor([p[1] for p in drag.points], dtype=torch.float64).reshape(-1, 2)
    return h, t
