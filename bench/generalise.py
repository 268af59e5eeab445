"""Generalisation check: ShapesBench subsets on several drawn case sets (seeds) and settings, one ComfyUI server.

Settings are tuned on some seeds and checked on another (docs/generalisation.md); this runs the grid and prints,
per (settings, method, kind, seed), the medians and spread of the ShapesBench metrics:

    python -m bench.generalise --seeds 101,202,303 --methods ledits --kinds concept_recolour,concept_remove \
        --cases 10 --config shipped: --config g15:ledits.scale=15,ledits.threshold=0.9

--config NAME:method.key=value,... (repeatable; "NAME:" = the shipped settings). --cases N = first N cases of each
kind of each seed. Writes out/bench/<name>.json (records + summary, rewritten after every seed) and contact sheets
out/bench/<name>/<config>_s<seed>_<method>.png (input | ground truth | output).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Optional, Sequence

from bench import _util


def _q(xs: Sequence[float], p: float) -> Optional[float]:
    """The p-quantile (linear interpolation) of xs, None when empty."""
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


_SOURCE: dict = {}


def moved_fraction(r: dict) -> Optional[float]:
    """How much of the asked displacement the output shows: the centroid shift from the input (no edit) along the
    ground truth's shift, over its length (bench/shapes_gates.py G3); None when the object is lost."""
    from bench import shapes_cases as S
    from bench import shapes_scoring as M
    key = (r["seed"], r["case"])
    if key not in _SOURCE:
        case = next(c for c in S.build_cases(r["seed"]) if c.id == r["case"])
        img = S.input_image(case)
        _SOURCE[key] = M.case_metrics(case, S.quantize(M.no_edit(case, img))).get("centroid_out")
    s, g, o = _SOURCE[key], r.get("centroid_gt"), r.get("centroid_out")
    if not (s and g and o):
        return None
    v = (g[0] - s[0], g[1] - s[1])
    n2 = v[0] * v[0] + v[1] * v[1]
    return ((o[0] - s[0]) * v[0] + (o[1] - s[1]) * v[1]) / n2 if n2 >= 1 else None


def summary(recs: Sequence[dict]) -> list[dict]:
    """Rows (config, method, kind, seed): n, errors, success share (concept kinds), median PSNR outside with its
    25-75% range, median / mean ghost, median centroid error and the share under 2 px (geometric kinds)."""
    from bench import shapes_cases as S
    keys = list(dict.fromkeys((r["config"], r["method"], r["kind"], r["seed"]) for r in recs))
    rows = []
    for cfg, method, kind, seed in keys:
        rs = [r for r in recs if (r["config"], r["method"], r["kind"], r["seed"]) == (cfg, method, kind, seed)]
        ok = [r for r in rs if r["status"] == "ok"]
        ps = [r["psnr_out"] for r in ok if r.get("psnr_out") is not None]
        gh = [r["ghost"] for r in ok if r.get("ghost") is not None]
        row: dict[str, Any] = {"config": cfg, "method": method, "kind": kind, "seed": seed, "n": len(rs),
                               "err": len(rs) - len(ok)}
        if kind not in S.GEOMETRIC:
            row["success"] = sum(1 for r in ok if r.get("success")) / max(len(rs), 1)
            row["success_28db"] = sum(1 for r in ok if r.get("success") and r["psnr_out"] >= 28.0) / max(len(rs), 1)
        row["psnr_out_med"] = _q(ps, 0.5)
        row["psnr_out_p25"] = _q(ps, 0.25)
        row["psnr_out_p75"] = _q(ps, 0.75)
        row["ghost_med"] = _q(gh, 0.5)
        row["ghost_mean"] = statistics.fmean(gh) if gh else None
        if kind in S.GEOMETRIC:
            ce = [r.get("centroid_err") for r in ok]
            found = [e for e in ce if e is not None]
            row["cen_err_med"] = _q(found, 0.5)
            row["moved_lt2px"] = sum(1 for e in found if e < 2.0) / max(len(rs), 1)
            row["moved_med"] = _q([m for m in (moved_fraction(r) for r in ok) if m is not None], 0.5)
            row["lost"] = sum(1 for e in ce if e is None)
        row["s_med"] = _q([r["seconds"] for r in ok], 0.5)
        rows.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
    return rows


def print_summary(rows: Sequence[dict]) -> None:
    cols = ["config", "method", "kind", "seed", "n", "err", "success", "psnr_out_med", "psnr_out_p25",
            "psnr_out_p75", "ghost_med", "ghost_mean", "cen_err_med", "moved_lt2px", "s_med"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols), flush=True)


def markdown(rows: Sequence[dict]) -> str:
    """The summary rows as a markdown table (medians with the 25-75 % range of PSNR outside)."""
    def f(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)
    out = ["| settings | method | kind | seed | n | success | success and >= 28 dB | PSNR out median (p25-p75) "
           "| ghost median / mean | centroid err median | within 2 px | moved median |", "|" + "---|" * 12]
    for r in rows:
        out.append(f"| {r['config']} | {r['method']} | {r['kind']} | {r['seed']} | {r['n']} "
                   f"| {f(r.get('success'), '.0%')} | {f(r.get('success_28db'), '.0%')} | {f(r['psnr_out_med'], '.1f')} ({f(r['psnr_out_p25'], '.1f')}-"
                   f"{f(r['psnr_out_p75'], '.1f')}) | {f(r['ghost_med'], '.2f')} / {f(r['ghost_mean'], '.2f')} "
                   f"| {f(r.get('cen_err_med'), '.2f')} | {f(r.get('moved_lt2px'), '.0%')} "
                   f"| {f(r.get('moved_med'), '.0%')} |")
    return "\n".join(out)


def parse_config(text: str) -> tuple[str, list[str]]:
    """'NAME:method.key=value,...' -> (NAME, ['method.key=value', ...])."""
    name, _, sets = text.partition(":")
    if not name:
        raise ValueError(f"--config {text!r}: expected NAME:method.key=value,...")
    return name, [s for s in sets.split(",") if s]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--seeds", default="", help="comma list of case-set seeds")
    ap.add_argument("--methods", default="", help="comma list of ShapesBench methods")
    ap.add_argument("--kinds", default="", help="comma list of case kinds")
    ap.add_argument("--report", nargs="*", default=None, help="print the markdown table of these JSON files and stop")
    ap.add_argument("--cases", type=int, default=10, help="first N cases of each kind per seed")
    ap.add_argument("--config", action="append", default=[], help="NAME:method.key=value,... (repeatable)")
    ap.add_argument("--steps", action="append", default=[], help="as ShapesBench --steps, for every config")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sheet", type=int, default=4, help="cases per kind in the contact sheets (0 = none)")
    ap.add_argument("--name", default="generalise")
    ap.add_argument("--model", choices=("unet", "dit"), default="unet",
                    help="Shapes Demo Model design (as ShapesBench --model): unet (v1) or dit (the FLUX demo)")
    args = ap.parse_args(argv)
    if args.report is not None:
        _util.setup()
        for path in args.report:
            print(markdown(summary(json.loads(open(path).read())["records"])))
        return 0
    if not (args.seeds and args.methods and args.kinds):
        ap.error("--seeds, --methods and --kinds are required for a run")

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    _util.setup()
    from bench import shapes_cases as S
    from bench import shapesbench as SB
    from tools.support.comfy_server import ComfyServer

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    want = [w.strip() for w in args.methods.split(",") if w.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    configs = [parse_config(c) for c in (args.config or ["shipped:"])]

    def chosen() -> list:
        """The wanted methods at the design's settings (those that take the design)."""
        return [m.for_design(args.model) for m in SB.methods() if m.name in want and args.model in m.models]

    if not chosen():
        ap.error(f"none of {want} runs on --model {args.model}")
    for _, sets in configs:           # fail on a bad override before the server starts
        SB.apply_overrides(chosen(), args.steps, sets)

    out = _util.OUT / f"{args.name}.json"
    recs: list[dict] = []
    server = ComfyServer(extra_nodes=False).start(timeout=900)
    t0 = time.perf_counter()
    try:
        first = S.build_cases(seeds[0])[0]
        SB.warmup(server, first, SB.write_inputs(server, [first], S, args.model)[first.id], S)   # loads the model once
        for cfg, sets in configs:
            ms = chosen()
            SB.apply_overrides(ms, args.steps, sets)
            for seed in seeds:
                cases = []
                for k in kinds:
                    cases += [c for c in S.build_cases(seed) if c.kind == k][:args.cases]
                files = SB.write_inputs(server, cases, S, args.model)
                seed_recs = []
                for m in ms:
                    for c in [c for c in cases if c.kind in m.kinds]:
                        r = SB.run_method_case(server, m, c, files[c.id], S, args.timeout)
                        r.update(config=cfg, seed=seed)
                        seed_recs.append(r)
                        msg = r.get("error", "")[:160] if r["status"] != "ok" else (
                            f"psnr_out {r['psnr_out']:.1f} ghost {r.get('ghost')}"
                            + (f" success {r['success']}" if "success" in r else "")
                            + (f" cen {r.get('centroid_err')}" if c.kind in S.GEOMETRIC else ""))
                        print(f"[{cfg} s{seed} {m.name}] {c.id} {r['seconds']:.1f}s {msg}", flush=True)
                if args.sheet:
                    SB.contact_sheets([dict(r, method=f"{cfg}_s{seed}_{r['method']}") for r in seed_recs], cases,
                                      _util.OUT / args.name, args.sheet)
                recs += [{k: v for k, v in r.items() if not k.startswith("_")} for r in seed_recs]
                rows = summary(recs)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"configs": {c: s for c, s in configs}, "seeds": seeds, "kinds": kinds,
                                           "cases_per_kind": args.cases, "steps": args.steps,
                                           "model": args.model, "weights": SB.weights_info(args.model),
                                           "device": _util.device_name(),
                                           "elapsed_s": round(time.perf_counter() - t0, 1), "summary": rows,
                                           "records": recs}, indent=1, default=str))
                print_summary([r for r in rows if r["config"] == cfg and r["seed"] == seed])
    finally:
        server.cleanup()
    print_summary(summary(recs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
