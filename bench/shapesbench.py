"""ShapesBench: drag / move / resize / recolour / concept edits on procedurally drawn scenes with exact ground truth
(the scene re-rendered with the edit applied), run through the REAL ComfyUI executor with the Shapes Demo Model.

One ComfyUI server for the whole run. Per case and method an API graph is posted:
LoadImage (the rendered scene, saved into the server's input folder) -> Drag Instructions (the case's JSON) ->
method node -> VAE Decode -> SaveImage; the PNG is read back from disk and scored against the ground truth
(bench/shapes_cases.py: centroid error, PSNR / MAE outside the edit region, ghosting, classifier success).
Baselines computed here in numpy/torch: "no edit" and "copy-paste" (pixels moved by the case's own handle/target
regions). Methods whose node class is not registered in /object_info are listed as missing.

Prints one table (method x case kind) and writes out/bench/shapesbench.json (settings, per-case records) and
contact sheets out/bench/shapesbench/<method>.png (input | ground truth | output, first cases of each kind).

    python -m bench.shapesbench                       # full run (108 cases, every method; ~12 min, 1 CPU thread)
    python -m bench.shapesbench --cases 14 --methods regiondrag,ledits
    python -m bench.shapesbench --steps 10 --steps dragondiffusion=12 --set dragdiffusion.iterations=20
    python -m bench.shapesbench --seed 101 --methods ledits --kinds concept_recolour,concept_remove --cases 20
                                                      # another drawn case set (generalisation: docs/generalisation.md)
    python -m bench.shapesbench --model dit --methods regiondrag --set regiondrag.dit_layers=vital
                                                      # the demo DiT (methods that take DiTs) -> shapesbench_dit.*
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from bench import _util  # noqa: E402

NAME = "shapesbench"
BASELINES = ("no_edit", "copy_paste")

# the methods and their graphs live in bench/shapes_methods.py (names re-exported for the bench's callers)
from bench.shapes_methods import (BASELINE_KINDS, BASE_NODES, Method, _base, _decode_save,  # noqa: F401,E402
                                  _graph_ledits, _graph_regiondrag, apply_overrides, dragdiffusion_mask, methods)


# ======================================================================================================== running
def _png_write(path: Path, arr) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _png_read(path: Path):
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _exec_seconds(entry: dict) -> Optional[float]:
    """Server-side execution time of a finished prompt (execution_start -> execution_success), seconds."""
    t = {ev: data.get("timestamp") for ev, data in entry.get("status", {}).get("messages", [])}
    if t.get("execution_start") is not None and t.get("execution_success") is not None:
        return (t["execution_success"] - t["execution_start"]) / 1000.0
    return None


def write_inputs(server: Any, cases: Sequence, S: Any, model: str = "unet") -> dict:
    """Save each case's scene (and recolour masks) into the server's input folder; {case id: {role: filename}},
    with the demo model design under "model"."""
    import torch
    inp = Path(server.base) / "input"
    files = {}
    for c in cases:
        f = {"image": f"shapesbench_{c.id}.png", "model": model}
        _png_write(inp / f["image"], S.to_uint8_hwc(S.input_image(c)))
        if c.kind in ("recolour", "concept_recolour"):   # concept_recolour: the object box for LEDITS' user mask
            for role, m in (("mask", c.handle_mask()), ("ref_mask", c.ref_mask() if c.ref_box else None)):
                if m is None:
                    continue
                f[role] = f"shapesbench_{c.id}_{role}.png"
                _png_write(inp / f[role], S.to_uint8_hwc(m.float()[None].expand(3, -1, -1).contiguous()))
        files[c.id] = f
    return files


def warmup(server: Any, case: Any, files: dict, S: Any) -> dict:
    """Load the model once (not timed in any method) and check the VAE round trip through the executor."""
    from bench import shapes_scoring as M
    g = _base(case, files)
    g["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0], "vae": ["model", 2]}}
    g = _decode_save(g, ["enc", 0], "shapesbench/warmup")
    del g["pos"], g["neg"]
    t0 = time.perf_counter()
    entry = server.run_prompt(g)
    out = S.from_uint8_hwc(_png_read(server.output_images(entry)[0]))
    inp = S.input_image(case)
    # SaveImage truncates 255·x to uint8, so float rounding in the VAE can cost one level on some pixels
    return {"vae_roundtrip": {"max_abs_levels": round(float((out - inp).abs().max()) * 255), "psnr": M.psnr(out, inp)},
            "warmup_s": round(time.perf_counter() - t0, 2)}


def run_method_case(server: Any, m: Method, case: Any, files: dict, S: Any, timeout: float) -> dict:
    """One (method, case): post the graph, read the PNG, score it. A failed prompt gives status 'error'."""
    from bench import shapes_scoring as M
    from tools.support.comfy_server import PromptError
    how = m.kinds[case.kind]
    g = m.build(case, how, m.settings, files, f"shapesbench/{m.name.replace('+', 'p')}_{case.id}")
    rec = {"method": m.name, "case": case.id, "kind": case.kind, "how": how}
    t0 = time.perf_counter()
    try:
        entry = server.run_prompt(g, timeout=timeout)
    except (PromptError, TimeoutError, RuntimeError) as e:   # rejected / failed prompt, time-out, dead server
        return {**rec, "status": "error", "error": f"{type(e).__name__}: {str(e)[:400]}",
                "seconds": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    paths = server.output_images(entry)
    if not paths:
        return {**rec, "status": "error", "error": "no image saved", "seconds": wall}
    out = S.from_uint8_hwc(_png_read(paths[0]))
    if tuple(out.shape) != (3, S.SIZE, S.SIZE):
        return {**rec, "status": "error", "error": f"output image has shape {tuple(out.shape)}", "seconds": wall}
    sec = _exec_seconds(entry)
    return {**rec, "status": "ok", "seconds": sec if sec is not None else wall, "client_seconds": wall,
            **M.case_metrics(case, out), "_image": out}


def run_baseline(name: str, case: Any, S: Any) -> dict:
    """A baseline on one case, computed here on the quantized input image."""
    from bench import shapes_scoring as M
    rec = {"method": name, "case": case.id, "kind": case.kind, "how": "numpy"}
    t0 = time.perf_counter()
    img = S.input_image(case)
    out = M.no_edit(case, img) if name == "no_edit" else M.copy_paste(case, img)
    sec = time.perf_counter() - t0
    out = S.quantize(out)
    return {**rec, "status": "ok", "seconds": sec, **M.case_metrics(case, out), "_image": out}


def run_bench(server: Any, cases: Sequence, ms: Sequence[Method], timeout: float = 600.0,
              log: Callable[[str], None] = print, checkpoint: Optional[Callable[[list], None]] = None,
              model: str = "unet") -> tuple[list[dict], dict]:
    """Run the baselines and every method on every case it takes, on a started ComfyServer. Returns the per-case
    records (images under '_image') and facts {missing, vae_roundtrip, warmup_s}; checkpoint(records) is called
    after each method (partial results survive an interrupted run)."""
    from bench import shapes_cases as S
    info = server.get("/object_info")
    facts: dict = {"missing": {}}
    present = []
    for m in ms:
        lacking = [n for n in BASE_NODES + m.nodes if n not in info]
        if lacking:
            facts["missing"][m.name] = f"node class(es) not registered: {', '.join(lacking)}"
        else:
            present.append(m)
    files = write_inputs(server, cases, S, model)
    if "DragEditShapesDemoModel" in info and cases:
        facts.update(warmup(server, cases[0], files[cases[0].id], S))
    recs: list[dict] = []
    for name in BASELINES:
        for c in cases:
            if c.kind in BASELINE_KINDS[name]:
                recs.append(run_baseline(name, c, S))
    for m in present:
        todo = [c for c in cases if c.kind in m.kinds]
        t_m = time.perf_counter()
        for i, c in enumerate(todo):
            if getattr(server, "proc", None) is not None and server.proc.poll() is not None:
                recs.append({"method": m.name, "case": c.id, "kind": c.kind, "how": m.kinds[c.kind],
                             "status": "error", "error": "the ComfyUI server is no longer running", "seconds": 0.0})
                continue
            r = run_method_case(server, m, c, files[c.id], S, timeout)
            recs.append(r)
            if r["status"] != "ok":
                log(f"[{m.name}] {c.id}: ERROR {r['error'][:200]}")
            else:
                ce = r.get("centroid_err")
                log(f"[{m.name}] {i + 1}/{len(todo)} {c.id}: {r['seconds']:.1f}s"
                    + (f" centroid {ce:.2f}px" if ce is not None else "")
                    + (f" success {r['success']}" if "success" in r else "")
                    + f" psnr_out {r['psnr_out']:.1f}")
        log(f"[{m.name}] {len(todo)} cases in {time.perf_counter() - t_m:.0f}s")
        if checkpoint is not None:
            checkpoint(recs)
    return recs, facts


# ======================================================================================================== table
def _mean(xs: list) -> Optional[float]:
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(recs: Sequence[dict], ms: Sequence[Method], missing: dict, kinds: Sequence[str]) -> list[dict]:
    """Rows method x kind: n, fail, lost, cen err, <1px, <2px, area err, PSNR out, MAE out, ghost, kept,
    concept ok, s/edit. Missing methods get one row saying so."""
    from bench import shapes_cases as S
    rows = []
    for name in list(BASELINES) + [m.name for m in ms]:
        if name in missing:
            rows.append({"method": name, "kind": f"MISSING ({missing[name]})", "n": 0})
            continue
        for k in kinds:
            rs = [r for r in recs if r["method"] == name and r["kind"] == k]
            if not rs:
                continue
            ok = [r for r in rs if r["status"] == "ok"]
            row: dict = {"method": name, "kind": k, "n": len(rs), "fail": len(rs) - len(ok)}
            geo = k in S.GEOMETRIC
            errs = [r.get("centroid_err") for r in ok] if geo else []
            row["lost"] = sum(1 for e in errs if e is None) if geo else None
            row["cen err"] = _mean(errs) if geo else None
            row["<1px"] = (sum(1 for e in errs if e is not None and e < 1.0) / len(rs)) if geo else None
            row["<2px"] = (sum(1 for e in errs if e is not None and e < 2.0) / len(rs)) if geo else None
            row["area err"] = _mean([r.get("area_err") for r in ok]) if geo else None
            row["PSNR out"] = _mean([r.get("psnr_out") for r in ok])
            row["MAE out"] = _mean([r.get("mae_out") for r in ok])
            row["ghost"] = _mean([r.get("ghost") for r in ok])
            row["kept"] = _mean([r.get("kept") for r in ok]) if geo else None
            row["concept ok"] = (sum(1 for r in ok if r.get("success")) / len(rs)) if not geo else None
            row["s/edit"] = _mean([r.get("seconds") for r in ok])
            rows.append({k: (round(v, DECIMALS.get(k, 3)) if isinstance(v, float) else v) for k, v in row.items()})
    return rows


DECIMALS = {"cen err": 2, "<1px": 2, "<2px": 2, "area err": 2, "PSNR out": 1, "MAE out": 4, "ghost": 3, "kept": 2,
            "concept ok": 2, "s/edit": 3}


def contact_sheets(recs: Sequence[dict], cases: Sequence, folder: Path, per_kind: int = 3) -> list[Path]:
    """Per method a PNG: rows of (input | ground truth | output) x4 for the first `per_kind` cases of each kind."""
    import torch
    from bench import shapes_cases as S
    chosen = []
    for k in S.KINDS:
        chosen += [c for c in cases if c.kind == k][:per_kind]
    by = {(r["method"], r["case"]): r for r in recs}
    paths = []
    for name in dict.fromkeys(r["method"] for r in recs):
        rows = []
        for c in chosen:
            r = by.get((name, c.id))
            if r is None:
                continue
            out = r.get("_image")
            out = torch.zeros(3, S.SIZE, S.SIZE) if out is None else out
            rows.append(torch.cat([S.input_image(c), S.gt_image(c), out], dim=2))
        if not rows:
            continue
        sheet = torch.nn.functional.interpolate(torch.cat(rows, dim=1)[None], scale_factor=4, mode="nearest")[0]
        p = folder / f"{name.replace('+', 'p')}.png"
        _png_write(p, S.to_uint8_hwc(sheet))
        paths.append(p)
    return paths


# ======================================================================================================== CLI
def weights_info(model: str = "unet") -> dict:
    """Which shapes weights the server loads for the design `model` (path, size, mtime, sha256 prefix)."""
    from dragedit.demo.shapes import dit as shapes_dit
    from dragedit.demo.shapes import model as shapes_model
    p = shapes_model.default_weights() if model == "unet" else shapes_dit.default_weights()
    if not p.exists():
        return {"path": str(p), "present": False}
    h = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    st = p.stat()
    mtime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
    return {"path": str(p), "bytes": st.st_size, "mtime": mtime, "sha256": h}


def select_cases(all_cases: Sequence, n: Optional[int], kinds: Optional[Sequence[str]] = None) -> list:
    """The first n cases of the stratified order (after an optional kind filter)."""
    cs = [c for c in all_cases if not kinds or c.kind in kinds]
    return cs[:n] if n else cs


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--cases", type=int, default=None,
                    help="first N cases of the stratified order (every kind from N=7)")
    ap.add_argument("--kinds", default="", help="comma list of case kinds to keep")
    ap.add_argument("--methods", default="", help="comma list of methods (default all); baselines always run")
    ap.add_argument("--steps", action="append", default=[], help="N (all methods) or method=N; repeatable")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="method.key=value; repeatable")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per prompt")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the bench process and the server")
    ap.add_argument("--model", choices=("unet", "dit"), default="unet",
                    help="Shapes Demo Model design: unet (v1) or dit (the FLUX demo; methods that take DiTs only)")
    ap.add_argument("--name", default=None, help="output name under out/bench/ (default shapesbench[_dit])")
    ap.add_argument("--sheet", type=int, default=3, help="cases per kind in the contact sheets (0 = none)")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the drawn case set (default: the public seed, bench/shapes_cases.py SEED)")
    args = ap.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    _util.setup()
    from bench import shapes_cases as S
    from tools.support.comfy_server import ComfyServer

    ms = [m.for_design(args.model) for m in methods() if args.model in m.models]
    known = [m.name for m in ms]
    args.name = args.name or (NAME if args.model == "unet" else f"{NAME}_{args.model}")
    if args.methods:
        want = [w.strip() for w in args.methods.split(",") if w.strip() and w.strip() not in BASELINES]
        bad = [w for w in want if w not in known]
        if bad:
            ap.error(f"unknown method(s) {bad} for --model {args.model}; known: {known} (baselines "
                     f"{list(BASELINES)} always run)")
        ms = [m for m in ms if m.name in want]
    try:
        apply_overrides(ms, args.steps, args.sets)
    except ValueError as e:
        ap.error(str(e))
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in S.KINDS]
    if bad:
        ap.error(f"unknown kind(s) {bad}; known: {list(S.KINDS)}")
    seed = S.SEED if args.seed is None else args.seed
    all_cases = S.build_cases(seed)
    cases = select_cases(all_cases, args.cases, kinds)

    weights = weights_info(args.model)          # before the server loads them (another job may replace the file later)
    t0 = time.perf_counter()
    server = ComfyServer(extra_nodes=False).start()
    try:
        partial = _util.OUT / f"{args.name}.partial.json"

        def checkpoint(rs: list) -> None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rs],
                                          indent=1, default=str))

        recs, facts = run_bench(server, cases, ms, timeout=args.timeout, log=lambda s: print(s, flush=True),
                                checkpoint=checkpoint, model=args.model)
    finally:
        server.cleanup()
    total = time.perf_counter() - t0

    present_kinds = [k for k in S.KINDS if any(c.kind == k for c in cases)]
    rows = summarize(recs, ms, facts["missing"], present_kinds)
    sheets = contact_sheets(recs, cases, _util.OUT / args.name, args.sheet) if args.sheet else []
    extra = {
        "device": _util.device_name(),
        "model": args.model,
        "weights": weights,
        "cases": f"{len(cases)} of {len(all_cases)} (case set {S.fingerprint(all_cases)}, seed {seed})",
        "missing": facts["missing"] or "none",
        "vae_roundtrip (LoadImage -> VAE Encode -> VAE Decode -> SaveImage)": facts.get("vae_roundtrip"),
        "total_s": round(total, 1),
        "settings": {m.name: m.settings for m in ms},
        "sheets": [str(p) for p in sheets],
    }
    path = _util.report(args.name, rows, extra)
    data = json.loads(path.read_text())
    data["methods"] = {m.name: {"nodes": list(m.nodes), "kinds": m.kinds, "settings": m.settings, "note": m.note}
                       for m in ms}
    data["metrics"] = {
        "cen err": "mean centroid error (px) of the edited object vs the ground truth's measured centroid, over "
                   "cases where the object's colour is found; lost = not found",
        "<1px/<2px": "share of cases (all run, lost and failed count as misses) with centroid error under 1 / 2 px",
        "area err": "mean |area / area_gt - 1| of the object's colour",
        "PSNR out/MAE out": f"vs ground truth outside the edit region (object old ∪ new, grown {S.EDIT_DILATE} px); "
                            f"PSNR capped at {S.PSNR_CAP} dB",
        "ghost": "mean coverage of the object's old colour where it must be gone (old core outside the new place; "
                 f"whole old core for recolour/remove); coverage < {S.GHOST_FLOOR} counts 0",
        "kept": "share of cases where the classifier finds the object's colour and kind at its new place",
        "concept ok": "share of cases where the classifier finds the new colour + kind (recolour) or nothing "
                      "(remove) at the object's place, and the other shapes intact",
        "s/edit": "server-side execution seconds per prompt (model already loaded); baselines: in-process",
    }
    data["case_records"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in recs]
    data["case_set"] = [c.to_dict() for c in cases]
    path.write_text(json.dumps(data, indent=1, default=str))
    partial.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
