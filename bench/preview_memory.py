"""Drag Preview memory (issue 23, class 14): server-side RSS of one Drag Preview run on a batch of images, peak
and held afterwards (the IMAGE output kept, as ComfyUI's cache keeps it), in a fresh child process.

Default: the issue's case, a batch of 64 random 128x128 images with min_size 4096. Prints one line per figure and
writes out/bench/preview_memory.json."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

from bench import _util  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Resident set size now (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--min-size", type=int, default=4096)
    args = ap.parse_args()

    import gc

    import torch
    _util.setup()
    import folder_paths
    folder_paths.set_temp_directory(tempfile.mkdtemp(prefix="dragedit-preview-mem-"))
    from dragedit.core.drag_schema import DragInstructions
    from dragedit.nodes.preview import DragPreview

    image = torch.rand(args.batch, args.side, args.side, 3)
    drag = DragInstructions.from_json("[[10, 10, 100, 60]]", image_size=(args.side, args.side))
    gc.collect()
    start = rss_mb()
    with torch.inference_mode():
        out = DragPreview().draw(image, drag, min_size=args.min_size)
    gc.collect()
    held = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shape = tuple(out["result"][0].shape)
    res = {"batch": args.batch, "side": args.side, "min_size": args.min_size, "output_shape": shape,
           "output_mb": round(out["result"][0].numel() * 4 / 2 ** 20, 1), "pngs": len(out["ui"]["images"]),
           "rss_start_mb": round(start), "rss_peak_mb": round(peak), "rss_held_mb": round(held)}
    for k, v in res.items():
        print(f"{k:14s} {v}")
    dest = ROOT / "out" / "bench"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "preview_memory.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
