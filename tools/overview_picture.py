"""docs/overview.png, the README's first picture: what you draw in the Drag Instructions editor (docs/editor.png) beside
two results of `make demo` on the bundled Shapes Demo Model (RegionDrag's move, LEDITS' recolour), each input | result.
    .venv/bin/python -m demo.run regiondrag ledits && .venv/bin/python -m tools.overview_picture
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "out" / "demo"
OUT = ROOT / "docs" / "overview.png"
PANELS = [("regiondrag", "RegionDrag: drag the triangle (input | result)"),
          ("ledits", 'LEDITS: "red square" -> "blue square" (input | result)')]
CAPTION = 26
BG = (24, 24, 24)


def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans where the system has it, else PIL's own font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default()


def compose(editor: Path, panels: list[tuple[Path, str]]) -> Image.Image:
    """Editor screenshot on the left, captioned before | after panels stacked on the right."""
    shots = [Image.open(p).convert("RGB") for p, _ in panels]
    width = max(s.width for s in shots)
    right_h = sum(s.height + CAPTION for s in shots)
    ed = Image.open(editor).convert("RGB")
    ed = ed.resize((round(ed.width * right_h / ed.height), right_h), Image.LANCZOS)
    canvas = Image.new("RGB", (ed.width + 12 + width, right_h), BG)
    canvas.paste(ed, (0, 0))
    draw, font, y = ImageDraw.Draw(canvas), _font(16), 0
    for shot, (_, caption) in zip(shots, panels):
        draw.text((ed.width + 12, y + 4), caption, fill=(235, 235, 235), font=font)
        canvas.paste(shot, (ed.width + 12, y + CAPTION))
        y += shot.height + CAPTION
    return canvas


def main() -> None:
    panels = [(DEMO / f"{name}_before_after.png", caption) for name, caption in PANELS]
    missing = [str(p.relative_to(ROOT)) for p, _ in panels if not p.is_file()]
    if missing:
        raise SystemExit(f"missing {missing}: run `.venv/bin/python -m demo.run regiondrag ledits` first")
    compose(ROOT / "docs" / "editor.png", panels).save(OUT, optimize=True)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
