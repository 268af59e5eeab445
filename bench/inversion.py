"""Bench: DDIM inversion with and without K/V recording against a plain KSampler (ddim) run of the same steps on the
same model, in the same process. Prints a table, writes out/bench/inversion.json.

Fair by construction: the three rows run interleaved (K, I, I+KV, K, I, I+KV, ...) after one warm-up each, the
quoted time is process CPU seconds on a CPU (wall, synchronised, on a GPU), every row reports its median and
spread and the per-round ratio to KSampler, and UNet calls are counted on the diffusion model (all rows do the same
number). Peak memory: one run of each row in a fresh child process (RSS growth with MALLOC_MMAP_THRESHOLD_ fixed on
a CPU; torch.cuda.max_memory_allocated on a GPU), never in the timing process.

usage: python -m bench.inversion [--steps 10] [--size 32] [--repeats 7] [--threads 1] [--full]"""
from __future__ import annotations

import argparse

from bench import _util  # noqa: E402

ROWS = ["KSampler (ddim)", "DDIM Inversion", "DDIM Inversion + K/V record"]


def build(a: argparse.Namespace) -> dict:
    import torch
    import nodes as comfy_nodes
    from dragedit.nodes.inversion import DDIMInversion

    model, cfg = _util.bench_model(a.full, a.size)
    g = torch.Generator().manual_seed(0)
    pos = [[torch.randn(1, 77, cfg["context_dim"], generator=g), {}]]
    latent = {"samples": torch.randn(1, 4, a.size, a.size, generator=g)}
    node = DDIMInversion()
    kv = {"bytes": 0}

    def ksampler():
        with torch.inference_mode():
            return comfy_nodes.KSampler().sample(model, 0, a.steps, 1.0, "ddim", "ddim_uniform", pos, pos, latent,
                                                 denoise=1.0)

    def invert(record: bool):
        def run():
            with torch.inference_mode():
                out = node.invert(model, latent, pos, a.steps, 1.0, record)
            if out[1].kv is not None:
                kv["bytes"] = out[1].kv.nbytes()
            out[1].free()
        return run

    return {"model": model, "fns": dict(zip(ROWS, [ksampler, invert(False), invert(True)])), "kv": kv}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=32, help="latent side (64 = a 512x512 image)")
    ap.add_argument("--full", action="store_true", help="the real SD1.5 UNet size (slow on a CPU)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process memory pass")
    ap.add_argument("--peak", choices=ROWS, help=argparse.SUPPRESS)   # child: one run of a row, print its peak
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    _util.setup()
    env = build(a)
    fns = env["fns"]

    if a.peak:
        with _util.peak_memory() as pk:
            fns[a.peak]()
        _util.emit_peak(pk)
        return

    counts = {}
    for name, fn in fns.items():                    # warm-up run of each row, counted
        with _util.count_unet(env["model"]) as c:
            fn()
        counts[name] = c.as_dict()
    times = _util.interleave(fns, a.repeats, warmup=False)
    clock = _util.primary()
    peaks = {} if a.no_memory else {
        name: _util.child_peak(__spec__.name, ["--peak", name, "--steps", str(a.steps), "--size", str(a.size),
                                          "--threads", str(a.threads)] + (["--full"] if a.full else []))
        for name in ROWS}
    ref = times[ROWS[0]][clock]
    rows = []
    for name in ROWS:
        t = _util.summary(times[name][clock])
        r = _util.ratio_summary(times[name][clock], ref)
        pk = peaks.get(name, {})
        rows.append({"run": name, "unet_calls": counts[name]["calls"], "unet_rows": counts[name]["rows"],
                     "s_median": t["median"], "s_min": t["min"], "s_max": t["max"],
                     "ratio_median": r["median"], "ratio_min": r["min"], "ratio_max": r["max"],
                     "peak_MiB": None if pk.get("peak_bytes") is None else pk["peak_bytes"] / 2**20,
                     "kv_MiB": env["kv"]["bytes"] / 2**20 if "K/V" in name else 0.0})
    _util.report("inversion", rows, {
        "steps": a.steps, "latent": f"{a.size}x{a.size}", "repeats": a.repeats,
        "model": "SD1.5 full" if a.full else "SD1.5 layout, 64 base channels",
        "memory": next((p.get("kind") for p in peaks.values() if p.get("kind")), "not measured"),
        "times": times, "peaks": peaks,
        "notes": "ratio = per-round ratio of the row's time to the KSampler run beside it (interleaved rounds); "
                 "peak = one run in a fresh child process; kv = the K/V store the recording row held.",
    })


if __name__ == "__main__":
    main()
