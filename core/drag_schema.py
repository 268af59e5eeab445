"""DRAG instructions: the versioned JSON schema shared by the editor widget, scripts and every drag node.

Schema, version 1 (coordinates are continuous image pixels, x right, y down: pixel (i, j) covers
[i, i+1) x [j, j+1) and its centre is (i+0.5, j+0.5); valid coordinates lie in [0, W] x [0, H])::

    {"version": 1,
     "image_size": [W, H],                                   # optional on input, filled from the image
     "points":  [{"handle": [x, y], "target": [x, y]}, ...],  # or [hx, hy, tx, ty] per pair
     "regions": [{"kind": "rect",    "handle": [[x0, y0], [x1, y1]], "target": [[x0, y0], [x1, y1]]},
                 {"kind": "polygon", "handle": [[x, y], ...3..16],   "target": [[x, y], ...same count]},
                 {"kind": "rect"|"polygon", "handle": [...], "points": [{"handle": .., "target": ..}, ...]}],
     "mask": {"size": [W, H], "counts": [n0, n1, ...]},       # optional editable area, run lengths
     "ui": {...}}                                            # optional widget state, ignored here

A region has either a "target" shape (a region pair) or "points" that move it (inverse-distance weighting).
Rects are 2 opposite corners, or 4 vertices of an axis-aligned rectangle. Mask run lengths are row-major
(x fastest) over H x W and alternate 0-runs and 1-runs, starting with a 0-run (which may be 0 long).
A bare list [[hx, hy, tx, ty], ...] is shorthand for {"version": 1, "points": [...]}.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import torch

from . import drag_json

SCHEMA_VERSION = 1
MAX_JSON_BYTES = 256 * 1024
MAX_POINTS = 64          # all point pairs together, the regions' own points included
MAX_REGIONS = 32
MIN_POLYGON_VERTICES = 3
MAX_POLYGON_VERTICES = 16
MAX_IMAGE_SIDE = 16384
MAX_NESTING = 32         # the schema needs 5 levels ([...] in {...} in [...] in {...}); "ui" gets the rest
REGION_KINDS = ("rect", "polygon")

Point = tuple[float, float]
PointPair = tuple[Point, Point]



class DragSchemaError(ValueError):
    """A violation of the drag schema; `field` is a path like 'points[1].target', `message` says what is wrong."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field} {message}")


def _fmt(v: float) -> str:
    """Short number for messages: 300 not 300.0."""
    return f"{v:g}"


def _num(v: float) -> float | int:
    """JSON number: whole values written as integers."""
    return int(v) if float(v).is_integer() else float(v)


def _xy_out(p: Sequence[float]) -> list:
    return [_num(p[0]), _num(p[1])]


def _fmt_pt(p: Sequence[float]) -> str:
    return "(" + ", ".join(_fmt(v) for v in p) + ")"


@dataclass(frozen=True)
class RegionPair:
    """One region instruction: handle shape -> target shape, or handle shape moved by its own point pairs."""

    kind: str                                   # "rect" | "polygon"
    handle: tuple[Point, ...]
    target: Optional[tuple[Point, ...]] = None
    points: tuple[PointPair, ...] = ()

    @property
    def moved_by_points(self) -> bool:
        """True when the region is moved by point pairs (no target shape)."""
        return self.target is None

    def rect_box(self, which: str = "handle") -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) with x0 < x1, y0 < y1 of a rect region's handle or target."""
        verts = self.handle if which == "handle" else self.target
        xs, ys = [v[0] for v in verts], [v[1] for v in verts]
        return min(xs), min(ys), max(xs), max(ys)

    def to_obj(self) -> dict:
        """JSON-ready dict of this region."""
        obj: dict[str, Any] = {"kind": self.kind, "handle": [_xy_out(v) for v in self.handle]}
        if self.target is not None:
            obj["target"] = [_xy_out(v) for v in self.target]
        else:
            obj["points"] = [{"handle": _xy_out(h), "target": _xy_out(t)} for h, t in self.points]
        return obj


@dataclass(frozen=True)
class DragInstructions:
    """The DRAG value: point pairs, region pairs, image size (W, H) and an optional run-length editable mask."""

    points: tuple[PointPair, ...] = ()
    regions: tuple[RegionPair, ...] = ()
    image_size: Optional[tuple[int, int]] = None           # (W, H)
    mask_counts: Optional[tuple[int, ...]] = field(default=None, repr=False)  # RLE at image_size

    def __post_init__(self) -> None:
        # The pack's mask rule: an all-black mask means "no mask" (as for a MASK input, and as the editor writes it:
        # it leaves "mask" out when nothing is painted). Read from the runs, without decoding the mask.
        if self.mask_counts is not None and not any(int(c) for c in self.mask_counts[1::2]):
            object.__setattr__(self, "mask_counts", None)

    # ---------------------------------------------------------------- parsing
    @classmethod
    def from_json(cls, text: str, image_size: Optional[Sequence[int]] = None) -> "DragInstructions":
        """Parse and validate widget/API JSON; image_size (W, H) of the real image fills or checks the stored one.

        An empty string means no instructions. If the JSON was drawn on an image of another size with the
        same aspect ratio, coordinates are rescaled; another aspect ratio is an error."""
        if not isinstance(text, str):
            raise DragSchemaError("JSON", f"must be a string, got {type(text).__name__}")
        _check_unicode(text)
        if len(text.encode("utf-8")) > MAX_JSON_BYTES:
            raise DragSchemaError("JSON", f"is {len(text.encode('utf-8')) // 1024} KiB; the limit is "
                                          f"{MAX_JSON_BYTES // 1024} KiB (use fewer points, regions or a simpler mask)")
        if not text.strip():
            obj: Any = {}
        else:
            _check_nesting(text)
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DragSchemaError("JSON", f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
            except ValueError as e:        # an integer literal beyond Python's int-string limit (4300 digits)
                raise DragSchemaError("JSON", f"holds a number too long to read ({str(e).split(' for ')[0]}); "
                                              f"coordinates are pixels") from None
            except RecursionError:  # pragma: no cover - _check_nesting refuses these first
                raise DragSchemaError("JSON", f"is nested too deeply (at most {MAX_NESTING} levels)") from None
        return cls.from_obj(obj, image_size=image_size)

    @classmethod
    def from_obj(cls, obj: Any, image_size: Optional[Sequence[int]] = None) -> "DragInstructions":
        """Build and validate from an already-parsed JSON value (dict, or the bare list shorthand)."""
        if isinstance(obj, (list, tuple)):
            obj = {"version": SCHEMA_VERSION, "points": obj}
        if not isinstance(obj, dict):
            raise DragSchemaError("JSON", f"must be an object {{\"version\": 1, ...}} or a list of "
                                          f"[hx, hy, tx, ty], got {drag_json.typename(obj)}")
        try:
            doc = drag_json.read(obj)
        except drag_json.DocError as e:
            raise DragSchemaError(e.field, e.message) from None
        if doc.version != int(doc.version):
            raise DragSchemaError("version", f"must be an integer, got {_fmt(doc.version)}")
        if int(doc.version) != SCHEMA_VERSION:
            raise DragSchemaError("version", f"{int(doc.version)} is not supported (this pack reads version "
                                             f"{SCHEMA_VERSION}); update ComfyUI-DragEdit or redraw the instructions")

        stored_size = None if doc.image_size is None else _whole_size(doc.image_size, "image_size")
        points = tuple(_pair(p) for p in doc.points)
        regions = tuple(_region(r, f"regions[{i}]") for i, r in enumerate(doc.regions))
        mask_counts = None
        if doc.mask is not None:
            mask_size = _whole_size(doc.mask.size, "mask.size")
            mask_counts = tuple(doc.mask.counts)
            _check_counts(mask_counts, mask_size, "mask.counts")
            ref = stored_size or (tuple(int(v) for v in image_size) if image_size is not None else None)
            if ref is not None and mask_size != ref:
                raise DragSchemaError("mask.size", f"{mask_size[0]}x{mask_size[1]} differs from the image size "
                                                   f"{ref[0]}x{ref[1]}")
            stored_size = stored_size or mask_size
        drag = cls(points=points, regions=regions, image_size=stored_size, mask_counts=mask_counts)
        drag._check_limits()   # before any geometry work
        if image_size is not None:
            drag = drag.fit_to(image_size)
        drag.validate()
        return drag

    @classmethod
    def coerce(cls, value: Any, image_size: Optional[Sequence[int]] = None) -> "DragInstructions":
        """Accept a DragInstructions (also one from another copy of this module), JSON text, dict or list."""
        if isinstance(value, cls):
            drag = value.fit_to(image_size) if image_size is not None else value
            drag.validate()
            return drag
        if hasattr(value, "to_json") and not isinstance(value, (str, bytes)):
            return cls.from_json(value.to_json(), image_size=image_size)
        if isinstance(value, str):
            return cls.from_json(value, image_size=image_size)
        return cls.from_obj(value, image_size=image_size)

    # ---------------------------------------------------------------- output
    def to_obj(self) -> dict:
        """JSON-ready dict in the canonical version-1 form."""
        obj: dict[str, Any] = {"version": SCHEMA_VERSION}
        if self.image_size is not None:
            obj["image_size"] = list(self.image_size)
        obj["points"] = [{"handle": _xy_out(h), "target": _xy_out(t)} for h, t in self.points]
        obj["regions"] = [r.to_obj() for r in self.regions]
        if self.mask_counts is not None and self.image_size is not None:
            obj["mask"] = {"size": list(self.image_size), "counts": list(self.mask_counts)}
        return obj

    def to_json(self) -> str:
        """Canonical JSON text (round-trips through from_json)."""
        return json.dumps(self.to_obj(), separators=(",", ":"))

    # ---------------------------------------------------------------- queries
    @property
    def is_empty(self) -> bool:
        """True when there is nothing to drag."""
        return not self.points and not self.regions

    def require_moves(self) -> "DragInstructions":
        """This instance when it holds at least one point pair or region pair, else DragSchemaError: the one
        "nothing to drag" rule of every drag method (an empty {} must not run and return the input unchanged)."""
        if self.is_empty:
            raise DragSchemaError("instructions", "are empty (no point pairs and no region pairs), so there is "
                                                  "nothing to drag: draw at least one handle -> target pair")
        return self

    @property
    def has_mask(self) -> bool:
        """True when the JSON carries an editable mask."""
        return self.mask_counts is not None

    def all_point_count(self) -> int:
        """Point pairs including those that move regions."""
        return len(self.points) + sum(len(r.points) for r in self.regions)

    def mask_tensor(self) -> Optional[torch.Tensor]:
        """The stored editable mask as a float [H, W] tensor of 0/1, or None."""
        if self.mask_counts is None or self.image_size is None:
            return None
        return rle_decode(self.mask_counts, self.image_size).float()

    def with_mask(self, mask: Optional[torch.Tensor]) -> "DragInstructions":
        """Copy with the editable mask replaced by mask [H, W] (>0.5 = editable) at image_size, or removed (None)."""
        if mask is None:
            return replace(self, mask_counts=None)
        if self.image_size is None:
            raise DragSchemaError("image_size", "is unknown; set it before attaching a mask")
        return replace(self, mask_counts=rle_encode(mask, self.image_size))

    # ---------------------------------------------------------------- sizes
    def with_image_size(self, image_size: Sequence[int]) -> "DragInstructions":
        """Copy with image_size set (no rescaling)."""
        return replace(self, image_size=(int(image_size[0]), int(image_size[1])))

    def fit_to(self, image_size: Sequence[int]) -> "DragInstructions":
        """Fill a missing image_size, keep an equal one, rescale a same-aspect one, refuse another aspect. Rescaling
        never decodes the mask at the stored size (a tiny JSON may declare a 16384x16384 one): see `scaled`."""
        W, H = int(image_size[0]), int(image_size[1])
        if self.image_size is None:
            return self.with_image_size((W, H))
        w0, h0 = self.image_size
        if (w0, h0) == (W, H):
            return self
        if abs(w0 / h0 - W / H) <= 0.01 * (W / H):
            return self.scaled(W, H)
        raise DragSchemaError("image_size", f"the instructions were drawn on a {w0}x{h0} image but the image is "
                                            f"{W}x{H}; redraw them on this image")

    def scaled(self, new_W: int, new_H: int) -> "DragInstructions":
        """Copy with every coordinate (and the mask) rescaled from image_size to (new_W, new_H)."""
        if self.image_size is None:
            raise DragSchemaError("image_size", "is unknown; cannot rescale")
        W, H = self.image_size
        sx, sy = new_W / W, new_H / H

        def sp(p: Point) -> Point:
            return (p[0] * sx, p[1] * sy)

        points = tuple((sp(h), sp(t)) for h, t in self.points)
        regions = tuple(RegionPair(r.kind, tuple(sp(v) for v in r.handle),
                                   None if r.target is None else tuple(sp(v) for v in r.target),
                                   tuple((sp(h), sp(t)) for h, t in r.points)) for r in self.regions)
        counts = None
        if self.mask_counts is not None:
            m = rle_resample(self.mask_counts, (W, H), (int(new_W), int(new_H)))
            counts = rle_encode(m, (int(new_W), int(new_H)))
        return DragInstructions(points, regions, (int(new_W), int(new_H)), counts)

    # ---------------------------------------------------------------- validation
    def _check_limits(self) -> None:
        if len(self.regions) > MAX_REGIONS:
            raise DragSchemaError("regions", f"has {len(self.regions)} regions; at most {MAX_REGIONS} are allowed")
        n = self.all_point_count()
        if n > MAX_POINTS:
            raise DragSchemaError("points", f"has {n} point pairs in total (regions' points included); at most "
                                            f"{MAX_POINTS} are allowed")

    def validate(self) -> None:
        """Raise DragSchemaError(field, message) on any violation; coordinates are checked when image_size is known."""
        self._check_limits()
        size = self.image_size
        if size is not None:
            _check_size(size, "image_size")
        for i, pair in enumerate(self.points):
            _check_pair(pair, f"points[{i}]", size)
        for i, r in enumerate(self.regions):
            _check_region(r, f"regions[{i}]", size)
        if self.mask_counts is not None:
            if size is None:
                raise DragSchemaError("mask", "needs image_size")
            _check_counts(self.mask_counts, size, "mask.counts")


# ====================================================================== run-length mask
def rle_encode(mask: torch.Tensor, image_size: Sequence[int]) -> tuple[int, ...]:
    """Run lengths of mask > 0.5 (row-major, starting with a 0-run) for a [H, W] mask of size (W, H)."""
    W, H = int(image_size[0]), int(image_size[1])
    m = torch.as_tensor(mask).detach()
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if tuple(m.shape) != (H, W):
        raise DragSchemaError("mask", f"is {m.shape[-1]}x{m.shape[-2]} but the image is {W}x{H}")
    flat = (m.reshape(-1).float() > 0.5).to(torch.int8).cpu()
    change = torch.nonzero(flat[1:] != flat[:-1]).reshape(-1) + 1
    bounds = torch.cat([torch.tensor([0]), change, torch.tensor([flat.numel()])])
    runs = (bounds[1:] - bounds[:-1]).tolist()
    if flat.numel() and flat[0] == 1:
        runs = [0] + runs
    return tuple(int(r) for r in runs)


def rle_decode(counts: Sequence[int], image_size: Sequence[int]) -> torch.Tensor:
    """Bool [H, W] mask from run lengths (see rle_encode)."""
    W, H = int(image_size[0]), int(image_size[1])
    _check_counts(counts, (W, H), "mask.counts")
    c = torch.tensor(list(counts), dtype=torch.long)
    values = (torch.arange(c.numel()) % 2).bool()
    return torch.repeat_interleave(values, c).reshape(H, W)


def rle_resample(counts: Sequence[int], image_size: Sequence[int], new_size: Sequence[int]) -> torch.Tensor:
    """Bool [new_H, new_W] mask: the run-length mask of size image_size (W, H) resampled nearest-exact (as
    torch's interpolate) straight from the runs, so memory scales with the new size and the run count, never with
    the stored size."""
    W, H = int(image_size[0]), int(image_size[1])
    nW, nH = int(new_size[0]), int(new_size[1])
    _check_counts(counts, (W, H), "mask.counts")
    xs = ((torch.arange(nW, dtype=torch.float64) + 0.5) * (W / nW)).floor().clamp(max=W - 1).long()
    ys = ((torch.arange(nH, dtype=torch.float64) + 0.5) * (H / nH)).floor().clamp(max=H - 1).long()
    pos = ys[:, None] * W + xs[None, :]
    ends = torch.cumsum(torch.tensor(list(counts), dtype=torch.long), 0)
    run = torch.searchsorted(ends, pos.reshape(-1), right=True)
    return (run % 2 == 1).reshape(nH, nW)


def _check_nesting(text: str) -> None:
    """Refuse JSON nested deeper than MAX_NESTING before parsing it (json.loads recurses per level)."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return
    depth, in_str, esc = 0, False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise DragSchemaError("JSON", f"is nested more than {MAX_NESTING} levels deep; drag instructions "
                                              f"need 5 (write them as the schema shows)")
        elif ch in "]}":
            depth -= 1


# ====================================================================== document -> instructions
def _check_unicode(text: str) -> None:
    """Refuse text that is not valid Unicode (a lone UTF-16 surrogate, which JSON from a browser can carry and
    which no UTF-8 encoder writes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DragSchemaError("JSON", f"holds a lone UTF-16 surrogate ({ascii(text[e.start])[1:-1]}) at character "
                                      f"{e.start}, which is not valid Unicode; remove it") from None


def _pair(p: Any) -> PointPair:
    """A point pair of the document (the [hx, hy, tx, ty] form or {handle, target}) as ((hx, hy), (tx, ty))."""
    if isinstance(p, tuple) and len(p) == 4:
        return ((float(p[0]), float(p[1])), (float(p[2]), float(p[3])))
    return ((float(p.handle[0]), float(p.handle[1])), (float(p.target[0]), float(p.target[1])))


def _xys(vs: Sequence[Sequence[float]]) -> tuple[Point, ...]:
    return tuple((float(v[0]), float(v[1])) for v in vs)


def _region(r: "drag_json.RegionDoc", path: str) -> RegionPair:
    """A region of the document: a target shape or the points that move it, not both, not neither."""
    if r.target is not None and r.points is not None:
        raise DragSchemaError(path, "has both 'target' and 'points'; give a target shape or the points that "
                                    "move the region, not both")
    if r.target is None and r.points is None:
        raise DragSchemaError(f"{path}.target", "is missing: every handle region needs a target region (or "
                                                "'points' that move it)")
    if r.target is not None:
        return RegionPair(r.kind, _xys(r.handle), _xys(r.target))
    return RegionPair(r.kind, _xys(r.handle), None, tuple(_pair(p) for p in r.points))


def _whole_size(v: Sequence[float], path: str) -> tuple[int, int]:
    """[W, H] in whole pixels within 1..MAX_IMAGE_SIDE."""
    for i, x in enumerate(v):
        if x != int(x):
            raise DragSchemaError(f"{path}[{i}]", f"must be a whole number of pixels, got {_fmt(x)}")
    size = (int(v[0]), int(v[1]))
    _check_size(size, path)
    return size


# ====================================================================== semantic checks
def _check_size(size: Sequence[int], path: str) -> None:
    W, H = size
    for name, v in (("W", W), ("H", H)):
        if not (1 <= v <= MAX_IMAGE_SIDE):
            raise DragSchemaError(path, f"{name}={v} must be between 1 and {MAX_IMAGE_SIDE}")


def _check_counts(counts: Sequence[int], size: Sequence[int], path: str) -> None:
    total = sum(int(c) for c in counts)
    if any(int(c) < 0 for c in counts):
        raise DragSchemaError(path, "has a negative run length")
    if total != size[0] * size[1]:
        raise DragSchemaError(path, f"cover {total} pixels but a {size[0]}x{size[1]} mask has {size[0] * size[1]}")


def _check_xy(p: Point, path: str, size: Optional[Sequence[int]]) -> None:
    if not (isinstance(p, (tuple, list)) and len(p) == 2):
        raise DragSchemaError(path, f"must be (x, y), got {p!r}")
    for k, v in enumerate(p):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise DragSchemaError(f"{path}[{k}]", f"must be a number, got {v!r}")
        if not math.isfinite(v):
            raise DragSchemaError(f"{path}[{k}]", f"is {v} (coordinates must be finite numbers)")
    if size is not None:
        W, H = size
        if not (0 <= p[0] <= W and 0 <= p[1] <= H):
            raise DragSchemaError(path, f"{_fmt_pt(p)} lies outside the {W}x{H} image")


def _check_pair(pair: PointPair, path: str, size: Optional[Sequence[int]]) -> None:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise DragSchemaError(path, "must be a (handle, target) pair; every handle needs a target")
    _check_xy(pair[0], f"{path}.handle", size)
    _check_xy(pair[1], f"{path}.target", size)


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def polygon_area(verts: Sequence[Point]) -> float:
    """Signed shoelace area of a polygon (positive = counter-clockwise in x-right, y-up terms)."""
    n = len(verts)
    return 0.5 * sum(verts[i][0] * verts[(i + 1) % n][1] - verts[(i + 1) % n][0] * verts[i][1] for i in range(n))


def _segments_touch(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and d1 != 0 and d2 != 0 and d3 != 0 and d4 != 0:
        return True

    def on_seg(a: Point, b: Point, c: Point, d: float) -> bool:
        return d == 0 and min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    return on_seg(q1, q2, p1, d1) or on_seg(q1, q2, p2, d2) or on_seg(p1, p2, q1, d3) or on_seg(p1, p2, q2, d4)


def _check_shape(kind: str, verts: Sequence[Point], path: str, size: Optional[Sequence[int]]) -> None:
    n = len(verts)
    if kind == "rect":
        if n not in (2, 4):
            raise DragSchemaError(path, f"a rect needs 2 opposite corners or 4 vertices, got {n}")
    elif not (MIN_POLYGON_VERTICES <= n <= MAX_POLYGON_VERTICES):
        raise DragSchemaError(path, f"a polygon needs {MIN_POLYGON_VERTICES} to {MAX_POLYGON_VERTICES} vertices, "
                                    f"got {n}")
    for i, v in enumerate(verts):
        _check_xy(v, f"{path}[{i}]", size)
    if kind == "rect":
        xs, ys = [v[0] for v in verts], [v[1] for v in verts]
        if n == 4:
            x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
            corners = {(x0, y0), (x1, y0), (x1, y1), (x0, y1)}
            tol = 1e-3
            if any(min(abs(v[0] - c[0]) + abs(v[1] - c[1]) for c in corners) > tol for v in verts) or \
                    len({(round(v[0], 3), round(v[1], 3)) for v in verts}) != 4:
                raise DragSchemaError(path, "is not an axis-aligned rectangle; use kind 'polygon' for a rotated or "
                                            "skewed quadrilateral")
        if max(xs) - min(xs) <= 0 or max(ys) - min(ys) <= 0:
            raise DragSchemaError(path, "has zero width or height")
        return
    for i in range(n):
        a, b = verts[i], verts[(i + 1) % n]
        if a[0] == b[0] and a[1] == b[1]:
            raise DragSchemaError(f"{path}[{(i + 1) % n}]", f"repeats vertex {i} {_fmt_pt(a)}")
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue
            if _segments_touch(verts[i], verts[(i + 1) % n], verts[j], verts[(j + 1) % n]):
                raise DragSchemaError(path, f"crosses itself (edge {i}-{(i + 1) % n} meets edge {j}-{(j + 1) % n})")
    if abs(polygon_area(verts)) < 1e-6:
        raise DragSchemaError(path, "has zero area (its vertices are collinear)")
    if n == 4:
        for k in range(4):
            a, b, c = (verts[(k + m) % 4] for m in range(3))
            if abs(_cross(a, b, c)) < 1e-6:
                raise DragSchemaError(path, "has three collinear vertices; a perspective map needs a proper "
                                            "quadrilateral (use 3 vertices for a triangle)")


def _check_region(r: RegionPair, path: str, size: Optional[Sequence[int]]) -> None:
    if r.kind not in REGION_KINDS:
        raise DragSchemaError(f"{path}.kind", f"must be 'rect' or 'polygon', got {r.kind!r}")
    _check_shape(r.kind, r.handle, f"{path}.handle", size)
    if r.target is not None:
        if r.points:
            raise DragSchemaError(path, "has both 'target' and 'points'")
        if len(r.target) != len(r.handle):
            raise DragSchemaError(f"{path}.target", f"has {len(r.target)} vertices but the handle has "
                                                    f"{len(r.handle)}; handle and target need the same count")
        _check_shape(r.kind, r.target, f"{path}.target", size)
    else:
        if not r.points:
            raise DragSchemaError(f"{path}.target", "is missing: give a target region or 'points' that move it")
        for i, pair in enumerate(r.points):
            _check_pair(pair, f"{path}.points[{i}]", size)

