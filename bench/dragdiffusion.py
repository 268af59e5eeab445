"""Bench: DragDiffusion's optimisation step against one full UNet forward+backward at the same size, in the same
run (goal: at most 0.8x, from the truncated forward); iterations used and total edit time of a default edit; peak
memory. Prints a table, writes out/bench/dragdiffusion.json.

usage: python bench/dragdiffusion.py [--size 32] [--iters 8] [--full] [--threads 1]
(--full: the real SD1.5 UNet at a 64x64 latent = 512x512 image, for a GPU)"""
from __future__ import annotations

import argparse
import statistics
import time

import _util


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=None, help="latent side (default 32, 64 with --full)")
    ap.add_argument("--iters", type=int, default=8, help="optimisation steps timed per variant")
    ap.add_argument("--full", action="store_true", help="the real SD1.5 UNet size (slow on a CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--edit-iterations", type=int, default=80, help="iteration budget of the full edit")
    ap.add_argument("--steps", type=int, default=50, help="DDIM grid of the full edit")
    a = ap.parse_args()
    _util.setup()
    import torch
    torch.set_num_threads(a.threads)
    from dragedit.core import dragdiffusion as dd
    from dragedit.core import host
    from dragedit.core.drag_schema import DragInstructions
    from dragedit.core.geometry import point_tensors
    from dragedit.nodes.inversion import DDIMInversion

    cuda = torch.cuda.is_available()
    size = a.size or (64 if a.full else 32)
    cfg = dict(_util.SD15_FULL if a.full else _util.SD15_MID, image_size=size)
    model = host.build_model(cfg, dtype=torch.float16 if cuda else torch.float32)
    if cuda:
        model.load_device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, cfg["context_dim"], generator=g), {}]]
    # a smooth latent with a planted blob at 30% of the width; the drag moves it to 60% (image px)
    lat = torch.nn.functional.interpolate(torch.randn(1, 4, size // 4, size // 4, generator=g), size=(size, size),
                                          mode="bilinear") * 0.5
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    lat[0] += 4 * torch.exp(-((xs - 0.3 * size) ** 2 + (ys - 0.5 * size) ** 2) / (2 * (size / 12) ** 2))
    latent = {"samples": lat}
    W = size * 8
    drag = DragInstructions.from_obj([[0.3 * W, 0.5 * W, 0.6 * W, 0.5 * W]], image_size=(W, W))
    grid = dd.feature_grid((size, size), drag.image_size)
    handles, targets = dd.points_on_grid(*point_tensors(drag), grid)
    with torch.inference_mode():
        x_t, inv, sigmas = DDIMInversion().invert(model, latent, pos, a.steps, 0.7, False)
    s_t = float(sigmas[0])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # ---- one full UNet forward + backward to the latent (the reference's per-iteration cost floor)
    def full_fb(reps: int) -> list[float]:
        times: list[float] = []

        def loop(den, x, _s):
            with host.grad_enabled(den):
                for _ in range(reps + 1):
                    z = host.grad_input(x)
                    sync()
                    t0 = time.perf_counter()
                    den.x0(z, s_t).float().square().mean().backward()
                    sync()
                    times.append(time.perf_counter() - t0)
            return x

        with torch.inference_mode():
            host.session(host.clone(model), pos, None, 1.0, x_t["samples"], sigmas[:2], loop)
        return times[1:]

    rows = []
    with _util.peak_memory() as mem:
        t_full = statistics.median(full_fb(a.iters))
    rows.append({"run": "full UNet forward+backward", "s_per_iter": t_full, "ratio": 1.0,
                 "peak_MB": mem["peak_bytes"] / 2**20})

    # ---- optimisation steps (never reaching the target: threshold 0), median time between steps
    mask = torch.zeros(W, W)
    mask[int(0.2 * W):int(0.8 * W), int(0.1 * W):int(0.9 * W)] = 1
    variants = [("MS step, truncated forward (default)", dict(), None),
                ("MS step, full forward (no truncation)", dict(truncate=False), None),
                ("MS step, with mask term (full forward)", dict(), mask),
                ("MS step, truncated + half precision", dict(half_precision=True), None)]
    for name, kw, m in variants:
        stamps: list[float] = []
        settings = dd.DragSettings(iterations=a.iters + 1, threshold=0.0, **kw)

        def on_it(k, p, loss):
            sync()
            stamps.append(time.perf_counter())

        with _util.peak_memory() as mem:
            with torch.inference_mode():
                dd.optimize(model, pos, x_t["samples"], sigmas, handles, targets, grid, settings, mask=m,
                            on_iteration=on_it)
        t = statistics.median(b - a_ for a_, b in zip(stamps, stamps[1:]))
        rows.append({"run": name, "s_per_iter": t, "ratio": t / t_full, "peak_MB": mem["peak_bytes"] / 2**20})

    # ---- a whole default edit: inversion (+K/V), optimisation until reached or the budget, denoising with K/V
    sync()
    t0 = time.perf_counter()
    with _util.peak_memory() as mem:
        with torch.inference_mode():
            x_t2, inv2, sig2 = DDIMInversion().invert(model, latent, pos, a.steps, 0.7, True)
            sync()
            t1 = time.perf_counter()
            out = dd.optimize(model, pos, x_t2["samples"], sig2, handles, targets, grid,
                              dd.DragSettings(iterations=a.edit_iterations))
            sync()
            t2 = time.perf_counter()
            dd.denoise(dd.reference_kv_model(model, inv2.kv), pos, None, 1.0, out.samples, sig2)
            sync()
            t3 = time.perf_counter()
    kv_mb = inv2.kv.nbytes() / 2**20
    inv2.free()
    rows.append({"run": f"whole edit ({a.steps} steps, 0.7, <= {a.edit_iterations} iters)", "s_per_iter": None,
                 "ratio": None, "peak_MB": mem["peak_bytes"] / 2**20})
    edit = {"iterations_used": out.result.iterations, "reached": out.result.reached,
            "seconds_total": t3 - t0, "seconds_inversion": t1 - t0, "seconds_optimisation": t2 - t1,
            "seconds_denoising": t3 - t2, "kv_cache_MB": kv_mb, "unet_calls_optimisation": out.stats["unet_calls"]}
    _util.report("dragdiffusion", rows, {
        "device": _util.device_name(), "latent": f"{size}x{size}", "feature_grid": f"{grid.hw[1]}x{grid.hw[0]}",
        "model": "SD1.5 full" if a.full else f"SD1.5 layout, {cfg['model_channels']} base channels",
        "feature_block": f"output block {dd.feature_block_index(model, -2)} (up_blocks[2])",
        "goal": "MS step <= 0.8x full forward+backward", "memory": mem["kind"], "edit": edit})


if __name__ == "__main__":
    main()
