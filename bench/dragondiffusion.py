"""Bench: DragonDiffusion's guided denoising step against an unguided one (goal: at most 2.5x), and against the
reference design (a full second UNet pass per guided step: no truncation) in the same run; UNet evaluations and
backward passes per edit; peak memory and the activation bytes kept for backward per guided step.
Prints a table, writes out/bench/dragondiffusion.json.

usage: python bench/dragondiffusion.py [--size 32] [--steps 10] [--full] [--threads 1]
(--full: the real SD1.5 UNet at a 64x64 latent = 512x512 image; slow on a CPU)

Each variant runs the same drag edit (memory bank on, cfg 4, DDIM along the inversion's sigmas; guidance in the
first 60% of the steps, as the reference's 30 of 50). On a CPU the times are process CPU seconds (robust on a
shared machine with one torch thread); the script re-runs itself with MALLOC_MMAP_THRESHOLD_ fixed so freed
tensors leave the RSS and the peak is real."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import _util

if "MALLOC_MMAP_THRESHOLD_" not in os.environ and __name__ == "__main__":
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})

REF_STEPS, REF_GUIDED = 50, 30   # the reference edit: 50 DDIM steps, energy guidance at the first 30

VARIANTS = {
    # name: (guided, FeatureGuidance keyword arguments)
    "unguided": (False, {}),
    "ours (truncated, 2 backward)": (True, dict(truncate=True, batched_backward=False)),
    "ours (truncated, batched backward)": (True, dict(truncate=True, batched_backward=True)),
    "reference design (full 2nd pass)": (True, dict(truncate=False, batched_backward=False)),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=None, help="latent side (default 32, 64 with --full)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps of the timed edit (strength 1.0)")
    ap.add_argument("--full", action="store_true", help="the real SD1.5 UNet size (slow on a CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = ap.parse_args()
    _util.setup()
    import torch
    torch.set_num_threads(a.threads)
    from dragedit.core import dragon_energy as de
    from dragedit.core import dragondiffusion as dd
    from dragedit.core import host
    from dragedit.core.drag_schema import DragInstructions
    from dragedit.nodes.dragondiffusion import build_spec
    from dragedit.nodes.inversion import DDIMInversion

    cuda = torch.cuda.is_available()
    size = a.size or (64 if a.full else 32)
    model, cfg = _util.bench_model(a.full, size)
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, cfg["context_dim"], generator=g), {}]]
    neg = [[torch.randn(1, 77, cfg["context_dim"], generator=g) * 0.1, {}]]
    lat = torch.nn.functional.interpolate(torch.randn(1, 4, size // 4, size // 4, generator=g), size=(size, size),
                                          mode="bilinear") * 0.5
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    lat[0] += 4 * torch.exp(-((xs - 0.3 * size) ** 2 + (ys - 0.5 * size) ** 2) / (2 * (size / 12) ** 2))
    W = size * 8
    drag = DragInstructions.from_obj([[0.3 * W, 0.5 * W, 0.6 * W, 0.5 * W]], image_size=(W, W))
    with torch.inference_mode():
        _, inv, _ = DDIMInversion().invert(model, {"samples": lat}, pos, a.steps, 1.0, True)
        spec, blocks = build_spec("bench", model, inv, "drag", drag=drag, energy_scale=1.0)
    defaults = de.mode_defaults("drag")
    n_unet_blocks = len(host.decoder_blocks(model))

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def clock() -> float:
        """Wall time on a GPU, process CPU time on a CPU."""
        sync()
        return time.perf_counter() if cuda else time.process_time()

    def run(guided: bool, kw: dict) -> dict:
        """One edit; per-step times split into guided / unguided steps, counters, peak memory, saved bytes."""
        m = host.clone(model)
        kv_when = dd.inversion_step_window(inv, lambda i, n: de.kv_inject_active(i, n, defaults))
        dd.patch_memory_bank(m, inv, "drag", when=kv_when)
        guidance = None
        saved = {"bytes": 0, "max": 0}
        if guided:
            g_when = dd.inversion_step_window(inv, lambda i, n: de.guidance_active(i, n, defaults))
            guidance = dd.FeatureGuidance(spec, inv, blocks, active=g_when, **kw)

            def measured(call):
                """The guidance with the bytes autograd keeps for backward counted (unique storages)."""
                seen: set = set()
                total = [0]

                def pack(t):
                    key = (t.untyped_storage().data_ptr(), t.device)
                    if key not in seen:
                        seen.add(key)
                        total[0] += t.untyped_storage().nbytes()
                    return t
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    out = guidance(call)
                saved["max"] = max(saved["max"], total[0])
                return out
            host.patch_post_cfg_guidance(m, measured, blocks)
        marks: list = []
        holder: dict = {}

        def loop(den, x, _s):
            marks.append((clock(), 0))
            out = dd.edit_loop(den, inv.start.to(x), inv, guidance, defaults, dd.EditOptions(),
                               on_step=lambda i, n: marks.append((clock(), guidance.stats.guided if guidance else 0)))
            holder["calls"] = den.calls
            return out

        with _util.peak_memory() as mem, torch.inference_mode():
            host.session(m, pos, neg, 4.0, host.process_out(model, inv.start.clone()), inv.sigmas, loop)
        steps_g, steps_u = [], []
        for (t0, g0), (t1, g1) in zip(marks, marks[1:]):
            (steps_g if g1 > g0 else steps_u).append(t1 - t0)
        st = guidance.stats.as_dict() if guidance is not None else {}
        return dict(guided=steps_g, unguided=steps_u, calls=holder["calls"], stats=st, peak=mem.get("peak_bytes", 0),
                    saved=saved["max"])

    run(False, {})                                   # warm-up (allocator, kernels)
    results = {name: run(guided, kw) for name, (guided, kw) in VARIANTS.items()}
    base = statistics.median(results["unguided"]["unguided"])
    rows = []
    for name, r in results.items():
        step = statistics.median(r["guided"]) if r["guided"] else statistics.median(r["unguided"])
        st = r["stats"]
        # per reference edit (50 steps, 30 guided), counted as this run counted them per guided step
        n_g = max(st.get("guided", 0), 1)
        rows.append({
            "variant": name,
            "step_s": step,
            "x_unguided": step / base,
            "unet_evals_per_edit": 2 * REF_STEPS + (REF_GUIDED * (st.get("feature_passes_grad", 0)
                                                                  + st.get("feature_passes_nograd", 0)) // n_g),
            "truncated_of_those": (REF_GUIDED * (st.get("feature_passes_grad", 0) + st.get("feature_passes_nograd", 0))
                                   // n_g) if "truncated" in name else 0,
            "backward_per_edit": REF_GUIDED * st.get("backward_passes", 0) // n_g,
            "peak_MiB": r["peak"] / 2 ** 20,
            "saved_for_backward_MiB": r["saved"] / 2 ** 20,
        })
    ours = next(r for r in rows if r["variant"].startswith("ours (truncated, 2"))
    ref = next(r for r in rows if r["variant"].startswith("reference"))
    extra = {
        "device": _util.device_name(),
        "model": "SD1.5 (full size)" if a.full else "SD1.5-shaped, model_channels 64",
        "latent": f"{size}x{size}",
        "timed_edit_steps": a.steps,
        "feature_blocks": blocks,
        "output_blocks": n_unet_blocks,
        "guided_over_unguided": round(ours["x_unguided"], 3),
        "goal_guided_over_unguided_max": 2.5,
        "goal_met": ours["x_unguided"] <= 2.5,
        "reference_over_ours": round(ref["step_s"] / ours["step_s"], 3),
        "notes": ("unet_evals_per_edit counts batch-1 UNet passes of a 50-step edit with 30 guided steps: 2 per "
                  "CFG step (cond + uncond) plus the estimator passes (current latent with grad, guidance-branch "
                  "latent without); weights never get gradients (grads w.r.t. the latent only). Times: median "
                  "step (guided steps for guided variants); CPU = process time."),
    }
    _util.report("dragondiffusion", rows, extra)


if __name__ == "__main__":
    main()
