"""Procedural scenes for the shapes demo model and ShapesBench: small frozen parameter records, an
anti-aliased renderer (supersampled coverage), prompts, centroid measurement and a seeded scene sampler.

Pure torch; image tensors are [3, H, W] floats in [0, 1]. Coordinates are pixels of a `size` x `size` image,
x to the right, y down, pixel centres at integer + 0.5 (so the image centre of a 32 px image is (16, 16))."""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

# The fixed palette: every shape colour has a name that the prompt encoder knows.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.96, 0.55, 0.08),
    "yellow": (0.95, 0.88, 0.15),
    "green": (0.15, 0.70, 0.22),
    "blue": (0.14, 0.30, 0.88),
    "purple": (0.58, 0.20, 0.75),
    "white": (0.96, 0.96, 0.96),
    "black": (0.06, 0.06, 0.06),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
KINDS: tuple[str, ...] = ("circle", "square", "triangle")

# Equal-area extents: a square of half-side r*sqrt(pi)/2 and an equilateral triangle of circumradius
# r*sqrt(4*pi/(3*sqrt(3))) have the area of a circle of radius r, so `size` means the same for all kinds.
_SQUARE_HALF = math.sqrt(math.pi) / 2.0
_TRI_R = math.sqrt(4.0 * math.pi / (3.0 * math.sqrt(3.0)))


@dataclass(frozen=True)
class Shape:
    """One object: kind (circle/square/triangle), palette colour name, centre (x, y) in pixels, size = radius of
    the equal-area circle in pixels, shading = strength of a brightness ramp lit from the upper left (0 = flat)."""
    kind: str
    colour: str
    x: float
    y: float
    size: float
    shading: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown shape kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.colour not in PALETTE:
            raise ValueError(f"unknown colour {self.colour!r}; known: {', '.join(COLOURS)}")
        if not self.size > 0:
            raise ValueError(f"shape size must be positive, got {self.size}")

    @property
    def rgb(self) -> tuple[float, float, float]:
        return PALETTE[self.colour]

    @property
    def extent(self) -> float:
        """Radius of a circle around the centre that holds the whole shape."""
        return self.size * {"circle": 1.0, "square": _SQUARE_HALF * math.sqrt(2.0), "triangle": _TRI_R}[self.kind]


@dataclass(frozen=True)
class Scene:
    """A background colour with a gentle linear brightness gradient (change from the image's centre to its
    right / bottom edge) and 1-2 shapes drawn in order (later on top)."""
    background: tuple[float, float, float]
    shapes: tuple[Shape, ...]
    gradient: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not 1 <= len(self.shapes) <= 2:
            raise ValueError(f"a scene holds 1 or 2 shapes, got {len(self.shapes)}")

    def moved(self, index: int, dx: float, dy: float) -> "Scene":
        """The same scene with shape `index` moved by (dx, dy) pixels."""
        s = self.shapes[index]
        return self._with(index, dataclasses.replace(s, x=s.x + dx, y=s.y + dy))

    def moved_to(self, index: int, x: float, y: float) -> "Scene":
        """The same scene with shape `index` centred at (x, y)."""
        return self._with(index, dataclasses.replace(self.shapes[index], x=x, y=y))

    def resized(self, index: int, factor: float) -> "Scene":
        """The same scene with shape `index` scaled by `factor` about its centre."""
        s = self.shapes[index]
        return self._with(index, dataclasses.replace(s, size=s.size * factor))

    def recoloured(self, index: int, colour: str) -> "Scene":
        """The same scene with shape `index` in another palette colour."""
        return self._with(index, dataclasses.replace(self.shapes[index], colour=colour))

    def reshaped(self, index: int, kind: str) -> "Scene":
        """The same scene with shape `index` of another kind (same centre, size, colour)."""
        return self._with(index, dataclasses.replace(self.shapes[index], kind=kind))

    def without(self, index: int) -> "Scene":
        """The same scene with shape `index` removed (needs two shapes)."""
        if len(self.shapes) < 2:
            raise ValueError("cannot remove the only shape of a scene")
        return dataclasses.replace(self, shapes=tuple(s for i, s in enumerate(self.shapes) if i != index))

    def with_shape(self, shape: Shape) -> "Scene":
        """The same scene with one more shape drawn on top (needs a one-shape scene)."""
        return dataclasses.replace(self, shapes=self.shapes + (shape,))

    def with_background(self, background: tuple[float, float, float], gradient: Optional[tuple[float, float]] = None
                        ) -> "Scene":
        """The same shapes on another background."""
        return dataclasses.replace(self, background=tuple(background),
                                   gradient=self.gradient if gradient is None else tuple(gradient))

    def to_dict(self) -> dict:
        """A JSON-ready record of the scene (from_dict inverts it)."""
        return {"background": list(self.background), "gradient": list(self.gradient),
                "shapes": [dataclasses.asdict(s) for s in self.shapes]}

    @staticmethod
    def from_dict(d: dict) -> "Scene":
        """The scene of a to_dict() record (ValueError naming the problem for a bad record)."""
        try:
            shapes = tuple(Shape(**s) for s in d["shapes"])
            return Scene(tuple(float(v) for v in d["background"]), shapes, tuple(float(v) for v in d.get("gradient", (0, 0))))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a scene record ({e}): expected background, gradient and shapes") from None

    def _with(self, index: int, shape: Shape) -> "Scene":
        shapes = list(self.shapes)
        shapes[index] = shape
        return dataclasses.replace(self, shapes=tuple(shapes))


# ---------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------

def _grid(size: int, ss: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample positions (x, y) of an ss x ss supersampling grid, [size*ss, size*ss] each, in pixel units."""
    c = (torch.arange(size * ss, dtype=torch.float64) + 0.5) / ss
    y, x = torch.meshgrid(c, c, indexing="ij")
    return x, y


def _inside(shape: Shape, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boolean mask of sample points inside the shape."""
    dx, dy = x - shape.x, y - shape.y
    if shape.kind == "circle":
        return dx * dx + dy * dy <= shape.size * shape.size
    if shape.kind == "square":
        h = shape.size * _SQUARE_HALF
        return (dx.abs() <= h) & (dy.abs() <= h)
    # equilateral triangle pointing up, centroid at the centre, circumradius R: 3 half-planes at distance R/2
    r = shape.size * _TRI_R
    inside = torch.ones_like(dx, dtype=torch.bool)
    for ang in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
        nx, ny = math.cos(ang), math.sin(ang)  # outward normals: down, upper left, upper right (y is down)
        inside &= dx * nx + dy * ny <= r / 2
    return inside


def _shade(shape: Shape, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Brightness factor of the shape's colour at the sample points: 1 + shading * ramp, lit from upper left."""
    if shape.shading == 0.0:
        return torch.ones_like(x)
    ramp = -((x - shape.x) + (y - shape.y)) / (math.sqrt(2.0) * shape.extent)
    return 1.0 + shape.shading * ramp.clamp(-1.0, 1.0)


def background_image(scene: Scene, size: int = 32) -> torch.Tensor:
    """The scene's background alone, [3, size, size]."""
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size - 0.5
    y, x = torch.meshgrid(c, c, indexing="ij")
    ramp = 2.0 * (scene.gradient[0] * x + scene.gradient[1] * y)
    bg = torch.tensor(scene.background, dtype=torch.float64).view(3, 1, 1)
    return (bg + ramp.unsqueeze(0)).clamp(0, 1).float()


def render(scene: Scene, size: int = 32, ss: int = 4) -> torch.Tensor:
    """Draw the scene as a [3, size, size] float image in [0, 1], anti-aliased by ss x ss supersampling
    (coverage-weighted colours). Shape coordinates are in units of a 32 px image, scaled for other sizes."""
    k = size / 32.0
    x, y = _grid(size, ss)
    img = torch.nn.functional.interpolate(background_image(scene, size).double().unsqueeze(0),
                                          scale_factor=ss, mode="nearest")[0]
    for s in scene.shapes:
        s = dataclasses.replace(s, x=s.x * k, y=s.y * k, size=s.size * k) if k != 1.0 else s
        m = _inside(s, x, y).double()
        col = torch.tensor(s.rgb, dtype=torch.float64).view(3, 1, 1) * _shade(s, x, y).unsqueeze(0)
        img = img * (1 - m) + col.clamp(0, 1) * m
    img = torch.nn.functional.avg_pool2d(img.unsqueeze(0), ss)[0]
    return img.float()


def coverage(shape: Shape, size: int = 32, ss: int = 8) -> torch.Tensor:
    """Fraction of each pixel covered by the shape (ignoring occlusion), [size, size]: the ground-truth mask."""
    k = size / 32.0
    s = dataclasses.replace(shape, x=shape.x * k, y=shape.y * k, size=shape.size * k)
    x, y = _grid(size, ss)
    return torch.nn.functional.avg_pool2d(_inside(s, x, y).double()[None, None], ss)[0, 0].float()


# ---------------------------------------------------------------------------------------------------------
# words
# ---------------------------------------------------------------------------------------------------------

def prompt(scene: Scene) -> str:
    """The scene's words: 'red circle', 'blue square and white triangle' (shapes in drawing order)."""
    return " and ".join(f"{s.colour} {s.kind}" for s in scene.shapes)


# ---------------------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------------------

def estimate_background(image: torch.Tensor, iters: int = 4, thresh: float = 0.06) -> torch.Tensor:
    """The background of a scene image [3,H,W]: a robust least-squares plane per channel (a + b·x + c·y), started
    from the median colour and refitted on the pixels that stay near the plane (objects cover under half the image)."""
    _, h, w = image.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64), torch.linspace(-1, 1, w, dtype=torch.float64),
                            indexing="ij")
    a = torch.stack([torch.ones_like(xx), xx, yy], -1).reshape(-1, 3)
    b = image.double().reshape(image.shape[0], -1).T
    fit = b.median(dim=0).values.expand_as(b)
    limit = 0.25
    for _ in range(iters):
        keep = ((b - fit).norm(dim=1) <= limit).double()
        if keep.sum() < 8:
            break
        fit = a @ torch.linalg.lstsq(a * keep[:, None], b * keep[:, None]).solution
        limit = thresh
    return fit.T.reshape(image.shape).float()


def colour_alpha(image: torch.Tensor, colour: str | Sequence[float], background: Optional[torch.Tensor] = None,
                 tol: float = 0.15) -> torch.Tensor:
    """Per-pixel coverage estimate α [H, W] of a colour c over the background b: the projection of (pixel − b) onto
    (c − b), clipped to [0, 1], 0 far from that segment (beyond 0.05 + tol·α: other objects) and outside 2 px of
    clearly covered pixels. b (image [3,H,W] or RGB) is `estimate_background(image)` when not given."""
    img = image.float()
    rgb = torch.tensor(PALETTE[colour] if isinstance(colour, str) else tuple(colour), dtype=torch.float32).view(3, 1, 1)
    if background is None:
        bg = estimate_background(img)
    else:
        bg = torch.as_tensor(background, dtype=torch.float32)
        bg = bg.view(3, 1, 1).expand_as(img) if bg.ndim == 1 else bg
    d = rgb - bg
    r = img - bg
    alpha = ((r * d).sum(0) / (d * d).sum(0).clamp_min(1e-6)).clamp(0, 1)
    model = bg + alpha.unsqueeze(0) * d
    # distance from the background -> colour model; another colour's pixels drift away in proportion to their coverage
    off_line = (img - model).norm(dim=0)
    alpha = torch.where(off_line <= 0.05 + tol * alpha, alpha, torch.zeros_like(alpha))
    # keep only the neighbourhood (2 px) of clearly covered pixels: the faint edges of other objects lie near
    # the background end of every colour's segment
    core = (alpha > 0.5).float()[None, None]
    near = torch.nn.functional.max_pool2d(core, 5, stride=1, padding=2)[0, 0] > 0
    return torch.where(near, alpha, torch.zeros_like(alpha))


def centroid(image: torch.Tensor, colour: str | Sequence[float], background: Optional[torch.Tensor] = None
             ) -> Optional[tuple[float, float]]:
    """Centroid (x, y) in pixels (centres at +0.5) of the named colour in a [3,H,W] image, weighted by its
    estimated coverage; None when the colour is absent (total coverage below 1 pixel). Within ~0.15 px for flat
    shapes; shaded ones keep a bias (up to ~0.6 px) that is the same wherever the shape stands, so compare with the
    measurement of the re-rendered ground truth, not with the shape's parameters."""
    a = colour_alpha(image, colour, background).double()
    tot = float(a.sum())
    if tot < 1.0:
        return None
    h, w = a.shape
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    return float((a.sum(0) * xs).sum() / tot), float((a.sum(1) * ys).sum() / tot)


def area(image: torch.Tensor, colour: str | Sequence[float], background: Optional[torch.Tensor] = None) -> float:
    """Estimated area (pixels) of the named colour in the image."""
    return float(colour_alpha(image, colour, background).sum())


def classify(image: torch.Tensor, colour: str, background: Optional[torch.Tensor] = None, min_area: float = 6.0
             ) -> Optional[tuple[str, float]]:
    """Which shape kind the named colour forms in the image: (kind, soft IoU with that kind's ideal coverage at the
    measured centroid and area), or None when the colour covers less than min_area pixels."""
    a = colour_alpha(image, colour, background)
    tot = float(a.sum())
    if tot < min_area:
        return None
    c = centroid(image, colour, background)
    r = math.sqrt(tot / math.pi)
    size = image.shape[-1]
    best = None
    for kind in KINDS:
        cov = coverage(Shape(kind, colour, c[0] * 32.0 / size, c[1] * 32.0 / size, r * 32.0 / size), size=size)
        iou = float(torch.minimum(a, cov).sum() / torch.maximum(a, cov).sum().clamp_min(1e-6))
        if best is None or iou > best[1]:
            best = (kind, iou)
    return best


def colours_present(image: torch.Tensor, min_area: float = 6.0) -> dict[str, float]:
    """Palette colours covering at least min_area pixels of the image, with their estimated areas."""
    out = {}
    bg = estimate_background(image.float())
    for col in COLOURS:
        ar = area(image, col, bg)
        if ar >= min_area:
            out[col] = ar
    return out


# ---------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------

def random_background(rng: random.Random) -> tuple[tuple[float, float, float], tuple[float, float]]:
    """A muted background colour (low saturation, mid brightness) and a gentle gradient."""
    v = rng.uniform(0.3, 0.7)
    sat = rng.uniform(0.0, 0.3)
    hue = rng.random()
    rgb = tuple(v * (1 - sat + sat * (0.5 + 0.5 * math.cos(2 * math.pi * (hue - k / 3.0)))) for k in range(3))
    g = rng.uniform(0.0, 0.12)
    ang = rng.uniform(0, 2 * math.pi)
    return rgb, (g * math.cos(ang), g * math.sin(ang))


def random_shape(rng: random.Random, size: int = 32, exclude: Sequence[Shape] = (), colours: Sequence[str] = COLOURS,
                 min_size: float = 3.5, max_size: float = 7.0, shading_p: float = 0.3, tries: int = 100) -> Shape:
    """A random shape inside the image that does not overlap `exclude` (by bounding circles) and has a
    colour none of them has."""
    avail = [c for c in colours if c not in {e.colour for e in exclude}]
    for _ in range(tries):
        kind, col = rng.choice(KINDS), rng.choice(avail)
        r = rng.uniform(min_size, max_size)
        ext = Shape(kind, col, 0, 0, r).extent
        lo, hi = ext + 0.5, size - ext - 0.5
        if lo >= hi:
            continue
        x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if all(math.hypot(x - e.x, y - e.y) >= ext + e.extent + 1.0 for e in exclude):
            shading = rng.uniform(0.1, 0.35) if rng.random() < shading_p else 0.0
            return Shape(kind, col, x, y, r, shading)
    raise ValueError("could not place a shape without overlap: the image is too small for these sizes")


def random_scene(rng: random.Random | int, two_p: float = 0.5, shading_p: float = 0.3) -> Scene:
    """A seeded random scene (coordinates in 32 px units): muted background with a gentle gradient, 1 shape, or 2
    with probability two_p; shapes shaded with probability shading_p. The training data of the shapes model."""
    rng = random.Random(rng) if isinstance(rng, int) else rng
    bg, grad = random_background(rng)
    n = 2 if rng.random() < two_p else 1
    shapes: list[Shape] = []
    while True:
        shapes.clear()
        try:
            for _ in range(n):
                # a smaller size range when two shapes must fit
                shapes.append(random_shape(rng, 32, shapes, max_size=7.0 if n == 1 else 5.5, shading_p=shading_p))
            break
        except ValueError:
            continue
    return Scene(bg, tuple(shapes), grad)


def sample_scenes(seed: int, n: int, **kw) -> list[Scene]:
    """n seeded random scenes (the same list for the same seed)."""
    rng = random.Random(seed)
    return [random_scene(rng, **kw) for _ in range(n)]
