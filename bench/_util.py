"""Shared bench plumbing, used by every bench (one place for how things are timed, counted and reported).

- `setup()`: ComfyUI in-process and this pack as `dragedit` (CPU mode; `DRAGEDIT_COMFY_GPU=1` keeps CUDA with
  ComfyUI's normal VRAM management, see tools/support/comfy_env.py).
- `interleave()`: runs variants A, B, C, A, B, C, ... `repeats` times after one warm-up each, and records process CPU
  seconds and wall seconds of every run (CUDA synchronised around each run). `summary()` gives the median and the
  spread (min, max, quartiles) of a list; `primary()` says which clock a bench should quote: process CPU time on a
  CPU (robust on a shared machine), wall time on a GPU.
- `count_unet()`: counts UNet invocations and batch rows with a forward pre-hook on the diffusion model itself, so
  every call is counted whoever makes it (ComfyUI's sampler, a truncated feature pass, a grad pass). Never
  extrapolated.
- `child_peak()` / `peak_memory()`: peak memory of one run in a fresh child process (RSS growth sampled every 5 ms;
  CPU) or torch.cuda.max_memory_allocated (GPU). Memory passes never share a process with the timing pass.
- `machine()`: load average, CPU count, threads, device: goes into every JSON.
- `report()`: prints a table and writes out/bench/<name>.json.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "bench"


def setup() -> None:
    """Import ComfyUI (the test host, or $COMFYUI_PATH) and this pack as `dragedit`."""
    from tools.support.comfy_env import load_pack
    load_pack()


def cuda_in_use() -> bool:
    """True when ComfyUI runs on a CUDA device (not merely when torch sees one: --cpu keeps it on the CPU)."""
    import torch
    if not torch.cuda.is_available():
        return False
    try:
        import comfy.model_management as mm
        return mm.get_torch_device().type == "cuda"
    except Exception:  # ComfyUI not imported yet
        return True


def sync() -> None:
    """Wait for queued CUDA work (no-op on a CPU)."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------

def primary() -> str:
    """The clock a bench quotes: 'cpu' (process CPU seconds) on a CPU, 'wall' (synchronised) on a GPU."""
    return "wall" if cuda_in_use() else "cpu"


def clock_label() -> str:
    return "wall seconds (CUDA synchronised)" if primary() == "wall" else "process CPU seconds (user + system)"


def run_timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of one call of fn."""
    sync()
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return time.perf_counter() - w0, time.process_time() - c0, out


def interleave(variants: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True
               ) -> dict[str, dict[str, list[float]]]:
    """Run every variant once to warm up (when `warmup`), then A, B, C, A, B, C, ... `repeats` rounds; returns
    {name: {"wall": [...], "cpu": [...]}} so load changes on a shared machine hit every variant alike."""
    if warmup:
        for fn in variants.values():
            fn()
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            w, c, _ = run_timed(fn)
            times[name]["wall"].append(w)
            times[name]["cpu"].append(c)
    return times


def summary(xs: Sequence[float]) -> dict[str, float]:
    """Median and spread of a sample: min, max, first and third quartile, n."""
    xs = sorted(float(x) for x in xs)
    if not xs:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "q1": float("nan"),
                "q3": float("nan"), "n": 0}
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q1": q[0], "q3": q[2], "n": len(xs)}


def ratio_summary(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Summary of the per-round ratios num[i] / den[i] (runs of the same round ran next to each other)."""
    return summary([a / b for a, b in zip(num, den)])


def spread(s: dict[str, float], digits: int = 3) -> str:
    """'median [min-max]' for a table cell."""
    return f"{s['median']:.{digits}g} [{s['min']:.{digits}g}-{s['max']:.{digits}g}]"


# --------------------------------------------------------------------------------------------
# UNet calls, counted
# --------------------------------------------------------------------------------------------

class UNetCount:
    """UNet invocations (`calls`) and batch rows (`rows`) seen by a forward pre-hook on the diffusion model."""

    def __init__(self) -> None:
        self.calls = 0
        self.rows = 0

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "rows": self.rows}


@contextmanager
def count_unet(model: Any) -> Iterator[UNetCount]:
    """Count every call of the model's diffusion model (a ModelPatcher, its clones and the BaseModel share the
    module) inside the block: a forward pre-hook, so truncated and differentiable calls count too."""
    from dragedit.core import host
    dm = host.diffusion_model(model)
    c = UNetCount()

    def hook(_mod, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        c.calls += 1
        c.rows += int(x.shape[0]) if x is not None else 0
    h = dm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield c
    finally:
        h.remove()


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------

@contextmanager
def peak_memory() -> Iterator[dict]:
    """Peak memory of the block: CUDA max allocated above the start when on a GPU, else peak RSS growth sampled
    every 5 ms (meaningful only in a fresh process: RSS does not shrink after a run)."""
    import psutil
    import torch
    res: dict = {}
    if cuda_in_use():
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
        res["kind"] = "cpu_rss_growth (fresh process)"


PEAK_TAG = "@@PEAK "


def emit_peak(res: dict) -> None:
    """Child side of child_peak(): print the result on a tagged line."""
    print(PEAK_TAG + json.dumps(res), flush=True)


def child_peak(module: str, argv: Sequence[str], small_mmap: bool = True) -> dict:
    """Run `python -m module argv` (from the repository root) in a fresh process (which measures one run inside peak_memory() and calls emit_peak) and
    return its dict. `small_mmap` sets MALLOC_MMAP_THRESHOLD_ so freed tensors leave the RSS: that setting slows
    allocation, so it is only ever used here, never in a timing pass."""
    env = dict(os.environ)
    if small_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    proc = subprocess.run([sys.executable, "-m", module, *argv], env=env, capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith(PEAK_TAG):
            return json.loads(line[len(PEAK_TAG):])
    return {"error": (proc.stderr or proc.stdout)[-600:], "peak_bytes": None}


# --------------------------------------------------------------------------------------------
# machine and report
# --------------------------------------------------------------------------------------------

def device_name() -> str:
    """What ran the bench."""
    import platform
    import torch
    if cuda_in_use():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def machine() -> dict[str, Any]:
    """Load and device facts that go into every JSON (taken at the end of a run)."""
    import torch
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        load = None
    return {"device": device_name(), "clock": clock_label(), "loadavg_1_5_15min": load, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def report(name: str, rows: list[dict], extra: dict, out: Optional[Path] = None) -> Path:
    """Print rows as a table and write {bench, machine facts, extra, rows} to out/bench/<name>.json."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    width = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print(" | ".join(c.ljust(width[c]) for c in cols))
    print("-+-".join("-" * width[c] for c in cols))
    for r in rows:
        print(" | ".join(_fmt(r.get(c)).ljust(width[c]) for c in cols))
    facts = {**machine(), **extra}
    for k, v in facts.items():
        if not isinstance(v, (dict, list)) or len(json.dumps(v)) < 200:
            print(f"{k}: {v}")
    out = out or OUT
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"bench": name, **facts, "rows": rows}, indent=2, default=str))
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


def bench_model(full: bool, size: int, *, init_std: float = 0.02, frozen: bool = True):
    """The bench UNet (SD15_FULL or SD15_MID at a latent side `size`), fp16 on the load device when ComfyUI runs on
    CUDA; returns (ModelPatcher, unet config). `frozen`: parameters do not require grad, as in a loaded checkpoint,
    so no bench computes weight gradients by accident."""
    import torch
    from dragedit.core import host
    cuda = cuda_in_use()
    cfg = dict(SD15_FULL if full else SD15_MID, image_size=size)
    model = host.build_model(cfg, dtype=torch.float16 if cuda else torch.float32, init_std=init_std)
    if frozen:
        host.diffusion_model(model).requires_grad_(False)
    if cuda:
        import comfy.model_management as mm
        model.load_device = mm.get_torch_device()
        model.offload_device = mm.unet_offload_device()
    return model, cfg


def comfy_unet_config(family: str) -> dict:
    """The full UNet config ComfyUI itself derives for a real SD1.5 ('sd15') or SDXL ('sdxl') checkpoint:
    comfy.model_detection.unet_config_from_diffusers_unet on a shape-only (meta) diffusers key set of that
    architecture, so the layer layout is ComfyUI's own, not a copy. `dtype` is left out (the caller picks it)."""
    import torch
    import comfy.model_detection as md
    meta = lambda *s: torch.empty(*s, device="meta")  # noqa: E731
    if family == "sd15":
        ch, ctx, adm, levels = 320, 768, None, [(1, 2), (1, 2), (1, 2), (0, 2)]   # (transformers per attention, res)
    elif family == "sdxl":
        ch, ctx, adm, levels = 320, 2048, 2816, [(0, 2), (2, 2), (10, 2)]
    else:
        raise ValueError(family)
    sd = {"conv_in.weight": meta(ch, 4, 3, 3)}
    if adm is not None:
        sd["add_embedding.linear_1.weight"] = meta(1280, adm)
    for i, (depth, res) in enumerate(levels):
        for r in range(res):
            sd[f"down_blocks.{i}.resnets.{r}.conv1.weight"] = meta(1)
            for t in range(depth):
                sd[f"down_blocks.{i}.attentions.{r}.transformer_blocks.{t}.attn2.to_k.weight"] = meta(ch, ctx)
    cfg = md.unet_config_from_diffusers_unet(sd)
    if cfg is None:
        raise RuntimeError(f"ComfyUI did not recognise the {family} layout")
    cfg.pop("dtype", None)
    return cfg
