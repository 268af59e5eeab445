"""Draw the pack's example photo stand-in, demo/images/dragedit_example.png (768 x 768, drawn here with PIL, so the
pack may redistribute it): a red ball on a green hill under a blue sky, with a tree and a sun. The SD1.5 / SDXL
example workflows load it by name; the pack copies it into ComfyUI's input folder when it loads
(nodes/_ui.install_example_image), so it exists in a fresh install.
    .venv/bin/python -m tools.example_image
The drags of tools/sd_workflows.py are given in this picture's pixels (BALL, the ball's box)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "demo" / "images" / "dragedit_example.png"
SIZE = 768
BALL = (250, 470, 370, 590)          # the red ball's box (x0, y0, x1, y1) in image pixels
PROMPT = "a painting of a red ball on a green hill under a blue sky, a tree and a yellow sun"


def draw() -> Image.Image:
    """The picture: vertical sky gradient, sun, two hills, a tree, the red ball with a highlight and a shadow."""
    img = Image.new("RGB", (SIZE, SIZE))
    d = ImageDraw.Draw(img)
    for y in range(SIZE):
        t = y / SIZE
        d.line([(0, y), (SIZE, y)], fill=(int(70 + 110 * t), int(130 + 90 * t), int(220 + 30 * t)))
    d.ellipse([560, 70, 690, 200], fill=(255, 214, 80))
    d.ellipse([-300, 420, 620, 1100], fill=(96, 170, 80))
    d.ellipse([250, 470, 1150, 1150], fill=(70, 150, 64))
    d.rectangle([560, 330, 590, 520], fill=(110, 74, 44))
    for box in ([480, 200, 680, 380], [500, 150, 650, 300], [520, 260, 700, 420]):
        d.ellipse(box, fill=(40, 120, 50))
    x0, y0, x1, y1 = BALL
    d.ellipse([x0 + 10, y1 - 18, x1 + 20, y1 + 10], fill=(50, 110, 45))
    d.ellipse(BALL, fill=(215, 40, 40))
    d.ellipse([x0 + 25, y0 + 20, x0 + 60, y0 + 50], fill=(245, 140, 130))
    return img.filter(ImageFilter.GaussianBlur(1.2))


def main() -> None:
    DEST.parent.mkdir(parents=True, exist_ok=True)
    draw().save(DEST, optimize=True)
    print(f"wrote {DEST.relative_to(ROOT)} ({DEST.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
