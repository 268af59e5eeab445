"""Shared bench plumbing: ComfyUI in-process (--cpu unless CUDA is there), timing, peak memory, table + JSON."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "bench"


def setup() -> None:
    """Import ComfyUI (the test host, or $COMFYUI_PATH) and this pack as `dragedit`."""
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_env import load_pack
    load_pack()


@contextmanager
def peak_memory() -> Iterator[dict]:
    """Peak memory of the block: CUDA max allocated when on a GPU, else peak RSS growth sampled every 5 ms."""
    import psutil
    import torch
    res: dict = {}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield res
        torch.cuda.synchronize()
        res["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        res["kind"] = "cuda_allocated"
        return
    proc = psutil.Process(os.getpid())
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield res
    finally:
        stop.set()
        t.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        res["peak_bytes"] = peak[0] - base
        res["kind"] = "cpu_rss_growth"


def timed(fn, repeats: int = 3) -> tuple[float, Any]:
    """Best wall time over `repeats` runs (after the first, which warms up) and the last result."""
    import torch
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def device_name() -> str:
    """What ran the bench."""
    import platform
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def report(name: str, rows: list[dict], extra: dict) -> Path:
    """Print rows as a table and write {extra, rows} to out/bench/<name>.json."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    width = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print(" | ".join(c.ljust(width[c]) for c in cols))
    print("-+-".join("-" * width[c] for c in cols))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(width[c]) for c in cols))
    for k, v in extra.items():
        print(f"{k}: {v}")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({"bench": name, **extra, "rows": rows}, indent=2))
    print(f"wrote {path}")
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


# A mid-size SD1.5-shaped UNet: the real block layout (4 levels, 2 res blocks, attention at 3 levels, 16
# transformers) with narrow channels, so CPU timings mean something; `--full` in a bench uses the real SD1.5 size.
SD15_MID = dict(
    in_channels=4, out_channels=4, model_channels=64, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    transformer_depth_middle=1, context_dim=64, num_heads=4, use_linear_in_transformer=False,
    use_spatial_transformer=True, legacy=False, image_size=32, adm_in_channels=None, num_head_channels=-1,
)
SD15_FULL = dict(SD15_MID, model_channels=320, context_dim=768, num_heads=8, image_size=64)


def bench_model(full: bool, size: int):
    """The bench UNet (SD15_FULL or SD15_MID at a latent side `size`), fp16 on CUDA when there is one; returns
    (ModelPatcher, unet config)."""
    import torch
    from dragedit.core import host
    cuda = torch.cuda.is_available()
    cfg = dict(SD15_FULL if full else SD15_MID, image_size=size)
    model = host.build_model(cfg, dtype=torch.float16 if cuda else torch.float32)
    if cuda:
        model.load_device = torch.device("cuda")
    return model, cfg
