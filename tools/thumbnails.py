"""Template-browser thumbnails: example_workflows/<file>.jpg next to each <file>.json (the name the ComfyUI frontend
asks for: it requests /api/workflow_templates/<pack folder>/<file>.jpg for every <file>.json a custom node's
example_workflows/ holds; tools/support/examples.py maps the short keys used here to the file names).

Shapes-model workflows: from real results, the before / after PNGs `demo/run.py` writes to out/demo/ (input with the
drag arrows | result). Real-image (SD1.5 / SDXL) workflows: no weights exist here, so an illustrative card that says
so: the pack's example picture (demo/images, tools/example_image.py) with the workflow's drag drawn on it, the method,
the checkpoint and the resolution.

The frontend lays a "Node graph" badge over the card's top-left corner (1.58), so the top band stays empty: the
pictures come first, the title and subtitle below them.
    .venv/bin/python -m demo.run && .venv/bin/python -m tools.thumbnails [keys...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]

from tools.support import examples  # noqa: E402

DEMO = ROOT / "out" / "demo"
SIZE = 400
BG = (30, 31, 38)
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"

SHAPES = {
    "regiondrag": ("RegionDrag", "move a region: one inversion + one pass"),
    "dragdiffusion": ("DragDiffusion", "point drag: motion supervision"),
    "dragdiffusion_lora": ("DragDiffusion + LoRA", "Train LoRA on the image, then drag"),
    "dragondiffusion_move": ("DragonDiffusion · move", "move an object by guidance"),
    "dragondiffusion_drag": ("DragonDiffusion · drag", "drag content by guidance"),
    "ledits": ("LEDITS", "recolour: + \"blue square\" - \"red square\""),
    "shapes_dit_regiondrag": ("RegionDrag · DiT", "the demo FLUX-type DiT: K/V moved with the region"),
    "shapes_dit_ledits": ("LEDITS · DiT", "recolour on the demo DiT, the shape kept"),
}
REAL = {
    "sd15_regiondrag": ("RegionDrag", "SD1.5 · 512 px", "v1-5-pruned-emaonly-fp16"),
    "sd15_dragdiffusion": ("DragDiffusion + LoRA", "SD1.5 · 512 px", "v1-5-pruned-emaonly-fp16"),
    "sd15_dragondiffusion": ("DragonDiffusion · move", "SD1.5 · 512 px", "v1-5-pruned-emaonly-fp16"),
    "sd15_ledits": ("LEDITS: + \"snow\"", "SD1.5 · 512 px", "v1-5-pruned-emaonly-fp16"),
    "sdxl_regiondrag": ("RegionDrag", "SDXL · 1024 px", "sd_xl_base_1.0"),
    "sdxl_dragdiffusion": ("DragDiffusion + LoRA", "SDXL · 1024 px", "sd_xl_base_1.0"),
    "sdxl_ledits": ("LEDITS: + \"snow\"", "SDXL · 1024 px", "sd_xl_base_1.0"),
}


def _font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype(FONT_BOLD if bold else FONT, size)
    except OSError:
        return ImageFont.load_default(size=size)


def _drag_of(wf: dict) -> dict:
    for n in wf["nodes"]:
        if n["type"] == "DragInstructions":
            try:
                return json.loads(n["widgets_values"][0])
            except (ValueError, IndexError, TypeError):
                return {}
    return {}


def _arrow(d: ImageDraw.ImageDraw, p0, p1, width: int = 3) -> None:
    d.line([p0, p1], fill=(255, 230, 0), width=width)
    r = width + 2
    d.ellipse([p0[0] - r, p0[1] - r, p0[0] + r, p0[1] + r], outline=(255, 40, 40), width=2)
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    n = max((vx * vx + vy * vy) ** 0.5, 1e-6)
    ux, uy = vx / n, vy / n
    a = 4 * width
    d.polygon([p1, (p1[0] - a * ux + a / 2 * uy, p1[1] - a * uy - a / 2 * ux),
               (p1[0] - a * ux - a / 2 * uy, p1[1] - a * uy + a / 2 * ux)], fill=(255, 230, 0))


def _draw_drag(img: Image.Image, drag: dict) -> Image.Image:
    """The drag on img (scaled from the drag's image_size): region boxes (handle red, target green) and arrows."""
    img = img.convert("RGB")
    w, h = img.size
    sw, sh = (w / drag["image_size"][0], h / drag["image_size"][1]) if drag.get("image_size") else (1.0, 1.0)
    d = ImageDraw.Draw(img)
    sc = lambda p: (p[0] * sw, p[1] * sh)
    for r in drag.get("regions", []):
        hnd, tgt = [sc(p) for p in r.get("handle", [])], [sc(p) for p in r.get("target", [])]
        if r.get("kind") == "rect" and len(hnd) == 2 and len(tgt) == 2:
            d.rectangle([hnd[0], hnd[1]], outline=(255, 60, 60), width=3)
            d.rectangle([tgt[0], tgt[1]], outline=(60, 230, 90), width=3)
        c = lambda pts: (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))
        if hnd and tgt:
            _arrow(d, c(hnd), c(tgt))
    for p in drag.get("points", []):
        _arrow(d, sc(p["handle"]), sc(p["target"]))
    return img


BADGE_BAND = 52          # px of the card's top kept free of text: the frontend's "Node graph" badge sits there


def _card(title: str, subtitle: str, panels: list[tuple[Image.Image, str]], footer: str) -> Image.Image:
    """Pictures (with labels) from below the badge band, then the title, the subtitle and the footer, centred."""
    card = Image.new("RGB", (SIZE, SIZE), BG)
    d = ImageDraw.Draw(card)
    n = len(panels)
    gap = 10
    side = min((SIZE - 32 - gap * (n - 1)) // n, SIZE - BADGE_BAND - 112)
    top = BADGE_BAND
    for i, (im, label) in enumerate(panels):
        x = (SIZE - n * side - (n - 1) * gap) // 2 + i * (side + gap)
        card.paste(im.resize((side, side), Image.NEAREST if im.width < 128 else Image.LANCZOS), (x, top))
        d.text((x + side / 2, top + side + 5), label, font=_font(13), fill=(200, 205, 215), anchor="ma")
    y = top + side + 26
    d.text((SIZE / 2, y), title, font=_font(24, True), fill=(240, 240, 245), anchor="ma")
    d.text((SIZE / 2, y + 32), subtitle, font=_font(14), fill=(175, 180, 195), anchor="ma")
    d.text((SIZE / 2, SIZE - 20), footer, font=_font(12), fill=(150, 155, 170), anchor="ma")
    return card


def shapes_thumbnail(name: str) -> Image.Image:
    """Before (with the drag) | after, from out/demo/<name>_*.png of a real run."""
    before = DEMO / f"{name}_before.png"
    after = DEMO / f"{name}_after.png"
    if not (before.exists() and after.exists()):
        raise FileNotFoundError(f"{before} / {after} missing: run .venv/bin/python -m demo.run {name} first")
    wf = json.loads(examples.path(name).read_text())
    b = Image.open(before).convert("RGB").resize((256, 256), Image.NEAREST)
    drag = _drag_of(wf)
    if drag:
        drag = dict(drag, image_size=drag.get("image_size") or [32, 32])
        b = _draw_drag(b, drag)
    title, sub = SHAPES[name]
    return _card(title, sub, [(b, "input + drag" if drag else "input"), (Image.open(after), "result")],
                 "bundled Shapes Demo Model · runs on CPU")


def real_thumbnail(name: str) -> Image.Image:
    """An illustration, not a result: the example image with the workflow's drag, what it needs."""
    from tools.example_image import DEST
    wf = json.loads(examples.path(name).read_text())
    src = Image.open(DEST).convert("RGB").resize((512, 512), Image.LANCZOS)
    drag = _drag_of(wf)
    img = _draw_drag(src, drag) if drag else src
    title, sub, ckpt = REAL[name]
    card = _card(title, f"real image · {sub}", [(img, "illustration: input + edit, not a result")],
                 f"for {ckpt}.safetensors")
    return card


def main() -> None:
    names = sys.argv[1:] or list(examples.EXAMPLES)
    for name in names:
        if name not in SHAPES and name not in REAL:
            print(f"{name}: not written here (the DiT workflows' thumbnails come from tools.dit_workflows)")
            continue
        img = shapes_thumbnail(name) if name in SHAPES else real_thumbnail(name)
        dest = examples.path(name, ".jpg")
        img.save(dest, quality=88, optimize=True)
        print(f"{dest.relative_to(ROOT)} ({dest.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
