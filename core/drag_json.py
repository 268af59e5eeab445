"""The drag JSON document as typed, bounded pydantic v2 models, and the translation of pydantic's errors into the
pack's DragSchemaError wording (a field path like 'points[1].target' plus what is wrong and how to fix it).

The models check structure and types (strict numbers: no strings, no booleans, finite, within float range; whole
non-negative run lengths; known keys only; [x, y] pairs; rect/polygon kinds). Geometry (inside the image, polygon
shapes, counts) stays in core/drag_schema.py, which also validates instances built in code. `null` anywhere means
"absent", as the hand-written parser treated it. See docs/drag_schema_errors.md for pydantic's own messages next
to the translated ones (the reason for the translation table below)."""
from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)


class DocError(ValueError):
    """A violation found while reading the document: field path and message (drag_schema turns it into its
    DragSchemaError)."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field} {message}")


# A JSON number: int or float (never a string or a boolean), finite; an integer beyond float range is refused.
Num = Annotated[float, Field(strict=True, allow_inf_nan=False)]
XY = tuple[Num, Num]
RunLength = Annotated[int, Field(strict=True, ge=0)]


class _Doc(BaseModel):
    """Base of every JSON object of the schema: unknown keys are refused, null means absent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, v: Any) -> Any:
        return {_key(k): x for k, x in v.items() if x is not None} if isinstance(v, dict) else v


def _key(k: Any) -> Any:
    """A key pydantic can report: one holding a lone surrogate (valid JSON, invalid Unicode) escaped."""
    if isinstance(k, str):
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            return k.encode("utf-8", "backslashreplace").decode("utf-8")
    return k


class PointDoc(_Doc):
    """{"handle": [x, y], "target": [x, y]}."""

    handle: XY
    target: XY


FlatPair = tuple[Num, Num, Num, Num]          # [hx, hy, tx, ty]


def _pair_form(v: Any) -> Optional[str]:
    if isinstance(v, (list, tuple)):
        return "<flat>"
    if isinstance(v, dict) or isinstance(v, PointDoc):
        return "<obj>"
    return None


PairDoc = Annotated[Union[Annotated[FlatPair, Tag("<flat>")], Annotated[PointDoc, Tag("<obj>")]],
                    Discriminator(_pair_form)]


class RegionDoc(_Doc):
    """{"kind": "rect"|"polygon", "handle": [[x, y], ...], "target": [...] | "points": [pair, ...]}."""

    kind: Literal["rect", "polygon"]
    handle: list[XY]
    target: Optional[list[XY]] = None
    points: Optional[list[PairDoc]] = None


class MaskDoc(_Doc):
    """{"size": [W, H], "counts": [n0, n1, ...]} (run lengths, see drag_schema)."""

    size: tuple[Num, Num]
    counts: list[RunLength]


class DragDoc(_Doc):
    """The version-1 document."""

    version: Num = 1
    image_size: Optional[tuple[Num, Num]] = None
    points: list[PairDoc] = []
    regions: list[RegionDoc] = []
    mask: Optional[MaskDoc] = None
    ui: Any = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_a_number(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            raise ValueError("not an integer")
        return v


TOP_KEYS = tuple(DragDoc.model_fields)
POINT_KEYS = tuple(PointDoc.model_fields)
REGION_KEYS = tuple(RegionDoc.model_fields)
MASK_KEYS = tuple(MaskDoc.model_fields)


# ====================================================================== reading
def read(obj: Any) -> DragDoc:
    """Validate a parsed JSON value (dict) against the models; DocError(field, message) for the first violation in
    document order."""
    try:
        return DragDoc.model_validate(obj)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    raise _translate(_first(errors), obj)


def _first(errors: list[dict]) -> dict:
    """The error the hand-written parser reported first: an unknown key before anything else, then document order
    (pydantic lists the fields in model order, which is the schema's order)."""
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        top = [e for e in unknown if len(e["loc"]) == 1]
        return sorted(top or unknown[:1], key=lambda e: str(e["loc"][-1]))[0]
    return errors[0]


def _path(loc: tuple) -> str:
    """'points[1].target' from pydantic's loc ('points', 1, '<obj>', 'target'); union tags are left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("<"):
            continue
        else:
            out += ("." if out else "") + _safe(part)
    return out or "JSON"


def _safe(text: str) -> str:
    """A key for a message: printable ASCII (a lone surrogate or control character is escaped)."""
    return json.dumps(text)[1:-1] if not text.isprintable() or not text.isascii() else text


def _preview(v: Any, limit: int = 40) -> str:
    """Short JSON-like text of a value for a message, safe for huge integers and lone surrogates."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10 ** 30:
        return f"an integer of {_digits(v)} digits"
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = type(v).__name__
    return text[:limit]


def _digits(v: int) -> str:
    n = abs(v).bit_length() * 0.30103
    return f"about {int(n)}"


def typename(v: Any) -> str:
    """'an object', 'a list', 'a string' ... for messages."""
    return {dict: "an object", list: "a list", tuple: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _shape(loc: tuple) -> str:
    """What the value at loc must look like, for shape errors."""
    parts = [p for p in loc if not (isinstance(p, str) and p.startswith("<"))]
    named = [p for p in parts if isinstance(p, str)]
    if parts and parts[-1] in ("image_size", "size"):
        return "[W, H]"
    if "<flat>" in loc and loc[-1] == "<flat>":
        return "[hx, hy, tx, ty] (4 numbers)"
    if named and named[-1] in ("handle", "target") and isinstance(parts[-1], str) and len(named) >= 2 \
            and named[-2] == "regions":
        return "a list of [x, y] vertices"
    return "[x, y] (2 numbers)"


def _translate(err: dict, root: Any) -> DocError:
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    path = _path(loc)
    named = [p for p in loc if isinstance(p, str) and not p.startswith("<")]
    last = named[-1] if named else ""
    if kind == "extra_forbidden":
        parent = named[-2] if len(named) >= 2 else ""
        if len(loc) == 1:
            return DocError(path, f"is not a known key (expected one of {sorted(TOP_KEYS)})")
        if parent == "mask":
            return DocError(path, "is not a known key (expected 'size' and 'counts')")
        if parent == "regions" and not isinstance(loc[-2], str):
            return DocError(path, f"is not a known key (expected {sorted(REGION_KEYS)})")
        return DocError(path, "is not a known key (expected 'handle' and 'target')")
    if last == "version":
        return DocError("version", f"must be an integer, got {_preview(value)}")
    if kind == "missing":
        if isinstance(loc[-1], int):           # a short [x, y] / [W, H] / [hx, hy, tx, ty]
            return _short(loc[:-1], err, root)
        if last == "target" and "regions" in named and named.count("points") == 0:
            return DocError(path, "is missing: every handle region needs a target region (or 'points' that move "
                                  "it)")
        if last in ("handle", "target") and "regions" not in named[-1:] and (len(named) < 2 or named[-2] != "regions"
                                                                            or "points" in named):
            return DocError(path, "is missing: every handle needs a target (place it or delete the point)")
        if last in ("size", "counts"):
            return DocError(_path(loc[:-1]), "needs both 'size' and 'counts'")
        if last == "kind":
            return DocError(path, "must be 'rect' or 'polygon', got null")
        return DocError(path, "is missing")
    if kind == "literal_error" or (last == "kind" and isinstance(loc[-1], str)):
        return DocError(path, f"must be 'rect' or 'polygon', got {_preview(value)}")
    if kind in ("too_short", "too_long"):
        return _short(loc, err, root)
    if kind in ("tuple_type", "list_type"):
        if last == "counts":
            return DocError(path, f"must be a list of run lengths, got {typename(value)}")
        if last in ("points", "regions") and isinstance(loc[-1], str):
            return DocError(path, f"must be a list, got {typename(value)}")
        if last in ("handle", "target") and len(named) >= 2 and named[-2] == "regions" and isinstance(loc[-1], str):
            return DocError(path, f"must be a list of [x, y] vertices, got {typename(value)}")
        shape = _shape(loc)
        if shape == "[W, H]":
            return DocError(path, f"must be [W, H], got {_preview(value)}")
        return DocError(path, f"must be {shape}, got {typename(value)}")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return DocError(path, f"must be {{\"handle\": [x, y], \"target\": [x, y]}} or [hx, hy, tx, ty], got "
                              f"{typename(value)}")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if last == "mask":
            return DocError(path, f"must be {{\"size\": [W, H], \"counts\": [...]}}, got {typename(value)}")
        if last == "regions" or (len(named) and named[-1] == "regions"):
            return DocError(path, f"must be an object {{\"kind\", \"handle\", \"target\"}}, got {typename(value)}")
        return DocError(path, f"must be an object, got {typename(value)}")
    if last == "counts":
        return DocError(path, f"must be a non-negative integer, got {_preview(value, 20)}")
    if kind == "finite_number":
        return DocError(path, f"is {value} (coordinates must be finite numbers)")
    if kind in ("float_type", "float_parsing", "int_type", "value_error"):
        if isinstance(value, int) and not isinstance(value, bool):
            return DocError(path, f"is {_preview(value)}, beyond the range of a number (coordinates are pixels)")
        return DocError(path, f"must be a number, got {typename(value)} {_preview(value)}")
    return DocError(path, err.get("msg", "is not valid"))


def _short(loc: tuple, err: dict, root: Any) -> DocError:
    """A list of the wrong length at loc."""
    value = _at(root, loc)
    n = len(value) if isinstance(value, (list, tuple)) else None
    got = f"{n} values" if n is not None else typename(value)
    shape = _shape(loc)
    if shape.startswith("[hx"):
        return DocError(_path(loc), f"must be {shape}, got {got}; every handle needs a target")
    if shape == "[W, H]":
        return DocError(_path(loc), f"must be [W, H], got {_preview(value)}")
    return DocError(_path(loc), f"must be {shape}, got {got}")


def _at(root: Any, loc: tuple) -> Any:
    """The input value at a pydantic loc (union tags skipped)."""
    v = root
    for part in loc:
        if isinstance(part, str) and part.startswith("<"):
            continue
        try:
            v = v[part]
        except (KeyError, IndexError, TypeError):
            return None
    return v
