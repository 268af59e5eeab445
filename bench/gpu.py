"""GPU bench, one prepared command (`make bench-gpu`): seconds per edit, peak VRAM and UNet calls (counted) of every
method at SD1.5 512x512 and SDXL 1024x1024, the K/V store's RAM and its per-step transfer time (pageable, pinned
non-blocking, kept on the GPU), and RegionDrag end to end under each K/V placement; then a FLUX.1-dev-sized
transformer at 1024x1024: a RegionDrag-style edit (flow inversion + image-token K/V record / inject) per K/V layer set
(all / single blocks / vital layers), its seconds, peak VRAM and K/V bytes per step (bench/gpu_flux.py). Prints
tables, writes out/bench/gpu.json.

The UNets are ComfyUI's own SD1.5 and SDXL architectures (comfy.model_detection's configs, built through
comfy.supported_models' model classes) with random weights, initialised explicitly (timing needs no weights; no
download). ComfyUI starts with CUDA and its normal VRAM management ($DRAGEDIT_COMFY_GPU=1, tools/support/comfy_env.py);
without a CUDA device the script stops with an error, it never falls back to the CPU.

usage: python -m bench.gpu [--families sd15,sdxl] [--repeats 2] [--budget-s 420] [--out DIR]
       python -m bench.gpu --families flux --json gpu_flux.json      (the FLUX section, `make bench-gpu`'s second run)
       python -m bench.gpu --tiny      (CPU, tiny versions of the same layouts, few steps: a smoke test of the script)

Methods at their node defaults: RegionDrag (20 steps, strength 0.5), DragDiffusion (50 steps, strength 0.7, 80
iterations, reference K/V; a random model never reaches the targets, so all 80 run), DragonDiffusion (DDIM inversion
50 steps with K/V, drag edit at cfg 4), LEDITS (DDPM inversion 50 steps, skip 15, one SEGA concept, cfg 7.5).
Times are wall seconds with CUDA synchronised, median and min-max of `repeats` runs after a counted first run (which
also loads the weights); peak VRAM is
torch.cuda.max_memory_allocated during one edit (weights included). Finishes within 8 minutes on one H100/H200-class
GPU: a time budget skips what is left (marked in the JSON) rather than overrun."""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from bench import _util, gpu_flux  # noqa: E402

FAMILIES = {"sd15": 64, "sdxl": 128}          # latent side: 512x512 and 1024x1024 images
TINY_LATENT = 16
PLACEMENTS = ("offload", "pinned", "gpu")


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

def tiny_config(cfg: dict) -> dict:
    """The same layout in small (CPU smoke test): 32 base channels, at most one transformer per block."""
    c = dict(cfg, model_channels=32, context_dim=32, num_heads=2, num_head_channels=-1)
    c["transformer_depth"] = [min(d, 1) for d in cfg["transformer_depth"]]
    c["transformer_depth_output"] = [min(d, 1) for d in cfg["transformer_depth_output"]]
    c["transformer_depth_middle"] = min(cfg["transformer_depth_middle"], 1)
    if cfg.get("adm_in_channels"):
        c["adm_in_channels"] = 32 + 6 * 256                     # pooled 32 + SDXL's six 256-wide size embeddings
    return c


def build(family: str, tiny: bool) -> tuple[Any, dict]:
    """A ModelPatcher of the family's UNet (random weights, explicit init) on ComfyUI's load / offload devices."""
    import torch
    import comfy.model_detection as md
    import comfy.model_management as mm
    import comfy.model_patcher
    from dragedit.core import host
    cfg = _util.comfy_unet_config(family)
    if tiny:
        cfg = tiny_config(cfg)
        return host.build_model(cfg, latent_format=family, sdxl=family == "sdxl"), cfg
    mc = md.model_config_from_unet_config(dict(cfg))
    if mc is None:
        raise RuntimeError(f"ComfyUI has no model class for the {family} config")
    load, off = mm.get_torch_device(), mm.unet_offload_device()
    dtype = mm.unet_dtype(model_params=0, supported_dtypes=mc.supported_inference_dtypes)
    mc.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load, mc.supported_inference_dtypes))
    with torch.inference_mode(False):
        bm = mc.get_model({}, "")
        host.init_weights_(bm.diffusion_model, seed=0)        # ComfyUI layers skip init (torch.empty)
        bm.diffusion_model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(bm, load_device=load, offload_device=off), dict(cfg, dtype=str(dtype))


def inputs(family: str, cfg: dict, size: int) -> dict:
    """Conditionings (SDXL: with pooled output), a smooth latent with a planted blob, a drag moving it."""
    import torch
    from dragedit.core.drag_schema import DragInstructions
    g = torch.Generator().manual_seed(0)
    ctx = cfg["context_dim"]
    extra: Callable[[], dict] = (lambda: {"pooled_output": torch.randn(1, cfg["adm_in_channels"] - 6 * 256, generator=g)}
                                 ) if family == "sdxl" else dict
    pos = [[torch.randn(1, 77, ctx, generator=g), extra()]]
    neg = [[torch.randn(1, 77, ctx, generator=g) * 0.1, extra()]]
    concept = [[torch.randn(1, 77, ctx, generator=g), extra()]]
    lat = torch.nn.functional.interpolate(torch.randn(1, 4, max(size // 4, 1), max(size // 4, 1), generator=g),
                                          size=(size, size), mode="bilinear") * 0.5
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    lat[0] += 4 * torch.exp(-((xs - 0.3 * size) ** 2 + (ys - 0.5 * size) ** 2) / (2 * (size / 12) ** 2))
    W = 8 * size
    drag = DragInstructions.from_obj([[0.3 * W, 0.5 * W, 0.6 * W, 0.5 * W]], image_size=(W, W))
    drag_json = json.dumps({"image_size": [W, W], "regions": [
        {"kind": "rect", "handle": [[W * 0.1, W * 0.1], [W * 0.35, W * 0.35]],
         "target": [[W * 0.5 + 3, W * 0.45 + 5], [W * 0.75 + 3, W * 0.7 + 5]]}]})
    return dict(pos=pos, neg=neg, concept=concept, latent={"samples": lat}, drag=drag, drag_json=drag_json)


# --------------------------------------------------------------------------------------------
# methods: one whole edit each, through the pack's nodes
# --------------------------------------------------------------------------------------------

def methods(model: Any, x: dict, tiny: bool) -> dict[str, Callable[[], Any]]:
    import torch
    import comfy.sample
    from dragedit.nodes.ddpm_inversion import DDPMInversion, EditFriendlyDDPMSampler
    from dragedit.nodes.dragdiffusion import DragDiffusion
    from dragedit.nodes.dragondiffusion import DragonDiffusion
    from dragedit.nodes.inversion import DDIMInversion
    from dragedit.nodes.regiondrag import RegionDrag
    from dragedit.nodes.sega import SEGAGuidance
    steps = 4 if tiny else 50

    def regiondrag():
        with torch.inference_mode():
            return RegionDrag().run(model, x["pos"], steps=4 if tiny else 20, strength=0.5, noise_scale=0.6, seed=42,
                                    latent=x["latent"], drag_json=x["drag_json"])[0]

    def dragdiffusion():
        with torch.inference_mode():
            return DragDiffusion().run(model, x["pos"], x["drag"], latent=x["latent"], steps=steps, strength=0.7,
                                       iterations=2 if tiny else 80)[0]

    def dragondiffusion():
        with torch.inference_mode():
            _, inv, _ = DDIMInversion().invert(model, x["latent"], x["pos"], steps, 1.0, True)
            try:
                return DragonDiffusion().edit(model, x["pos"], x["neg"], inv, "drag", 4.0, 1.0, 1.0, drag=x["drag"])[0]
            finally:
                inv.free()

    def ledits():
        with torch.inference_mode():
            start, inv, sig = DDPMInversion().invert(model, x["latent"], x["pos"], steps, 1 if tiny else 15, 3.5, 1.0, 0,
                                                     negative=x["neg"])
            m = SEGAGuidance().patch(model, x["concept"], "add", 5.0, 0.9, 2, 0, 1.0, 0.1, 0.4, "SEGA")[0]
            (sampler,) = EditFriendlyDDPMSampler().get_sampler(inv)
            s = start["samples"]
            return comfy.sample.sample_custom(m, torch.zeros_like(s), 7.5, sampler, sig, x["pos"], x["neg"], s,
                                              disable_pbar=True)

    return {"RegionDrag": regiondrag, "DragDiffusion": dragdiffusion, "DragonDiffusion": dragondiffusion,
            "LEDITS (1 concept)": ledits}


def measure_edit(model: Any, fn: Callable[[], Any], repeats: int) -> dict:
    """Counted UNet calls and peak memory of one edit, then `repeats` timed edits (wall, synchronised)."""
    import torch
    cuda = _util.cuda_in_use()
    if cuda:
        _util.sync()
        torch.cuda.reset_peak_memory_stats()
    with _util.count_unet(model) as count:
        w, c, _ = _util.run_timed(fn)
    res: dict = {"unet_calls": count.calls, "unet_rows": count.rows, "first_run_s": w}
    if cuda:
        res["peak_vram_GiB"] = torch.cuda.max_memory_allocated() / 2 ** 30
        res["peak_reserved_GiB"] = torch.cuda.max_memory_reserved() / 2 ** 30
    times = [_util.run_timed(fn)[0 if cuda else 1] for _ in range(repeats)]
    res["s_per_edit"] = _util.summary(times)
    res["times"] = times
    return res


# --------------------------------------------------------------------------------------------
# K/V store: RAM and per-step transfer time
# --------------------------------------------------------------------------------------------

def kv_transfer(model: Any, size: int, steps_stored: dict[str, int], reps: int = 5) -> dict:
    """Per-step K/V bytes from the layer shapes, and the time to store one step's K/V of every self-attention layer
    (put: device -> store) and to read it back (get: store -> device) for each placement; RAM per default edit."""
    import torch
    from dragedit.core import host
    from dragedit.core import regiondrag as rd
    layers = host.attention_layers(model)
    per_step = rd.kv_cache_bytes(layers, (size, size), 1, torch.float16)
    out: dict = {"attention_layers": len(layers), "bytes_per_step_fp16": per_step,
                 "store_bytes_per_default_edit": {k: per_step * n for k, n in steps_stored.items()}}
    cuda = _util.cuda_in_use()
    dev = torch.device(model.load_device)
    src = torch.float16 if cuda else torch.float32          # the UNet's K/V dtype: fp16 on a GPU, fp32 on a CPU
    g = torch.Generator(device=dev).manual_seed(0)
    kvs = []
    for l in layers:
        n = math.prod(l.tokens((size, size)))
        kvs.append((l, torch.randn(1, n, l.channels, generator=g, device=dev, dtype=src),
                    torch.randn(1, n, l.channels, generator=g, device=dev, dtype=src)))
    rows: dict = {}
    for place in PLACEMENTS if cuda else ("offload",):
        store = host.KVStore(dtype=torch.float16, device=dev if place == "gpu" else model.offload_device)
        store.use_pinned_memory(place == "pinned")
        put_t, get_t = [], []
        for r in range(reps + 1):                             # the first round warms up (pinned blocks, kernels)
            sigma = 10.0 / (r + 1)
            w0 = _timer()
            for l, k, v in kvs:
                store.put(sigma, l, 0, k, v)
            _util.sync()
            w1 = _timer()
            for l, _k, _v in kvs:
                store.get(sigma, l, 0, device=dev, dtype=src)
            _util.sync()
            w2 = _timer()
            if r:
                put_t.append(w1 - w0)
                get_t.append(w2 - w1)
        store.clear()
        if place == "pinned":
            host.release_pinned_memory()
        p, q = _util.summary(put_t), _util.summary(get_t)
        rows[place] = {"put_ms_per_step": p["median"] * 1e3, "put_ms_min": p["min"] * 1e3, "put_ms_max": p["max"] * 1e3,
                       "get_ms_per_step": q["median"] * 1e3, "get_ms_min": q["min"] * 1e3, "get_ms_max": q["max"] * 1e3,
                       "put_GBps": per_step / max(p["median"], 1e-9) / 1e9,
                       "get_GBps": per_step / max(q["median"], 1e-9) / 1e9}
    out["transfer"] = rows
    dev_auto, pinned_auto = host.kv_placement(model, out["store_bytes_per_default_edit"]["RegionDrag"], scoped=True)
    out["auto_placement_regiondrag"] = f"{dev_auto}{' (pinned)' if pinned_auto else ''}"
    return out


def _timer() -> float:
    return time.perf_counter() if _util.cuda_in_use() else time.process_time()


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny layouts, a few steps")
    ap.add_argument("--families", default="sd15,sdxl", help="any of sd15, sdxl, flux (`make bench-gpu` runs flux as a "
                                                            "second command, with its own time budget)")
    ap.add_argument("--json", default="gpu.json", help="file name of the result in --out")
    ap.add_argument("--methods", default="", help="comma-separated subset of the method names (default all)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed edits per method after the counted one (SDXL: one fewer, at least 1)")
    ap.add_argument("--budget-s", type=float, default=380.0,
                    help="start nothing new after this many seconds (the 8-minute limit leaves room for the last one)")
    ap.add_argument("--out", default=str(_util.OUT), help="folder of gpu.json")
    ap.add_argument("--kv-only", action="store_true",
                    help="only the K/V section, at the real SD1.5 / SDXL layer shapes (no weights: meta UNets); "
                         "runs on a CPU too (writes gpu_kv.json)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    import torch
    if a.kv_only:
        return kv_only(a)
    if not a.tiny and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device (torch.cuda.is_available() is False); use --tiny for the CPU "
                         "smoke test. Refusing to time the CPU.")
    if not a.tiny:
        os.environ["DRAGEDIT_COMFY_GPU"] = "1"              # tools/support/comfy_env.py: CUDA or a loud error, never the CPU
    _util.setup()
    import comfy.model_management as mm
    from dragedit.core import host
    if not a.tiny and mm.get_torch_device().type != "cuda":
        raise SystemExit(f"bench/gpu.py: ComfyUI chose {mm.get_torch_device()} (was it imported with --cpu before "
                         f"this script?); refusing to time the CPU.")
    if a.tiny:
        torch.set_num_threads(1)
    result: dict = {"mode": "tiny (CPU smoke test)" if a.tiny else "full",
                    "comfy": {"vram_state": str(getattr(mm, "vram_state", None)),
                              "device": str(mm.get_torch_device())},
                    "families": {}, "skipped": []}
    if not a.tiny:
        result["comfy"]["attention"] = _attention_name()
    wanted = [m for m in a.methods.split(",") if m]
    for family in [f for f in a.families.split(",") if f]:
        if family == "flux":
            reps = a.repeats if a.tiny else max(1, a.repeats - 1)
            result["families"]["flux"] = gpu_flux.run(a.tiny, reps, a.budget_s, t_start, result["skipped"])
            continue
        size = TINY_LATENT if a.tiny else FAMILIES[family]
        t0 = time.perf_counter()
        model, cfg = build(family, a.tiny)
        x = inputs(family, cfg, size)
        fam: dict = {"latent": [size, size], "image": [8 * size, 8 * size], "build_s": time.perf_counter() - t0,
                     "unet_params_M": sum(p.numel() for p in host.diffusion_model(model).parameters()) / 1e6,
                     "dtype": str(cfg.get("dtype", "float32")), "methods": {}}
        result["families"][family] = fam
        steps = 4 if a.tiny else 50
        stored = {"RegionDrag": (4 if a.tiny else 20) // 2, "DragDiffusion": int(steps * 0.7),
                  "DragonDiffusion": steps}
        fam["kv"] = kv_transfer(model, size, stored)
        fns = methods(model, x, a.tiny)
        reps = a.repeats if family != "sdxl" or a.tiny else max(1, a.repeats - 1)   # SDXL: fit the 8 minutes
        for name, fn in fns.items():
            if wanted and name not in wanted:
                continue
            if time.perf_counter() - t_start > a.budget_s:
                result["skipped"].append(f"{family} {name}: time budget")
                continue
            fam["methods"][name] = measure_edit(model, fn, reps)
        if "RegionDrag" in fns and (not wanted or "RegionDrag" in wanted):
            fam["regiondrag_by_kv_placement"] = {}
            for place in PLACEMENTS if _util.cuda_in_use() else ():
                if time.perf_counter() - t_start > a.budget_s:
                    result["skipped"].append(f"{family} RegionDrag kv={place}: time budget")
                    continue
                os.environ[host.KV_PLACEMENT_ENV] = place
                try:
                    fam["regiondrag_by_kv_placement"][place] = measure_edit(model, fns["RegionDrag"], reps)
                finally:
                    os.environ.pop(host.KV_PLACEMENT_ENV, None)
        del fns, x
        mm.unload_all_models()
        del model
        mm.soft_empty_cache()
    result["total_s"] = time.perf_counter() - t_start
    result["machine"] = _util.machine()
    _print(result)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / a.json
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path}")
    return result


def kv_only(a: argparse.Namespace) -> dict:
    """The K/V section alone at the real layer shapes, on whatever device ComfyUI runs (CPU: the store's conversion
    copies, which is what a CPU user pays)."""
    from types import SimpleNamespace
    _util.setup()
    import comfy.model_management as mm
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    res: dict = {"mode": "kv-only (real layer shapes, no weights)", "families": {}}
    for family in [f for f in a.families.split(",") if f]:
        size = FAMILIES[family]
        fake = SimpleNamespace(diffusion_model=UNetModel(**_util.comfy_unet_config(family), device="meta"),
                               load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        res["families"][family] = kv_transfer(fake, size, {"RegionDrag": 10, "DragDiffusion": 35,
                                                           "DragonDiffusion": 50})
    res["machine"] = _util.machine()
    print(json.dumps(res, indent=2, default=str))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_kv.json").write_text(json.dumps(res, indent=2, default=str))
    return res


def _attention_name() -> str:
    try:
        from comfy.ldm.modules import attention as A
        return getattr(A.optimized_attention, "__name__", str(A.optimized_attention))
    except Exception:  # pragma: no cover
        return "unknown"


def _print(r: dict) -> None:
    clock = "s" if r["mode"] == "full" else "CPU s"
    print(f"\n{r['mode']}: {r['comfy']}")
    print(f"| model | method | {clock} per edit, median [min-max] | UNet calls | peak VRAM GiB |")
    print("|---|---|---|---|---|")
    for fam, f in r["families"].items():
        for name, m in f.get("methods", {}).items():
            print(f"| {fam} {f['image'][0]}² | {name} | {_util.spread(m['s_per_edit'])} | {m['unet_calls']} | "
                  f"{m.get('peak_vram_GiB', float('nan')):.2f} |")
        for place, m in f.get("regiondrag_by_kv_placement", {}).items():
            print(f"| {fam} {f['image'][0]}² | RegionDrag, K/V {place} | {_util.spread(m['s_per_edit'])} | "
                  f"{m['unet_calls']} | {m.get('peak_vram_GiB', float('nan')):.2f} |")
    print("\n| model | K/V per step | RegionDrag / DragDiffusion / DragonDiffusion store | placement | put ms/step | "
          "get ms/step |")
    print("|---|---|---|---|---|---|")
    for fam, f in r["families"].items():
        if fam == "flux":
            continue
        kv = f["kv"]
        st = " / ".join(f"{b / 1e9:.2f} GB" for b in kv["store_bytes_per_default_edit"].values())
        for place, t in kv["transfer"].items():
            print(f"| {fam} | {kv['bytes_per_step_fp16'] / 1e6:.1f} MB | {st} | {place} | {t['put_ms_per_step']:.2f} | "
                  f"{t['get_ms_per_step']:.2f} |")
        print(f"| {fam} | auto placement for RegionDrag: {kv['auto_placement_regiondrag']} | | | | |")
    if "flux" in r["families"]:
        gpu_flux.print_section(r["families"]["flux"], clock)
    if r["skipped"]:
        print("skipped:", r["skipped"])
    print(f"total {r['total_s']:.1f} s")


if __name__ == "__main__":
    main()
