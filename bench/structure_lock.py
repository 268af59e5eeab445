"""Bench: what LEDITS Edit's structure lock (keep_structure, core/host/dit_qk.py) costs on the shapes demo DiT: one
ShapesBench recolour (public seed, the first concept_recolour case: its box as the mask, add + remove concept, the
ShapesBench DiT settings: 20 steps, skip 2, cfg 1, scale 14, threshold 0.8, warm-up 1) with the lock off and on,
interleaved, process CPU seconds per edit (median and spread) and model calls / batch rows counted with a forward
pre-hook on the transformer. The success figures of the lock are bench/ledits_flow.py's (`lock=1`).

usage: python -m bench.structure_lock [--repeats 5]"""
from __future__ import annotations

import argparse
from contextlib import contextmanager

from bench import _util


@contextmanager
def count_calls(model):
    """Calls and batch rows of the DiT's transformer inside the block."""
    from dragedit.core.host import dit
    c = {"calls": 0, "rows": 0}

    def hook(_mod, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        c["calls"] += 1
        c["rows"] += int(x.shape[0]) if x is not None else 0
    h = dit.diffusion_model(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield c
    finally:
        h.remove()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    _util.setup()
    import torch
    torch.set_num_threads(1)
    from bench import ledits_flow as lf
    from bench import shapes_cases as sc
    from dragedit.demo.shapes import dit
    model, clip, vae = dit.load(dit.default_weights())
    case = next(c for c in sc.build_cases() if c.kind == "concept_recolour")
    base = dict(lf.DEFAULT, steps=20, skip=2, scale=14.0, threshold=0.8, warmup=1, mask=1)
    variants = {name: (lambda s=dict(base, lock=lock): lf.edit(model, clip.encoder, vae, case, s))
                for name, lock in (("lock off", 0), ("lock on", 1))}
    counts = {}
    for name, fn in variants.items():
        with count_calls(model) as c:
            fn()
        counts[name] = c
    times = _util.interleave(variants, a.repeats)
    clock = _util.primary()
    rows = []
    for name in variants:
        s = _util.summary(times[name][clock])
        rows.append({"variant": name, f"{clock}_s_median": round(s["median"], 3), "spread": _util.spread(s),
                     "model_calls": counts[name]["calls"], "batch_rows": counts[name]["rows"]})
    r = _util.ratio_summary(times["lock on"][clock], times["lock off"][clock])
    rows.append({"variant": "on / off", f"{clock}_s_median": round(r["median"], 3), "spread": _util.spread(r),
                 "model_calls": round(counts["lock on"]["calls"] / counts["lock off"]["calls"], 3),
                 "batch_rows": round(counts["lock on"]["rows"] / counts["lock off"]["rows"], 3)})
    _util.report("structure_lock", rows, {"case": case.name if hasattr(case, "name") else "first concept_recolour",
                                          "repeats": a.repeats, "clock": clock, "machine": _util.machine()})


if __name__ == "__main__":
    main()
