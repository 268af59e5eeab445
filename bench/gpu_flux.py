"""FLUX part of the GPU bench (`python -m bench.gpu --families flux`, part of `make bench-gpu`): a FLUX.1-dev-sized
transformer (hidden 3072, 24 heads, 19 double + 38 single blocks, guidance embedding, bf16, 11.9 B parameters) with
random weights, at 1024 x 1024 (a 128 x 128 latent: 4096 image tokens, 512 text tokens). For each image-token K/V
layer set (all 57 blocks, the 38 single blocks, Stable Flow's 9 vital layers of FLUX.1-dev) one RegionDrag-style edit:
flow inversion of the strength part of the grid (Euler, 28 steps x 0.5 = 14 model calls) recording the image tokens'
K/V of the chosen blocks (core.host.dit_kv, through the chained attention override), then the same part down again
through stock SamplerCustomAdvanced with the stored K/V injected, a region's tokens moved with their keys re-encoded at
the new RoPE position. Reports seconds per edit, peak VRAM, K/V bytes per step (all layers vs the chosen ones,
measured in the store and from the shapes), where the store was placed, and a memory estimate of the full run.

The weights are made on the GPU tensor by tensor and copied into ComfyUI's model on the offload device, which ComfyUI
loads like any checkpoint (no download). `--tiny` runs the same code on the CPU with a tiny FLUX built from config
(hidden 128, 2 double + 4 single blocks, 16 x 16 latent, 4 steps) and the full run's memory estimate.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from bench import _util

DEV_BLOCKS = (19, 38)                   # FLUX.1-dev: double, single blocks
DEV_LATENT, TINY_LATENT = 128, 16       # 1024 x 1024 and 128 x 128 px images
DEV_TXT, TINY_TXT = 512, 8              # text tokens (T5-XXL at FLUX.1-dev's 512)
DEV_STEPS, TINY_STEPS = 28, 4
STRENGTH = 0.5
# Stable Flow (Avrahami et al., CVPR 2025), FLUX.1-dev's vital layers in its 0..56 numbering: doubles 0, 1, 17, 18 and
# singles 25, 28, 53, 54, 56 (= single blocks 6, 9, 34, 35, 37).
VITAL = {"double": (0, 1, 17, 18), "single": (6, 9, 34, 35, 37)}
GPU_GB = 78.0                           # the card the full run must fit (H100 80 GB: ~78 GiB usable)


# --------------------------------------------------------------------------------------------
# model, inputs, layer sets
# --------------------------------------------------------------------------------------------

def dev_config(blocks: tuple[int, int] = DEV_BLOCKS) -> dict:
    """comfy.ldm.flux.model.Flux keyword arguments of FLUX.1-dev (what ComfyUI detects from flux1-dev.safetensors;
    `blocks` = double, single blocks)."""
    from tools.support.dit_checkpoints import flux_config
    return flux_config(*blocks, guidance=True)


def build(tiny: bool, blocks: tuple[int, int] = DEV_BLOCKS) -> tuple[Any, dict]:
    """A ModelPatcher of the FLUX transformer: FLUX.1-dev's config in bf16 (weights drawn on the load device, kept on
    the offload device until ComfyUI loads them; `blocks` fewer for a CPU test of this path), or a tiny FLUX from
    config on the CPU."""
    import torch
    if tiny:
        from dragedit.core.host import dit_build
        cfg = dit_build.flux_config(context_dim=32, depth=2, depth_single=4, patch=2)
        return dit_build.build_flux(cfg, seed=0), dict(cfg, context_in_dim=32, vec_in_dim=32, dtype="float32")
    import comfy.model_detection as md
    import comfy.model_management as mm
    import comfy.model_patcher
    cfg = dev_config(blocks)
    mc = md.model_config_from_unet_config(dict(cfg))
    if mc is None:
        raise RuntimeError("ComfyUI has no model class for the FLUX.1-dev config")
    load, off = mm.get_torch_device(), mm.unet_offload_device()
    mc.set_inference_dtype(torch.bfloat16, None)
    with torch.inference_mode(False):
        bm = mc.get_model({}, "", device=off)
        init_(bm.diffusion_model, seed=0, device=load)
        bm.diffusion_model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(bm, load_device=load, offload_device=off), dict(cfg, dtype="bfloat16")


def init_(module: Any, seed: int, device: Any, std: float = 0.02) -> None:
    """Random weights drawn on `device` (fast on a GPU) and copied into each parameter: matrices N(0, std), norm
    scales 1, other vectors 0 (ComfyUI layers skip init)."""
    import torch
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(".scale") or (p.ndim == 1 and "norm" in name and name.endswith("weight")):
                p.fill_(1.0)
            elif p.ndim < 2:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=torch.float32).mul_(std).to(p.dtype))


def inputs(cfg: dict, tiny: bool, small: bool = False) -> dict:
    """Conditioning at the model's text widths (FLUX-dev: 512 T5 tokens, pooled CLIP-L, guidance 1.5 for
    inversion) and a smooth latent with a bright blob where the moved region starts (`small`: the tiny sizes)."""
    import torch
    g = torch.Generator().manual_seed(0)
    n_txt, side = (TINY_TXT, TINY_LATENT) if tiny or small else (DEV_TXT, DEV_LATENT)
    extra = {"pooled_output": torch.randn(1, cfg["vec_in_dim"], generator=g)}
    if cfg.get("guidance_embed"):
        extra["guidance"] = 1.5
    cond = [[torch.randn(1, n_txt, cfg["context_in_dim"], generator=g), extra]]
    lat = torch.nn.functional.interpolate(torch.randn(1, 16, side // 8, side // 8, generator=g), size=(side, side),
                                          mode="bilinear") * 0.5
    lat[:, :, side // 8: side * 3 // 8, side // 8: side * 3 // 8] += 1.5
    return {"positive": cond, "latent": {"samples": lat}, "side": side, "n_txt": n_txt}


def layer_sets(model: Any, tiny: bool) -> dict[str, list]:
    """all / single blocks / vital layers (Stable Flow's, scaled to a tiny model's depth)."""
    from dragedit.core.host import dit
    every = dit.blocks(model)
    vital = []
    for kind, idx in VITAL.items():
        n_full = DEV_BLOCKS[0] if kind == "double" else DEV_BLOCKS[1]
        n = sum(1 for b in every if b.kind == kind)
        keep = sorted({i * n // n_full for i in idx}) if tiny else list(idx)
        vital += [b for b in every if b.kind == kind and b.index in keep]
    return {"all": every, "single": [b for b in every if b.kind == "single"], "vital": vital}


def moved_region(model: Any, side: int) -> Any:
    """Source token per target token: the tokens of the blob's box (the latent's 1/8..3/8 square) moved right by a
    quarter of the grid; every other token keeps its own (background K/V restored from the inversion)."""
    import torch
    from dragedit.core.host import dit
    gh, gw = dit.image_grid(model, (side, side))
    index = torch.arange(gh * gw).reshape(gh, gw)
    y0, y1, x0, x1, dx = gh // 8, gh * 3 // 8, gw // 8, gw * 3 // 8, gw // 4
    index[y0:y1, x0 + dx:x1 + dx] = torch.arange(gh * gw).reshape(gh, gw)[y0:y1, x0:x1]
    return index.reshape(-1)


# --------------------------------------------------------------------------------------------
# one edit
# --------------------------------------------------------------------------------------------

def kv_bytes_per_step(model: Any, blocks: list, side: int, itemsize: int = 2) -> int:
    """Image-token K + V of `blocks` for one model call at batch 1: tokens x hidden x 2 x itemsize each."""
    from dragedit.core.host import dit
    gh, gw = dit.image_grid(model, (side, side))
    return sum(2 * gh * gw * b.heads * b.head_dim * itemsize for b in blocks)


def edit_fn(model: Any, x: dict, blocks: list, steps: int, kv_dtype: Any) -> Callable[[], dict]:
    """One RegionDrag-style edit on `blocks`: Euler flow inversion of the last STRENGTH of a `steps`-step grid
    recording image-token K/V, then SamplerCustomAdvanced down the same sigmas with the K/V injected (region moved,
    keys re-encoded). Returns the store's figures."""
    import torch
    from dragedit.core import flow_inversion as fi
    from dragedit.core import host
    from dragedit.core.host import dit_kv, kv as hkv
    from tools.support import flow_calls
    sig = flow_calls.scheduler_sigmas(model, steps)
    n = max(1, round(steps * STRENGTH))
    sub = sig[steps - n:].clone()
    side = x["side"]
    per_step = kv_bytes_per_step(model, blocks, side, torch.empty((), dtype=kv_dtype).element_size())
    index = moved_region(model, side)
    rope = dit_kv.moved_rope(model, (side, side), index)

    def run() -> dict:
        store = hkv.build_store(model, per_step * n, dtype=kv_dtype)
        rec = dit_kv.patch_dit_kv_record(host.clone(model), store, blocks)
        with torch.inference_mode():
            inv = fi.run_ode(rec, x["latent"]["samples"], x["positive"], None, 1.0, sub, "euler")
        inj = dit_kv.DitKVInjection(store, index=index, rope=rope)
        run_model = dit_kv.patch_dit_kv_inject(host.clone(model), inj, blocks)
        noise = fi.InvertedNoise(model, inv.start, float(sub[0]))
        out = flow_calls.sampler_custom_advanced(run_model, noise, host.ksampler(fi.make_ode_sampler_fn("euler", inv)),
                                                 sub, x["latent"], x["positive"])
        res = {"store_bytes": store._bytes, "store_device": f"{store.device}{' (pinned)' if store.pinned else ''}",
               "steps_recorded": len(store._sigmas), "inject_hits": inj.hits, "inject_misses": inj.misses,
               "finite": bool(torch.isfinite(out).all())}
        store.release()
        inv.release()
        return res

    return run


def estimate_gb(n_blocks: tuple[int, int] = DEV_BLOCKS, side: int = DEV_LATENT, n_txt: int = DEV_TXT,
                steps_stored: int = DEV_STEPS // 2) -> dict:
    """Memory of the full run from the shapes (GB = 1e9 bytes): bf16 weights, image-token K/V per layer set for the
    inverted steps, and a generous activation bound (4 x one block's widest tensors at batch 1)."""
    from tools.support.dit_checkpoints import flux_params
    hidden, mlp = 3072, 4 * 3072
    params = flux_params(*n_blocks, guidance=True)
    tokens = (side // 2) ** 2
    per_layer = 2 * tokens * hidden * 2
    sets = {"all": sum(n_blocks), "single": n_blocks[1], "vital": sum(len(v) for v in VITAL.values())}
    acts = 4 * (tokens + n_txt) * (3 * hidden + mlp + hidden) * 2
    out = {"params_B": params / 1e9, "weights_GB": 2 * params / 1e9, "activations_GB": acts / 1e9,
           "kv_per_step_GB": {k: v * per_layer / 1e9 for k, v in sets.items()},
           "kv_store_GB": {k: v * per_layer * steps_stored / 1e9 for k, v in sets.items()}}
    out["peak_if_store_on_gpu_GB"] = {k: out["weights_GB"] + acts / 1e9 + s for k, s in out["kv_store_GB"].items()}
    out["fits_gpu_GB"] = GPU_GB
    return out


# --------------------------------------------------------------------------------------------
# the section
# --------------------------------------------------------------------------------------------

@contextmanager
def count_calls(model: Any) -> Iterator[dict]:
    """{"calls": n}: forward calls of the DiT module inside the block (a pre-hook; clones share the module)."""
    from dragedit.core.host import dit
    c = {"calls": 0}
    h = dit.diffusion_model(model).register_forward_pre_hook(lambda *_a: c.__setitem__("calls", c["calls"] + 1))
    try:
        yield c
    finally:
        h.remove()


def run(tiny: bool, repeats: int, budget_s: float, t_start: float, skipped: list) -> dict:
    """Build, then time one edit per layer set (a counted first run + `repeats` timed ones); the FLUX section of
    gpu.json."""
    import torch
    from dragedit.core.host import dit
    t0 = time.perf_counter()
    model, cfg = build(tiny)
    x = inputs(cfg, tiny)
    steps = TINY_STEPS if tiny else DEV_STEPS
    kv_dtype = torch.float32 if tiny else torch.bfloat16
    every = dit.blocks(model)
    item = torch.empty((), dtype=kv_dtype).element_size()
    fam: dict = {"latent": [x["side"]] * 2, "image": [8 * x["side"]] * 2, "text_tokens": x["n_txt"],
                 "build_s": time.perf_counter() - t0, "dtype": cfg["dtype"],
                 "params_M": sum(p.numel() for p in dit.diffusion_model(model).parameters()) / 1e6,
                 "blocks": {"double": sum(b.kind == "double" for b in every),
                            "single": sum(b.kind == "single" for b in every)},
                 "steps": steps, "steps_inverted": max(1, round(steps * STRENGTH)), "kv_dtype": str(kv_dtype),
                 "kv_bytes_per_step_all": kv_bytes_per_step(model, every, x["side"], item), "layer_sets": {},
                 "estimate_full": estimate_gb()}
    for name, blocks in layer_sets(model, tiny).items():
        if time.perf_counter() - t_start > budget_s:
            skipped.append(f"flux {name}: time budget")
            continue
        fn = edit_fn(model, x, blocks, steps, kv_dtype)
        cuda = _util.cuda_in_use()
        if cuda:
            _util.sync()
            torch.cuda.reset_peak_memory_stats()
        with count_calls(model) as count:
            w, c, res = _util.run_timed(fn)
        row = dict(res, layers=len(blocks), model_calls=count["calls"], first_run_s=w,
                   kv_bytes_per_step=kv_bytes_per_step(model, blocks, x["side"], item))
        row["kv_bytes_per_step_measured"] = res["store_bytes"] / max(res["steps_recorded"], 1)
        if cuda:
            row["peak_vram_GiB"] = torch.cuda.max_memory_allocated() / 2 ** 30
            row["peak_reserved_GiB"] = torch.cuda.max_memory_reserved() / 2 ** 30
        times = [_util.run_timed(fn)[0 if cuda else 1] for _ in range(repeats)]
        row["s_per_edit"] = _util.summary(times)
        row["times"] = times
        fam["layer_sets"][name] = row
    import comfy.model_management as mm
    mm.unload_all_models()
    del model
    mm.soft_empty_cache()
    return fam


def print_section(f: dict, clock: str) -> None:
    print(f"\nFLUX {f['image'][0]}² ({f['params_M']:.0f} M params, {f['blocks']['double']} double + "
          f"{f['blocks']['single']} single blocks, {f['dtype']}; {f['steps']} steps, {f['steps_inverted']} inverted "
          f"+ {f['steps_inverted']} denoised; K/V of all layers {f['kv_bytes_per_step_all'] / 1e6:.1f} MB per step)")
    print(f"| layer set | layers | {clock} per edit, median [min-max] | model calls | K/V per step | K/V store, "
          f"placed | injected hits / misses | peak VRAM GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in f["layer_sets"].items():
        print(f"| {name} | {r['layers']} | {_util.spread(r['s_per_edit'])} | {r['model_calls']} | "
              f"{r['kv_bytes_per_step'] / 1e6:.1f} MB | {r['store_bytes'] / 1e9:.3f} GB, {r['store_device']} | "
              f"{r['inject_hits']} / {r['inject_misses']} | {r.get('peak_vram_GiB', float('nan')):.2f} |")
    e = f["estimate_full"]
    print(f"full-size estimate: {e['params_B']:.2f} B params, weights {e['weights_GB']:.1f} GB, activations <= "
          f"{e['activations_GB']:.1f} GB; K/V per step " +
          ", ".join(f"{k} {v:.2f} GB" for k, v in e["kv_per_step_GB"].items()) + "; store for the inverted steps " +
          ", ".join(f"{k} {v:.1f} GB" for k, v in e["kv_store_GB"].items()) + "; peak with the store in VRAM " +
          ", ".join(f"{k} {v:.1f} GB" for k, v in e["peak_if_store_on_gpu_GB"].items()) +
          f" (card: {e['fits_gpu_GB']:.0f} GB; the pack's placement offloads a store that would not leave 20 % free)")
