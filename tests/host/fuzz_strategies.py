"""Hypothesis strategies and the outcome rule of the fuzzer (tests/host/test_fuzz.py).

Strategies: drag JSON (structure, types, unicode, sizes, numbers: valid documents, near misses and junk), widget
values across and beyond a node's declared ranges (read from its INPUT_TYPES), images (sizes 1..N, batches,
channels) and masks.

Outcome of one case (`classify`): "ok" (ran; every tensor output finite), "clear" (a NodeInputError whose text is
"[<display name>] input '<one of its inputs>': ...", or a value ComfyUI's own validation refuses before the node
runs) or "bad" (anything else: a raw Python / torch error, NaN in an output, a misnamed error, memory beyond the
bound)."""
from __future__ import annotations

import gc
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from hypothesis import strategies as st

# ============================================================================================== numbers and JSON
SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
JUNK_TEXT = st.one_of(st.text(max_size=12), st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), SURROGATES,
                                                      st.text(max_size=4)))
HUGE_INTS = st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 64, 2 ** 1024, 10 ** 20])
BAD_NUMBERS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324]), HUGE_INTS,
                        st.booleans(), JUNK_TEXT, st.none(), st.just([]), st.just({}))


def coord(limit: int) -> st.SearchStrategy:
    """A coordinate: mostly inside 0..limit (ints and floats), sometimes just outside or not a number at all."""
    inside = st.one_of(st.integers(0, max(limit, 0)), st.floats(0, max(limit, 0), allow_nan=False))
    near = st.one_of(st.integers(-3, limit + 3), st.floats(-1e6, 1e6, allow_nan=False))
    return st.one_of(inside, inside, inside, near, BAD_NUMBERS)


def xy(W: int, H: int) -> st.SearchStrategy:
    good = st.tuples(coord(W), coord(H)).map(list)
    return st.one_of(good, good, good, st.lists(coord(max(W, H)), max_size=4), BAD_NUMBERS)


def point_pair(W: int, H: int) -> st.SearchStrategy:
    obj = st.fixed_dictionaries({"handle": xy(W, H), "target": xy(W, H)},
                                optional={"radius": st.integers(), "handel": xy(W, H)})
    flat = st.tuples(coord(W), coord(H), coord(W), coord(H)).map(list)
    return st.one_of(obj, obj, flat, flat, st.lists(coord(W), max_size=6), BAD_NUMBERS)


def region(W: int, H: int) -> st.SearchStrategy:
    verts = st.lists(xy(W, H), min_size=0, max_size=18)
    rect = st.builds(lambda x0, y0, x1, y1: [[x0, y0], [x1, y1]], st.integers(0, W), st.integers(0, H),
                     st.integers(0, W), st.integers(0, H))
    shape = st.one_of(rect, rect, verts)
    kind = st.one_of(st.sampled_from(["rect", "polygon"]), st.sampled_from(["rect", "polygon"]), JUNK_TEXT, st.none())
    return st.one_of(
        st.fixed_dictionaries({"kind": kind, "handle": shape, "target": shape}),
        st.fixed_dictionaries({"kind": kind, "handle": shape, "points": st.lists(point_pair(W, H), max_size=3)}),
        st.fixed_dictionaries({"kind": kind, "handle": shape},
                              optional={"target": shape, "points": st.lists(point_pair(W, H), max_size=3),
                                        "extra": st.integers()}),
        BAD_NUMBERS)


def mask_doc(W: int, H: int) -> st.SearchStrategy:
    total = W * H

    def runs(cuts: list[int]) -> list[int]:
        cuts = sorted(min(max(c, 0), total) for c in cuts)
        bounds = [0, *cuts, total]
        return [b - a for a, b in zip(bounds, bounds[1:])]

    good = st.builds(lambda c: {"size": [W, H], "counts": runs(c)}, st.lists(st.integers(0, total), max_size=8))
    zero = st.just({"size": [W, H], "counts": [total]})
    other = st.fixed_dictionaries({"size": st.one_of(st.tuples(st.integers(-2, 70), st.integers(-2, 70)).map(list),
                                                     BAD_NUMBERS),
                                   "counts": st.one_of(st.lists(st.one_of(st.integers(-5, total + 5), BAD_NUMBERS),
                                                                max_size=6), BAD_NUMBERS)})
    return st.one_of(good, good, zero, other, BAD_NUMBERS)


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), JUNK_TEXT)
JSON_ANY = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(JUNK_TEXT, inner, max_size=4)),
                        max_leaves=12)


def drag_document(W: int, H: int) -> st.SearchStrategy:
    """A drag JSON object: the schema's keys with values of every kind, plus unknown keys and a 'ui' of any JSON."""
    size = st.one_of(st.just([W, H]), st.tuples(st.integers(-2, 20000), st.integers(-2, 20000)).map(list),
                     st.just([W * 2, H * 2]), st.just([float(W), float(H)]), BAD_NUMBERS)
    return st.fixed_dictionaries({}, optional={
        "version": st.one_of(st.just(1), st.just(1), st.just(1.0), st.integers(-2, 3), BAD_NUMBERS),
        "image_size": size,
        "points": st.one_of(st.lists(point_pair(W, H), max_size=5), st.lists(point_pair(W, H), max_size=70),
                            BAD_NUMBERS),
        "regions": st.one_of(st.lists(region(W, H), max_size=3), BAD_NUMBERS),
        "mask": mask_doc(W, H),
        "ui": JSON_ANY,
        "pionts": JSON_ANY,
    })


def _dumps(obj: Any, ensure_ascii: bool) -> str:
    try:
        return json.dumps(obj, ensure_ascii=ensure_ascii)
    except (ValueError, TypeError):      # an integer beyond the int-string limit, or a surrogate key: write by hand
        return json.dumps(repr(obj))


def valid_drag_text(W: int, H: int) -> st.SearchStrategy:
    """Well-formed instructions for a W x H image (points inside it, optionally a rect region and a mask), so that
    method nodes get past parsing and run."""
    x, y = st.floats(0, W, allow_nan=False), st.floats(0, H, allow_nan=False)
    pair = st.tuples(x, y, x, y).map(list)
    rect = st.builds(lambda a, b, dx, dy: {"kind": "rect", "handle": [[a, b], [a + W / 4, b + H / 4]],
                                           "target": [[a + dx, b + dy], [a + dx + W / 4, b + dy + H / 4]]},
                     st.floats(0, W * 0.5), st.floats(0, H * 0.5), st.floats(-W / 4, W / 4), st.floats(-H / 4, H / 4))
    doc = st.fixed_dictionaries({"version": st.just(1), "points": st.lists(pair, min_size=1, max_size=4)},
                                optional={"regions": st.lists(rect, max_size=2), "mask": mask_doc(W, H),
                                          "image_size": st.just([W, H])})
    return st.builds(json.dumps, doc)


def drag_text(W: int, H: int) -> st.SearchStrategy:
    """Drag JSON text: a document (escaped or raw unicode), the bare-list shorthand, duplicate keys, truncated or
    deeply nested text, non-JSON tokens (NaN, 400- and 5000-digit integers), or junk."""
    doc = drag_document(W, H)
    text = st.builds(_dumps, doc, st.booleans())
    bare = st.builds(_dumps, st.lists(point_pair(W, H), max_size=4), st.booleans())
    dup = st.builds(lambda a, b: '{"version": 1, "points": %s, "points": %s}' % (_dumps(a, True), _dumps(b, True)),
                    st.lists(point_pair(W, H), max_size=2), st.lists(point_pair(W, H), max_size=2))
    tokens = st.builds(lambda t, k: '{"%s": %s, "points": [[1, 1, 2, 2]]}' % (k, t),
                       st.sampled_from(["NaN", "Infinity", "-Infinity", "9" * 400, "9" * 5000, "1e999", "-0", "1.0"]),
                       st.sampled_from(["version", "image_size", "ui"]))
    cut = st.builds(lambda t, n: t[:n], text, st.integers(0, 60))
    deep = st.builds(lambda n, c: c[0] * n + c[1] * n, st.integers(30, 3000), st.sampled_from(["[]", "{}"]))
    return st.one_of(text, text, text, text, bare, dup, tokens, cut, deep, st.sampled_from(["", " ", "{}", "[]"]),
                     JUNK_TEXT)


# ============================================================================================== images and masks
def image(max_side: int = 96, max_batch: int = 3, channels: tuple[int, ...] = (3, 3, 3, 4)) -> st.SearchStrategy:
    """A ComfyUI IMAGE [B, H, W, C] in 0..1: edge sizes (1, 2, 4) and ordinary ones, batches, RGBA."""
    side = st.one_of(st.sampled_from([1, 2, 4, 8, 16, 32]), st.integers(1, max_side))
    return st.builds(lambda b, h, w, c, seed: torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed)),
                     st.integers(1, max_batch), side, side, st.sampled_from(channels), st.integers(0, 2 ** 16))


def mask_for(H: int, W: int) -> st.SearchStrategy:
    """None, a mask of the image's size (empty, full, partial), or one of another size / batch."""
    def make(kind: str, seed: int) -> Optional[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        if kind == "none":
            return None
        if kind == "zeros":
            return torch.zeros(1, H, W)
        if kind == "ones":
            return torch.ones(1, H, W)
        if kind == "partial":
            return (torch.rand(1, H, W, generator=g) > 0.5).float()
        if kind == "other":
            return torch.ones(1, max(1, H // 2), max(1, W * 2))
        return torch.ones(2, H, W)                                  # a batch of masks
    return st.builds(make, st.sampled_from(["none", "none", "zeros", "ones", "partial", "other", "batch"]),
                     st.integers(0, 2 ** 16))


# ============================================================================================== widget values
def _mostly(inside: st.SearchStrategy, beyond: st.SearchStrategy, one_in: int = 16) -> st.SearchStrategy:
    """inside, and beyond in about one draw of one_in (so that a node with many widgets still runs often)."""
    return st.integers(0, one_in - 1).flatmap(lambda i: beyond if i == one_in // 3 else inside)   # not an end:
    # Hypothesis favours the ends of a range


def widget_values(cls: type, caps: Optional[dict[str, int]] = None, skip: tuple[str, ...] = ()) -> st.SearchStrategy:
    """Values for the node's INT / FLOAT / BOOLEAN / COMBO widgets from its INPUT_TYPES: the default, the edges,
    any value inside, and values beyond min / max (NaN too). caps bounds a cost widget (steps, iterations) from
    above inside the range, so a case stays fast; beyond-range values are still drawn."""
    caps = caps or {}
    spec = cls.INPUT_TYPES()
    required: dict[str, st.SearchStrategy] = {}
    optional: dict[str, st.SearchStrategy] = {}
    for section in ("required", "optional"):
        fields = required if section == "required" else optional
        for name, entry in (spec.get(section) or {}).items():
            if name in skip:
                continue
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, (list, tuple)):
                fields[name] = _mostly(st.sampled_from(list(kind)), JUNK_TEXT) if kind else st.nothing()
            elif kind == "BOOLEAN":
                fields[name] = st.booleans()
            elif kind in ("INT", "FLOAT"):
                lo, hi = opts.get("min", -(2 ** 63)), opts.get("max", 2 ** 64)
                top = min(hi, caps.get(name, hi))
                if kind == "INT":
                    inside = st.one_of(st.just(opts.get("default", lo)), st.just(lo), st.just(top),
                                       st.integers(lo, max(lo, top)))
                    beyond = st.one_of(st.just(lo - 1), st.just(hi + 1), st.integers(-(2 ** 70), 2 ** 70))
                else:
                    inside = st.one_of(st.just(opts.get("default", lo)), st.just(float(lo)), st.just(float(top)),
                                       st.floats(lo, max(lo, top)))
                    beyond = st.one_of(st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                                       st.floats(allow_nan=False))
                fields[name] = _mostly(inside, beyond)
    return st.fixed_dictionaries(required, optional=optional)


def host_refuses(cls: type, values: dict[str, Any]) -> Optional[str]:
    """ComfyUI's own check of widget values before a node runs (execution.validate_inputs): INT / FLOAT converted
    and compared with min / max (NaN passes, as in the host), COMBO values must be listed. The reason, or None."""
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            if name not in values:
                continue
            v, kind, opts = values[name], entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, (list, tuple)):
                if v not in kind:
                    return f"{name}: value not in list"
                continue
            try:
                v = int(v) if kind == "INT" else float(v) if kind == "FLOAT" else v
            except (ValueError, OverflowError, TypeError):
                return f"{name}: invalid {kind}"
            if kind in ("INT", "FLOAT"):
                if "min" in opts and v < opts["min"]:
                    return f"{name}: below min"
                if "max" in opts and v > opts["max"]:
                    return f"{name}: above max"
    return None


# ============================================================================================== outcomes
@dataclass
class Tally:
    """Cases per outcome, and the bad ones (node, error, inputs summary) for the report."""

    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "clear": 0, "host": 0, "bad": 0})
    bad: list[dict] = field(default_factory=list)
    peak_growth_mb: float = 0.0


TALLY = Tally()
MEMORY_LIMIT_MB = float(os.environ.get("DRAGEDIT_FUZZ_MEMORY_MB", "1500"))


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MB from /proc/self/status; (0, 0) where unavailable."""
    try:
        text = open("/proc/self/status").read()
    except OSError:
        return 0.0, 0.0
    get = lambda k: float(re.search(rf"^{k}:\s+(\d+)", text, re.M).group(1)) / 1024   # noqa: E731
    return get("VmRSS"), get("VmHWM")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")               # resets VmHWM (peak RSS) to the current RSS
    except OSError:
        pass


def _finite(out: Any) -> bool:
    if isinstance(out, torch.Tensor):
        return not out.is_floating_point() or bool(torch.isfinite(out).all())
    if isinstance(out, dict):
        return all(_finite(v) for k, v in out.items() if k in ("samples", "result"))
    if isinstance(out, (list, tuple)):
        return all(_finite(v) for v in out)
    return True


def _inputs(cls: type) -> set[str]:
    spec = cls.INPUT_TYPES()
    return {n for s in ("required", "optional") for n in (spec.get(s) or {})}


def _summary(inputs: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            out[k] = f"tensor{tuple(v.shape)}"
        elif isinstance(v, dict) and "samples" in v:
            out[k] = f"latent{tuple(v['samples'].shape)}"
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = repr(v)[:300]
        else:
            out[k] = type(v).__name__
    return out


def classify(cls: type, display: str, inputs: dict[str, Any], run: Callable[..., Any],
             widgets: Optional[dict[str, Any]] = None) -> str:
    """Run one case and record its outcome in TALLY; returns "ok", "clear", "host" or "bad"."""
    from dragedit.nodes._errors import NodeInputError
    if widgets is not None:
        why = host_refuses(cls, widgets)
        if why is not None:
            TALLY.counts["host"] += 1
            return "host"
    gc.collect()
    _reset_peak()
    start, _ = _rss_mb()
    problem = None
    try:
        out = run(cls, **inputs)
        outcome = "ok"
        if not _finite(out):
            problem = "NaN or inf in an output"
    except NodeInputError as e:
        outcome = "clear"
        m = re.match(r"\[(.+?)\] input '(.+?)': \S", str(e))
        if not m or m.group(1) != display or m.group(2) not in _inputs(cls):
            problem = f"misnamed error: {str(e)[:300]}"
    except Exception as e:      # noqa: BLE001 - the point: anything else is a raw error
        outcome = "bad"
        problem = f"raw {type(e).__name__}: {str(e)[:300]}"
    _, peak = _rss_mb()
    growth = max(0.0, peak - start) if peak else 0.0
    TALLY.peak_growth_mb = max(TALLY.peak_growth_mb, growth)
    if problem is None and growth > MEMORY_LIMIT_MB:
        problem = f"peak RSS grew by {growth:.0f} MB (limit {MEMORY_LIMIT_MB:.0f} MB)"
    if problem is not None:
        TALLY.counts["bad"] += 1
        TALLY.bad.append({"node": display, "problem": problem, "inputs": _summary(inputs)})
        return "bad"
    TALLY.counts[outcome] += 1
    return outcome
