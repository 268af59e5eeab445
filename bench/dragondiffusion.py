"""Bench: DragonDiffusion's guided denoising step against an unguided one (goal: at most 2.5x), and against the
reference design (a full second UNet pass per guided step: no truncation) in the same run; UNet evaluations and
backward passes per edit, counted; peak memory and the activation bytes kept for backward per guided step.
Prints a table, writes out/bench/dragondiffusion.json.

usage: python -m bench.dragondiffusion [--size 32] [--steps 10] [--repeats 3] [--full] [--threads 1]
(--full: the real SD1.5 UNet at a 64x64 latent = 512x512 image; slow on a CPU)

Each variant runs the same drag edit (memory bank on, cfg 4, DDIM along the inversion's sigmas; guidance in the
first 60% of the steps, as the reference's 30 of 50). The variants run interleaved (`repeats` rounds after a
warm-up; bench/_util.py), times are process CPU seconds on a CPU (synchronised wall on a GPU), the ratio to the
unguided step is taken per round, medians with min-max spread. UNet evaluations are counted on the diffusion model,
on the timed edit and on a real 50-step edit (30 guided) of the same model at a small latent (the counts do not
depend on the latent size). Peak memory comes from one run per variant in a fresh child process with
MALLOC_MMAP_THRESHOLD_ fixed (so freed tensors leave the RSS); that setting never touches the timing pass."""
from __future__ import annotations

import argparse
import statistics
import time

from bench import _util  # noqa: E402

REF_STEPS, REF_GUIDED = 50, 30   # the reference edit: 50 DDIM steps, energy guidance at the first 30

VARIANTS = {
    # name: (guided, FeatureGuidance keyword arguments)
    "unguided": (False, {}),
    "ours (truncated, 2 backward)": (True, dict(truncate=True, batched_backward=False)),
    "ours (truncated, batched backward)": (True, dict(truncate=True, batched_backward=True)),
    "reference design (full 2nd pass)": (True, dict(truncate=False, batched_backward=False)),
}


def setup_edit(a: argparse.Namespace, size: int, steps: int) -> dict:
    """The bench model, a planted latent, its inversion with K/V, the drag spec and the feature blocks."""
    import torch
    from dragedit.core import dragon_energy as de
    from dragedit.core.drag_schema import DragInstructions
    from dragedit.nodes.dragondiffusion import build_spec
    from dragedit.nodes.inversion import DDIMInversion

    model, cfg = _util.bench_model(a.full, size)
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, cfg["context_dim"], generator=g), {}]]
    neg = [[torch.randn(1, 77, cfg["context_dim"], generator=g) * 0.1, {}]]
    lat = torch.nn.functional.interpolate(torch.randn(1, 4, max(size // 4, 1), max(size // 4, 1), generator=g),
                                          size=(size, size), mode="bilinear") * 0.5
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    lat[0] += 4 * torch.exp(-((xs - 0.3 * size) ** 2 + (ys - 0.5 * size) ** 2) / (2 * (size / 12) ** 2))
    W = size * 8
    drag = DragInstructions.from_obj([[0.3 * W, 0.5 * W, 0.6 * W, 0.5 * W]], image_size=(W, W))
    with torch.inference_mode():
        _, inv, _ = DDIMInversion().invert(model, {"samples": lat}, pos, steps, 1.0, True)
        spec, blocks = build_spec("bench", model, inv, "drag", drag=drag, energy_scale=1.0)
    return dict(model=model, pos=pos, neg=neg, inv=inv, spec=spec, blocks=blocks, defaults=de.mode_defaults("drag"))


def make_run(e: dict, cuda: bool):
    """run(guided, kw) -> one edit; per-step times split into guided / unguided steps, counters, saved bytes."""
    import torch
    from dragedit.core import dragon_energy as de
    from dragedit.core import dragondiffusion as dd
    from dragedit.core import host
    model, inv, defaults = e["model"], e["inv"], e["defaults"]

    def clock() -> float:
        """Wall time (synchronised) on a GPU, process CPU time on a CPU."""
        _util.sync()
        return time.perf_counter() if cuda else time.process_time()

    def run(guided: bool, kw: dict) -> dict:
        m = host.clone(model)
        kv_when = dd.inversion_step_window(inv, lambda i, n: de.kv_inject_active(i, n, defaults))
        dd.patch_memory_bank(m, inv, "drag", when=kv_when)
        guidance = None
        saved = {"max": 0}
        if guided:
            g_when = dd.inversion_step_window(inv, lambda i, n: de.guidance_active(i, n, defaults))
            guidance = dd.FeatureGuidance(e["spec"], inv, e["blocks"], active=g_when, **kw)

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
            host.patch_post_cfg_guidance(m, measured, e["blocks"])
        marks: list = []

        def loop(den, x, _s):
            marks.append((clock(), 0))
            return dd.edit_loop(den, inv.start.to(x), inv, guidance, defaults, dd.EditOptions(),
                                on_step=lambda i, n: marks.append((clock(), guidance.stats.guided if guidance else 0)))

        with _util.count_unet(model) as count, torch.inference_mode():
            host.session(m, e["pos"], e["neg"], 4.0, host.process_out(model, inv.start.clone()), inv.sigmas, loop)
        steps_g, steps_u = [], []
        for (t0, g0), (t1, g1) in zip(marks, marks[1:]):
            (steps_g if g1 > g0 else steps_u).append(t1 - t0)
        st = guidance.stats.as_dict() if guidance is not None else {}
        return dict(guided=steps_g, unguided=steps_u, unet=count.as_dict(), stats=st, saved=saved["max"])
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=None, help="latent side (default 32, 64 with --full)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps of the timed edit (strength 1.0)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of all variants")
    ap.add_argument("--count-size", type=int, default=8, help="latent side of the counted 50-step edit")
    ap.add_argument("--full", action="store_true", help="the real SD1.5 UNet size (slow on a CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process memory pass")
    ap.add_argument("--peak", choices=list(VARIANTS), help=argparse.SUPPRESS)   # child: one run, print its peak
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    _util.setup()
    from dragedit.core import host

    cuda = _util.cuda_in_use()
    size = a.size or (64 if a.full else 32)
    e = setup_edit(a, size, a.steps)
    run = make_run(e, cuda)
    if a.peak:
        guided, kw = VARIANTS[a.peak]
        with _util.peak_memory() as mem:
            r = run(guided, kw)
        _util.emit_peak({**mem, "saved_bytes": r["saved"]})
        return

    run(False, {})                                   # warm-up (allocator, kernels)
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(a.repeats):                       # interleaved rounds
        for name, (guided, kw) in VARIANTS.items():
            results[name].append(run(guided, kw))

    # a real 50-step edit (30 guided) per variant at a small latent: UNet calls and backward passes, counted
    ce = setup_edit(a, a.count_size, REF_STEPS)
    crun = make_run(ce, cuda)
    counted = {name: crun(guided, kw) for name, (guided, kw) in VARIANTS.items()}
    peaks = {} if a.no_memory else {
        name: _util.child_peak(__spec__.name, ["--peak", name, "--steps", str(a.steps), "--size", str(size),
                                          "--threads", str(a.threads)] + (["--full"] if a.full else []))
        for name in VARIANTS}

    def step_med(r: dict) -> float:
        return statistics.median(r["guided"] or r["unguided"])
    base_rounds = [statistics.median(r["unguided"]) for r in results["unguided"]]
    rows = []
    for name, rs in results.items():
        all_steps = [x for r in rs for x in (r["guided"] or r["unguided"])]
        st = _util.summary(all_steps)
        ratio = _util.ratio_summary([step_med(r) for r in rs], base_rounds)
        c = counted[name]
        pk = peaks.get(name, {})
        rows.append({
            "variant": name,
            "step_s_median": st["median"], "step_s_min": st["min"], "step_s_max": st["max"],
            "x_unguided_median": ratio["median"], "x_min": ratio["min"], "x_max": ratio["max"],
            "unet_calls_timed_edit": rs[0]["unet"]["calls"],
            "unet_calls_50_step_edit": c["unet"]["calls"], "unet_rows_50_step_edit": c["unet"]["rows"],
            "guided_steps_50": c["stats"].get("guided", 0),
            "backward_50_step_edit": c["stats"].get("backward_passes", 0),
            "peak_MiB": None if pk.get("peak_bytes") is None else pk["peak_bytes"] / 2 ** 20,
            "saved_for_backward_MiB": None if pk.get("saved_bytes") is None else pk["saved_bytes"] / 2 ** 20,
        })
    ours = next(r for r in rows if r["variant"].startswith("ours (truncated, 2"))
    ref = next(r for r in rows if r["variant"].startswith("reference"))
    ref_over_ours = _util.ratio_summary([step_med(r) for r in results[ref["variant"]]],
                                        [step_med(r) for r in results[ours["variant"]]])
    extra = {
        "model": "SD1.5 (full size)" if a.full else "SD1.5-shaped, model_channels 64",
        "latent": f"{size}x{size}", "timed_edit_steps": a.steps, "repeats": a.repeats,
        "counted_edit": f"{REF_STEPS} steps at {a.count_size}x{a.count_size}",
        "feature_blocks": e["blocks"], "output_blocks": len(host.decoder_blocks(e["model"])),
        "guided_over_unguided": {k: round(v, 3) for k, v in _util.ratio_summary(
            [step_med(r) for r in results[ours["variant"]]], base_rounds).items()},
        "goal_guided_over_unguided_max": 2.5,
        "goal_met": ours["x_unguided_median"] <= 2.5,
        "reference_over_ours": {k: round(v, 3) for k, v in ref_over_ours.items()},
        "memory": next((p.get("kind") for p in peaks.values() if p.get("kind")), "not measured"),
        "step_times": {k: [{"guided": r["guided"], "unguided": r["unguided"]} for r in v] for k, v in results.items()},
        "notes": ("UNet calls are counted on the diffusion model: one call per CFG step (a batch of 2 rows: cond + "
                  "uncond; unet_rows counts rows) plus the guidance's estimator passes (truncated ones count as calls "
                  "too); weights never get gradients (grads w.r.t. "
                  "the latent only). Times: median step (guided steps for guided variants); x_unguided = per-round "
                  "ratio to the unguided run's median step."),
    }
    _util.report("dragondiffusion", rows, extra)


if __name__ == "__main__":
    main()
