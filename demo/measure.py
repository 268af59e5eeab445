"""What a demo picture shows, measured: the edited object of the example workflow's Shapes Scene, how far it moved
(drags) or which colour it has now (LEDITS), and the PSNR of the result against the input OUTSIDE the edit region
(the object's old and new pixels grown by 2 px, as ShapesBench's `edit_region`). `make demo` writes these numbers
into each picture's caption and out/demo/demo.json."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from demo.shapes import renderer as R

KEPT_DB = 30.0       # dB outside the edit region: the rest of the picture counts as kept from here
EDIT_DILATE = 2      # px the edit region is grown by (bench/shapes_cases.py EDIT_DILATE)


def prompt_of_ui(workflow: dict) -> dict:
    """The parts of a UI-format workflow that `measure` reads (Shapes Scene seed / shapes, prompt texts, drag
    JSON) in API form, without a server's /object_info: for redrawing saved demo pictures."""
    out = {}
    for n in workflow.get("nodes", []):
        w = n.get("widgets_values") or []
        if n["type"] == "DragEditShapesScene":
            out[str(n["id"])] = {"class_type": n["type"], "inputs": {"seed": w[0], "shapes": w[2]}}
        elif n["type"] == "CLIPTextEncode":
            out[str(n["id"])] = {"class_type": n["type"], "inputs": {"text": w[0] if w else ""}}
        elif n["type"] == "DragInstructions":
            out[str(n["id"])] = {"class_type": n["type"], "inputs": {"drag_data": w[0] if w else "{}"}}
    return out


def scene_of(prompt: dict) -> Optional[R.Scene]:
    """The scene the API prompt's Shapes Scene node draws (None without one)."""
    node = next((v for v in prompt.values() if v["class_type"] == "DragEditShapesScene"), None)
    if node is None:
        return None
    two_p = {"random": 0.5, "1": 0.0, "2": 1.0}[str(node["inputs"].get("shapes", "random"))]
    return R.random_scene(int(node["inputs"]["seed"]), two_p=two_p)


def pairs_of(drag: dict) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """(handle, target) pairs in image pixels: point pairs, and vertex centres for region pairs."""
    out = [(tuple(p["handle"]), tuple(p["target"])) for p in drag.get("points", [])]
    for r in drag.get("regions", []):
        h, t = r.get("handle") or [], r.get("target") or []
        if h and t:
            c = lambda pts: (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))
            out.append((c(h), c(t)))
    return out


def _dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(mask.float()[None, None], 2 * px + 1, stride=1, padding=px)[0, 0] > 0.5


def _psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    mse = float(((a - b) ** 2)[:, where].mean()) if bool(where.any()) else 0.0
    return 99.0 if mse <= 1e-10 else min(99.0, 10.0 * math.log10(1.0 / mse))


def _edited_shape(scene: R.Scene, pairs: Sequence, concepts: Sequence[str]) -> int:
    """Index of the shape the edit is about: under the first handle (drags), else named by a concept's words."""
    if pairs:
        (hx, hy), _ = pairs[0]
        return min(range(len(scene.shapes)), key=lambda i: math.hypot(scene.shapes[i].x - hx, scene.shapes[i].y - hy)
                   - scene.shapes[i].extent)
    for i, s in enumerate(scene.shapes):
        if any(f"{s.colour} {s.kind}" in c for c in concepts):
            return i
    return 0


def measure(prompt: dict, before: torch.Tensor, after: torch.Tensor, drag: Optional[dict]) -> Optional[dict]:
    """Numbers for one demo picture (before / after as [3, H, W] in [0, 1]); None without a Shapes Scene."""
    scene = scene_of(prompt)
    if scene is None:
        return None
    pairs = pairs_of(drag or {})
    concepts = [v["inputs"].get("text", "") for v in prompt.values() if v["class_type"] == "CLIPTextEncode"]
    i = _edited_shape(scene, pairs, concepts)
    s = scene.shapes[i]
    size = before.shape[-1]
    region = R.coverage(s, size) > 1e-3
    res: dict[str, Any] = {"object": f"{s.colour} {s.kind}"}
    if pairs:
        dx = sum(t[0] - h[0] for h, t in pairs) / len(pairs)
        dy = sum(t[1] - h[1] for h, t in pairs) / len(pairs)
        region |= R.coverage(scene.moved(i, dx, dy).shapes[i], size) > 1e-3
        c0, c1 = R.centroid(before, s.colour), R.centroid(after, s.colour)
        want = math.hypot(dx, dy)
        res["asked_px"] = round(want, 1)
        if c0 is None or c1 is None:
            res["moved_px"] = None
        else:   # progress along the drag direction
            res["moved_px"] = round(((c1[0] - c0[0]) * dx + (c1[1] - c0[1]) * dy) / max(want, 1e-6), 1)
    else:
        wanted = [c for c in concepts if c and f"{s.colour} {s.kind}" not in c and s.kind in c]
        res["asked"] = wanted[0] if wanted else None
        new = wanted[0].split()[0] if wanted else None
        res["now"] = None
        for colour in ([new] if new in R.PALETTE else []) + [s.colour]:
            found = R.classify(after, colour)
            c = R.centroid(after, colour)
            if found is not None and c is not None:
                off = math.hypot(c[0] - s.x * size / 32, c[1] - s.y * size / 32)
                res["now"] = f"{colour} {found[0]}"
                res["off_px"] = round(off, 1)
                break
    outside = ~_dilate(region, EDIT_DILATE)
    res["psnr_outside"] = round(_psnr(after.float(), before.float(), outside), 1)
    res["kept"] = res["psnr_outside"] >= KEPT_DB
    return res


def edit_reached(m: dict) -> bool:
    """Whether the picture shows the asked edit: a drag moved the object at least half the way, a recolour has
    the asked colour and kind at the object's place."""
    if "asked_px" in m:
        return m["moved_px"] is not None and m["moved_px"] >= 0.5 * m["asked_px"]
    return m.get("asked") is not None and m.get("now") == m["asked"] and m.get("off_px", 0.0) < 2.0


def caption(title: str, m: Optional[dict], limit: str = "") -> list[str]:
    """Caption lines under a demo picture: what moved / changed, whether the rest is kept (>= 30 dB outside the
    edit region), and `limit` (the plain statement of what the method cannot do on the demo model) when the edit
    falls short or the rest is not kept."""
    if m is None:
        return [title]
    if "asked_px" in m:
        moved = "lost" if m["moved_px"] is None else f"{m['moved_px']:.1f} of {m['asked_px']:.1f} px"
        what = f"{m['object']} moved {moved}"
    else:
        what = f"{m['object']} -> {m.get('asked') or '?'}: now {m['now'] or 'no clear object'}"
        if m["now"] and m.get("off_px", 0.0) >= 2.0:
            what += f", {m['off_px']:.1f} px off its place"
    rest = f"outside the edit {m['psnr_outside']:.1f} dB"
    rest += f" (>= {KEPT_DB:.0f} dB: rest kept)" if m["kept"] else f": below {KEPT_DB:.0f} dB, the rest changes"
    lines = [f"{title}: {what}", rest]
    if not (m["kept"] and edit_reached(m)):
        lines.append(limit or "This method cannot do this edit cleanly on the demo model.")
    return lines
