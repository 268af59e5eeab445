"""docs/demo_results.png: the before / after PNGs of `make demo` (out/demo/) stacked, one row per workflow."""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["regiondrag", "dragdiffusion", "dragdiffusion_lora", "dragondiffusion_move", "dragondiffusion_drag", "ledits"]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "demo_results.png"
    ims = [Image.open(ROOT / "out" / "demo" / f"{n}_before_after.png").convert("RGB") for n in NAMES]
    w, gap = max(i.width for i in ims), 8
    sheet = Image.new("RGB", (w, sum(i.height for i in ims) + gap * (len(ims) - 1)), (30, 30, 30))
    y = 0
    for im in ims:
        sheet.paste(im, (0, y))
        y += im.height + gap
    sheet.resize((sheet.width // 2, sheet.height // 2), Image.LANCZOS).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
