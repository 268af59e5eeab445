"""RegionDrag bench: time of one edit against inversion + denoising of the same steps with no edit (goal
<= 1.15x), UNet evaluations per edit (goal: exactly one inversion + one denoising pass), the K/V cache size at
SD1.5 512x512 and SDXL 1024x1024 computed from the layer shapes (goal < 1 GB at SD1.5), peak memory. Writes
out/bench/regiondrag.json.

Timing (bench/_util.py): edit and baseline interleaved after a warm-up, `repeats` rounds; process CPU seconds on a
CPU (wall, synchronised, on a GPU); medians with min-max spread; the ratio is taken per round. UNet calls are
counted on the diffusion model. Peak memory: one run each in a fresh child process.

Default: the mid-size SD1.5-shaped UNet of bench/_util.py (real block layout, 16 self-attention layers, narrow
channels) on a 64x64 latent (a 512x512 image), 20-step grid at strength 0.5 (10 + 10 UNet calls), CPU.
`--size 32` for a quicker run, `--full` for the real SD1.5 width (slow on a CPU)."""
from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

from bench import _util  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="latent side (64 = a 512x512 image)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="real SD1.5 channel widths")
    ap.add_argument("--peak", choices=["edit", "baseline"], help=argparse.SUPPRESS)   # child: one run, print peak
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    _util.setup()
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from dragedit.core import ddpm_inversion as ef
    from dragedit.core import host
    from dragedit.core import regiondrag as rd
    from dragedit.core.drag_schema import DragInstructions
    from dragedit.nodes.regiondrag import RegionDrag

    model, cfg = _util.bench_model(args.full, args.size)          # on the load device when ComfyUI runs on CUDA
    ctx = cfg["context_dim"]
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 77, ctx, generator=g), {}]]
    h = w = args.size
    img = 8 * h
    base = torch.nn.functional.interpolate(torch.randn(1, 4, h // 8, w // 8, generator=g), size=(h, w),
                                           mode="bilinear", align_corners=False) * 3
    samples = base.clone()
    drag = json.dumps({"image_size": [img, img], "regions": [
        {"kind": "rect", "handle": [[img * 0.1, img * 0.1], [img * 0.35, img * 0.35]],
         "target": [[img * 0.5 + 3, img * 0.45 + 5], [img * 0.75 + 3, img * 0.7 + 5]]}]})
    sigmas = rd.grid_sigmas(model, args.steps, args.strength)
    n = sigmas.numel() - 1

    def baseline():
        """Edit-friendly inversion + denoising of the same steps, no edit, no K/V cache (LEDITS-style round trip)."""
        def loop(den, x, sig):
            inv = ef.invert_edit_friendly(lambda xx, s: den.x0(xx, s), x, sig, seed=0)
            return ef.sample_edit_friendly(lambda xx, s: den.x0(xx, s), inv)
        with torch.inference_mode():
            return host.session(host.clone(model), positive, None, 1.0, samples, sigmas, loop)

    def edit(m=model):
        with torch.inference_mode():
            return RegionDrag().run(m, positive, steps=args.steps, strength=args.strength, noise_scale=0.6, seed=42,
                                    latent={"samples": samples}, drag_json=drag)[0]["samples"]

    if args.peak:                                           # fresh process: peak RSS growth of one run
        fn = edit if args.peak == "edit" else baseline
        with _util.peak_memory() as pk:
            fn()
        _util.emit_peak(pk)
        return

    with _util.count_unet(model) as c_base:                 # warm-up (lazy imports, first-call allocations), counted
        rec = baseline()
    with _util.count_unet(model) as c_edit:
        out = edit()
    unet_calls = c_edit.calls
    times = _util.interleave({"base": baseline, "edit": edit}, args.repeats, warmup=False)
    clock = _util.primary()
    s_base, s_edit = _util.summary(times["base"][clock]), _util.summary(times["edit"][clock])
    r = _util.ratio_summary(times["edit"][clock], times["base"][clock])
    r_wall = _util.ratio_summary(times["edit"]["wall"], times["base"]["wall"])
    peaks = {k: _child_peak(k, args) for k in ("edit", "baseline")}

    stats: dict = {}
    plan = rd.make_plan(DragInstructions.from_json(drag), (h, w))
    with torch.inference_mode():
        rd.region_drag(model, positive, samples, plan, steps=args.steps, strength=args.strength, stats=stats)
    layers = host.attention_layers(model)
    measured_kv = stats["kv_bytes"]
    computed_kv = rd.kv_cache_bytes(layers, (h, w), n, torch.float16)

    sd15 = UNetModel(**_util.SD15_FULL, device="meta")       # the real SD1.5 layer shapes, no weights
    sd15_layers = host.attention_layers(SimpleNamespace(diffusion_model=sd15))
    kv_sd15 = rd.kv_cache_bytes(sd15_layers, (64, 64), n, torch.float16)
    sdxl = UNetModel(**_util.comfy_unet_config("sdxl"), device="meta")              # SDXL (ComfyUI's own config), 1024x1024 = 128x128 latent
    sdxl_layers = host.attention_layers(SimpleNamespace(diffusion_model=sdxl))
    kv_sdxl = rd.kv_cache_bytes(sdxl_layers, (128, 128), n, torch.float16)

    rows = [
        {"metric": f"edit / (inversion + denoising, no edit), {clock} time, median [min-max] of {args.repeats}",
         "value": _util.spread(r), "goal": "<= 1.15", "ok": r["median"] <= 1.15},
        {"metric": "edit / (inversion + denoising, no edit), wall time, median [min-max]", "value": _util.spread(r_wall),
         "goal": "(wall: meaningless under load)", "ok": None},
        {"metric": "UNet evaluations per edit (counted)", "value": unet_calls, "goal": f"== {2 * n} ({n} + {n})",
         "ok": unet_calls == 2 * n},
        {"metric": "UNet evaluations, baseline (counted)", "value": c_base.calls, "goal": f"== {2 * n}",
         "ok": c_base.calls == 2 * n},
        {"metric": "K/V cache bytes, SD1.5 512x512 fp16, from layer shapes", "value": kv_sd15, "goal": "< 1e9",
         "ok": kv_sd15 < 1e9},
        {"metric": "K/V cache bytes, SDXL 1024x1024 fp16, from layer shapes", "value": kv_sdxl, "goal": "",
         "ok": None},
        {"metric": "K/V cache bytes, bench model (measured / computed)", "value": measured_kv,
         "goal": f"== {computed_kv}", "ok": measured_kv == computed_kv},
        {"metric": f"edit {clock} s, median [min-max]", "value": _util.spread(s_edit), "goal": "", "ok": None},
        {"metric": f"baseline {clock} s, median [min-max]", "value": _util.spread(s_base), "goal": "", "ok": None},
        {"metric": "peak memory bytes, edit", "value": peaks["edit"].get("peak_bytes"),
         "goal": peaks["edit"].get("kind", ""), "ok": None},
        {"metric": "peak memory bytes, baseline", "value": peaks["baseline"].get("peak_bytes"),
         "goal": peaks["baseline"].get("kind", ""), "ok": None},
        {"metric": "cache bytes held during the edit (K/V + states + noise maps)", "value": stats["inversion_bytes"],
         "goal": "", "ok": None},
    ]
    extra = {
        "model": "SD1.5 full width" if args.full else "SD1.5-shaped mid (bench/_util.SD15_MID)",
        "latent": [h, w], "image": [img, img], "steps": args.steps, "strength": args.strength,
        "denoising_steps": n, "attention_layers": len(layers), "sd15_attention_layers": len(sd15_layers),
        "kv_sd15_per_step_bytes": kv_sd15 // max(n, 1), "kv_sdxl_per_step_bytes": kv_sdxl // max(n, 1),
        "sdxl_attention_layers": len(sdxl_layers), "baseline_recon_max_abs": float((rec - samples).abs().max()),
        "edit_changed_max_abs": float((out - samples).abs().max()), "repeats": args.repeats,
        "times": times, "ratio": r, "unet_calls_counted": {"edit": c_edit.as_dict(), "baseline": c_base.as_dict()},
    }
    _util.report("regiondrag", rows, extra)


def _child_peak(which: str, args: argparse.Namespace) -> dict:
    """Peak memory of one run of `which` in a fresh process (RSS does not shrink, so runs cannot share one)."""
    return _util.child_peak(__spec__.name, ["--peak", which, "--size", str(args.size), "--steps", str(args.steps),
                                       "--strength", str(args.strength), "--threads", str(args.threads)]
                            + (["--full"] if args.full else []), small_mmap=True)


if __name__ == "__main__":
    main()
