"""Bench: DragDiffusion's motion-supervision (MS) step against the reference's per-iteration structure at the same
size (a full UNet forward, then a backward from the feature block up_blocks[-2] to the latent: the work the
reference does per iteration, and nothing more), in the same run (goal: at most 0.8x, from the truncated forward);
iterations used, UNet calls (counted) and total time of whole default edits; peak memory. Prints a table, writes
out/bench/dragdiffusion.json.

usage: python -m bench.dragdiffusion [--size 32] [--iters 4] [--repeats 3] [--edit-repeats 3] [--full] [--threads 1]
(--full: the real SD1.5 UNet at a 64x64 latent = 512x512 image, for a GPU)

The model's parameters are frozen (requires_grad False, as in a loaded checkpoint): no row computes weight
gradients. Rows run in interleaved rounds (baseline, each variant, again) and the ratio is taken per round; times
are process CPU seconds on a CPU, synchronised wall seconds on a GPU (bench/_util.py); median and min-max spread.
Peak memory comes from a second pass in a child process (on a CPU with MALLOC_MMAP_THRESHOLD_ fixed, so freed
tensors leave the RSS; that setting slows allocation, so it is kept out of the timing pass). The bf16-autocast row
exists on a CPU only and says nothing about GPUs."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench import _util

EDIT = "whole edit"
BASE = "reference step: full forward + backward from the feature block"


def build(a: argparse.Namespace) -> dict:
    """Model, conditioning, a planted latent, its inversion and the drag (the same in both passes)."""
    import torch
    from dragedit.core import dragdiffusion as dd
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
    block = dd.feature_block_index(model, -2)

    def clock() -> float:
        """Wall time (synchronised) on a GPU, process CPU time on a CPU."""
        if cuda:
            _util.sync()
            return time.perf_counter()
        return time.process_time()

    def reference_step(reps: int) -> list[float]:
        """The reference's per-iteration structure, and nothing more: a full UNet forward, then a backward from the
        feature block (up_blocks[-2], where the motion-supervision loss lives) to the latent only (frozen weights,
        no weight gradients)."""
        times: list[float] = []
        run = host.clone(model)
        fs = host.FeatureStore()
        host.patch_feature_capture(run, fs, [block])

        def loop(den, x, _s):
            with host.grad_enabled(den):
                for _ in range(reps):
                    z = host.grad_input(x)
                    t0 = clock()
                    den.x0(z, s_t)
                    f = fs.half(block, 0)
                    fs.clear()
                    torch.autograd.grad(f.float().square().mean(), [z])
                    times.append(clock() - t0)
            return x

        with torch.inference_mode():
            host.session(run, pos, None, 1.0, x_t["samples"], sigmas[:2], loop)
        return times

    def optimise(settings, mask=None, samples=None, sig=None, stamps=None):
        with torch.inference_mode():
            return dd.optimize(model, pos, x_t["samples"] if samples is None else samples,
                               sigmas if sig is None else sig, c["handles"], c["targets"], c["grid"], settings,
                               mask=mask, on_iteration=None if stamps is None else lambda k, p, l: stamps.append(clock()))

    variants = [("MS step, truncated forward (default)", dict(), None),
                ("MS step, full forward (no truncation)", dict(truncate=False), None),
                ("MS step, with mask term (full forward)", dict(), c["mask"])]
    if not cuda:   # on a GPU the bench model is fp16 already: autocast would measure nothing
        variants.append(("MS step, bf16 autocast (CPU only, not a GPU figure)", dict(half_precision=True), None))
    out: dict[str, Any] = {}
    reference_step(1)                                                     # warm-up (allocator, autograd)
    optimise(dd.DragSettings(iterations=1, threshold=0.0))
    if what == "time":
        per_round: dict[str, list[float]] = {BASE: []}
        steps: dict[str, list[float]] = {BASE: []}
        for name, _kw, _m in variants:
            per_round[name], steps[name] = [], []
        for _ in range(a.repeats):                                        # interleaved rounds: B, V1, V2, ... again
            b = reference_step(a.iters)
            steps[BASE] += b
            per_round[BASE].append(statistics.median(b))
            for name, kw, m in variants:
                stamps: list[float] = []
                optimise(dd.DragSettings(iterations=a.iters + 1, threshold=0.0, **kw), m, stamps=stamps)
                d = [y - x for x, y in zip(stamps, stamps[1:])]
                steps[name] += d
                per_round[name].append(statistics.median(d))
        out["steps"], out["per_round"] = steps, per_round
        out["weight_grads_after"] = sum(p.grad is not None for p in host.diffusion_model(model).parameters())
    else:
        with _util.peak_memory() as mem:
            reference_step(1)
        out[BASE] = mem["peak_bytes"]
        out["memory"] = mem["kind"]
        for name, kw, m in variants:
            with _util.peak_memory() as mem:
                optimise(dd.DragSettings(iterations=2, threshold=0.0, **kw), m)
            out[name] = mem["peak_bytes"]

    # whole default edits: inversion (+K/V), optimisation until reached or the budget, denoising with the K/V;
    # UNet calls counted on the diffusion model per phase
    edits = []
    for _ in range(a.edit_repeats if what == "time" else 1):
        with _util.peak_memory() as mem:
            t0 = clock()
            with torch.inference_mode():
                with _util.count_unet(model) as n_inv:
                    x_t2, inv2, sig2 = DDIMInversion().invert(model, c["latent"], pos, a.steps, 0.7, True)
                t1 = clock()
                with _util.count_unet(model) as n_opt:
                    res = optimise(dd.DragSettings(iterations=a.edit_iterations), samples=x_t2["samples"], sig=sig2)
                t2 = clock()
                with _util.count_unet(model) as n_den:
                    dd.denoise(dd.reference_kv_model(model, inv2.kv), pos, None, 1.0, res.samples, sig2)
                t3 = clock()
        edits.append(mem["peak_bytes"] if what == "memory" else {
            "iterations_used": res.result.iterations, "reached": res.result.reached, "seconds_total": t3 - t0,
            "seconds_inversion": t1 - t0, "seconds_optimisation": t2 - t1, "seconds_denoising": t3 - t2,
            "kv_cache_MiB": inv2.kv.nbytes() / 2**20, "unet_calls_inversion": n_inv.calls,
            "unet_calls_optimisation": n_opt.calls, "unet_calls_denoising": n_den.calls})
        inv2.free()
    out[EDIT] = edits[0] if what == "memory" else edits
    out["_facts"] = {"latent": f"{c['size']}x{c['size']}", "feature_grid": f"{c['grid'].hw[1]}x{c['grid'].hw[0]}",
                     "model": "SD1.5 full" if a.full else f"SD1.5 layout, {c['cfg']['model_channels']} base channels",
                     "feature_block": f"output block {block} (up_blocks[-2])"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=None, help="latent side (default 32, 64 with --full)")
    ap.add_argument("--iters", type=int, default=4, help="optimisation steps timed per variant and round")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (baseline, variants, again)")
    ap.add_argument("--full", action="store_true", help="the real SD1.5 UNet size (slow on a CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--edit-iterations", type=int, default=80, help="iteration budget of the whole edit")
    ap.add_argument("--edit-repeats", type=int, default=3, help="whole edits timed")
    ap.add_argument("--steps", type=int, default=50, help="DDIM grid of the whole edit")
    ap.add_argument("--pass", dest="which", choices=["both", "time", "memory"], default="both")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    _util.setup()

    if a.which == "memory":                                               # the child of a run: memory only
        print("@@" + json.dumps(run_pass(a, "memory")))
        return
    t = run_pass(a, "time")
    m: dict = {}
    if a.which == "both":                # peaks in a fresh process, never in the timing process
        argv = [sys.executable, "-m", __spec__.name, *sys.argv[1:], "--pass", "memory"]
        env = {**os.environ} if _util.cuda_in_use() else {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, cwd=_util.ROOT)
        m = json.loads([l for l in proc.stdout.splitlines() if l.startswith("@@")][-1][2:])

    rows = []
    base_rounds = t["per_round"][BASE]
    for name, rounds in t["per_round"].items():
        st = _util.summary(t["steps"][name])
        r = _util.ratio_summary(rounds, base_rounds)
        peak = m.get(name)
        rows.append({"run": name, "s_per_step_median": st["median"], "s_min": st["min"], "s_max": st["max"],
                     "ratio_median": r["median"], "ratio_min": r["min"], "ratio_max": r["max"],
                     "peak_MiB": None if peak is None else peak / 2**20})
    edits = t[EDIT]
    tot = _util.summary([e["seconds_total"] for e in edits])
    e0 = edits[0]
    rows.append({"run": f"{EDIT} ({a.steps} steps, strength 0.7, <= {a.edit_iterations} iters), s per edit",
                 "s_per_step_median": tot["median"], "s_min": tot["min"], "s_max": tot["max"],
                 "peak_MiB": None if EDIT not in m else m[EDIT] / 2**20})
    _util.report("dragdiffusion", rows, {
        **t["_facts"], "repeats": a.repeats, "iters_per_round": a.iters,
        "goal": "MS step <= 0.8x the reference's per-iteration structure (full forward, backward from the feature "
                "block to the latent), ratio per interleaved round",
        "weight_grads_after_bench": t["weight_grads_after"],
        "edit_unet_calls": {k: e0[k] for k in e0 if k.startswith("unet_calls")},
        "edit_iterations_used": [e["iterations_used"] for e in edits],
        "edit_phase_seconds_median": {k: _util.summary([e[k] for e in edits])["median"]
                                      for k in ("seconds_inversion", "seconds_optimisation", "seconds_denoising")},
        "memory": m.get("memory", "not measured"), "edits": edits, "steps_s": t["steps"], "per_round_s": t["per_round"],
        "notes": "bench model parameters are frozen (requires_grad False, as a loaded checkpoint): no row computes "
                 "weight gradients; every backward is to the latent only.",
    })


if __name__ == "__main__":
    main()
