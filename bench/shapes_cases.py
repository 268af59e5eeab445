"""ShapesBench case set (pure torch; no ComfyUI server here); its scoring and baselines are bench/shapes_scoring.py.

Every case is a scene record from demo/shapes/renderer.py plus an edit whose ground truth is the same scene
re-rendered with the edit applied (object moved / resized / recoloured / removed). Kinds:

- point_drag       1-2 point pairs on an object (handle near the object's centre -> target); GT = object translated
- region_drag      a rect or polygon region around the object -> the same region translated
- move             object moved far (7-14 px): one point pair centre -> centre and the object's box as a mask (some
                   cases end partly on top of the distractor: occlusion)
- resize           object scaled (0.7-1.4) and moved a little: box -> scaled box, or two edge point pairs
- recolour         appearance replace: object A takes the colour of object B of the same scene (region masks)
- concept_recolour words for LEDITS: add the new colour, remove the old one ("blue square" + remove "red square")
- concept_remove   remove one shape of a two-shape scene: LEDITS by the target prompt of what remains (the scene
                   without it); the concept words ("red triangle", direction remove) for the SEGA / LEDITS++ remove

Displacements are odd whole pixels or fractional (sub-cell under the 2x2 unshuffle latent), never an even whole
pixel shift (that is one latent cell: trivially exact for copy-paste; see design/shapes-model.md). Shading,
gradients and distractor shapes of other colours are drawn at random from a fixed seed."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

if "dragedit" not in sys.modules:                      # standalone use: load ComfyUI + the pack like other benches
    from bench import _util
    _util.setup()

from dragedit.core.drag_schema import DragInstructions, RegionPair, rle_encode  # noqa: E402
from dragedit.core.geometry import rasterize_polygon, rect_mask  # noqa: E402
from dragedit.demo.shapes import renderer as R  # noqa: E402
from dragedit.demo.shapes.renderer import Scene, Shape  # noqa: E402

SIZE = 32
SEED = 20261125
KINDS: tuple[str, ...] = ("point_drag", "region_drag", "move", "resize", "recolour", "concept_recolour",
                          "concept_remove")
COUNTS: dict[str, int] = {"point_drag": 20, "region_drag": 18, "move": 18, "resize": 16, "recolour": 12,
                          "concept_recolour": 12, "concept_remove": 12}
GEOMETRIC = ("point_drag", "region_drag", "move", "resize")   # kinds whose object changes place or size
APPEARANCE = ("recolour", "concept_recolour")                 # kinds whose object changes colour
BOX_MARGIN = 1.0          # px around an object's covered pixels for its handle box
POINT_PATCH_RADIUS = 4.0  # px: the copy-paste baseline moves a disc of this radius per point pair
EDIT_DILATE = 2           # px: the edit region is old ∪ new object, dilated by this much
PSNR_CAP = 99.0           # dB: PSNR of identical images (a finite number keeps means and JSON usable)
GHOST_FLOOR = 0.1         # colour coverage below this counts as nothing (estimation noise on the background)
MIN_OBJECT_PX = 8.0       # the classifier finds no object below this many covered pixels
FG_THRESH = 0.15          # |pixel − background| above this is foreground for the classifier


@dataclass(frozen=True)
class Case:
    """One edit with its ground truth. Coordinates are image pixels of the 32x32 scene (x right, y down).
    obj: index of the edited shape in `scene`; ref: the shape whose colour a recolour takes; points: point pairs
    ((hx, hy), (tx, ty)); region: ("rect"|"polygon", handle vertices, target vertices); box: the object's handle box
    (x0, y0, x1, y1); ref_box: the reference object's box; concepts: (words, "add"|"remove") for LEDITS; tags: what
    makes the case hard (shaded, distractor, odd, subpixel, occlusion, polygon, 2pts...)."""
    id: str
    kind: str
    scene: Scene
    target: Scene
    obj: int
    points: tuple = ()
    region: Optional[tuple] = None
    box: Optional[tuple[float, float, float, float]] = None
    ref: Optional[int] = None
    ref_box: Optional[tuple[float, float, float, float]] = None
    displacement: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    concepts: tuple = ()
    tags: tuple[str, ...] = ()

    @property
    def shape(self) -> Shape:
        """The edited object as it is in the input."""
        return self.scene.shapes[self.obj]

    @property
    def new_shape(self) -> Optional[Shape]:
        """The edited object in the ground truth (None when removed)."""
        if self.kind == "concept_remove":
            return None
        return self.target.shapes[self.obj]

    @property
    def prompt(self) -> str:
        """The source prompt (the input scene's words)."""
        return R.prompt(self.scene)

    def others(self, which: str = "input") -> list[Shape]:
        """The shapes that are not edited (distractors / reference), in the input or the ground truth."""
        sc = self.scene if which == "input" else self.target
        if which != "input" and self.kind == "concept_remove":
            return list(sc.shapes)
        return [s for i, s in enumerate(sc.shapes) if i != self.obj]

    # ------------------------------------------------------------------ instruction forms
    def drag_json(self, form: str) -> str:
        """The case as Drag Instructions JSON: form 'points' (point pairs), 'region' (region pair) or 'move' (one
        point pair centre -> centre and the object's box as the mask: DragonDiffusion's move mode)."""
        size = (SIZE, SIZE)
        if form == "points":
            d = DragInstructions(points=tuple(self.points), image_size=size)
        elif form == "region":
            if self.region is None:
                raise ValueError(f"case {self.id} ({self.kind}) has no region form")
            kind, h, t = self.region
            d = DragInstructions(regions=(RegionPair(kind, tuple(h), tuple(t)),), image_size=size)
        elif form == "move":
            if self.box is None:
                raise ValueError(f"case {self.id} ({self.kind}) has no move form")
            c0 = (_r(self.shape.x), _r(self.shape.y))
            c1 = (_r(c0[0] + self.displacement[0]), _r(c0[1] + self.displacement[1]))
            d = DragInstructions(points=((c0, c1),),
                                 image_size=size, mask_counts=rle_encode(self.handle_mask().float(), size))
        else:
            raise ValueError(f"unknown form {form!r}")
        d.validate()
        return d.to_json()

    def handle_box(self) -> tuple[float, float, float, float]:
        """The box the region / move forms grab: the region's handle box when there is one, else the object box."""
        if self.region is not None and self.region[0] == "rect":
            (x0, y0), (x1, y1) = self.region[1]
            return (x0, y0, x1, y1)
        return self.box

    def handle_mask(self) -> torch.Tensor:
        """Bool [H, W]: pixels whose centre is inside the handle region (or the object box)."""
        if self.region is not None and self.region[0] == "polygon":
            return rasterize_polygon(list(self.region[1]), SIZE, SIZE)
        return rect_mask(*self.handle_box(), SIZE, SIZE)

    def ref_mask(self) -> torch.Tensor:
        """Bool [H, W]: the reference object's box (recolour cases)."""
        return rect_mask(*self.ref_box, SIZE, SIZE)

    def to_dict(self) -> dict:
        """JSON-ready record (scenes as renderer records)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["scene"], d["target"] = self.scene.to_dict(), self.target.to_dict()
        d["prompt"] = self.prompt
        return json.loads(json.dumps(d))


# ======================================================================================================== images
def quantize(img: torch.Tensor) -> torch.Tensor:
    """An image as it survives a PNG: rounded to 1/255 (inputs and ground truth go through this too)."""
    return (img.clamp(0, 1) * 255.0).round() / 255.0


def input_image(case: Case) -> torch.Tensor:
    """The scene to edit, [3, 32, 32] in [0, 1], 8-bit quantized."""
    return quantize(R.render(case.scene, SIZE))


def gt_image(case: Case) -> torch.Tensor:
    """The ground truth: the edited scene re-rendered, [3, 32, 32], 8-bit quantized."""
    return quantize(R.render(case.target, SIZE))


def to_uint8_hwc(img: torch.Tensor) -> "object":
    """[3, H, W] float -> numpy uint8 [H, W, 3] (for PNG writing)."""
    return (img.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def from_uint8_hwc(arr) -> torch.Tensor:
    """numpy uint8 [H, W, 3|4] -> [3, H, W] float."""
    return torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).float() / 255.0


# ======================================================================================================== geometry
def _box_centre(b: Sequence[float]) -> tuple[float, float]:
    return ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)


def _r(v: float) -> float:
    """Coordinates rounded to 1/100 px (JSON-friendly, exact in the case record)."""
    return round(float(v), 2)


def object_box(shape: Shape, margin: float = BOX_MARGIN) -> tuple[float, float, float, float]:
    """Box around the pixels the shape covers (any coverage), plus margin, clipped to the image."""
    cov = R.coverage(shape, SIZE) > 1e-3
    ys, xs = torch.nonzero(cov, as_tuple=True)
    x0, x1 = float(xs.min()) - margin, float(xs.max()) + 1 + margin
    y0, y1 = float(ys.min()) - margin, float(ys.max()) + 1 + margin
    return (max(0.0, x0), max(0.0, y0), min(float(SIZE), x1), min(float(SIZE), y1))


def dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Bool mask grown by px pixels (square structuring element)."""
    if px <= 0:
        return mask.bool()
    return F.max_pool2d(mask.float()[None, None], 2 * px + 1, stride=1, padding=px)[0, 0] > 0.5


def erode(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Bool mask shrunk by px pixels."""
    return ~dilate(~mask.bool(), px)


def _inside_image(s: Shape, pad: float = 0.5) -> bool:
    e = s.extent
    return pad + e <= s.x <= SIZE - pad - e and pad + e <= s.y <= SIZE - pad - e


def _apart(a: Shape, b: Shape, gap: float = 1.0) -> bool:
    return math.hypot(a.x - b.x, a.y - b.y) >= a.extent + b.extent + gap


def _box_ok(b: Sequence[float]) -> bool:
    return b[0] >= 0 and b[1] >= 0 and b[2] <= SIZE and b[3] <= SIZE


def _displacement(rng: random.Random, lo: float, hi: float, style: str) -> tuple[float, float]:
    """A displacement of length lo..hi: 'odd' = odd whole pixels per axis (0 allowed on one axis), 'subpixel' =
    fractional parts in {.25, .5, .75}. Never an even whole-pixel shift on both axes."""
    for _ in range(1000):
        ang = rng.uniform(0, 2 * math.pi)
        mag = rng.uniform(lo, hi)
        dx, dy = mag * math.cos(ang), mag * math.sin(ang)
        if style == "odd":
            dx, dy = (2 * math.floor(v / 2) + 1 if abs(v) >= 0.5 else 0.0 for v in (dx, dy))
            if dx % 2 == 0 and dy % 2 == 0:
                continue
        else:
            dx, dy = (math.floor(v) + rng.choice((0.25, 0.5, 0.75)) for v in (dx, dy))
        if lo <= math.hypot(dx, dy) <= hi + 1.0:
            return float(dx), float(dy)
    raise RuntimeError("no displacement found")


# ======================================================================================================== case set
def _base_scene(rng: random.Random, distractor: bool, shading_p: float, min_size: float = 3.5, max_size: float = 6.0,
                margin: float = 0.0) -> Scene:
    """Background + main shape (+ a distractor of another colour); the main shape keeps `margin` px from the edges."""
    bg, grad = R.random_background(rng)
    for _ in range(200):
        main = R.random_shape(rng, SIZE, (), min_size=min_size, max_size=max_size, shading_p=shading_p)
        if not _inside_image(main, 0.5 + margin):
            continue
        shapes = [main]
        if distractor:
            try:
                shapes.append(R.random_shape(rng, SIZE, shapes, min_size=3.5, max_size=5.0, shading_p=shading_p))
            except ValueError:
                continue
        return Scene(bg, tuple(shapes), grad)
    raise RuntimeError("could not draw a base scene")


def _moved_ok(case_scene: Scene, moved: Scene, obj: int, allow_overlap: bool = False) -> bool:
    s = moved.shapes[obj]
    if not _inside_image(s):
        return False
    if allow_overlap:
        return True
    return all(_apart(s, o) for i, o in enumerate(moved.shapes) if i != obj)


def _make_point_drag(rng: random.Random, i: int) -> Case:
    style = "odd" if i % 2 == 0 else "subpixel"
    while True:
        sc = _base_scene(rng, distractor=rng.random() < 0.75, shading_p=0.4, min_size=4.0, max_size=6.5)
        d = _displacement(rng, 3.0, 8.0, style)
        tgt = sc.moved(0, *d)
        if not _moved_ok(sc, tgt, 0):
            continue
        s = sc.shapes[0]
        n = 2 if rng.random() < 0.3 else 1
        a0 = rng.uniform(0, 2 * math.pi)
        pts = []
        for k in range(n):                     # a second handle lies on the opposite side of the centre
            a = a0 + k * math.pi
            rr = rng.uniform(0.0, 0.35) * s.size if k == 0 else 0.5 * s.size
            hx, hy = _r(s.x + rr * math.cos(a)), _r(s.y + rr * math.sin(a))
            pts.append(((hx, hy), (_r(hx + d[0]), _r(hy + d[1]))))
        tags = _tags(sc, style) + (("2pts",) if n == 2 else ())
        return Case(f"point_drag-{i:02d}", "point_drag", sc, tgt, 0, points=tuple(pts), box=object_box(s),
                    displacement=d, tags=tags)


def _make_region_drag(rng: random.Random, i: int) -> Case:
    style = "odd" if i % 2 == 0 else "subpixel"
    use_poly = i % 3 == 2
    while True:
        sc = _base_scene(rng, distractor=rng.random() < 0.75, shading_p=0.4, min_size=3.5, max_size=6.0)
        d = _displacement(rng, 3.0, 8.0, style)
        tgt = sc.moved(0, *d)
        if not _moved_ok(sc, tgt, 0):
            continue
        s = sc.shapes[0]
        box = object_box(s)
        tbox = (box[0] + d[0], box[1] + d[1], box[2] + d[0], box[3] + d[1])
        if not _box_ok(tbox):
            continue
        if use_poly:
            rad = (s.extent + BOX_MARGIN + 0.5) / math.cos(math.pi / 8)
            hv = [(_r(s.x + rad * math.cos(math.pi / 8 + k * math.pi / 4)),
                   _r(s.y + rad * math.sin(math.pi / 8 + k * math.pi / 4))) for k in range(8)]
            tv = [(_r(x + d[0]), _r(y + d[1])) for x, y in hv]
            if not all(0 <= v <= SIZE for p in hv + tv for v in p):
                continue                       # keep the polygon share: draw another scene
        use_poly_now = use_poly
        if use_poly_now:
            region = ("polygon", tuple(hv), tuple(tv))
        else:
            tb = tuple(_r(v) for v in tbox)
            region = ("rect", ((box[0], box[1]), (box[2], box[3])), ((tb[0], tb[1]), (tb[2], tb[3])))
        c = (s.x, s.y)
        pts = (((_r(c[0]), _r(c[1])), (_r(c[0] + d[0]), _r(c[1] + d[1]))),)
        tags = _tags(sc, style) + (("polygon",) if use_poly_now else ())
        return Case(f"region_drag-{i:02d}", "region_drag", sc, tgt, 0, points=pts, region=region, box=box,
                    displacement=d, tags=tags)


def _make_move(rng: random.Random, i: int) -> Case:
    style = "odd" if i % 2 == 0 else "subpixel"
    occlusion = i % 5 == 4
    while True:
        sc = _base_scene(rng, distractor=occlusion or rng.random() < 0.7, shading_p=0.4, min_size=3.5, max_size=5.5)
        obj = 0
        if occlusion:  # the moved object is drawn last, so it ends on top of the distractor
            sc = dataclasses.replace(sc, shapes=(sc.shapes[1], sc.shapes[0]))
            obj = 1
            o, s = sc.shapes[0], sc.shapes[1]
            # aim at a point overlapping the distractor by 25-45 % of the summed extents
            for _ in range(100):
                ang = rng.uniform(0, 2 * math.pi)
                dist = (o.extent + s.extent) * rng.uniform(0.55, 0.75)
                nx, ny = o.x + dist * math.cos(ang), o.y + dist * math.sin(ang)
                d = (nx - s.x, ny - s.y)
                d = tuple(float(math.floor(v) + (0.5 if style == "subpixel" else 0)) for v in d)
                if style == "odd":
                    d = tuple(v + 1 if v % 2 == 0 else v for v in d)
                if 6.0 <= math.hypot(*d) <= 16.0:
                    break
            else:
                continue
        else:
            d = _displacement(rng, 7.0, 14.0, style)
        tgt = sc.moved(obj, *d)
        if not _moved_ok(sc, tgt, obj, allow_overlap=occlusion):
            continue
        s = sc.shapes[obj]
        box = object_box(s)
        if not _box_ok((box[0] + d[0], box[1] + d[1], box[2] + d[0], box[3] + d[1])):
            continue
        tbox = (_r(box[0] + d[0]), _r(box[1] + d[1]), _r(box[2] + d[0]), _r(box[3] + d[1]))
        region = ("rect", ((box[0], box[1]), (box[2], box[3])), ((tbox[0], tbox[1]), (tbox[2], tbox[3])))
        c = (s.x, s.y)
        pts = (((_r(c[0]), _r(c[1])), (_r(c[0] + d[0]), _r(c[1] + d[1]))),)
        tags = _tags(sc, style) + (("occlusion",) if occlusion else ())
        return Case(f"move-{i:02d}", "move", sc, tgt, obj, points=pts, region=region, box=box, displacement=d,
                    tags=tags)


def _make_resize(rng: random.Random, i: int) -> Case:
    style = "odd" if i % 2 == 0 else "subpixel"
    factor = (0.7, 1.4, 0.8, 1.25)[i % 4]
    while True:
        sc = _base_scene(rng, distractor=rng.random() < 0.7, shading_p=0.3, min_size=4.0, max_size=5.5)
        d = _displacement(rng, 2.5, 6.0, style)
        tgt = sc.moved(0, *d).resized(0, factor)
        if not _moved_ok(sc, tgt, 0):
            continue
        s = sc.shapes[0]
        box = object_box(s)
        cx, cy = s.x, s.y
        # target box: the handle box scaled about the object's centre, then moved
        tb = tuple(_r(v) for v in (cx + d[0] + (box[0] - cx) * factor, cy + d[1] + (box[1] - cy) * factor,
                                   cx + d[0] + (box[2] - cx) * factor, cy + d[1] + (box[3] - cy) * factor))
        if not _box_ok(tb):
            continue
        region = ("rect", ((box[0], box[1]), (box[2], box[3])), ((tb[0], tb[1]), (tb[2], tb[3])))
        e = 0.55 * s.size                     # inside circles, squares and triangles at the centre row
        pts = tuple(((_r(cx + sgn * e), _r(cy)), (_r(cx + d[0] + sgn * e * factor), _r(cy + d[1])))
                    for sgn in (-1.0, 1.0))
        tags = _tags(sc, style) + ("shrink" if factor < 1 else "grow",)
        return Case(f"resize-{i:02d}", "resize", sc, tgt, 0, points=pts, region=region, box=box, displacement=d,
                    scale=factor, tags=tags)


def _make_recolour(rng: random.Random, i: int) -> Case:
    while True:
        sc = _base_scene(rng, distractor=True, shading_p=0.3, min_size=3.5, max_size=5.5)
        a, b = sc.shapes
        tgt = sc.recoloured(0, b.colour)
        return Case(f"recolour-{i:02d}", "recolour", sc, tgt, 0, ref=1, box=object_box(a), ref_box=object_box(b),
                    concepts=((f"{b.colour} {a.kind}", "add"), (f"{a.colour} {a.kind}", "remove")),
                    tags=_tags(sc, None))


# colours LEDITS is asked for: chromatic and distinct from each other
_CONCEPT_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")


def _make_concept_recolour(rng: random.Random, i: int) -> Case:
    while True:
        sc = _base_scene(rng, distractor=i % 2 == 1, shading_p=0.25, min_size=4.0, max_size=6.5)
        a = sc.shapes[0]
        if a.colour not in _CONCEPT_COLOURS:
            continue
        used = {s.colour for s in sc.shapes}
        new = rng.choice([c for c in _CONCEPT_COLOURS if c not in used])
        tgt = sc.recoloured(0, new)
        return Case(f"concept_recolour-{i:02d}", "concept_recolour", sc, tgt, 0, box=object_box(a),
                    concepts=((f"{new} {a.kind}", "add"), (f"{a.colour} {a.kind}", "remove")), tags=_tags(sc, None))


def _make_concept_remove(rng: random.Random, i: int) -> Case:
    while True:
        sc = _base_scene(rng, distractor=True, shading_p=0.25, min_size=4.0, max_size=6.0)
        if sc.shapes[0].kind == sc.shapes[1].kind:
            continue
        obj = i % 2                      # remove the first or the second drawn shape
        tgt = sc.without(obj)
        s = sc.shapes[obj]
        return Case(f"concept_remove-{i:02d}", "concept_remove", sc, tgt, obj, box=object_box(s),
                    concepts=((f"{s.colour} {s.kind}", "remove"),), tags=_tags(sc, None))


_MAKERS = {"point_drag": _make_point_drag, "region_drag": _make_region_drag, "move": _make_move,
           "resize": _make_resize, "recolour": _make_recolour, "concept_recolour": _make_concept_recolour,
           "concept_remove": _make_concept_remove}


def _tags(sc: Scene, style: Optional[str]) -> tuple[str, ...]:
    t = []
    if style:
        t.append(style)
    if len(sc.shapes) > 1:
        t.append("distractor")
    if any(s.shading > 0 for s in sc.shapes):
        t.append("shaded")
    return tuple(t)


def build_cases(seed: int = SEED, counts: Optional[dict[str, int]] = None) -> list[Case]:
    """The fixed case set in stratified order (round robin over KINDS), so the first N cover every kind."""
    counts = dict(COUNTS if counts is None else counts)
    per_kind = {}
    for k in KINDS:
        rng = random.Random(f"{seed}:{k}")
        per_kind[k] = [_MAKERS[k](rng, i) for i in range(counts.get(k, 0))]
    out = []
    for i in range(max(counts.values(), default=0)):
        for k in KINDS:
            if i < len(per_kind[k]):
                out.append(per_kind[k][i])
    return out


def fingerprint(cases: Sequence[Case]) -> str:
    """Short hash of the case records (changes when the case set changes)."""
    h = hashlib.sha256(json.dumps([c.to_dict() for c in cases], sort_keys=True).encode())
    return h.hexdigest()[:16]


if __name__ == "__main__":
    cs = build_cases()
    from collections import Counter
    print(f"{len(cs)} cases, fingerprint {fingerprint(cs)}")
    for k, n in Counter(c.kind for c in cs).items():
        tags = Counter(t for c in cs if c.kind == k for t in c.tags)
        print(f"  {k:17s} {n:3d}  {dict(tags)}")
