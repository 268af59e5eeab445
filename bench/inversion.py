"""Bench: DDIM inversion with and without K/V recording against a plain KSampler run of the same steps on the
same model, in the same process. Prints a table, writes out/bench/inversion.json.

usage: python bench/inversion.py [--steps 20] [--size 32] [--full]   (--full: real SD1.5 size, for a GPU)"""
from __future__ import annotations

import argparse

import _util


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=32, help="latent side (64 = a 512x512 image)")
    ap.add_argument("--full", action="store_true", help="the real SD1.5 UNet size (slow on a CPU)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    _util.setup()
    import torch
    import nodes as comfy_nodes
    from dragedit.core import host
    from dragedit.nodes.inversion import DDIMInversion

    cfg = _util.SD15_FULL if a.full else _util.SD15_MID
    dev_dtype = torch.float16 if torch.cuda.is_available() else torch.float32
    model = host.build_model(cfg, dtype=dev_dtype)
    if torch.cuda.is_available():
        model.load_device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, cfg["context_dim"], generator=g), {}]]
    latent = {"samples": torch.randn(1, 4, a.size, a.size, generator=g)}
    node = DDIMInversion()

    def ksampler():
        with torch.inference_mode():
            return comfy_nodes.KSampler().sample(model, 0, a.steps, 1.0, "ddim", "ddim_uniform", pos, pos, latent, denoise=1.0)

    def invert(record: bool):
        def run():
            with torch.inference_mode():
                out = node.invert(model, latent, pos, a.steps, 1.0, record)
            if out[1].kv is not None:
                run.kv_bytes = out[1].kv.nbytes()
            out[1].free()
            return out
        run.kv_bytes = 0
        return run

    rows = []
    t_ref, _ = _util.timed(ksampler, a.repeats)
    with _util.peak_memory() as mem:
        ksampler()
    rows.append({"run": "KSampler (ddim)", "seconds": t_ref, "ratio": 1.0, "peak_MB": mem["peak_bytes"] / 2**20, "kv_MB": 0.0})
    for record in (False, True):
        fn = invert(record)
        t, _ = _util.timed(fn, a.repeats)
        with _util.peak_memory() as mem:
            fn()
        rows.append({"run": f"DDIM Inversion{' + K/V record' if record else ''}", "seconds": t, "ratio": t / t_ref,
                     "peak_MB": mem["peak_bytes"] / 2**20, "kv_MB": fn.kv_bytes / 2**20})
    _util.report("inversion", rows, {"device": _util.device_name(), "steps": a.steps, "latent": f"{a.size}x{a.size}",
                                     "model": "SD1.5 full" if a.full else "SD1.5 layout, 64 base channels",
                                     "memory": mem["kind"]})


if __name__ == "__main__":
    main()
