"""docs/demo_results.png: the before / after PNGs of `make demo` (out/demo/) stacked, one row per workflow."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["regiondrag", "dragdiffusion", "dragdiffusion_lora", "dragondiffusion_move", "dragondiffusion_drag", "ledits",
         "shapes_dit_regiondrag", "shapes_dit_ledits"]


def main(argv: Optional[list[str]] = None) -> None:
    """Stack out/demo/<name>_before_after.png into docs/demo_results.png (or the path given); `make demo` calls it."""
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else ROOT / "docs" / "demo_results.png"
    ims = [Image.open(ROOT / "out" / "demo" / f"{n}_before_after.png").convert("RGB") for n in NAMES]
    w, gap = max(i.width for i in ims), 8
    sheet = Image.new("RGB", (w, sum(i.height for i in ims) + gap * (len(ims) - 1)), (30, 30, 30))
    y = 0
    for im in ims:
        sheet.paste(im, (0, y))
        y += im.height + gap
    sheet.save(out)   # full size: the captions stay readable
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
