"""Bench: DragDiffusion's optimisation step against one full UNet forward+backward at the same size, in the same
run (goal: at most 0.8x, from the truncated forward); iterations used and total edit time of a default edit; peak
memory. Prints a table, writes out/bench/dragdiffusion.json.

usage: python bench/dragdiffusion.py [--size 32] [--iters 6] [--full] [--threads 1]
(--full: the real SD1.5 UNet at a 64x64 latent = 512x512 image, for a GPU)

On a CPU, times are process CPU seconds (robust on a shared machine with one torch thread) and peak memory comes
from a second pass in a child process with MALLOC_MMAP_THRESHOLD_ fixed, so freed tensors leave the RSS and each
phase's peak RSS growth is real (that setting slows allocation, so it is kept out of the timing pass). On a GPU,
times are wall seconds and memory is torch.cuda.max_memory_allocated, in one pass."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import _util

EDIT = "whole edit"


def build(a: argparse.Namespace) -> dict:
    """Model, conditioning, a planted latent, its inversion and the drag (the same in both passes)."""
    import torch
    from dragedit.core import dragdiffusion as dd
    from dragedit.core import host
    from dragedit.core.drag_schema import DragInstructions
    from dragedit.core.geometry import point_tensors
    from dragedit.nodes.inversion import DDIMInversion

    cuda = torch.cuda.is_available()
    size = a.size or (64 if a.full else 32)
    model, cfg = _util.bench_model(a.full, size)
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, cfg["context_dim"], generator=g), {}]]
    # a smooth latent with a planted blob at 30% of the width; the drag moves it to 60% (image px)
    lat = torch.nn.functional.interpolate(torch.randn(1, 4, size // 4, size // 4, generator=g), size=(size, size),
                                          mode="bilinear") * 0.5
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    lat[0] += 4 * torch.exp(-((xs - 0.3 * size) ** 2 + (ys - 0.5 * size) ** 2) / (2 * (size / 12) ** 2))
    W = size * 8
    drag = DragInstructions.from_obj([[0.3 * W, 0.5 * W, 0.6 * W, 0.5 * W]], image_size=(W, W))
    grid = dd.feature_grid((size, size), drag.image_size)
    handles, targets = dd.points_on_grid(*point_tensors(drag), grid)
    with torch.inference_mode():
        x_t, _inv, sigmas = DDIMInversion().invert(model, {"samples": lat}, pos, a.steps, 0.7, False)
    mask = torch.zeros(W, W)
    mask[int(0.2 * W):int(0.8 * W), int(0.1 * W):int(0.9 * W)] = 1
    return dict(cuda=cuda, size=size, cfg=cfg, model=model, pos=pos, latent={"samples": lat}, grid=grid,
                handles=handles, targets=targets, x_t=x_t, sigmas=sigmas, mask=mask)


def run_pass(a: argparse.Namespace, what: str) -> dict[str, Any]:
    """Time ('time') or peak memory ('memory') of every row; returns {row name: value} plus the edit's facts."""
    import torch
    from dragedit.core import dragdiffusion as dd
    from dragedit.core import host
    from dragedit.nodes.inversion import DDIMInversion

    c = build(a)
    cuda, model, pos, x_t, sigmas = c["cuda"], c["model"], c["pos"], c["x_t"], c["sigmas"]
    s_t = float(sigmas[0])

    def clock() -> float:
        """Wall time on a GPU, process CPU time on a CPU."""
        if cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    def full_fb(reps: int) -> list[float]:
        """One full UNet forward + backward to the latent per rep (the reference's per-step floor)."""
        times: list[float] = []

        def loop(den, x, _s):
            with host.grad_enabled(den):
                for _ in range(reps):
                    z = host.grad_input(x)
                    t0 = clock()
                    den.x0(z, s_t).float().square().mean().backward()
                    times.append(clock() - t0)
            return x

        with torch.inference_mode():
            host.session(host.clone(model), pos, None, 1.0, x_t["samples"], sigmas[:2], loop)
        return times

    def optimise(settings, mask=None, samples=None, sig=None, stamps=None):
        with torch.inference_mode():
            return dd.optimize(model, pos, x_t["samples"] if samples is None else samples,
                               sigmas if sig is None else sig, c["handles"], c["targets"], c["grid"], settings,
                               mask=mask, on_iteration=None if stamps is None else lambda k, p, l: stamps.append(clock()))

    variants = [("MS step, truncated forward (default)", dict(), None),
                ("MS step, full forward (no truncation)", dict(truncate=False), None),
                ("MS step, with mask term (full forward)", dict(), c["mask"]),
                ("MS step, truncated + half precision", dict(half_precision=True), None)]
    out: dict[str, Any] = {}
    full_fb(1)                                                            # warm-up (allocator, autograd)
    optimise(dd.DragSettings(iterations=1, threshold=0.0))
    if what == "time":
        baseline = [statistics.median(full_fb(a.iters))]
        out["full UNet forward+backward"] = baseline[0]
        for name, kw, m in variants:
            stamps: list[float] = []
            optimise(dd.DragSettings(iterations=a.iters + 1, threshold=0.0, **kw), m, stamps=stamps)
            baseline.append(statistics.median(full_fb(a.iters)))          # the baseline again, beside each variant
            out[name] = (statistics.median(b - x for x, b in zip(stamps, stamps[1:])), baseline[-1])
        out["baseline_runs"] = baseline
    else:
        with _util.peak_memory() as mem:
            full_fb(1)
        out["full UNet forward+backward"] = mem["peak_bytes"]
        out["memory"] = mem["kind"]
        for name, kw, m in variants:
            with _util.peak_memory() as mem:
                optimise(dd.DragSettings(iterations=2, threshold=0.0, **kw), m)
            out[name] = mem["peak_bytes"]

    # a whole default edit: inversion (+K/V), optimisation until reached or the budget, denoising with the K/V
    with _util.peak_memory() as mem:
        t0 = clock()
        with torch.inference_mode():
            x_t2, inv2, sig2 = DDIMInversion().invert(model, c["latent"], pos, a.steps, 0.7, True)
            t1 = clock()
            res = optimise(dd.DragSettings(iterations=a.edit_iterations), samples=x_t2["samples"], sig=sig2)
            t2 = clock()
            dd.denoise(dd.reference_kv_model(model, inv2.kv), pos, None, 1.0, res.samples, sig2)
            t3 = clock()
    out[EDIT] = mem["peak_bytes"] if what == "memory" else {
        "iterations_used": res.result.iterations, "reached": res.result.reached, "seconds_total": t3 - t0,
        "seconds_inversion": t1 - t0, "seconds_optimisation": t2 - t1, "seconds_denoising": t3 - t2,
        "kv_cache_MB": inv2.kv.nbytes() / 2**20, "unet_calls_optimisation": res.stats["unet_calls"]}
    inv2.free()
    out["_facts"] = {"latent": f"{c['size']}x{c['size']}", "feature_grid": f"{c['grid'].hw[1]}x{c['grid'].hw[0]}",
                     "model": "SD1.5 full" if a.full else f"SD1.5 layout, {c['cfg']['model_channels']} base channels",
                     "feature_block": f"output block {dd.feature_block_index(model, -2)} (up_blocks[-2])"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=None, help="latent side (default 32, 64 with --full)")
    ap.add_argument("--iters", type=int, default=6, help="optimisation steps timed per variant")
    ap.add_argument("--full", action="store_true", help="the real SD1.5 UNet size (slow on a CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--edit-iterations", type=int, default=80, help="iteration budget of the whole edit")
    ap.add_argument("--steps", type=int, default=50, help="DDIM grid of the whole edit")
    ap.add_argument("--pass", dest="which", choices=["both", "time", "memory"], default="both")
    a = ap.parse_args()
    _util.setup()
    import torch
    torch.set_num_threads(a.threads)

    if a.which == "memory":                                               # the child of a CPU run
        print("@@" + json.dumps(run_pass(a, "memory")))
        return
    if torch.cuda.is_available():
        t = run_pass(a, "time")
        m = run_pass(a, "memory") if a.which == "both" else {}
    else:
        t = run_pass(a, "time")
        m = {}
        if a.which == "both":
            argv = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--pass", "memory"]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
            m = json.loads([l for l in proc.stdout.splitlines() if l.startswith("@@")][-1][2:])

    rows = []
    for name, v in t.items():
        if name.startswith("_") or name in ("baseline_runs", EDIT):
            continue
        step, base = (v, v) if isinstance(v, float) else v
        peak = m.get(name)
        rows.append({"run": name, "s_per_step": step, "ratio_to_full_fb": step / base,
                     "peak_MB": None if peak is None else peak / 2**20})
    edit = t[EDIT]
    rows.append({"run": f"{EDIT} ({a.steps} steps, strength 0.7, <= {a.edit_iterations} iters)",
                 "s_per_step": None, "ratio_to_full_fb": None,
                 "peak_MB": None if EDIT not in m else m[EDIT] / 2**20})
    _util.report("dragdiffusion", rows, {
        "device": _util.device_name(), **t["_facts"],
        "goal": "MS step <= 0.8x one full forward+backward (ratio against the baseline measured beside it)",
        "time": "wall seconds" if torch.cuda.is_available() else "process CPU seconds",
        "baseline_runs": t["baseline_runs"], "memory": m.get("memory", "cuda_allocated"), "edit": edit})


if __name__ == "__main__":
    main()
