"""Feasibility gates of a shapes demo model for feature-based drags (issue "Shapes v2"), measured on 20 scenes
from this script's own seed (not ShapesBench's), so a candidate can be judged before long training.

G1 locality: the object's cells of the DDIM-inverted latent (strength 0.7 of a 20-step grid) are copied onto a
   shifted target (an odd, sub-cell-free whole-cell shift so the copy itself is exact), then plain DDIM brings the
   latent back; PSNR of an untouched background region (pixels farther than 3 px from the object's source and
   target boxes) against the input. Gate: median >= 30 dB.
G2 features: decoder features of the DDIM-inverted latent at t = 261 and 481 (the timesteps where correspondence
   is measured in shapes-model.md) on the blocks DragDiffusion (up_blocks[-2]) and DragonDiffusion
   (feature_blocks) use; mean raw cosine object-object (pairs of cells inside the object) minus
   object-background (object cell vs background cell). Gate: >= 0.3 on those blocks.
G3 / G4 are method runs: ShapesBench's rows (bench/shapesbench.py, the model chosen by $DRAGEDIT_SHAPES_WEIGHTS);
   `--bench out/bench/<shapesbench run>.json` reads them: G3 = DragDiffusion's moved fraction (the centroid's
   displacement projected on the requested one, per case; median) on the point drags, and on the 6-10 px drags of
   the point-drag and move cases, with PSNR outside the edit; G4 = DragonDiffusion's move rows (median centroid
   error, ghost, PSNR outside).

    python -m bench.shapes_gates                         # the shipped model (v1)
    python -m bench.shapes_gates --weights DIR/shapes_v2-64.safetensors --name candidate
    python -m bench.shapes_gates --random v2-64          # an untrained design (step 0 of a training curve)
    python -m bench.shapes_gates --weights A.safetensors B.safetensors ...   # several checkpoints, one table

A design trained at another image size is measured at that size; lengths are in units of a 32 px scene (the shift
is 6 px of 32, i.e. 12 px of a 64 px image), so the gates mean the same at every size.

Prints a table and writes out/bench/<name>.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from bench import _util  # noqa: E402

SEED = 20261130
N_SCENES = 20
STEPS = 20
STRENGTH = 0.7
FEATURE_T = (261, 481)


def _ddim(unet, ctx, ab, z, ts_from, ts_to):
    """One deterministic DDIM move of model-space latent z from timestep ts_from to ts_to (either direction;
    ε evaluated at the timestep of the noisier end, as diffusers' inverse scheduler does for inversion)."""
    import torch
    a_f = ab[ts_from] if ts_from >= 0 else torch.tensor(1.0)
    a_t = ab[ts_to] if ts_to >= 0 else torch.tensor(1.0)
    t_eval = max(ts_from, ts_to)
    eps = unet(z, torch.tensor([float(t_eval)] * z.shape[0]), context=ctx)
    x0 = (z - (1 - a_f).sqrt() * eps) / a_f.sqrt()
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps


def _load(weights: Path | None, random_arch: str | None):
    """(MODEL, CLIP, label) of a weights file, the shipped model, or an untrained design."""
    from dragedit.demo.shapes import model as sm
    if random_arch:
        mp, clip, _ = sm.build(None, None, arch=random_arch)
        return mp, clip, f"{random_arch} untrained"
    mp, clip, _ = sm.load_demo(weights, allow_random=False) if weights else sm.load_demo(allow_random=False)
    return mp, clip, str(weights or sm.default_weights())


def run(weights: Path | None, name: str, n_scenes: int = N_SCENES, random_arch: str | None = None,
        write: bool = True) -> dict:
    """Measure G1 and G2 of one model; prints per-scene progress, and the table when `write`."""
    import torch
    _util.setup()
    from dragedit.demo.shapes import model as sm, renderer, vae
    from dragedit.core import dragdiffusion as ddiff, dragondiffusion as dragon

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("DRAGEDIT_BENCH_THREADS", "1")))
    mp, clip, label = _load(weights, random_arch)
    arch = sm.arch_of_model(mp)
    unet, enc = sm.unet_of(mp), clip.encoder
    ab = sm.alphas_cumprod(mp).double()
    blocks = {"dragdiffusion up_blocks[-2]": ddiff.feature_block_index(mp, -2)}
    for b in dragon.feature_blocks(mp):
        blocks.setdefault(f"dragondiffusion out{b}", b)
    size = arch.image_size
    k = size / 32.0                                           # scene units -> pixels
    f = vae.FACTOR
    step = 1000 // STEPS
    grid = [1 + k * step for k in range(STEPS)]               # ascending DDIM timesteps
    n_inv = int(round(STRENGTH * STEPS))
    scenes = renderer.sample_scenes(SEED, n_scenes, two_p=0.0)
    g1, g2 = [], {k: {t: [] for t in FEATURE_T} for k in blocks}
    with torch.no_grad():
        for i, sc in enumerate(scenes):
            img = renderer.render(sc, size)
            z0 = (vae.encode(img[None]) * sm.SCALE_FACTOR).float()
            ctx = enc.encode([renderer.prompt(sc)]).float()
            # ---- G1: invert to strength 0.7, copy object cells by a whole-cell shift, DDIM back
            z = z0.clone()
            ts = [-1] + grid[:n_inv]
            for a, b in zip(ts[:-1], ts[1:]):
                z = _ddim(unet, ctx, ab.float(), z, a, b)
            sh = sc.shapes[0]
            x0_, y0_ = (sh.x - sh.extent - 1) * k, (sh.y - sh.extent - 1) * k
            x1_, y1_ = (sh.x + sh.extent + 1) * k, (sh.y + sh.extent + 1) * k
            c0, r0 = max(int(x0_ // f), 0), max(int(y0_ // f), 0)
            c1, r1 = min(int(-(-x1_ // f)), size // f), min(int(-(-y1_ // f)), size // f)
            lat = size // f
            cells = int(round(6 * k / f))                       # 6 px of a 32 px scene: 3 cells (v1), 6 at 64 px
            dx = cells if c1 + cells <= lat else -cells
            zc = z.clone()
            zc[:, :, r0:r1, c0 + dx:c1 + dx] = z[:, :, r0:r1, c0:c1]
            for a, b in zip(ts[::-1][:-1], ts[::-1][1:]):
                zc = _ddim(unet, ctx, ab.float(), zc, a, b)
            out = vae.decode(zc / sm.SCALE_FACTOR)[0].clamp(0, 1)
            keep = torch.ones(size, size, dtype=torch.bool)
            for cc0, cc1 in ((c0, c1), (c0 + dx, c1 + dx)):
                m = int(round(3 * k))
                keep[max(r0 * f - m, 0):r1 * f + m, max(cc0 * f - m, 0):cc1 * f + m] = False
            if keep.sum() > 16 * k * k:
                mse = ((out - img.float()) ** 2)[:, keep].mean().item()
                g1.append(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item())
            # ---- G2: features at t on the inverted latent
            cov = renderer.coverage(sh, size)
            obj_cells = torch.nn.functional.avg_pool2d(cov[None, None].float(), f)[0, 0]
            for t in FEATURE_T:
                a = ab[t].float()
                zt = z0.clone()
                tt = [-1] + [g for g in grid if g <= t]
                for p, q in zip(tt[:-1], tt[1:]):
                    zt = _ddim(unet, ctx, ab.float(), zt, p, q)
                feats: dict[int, torch.Tensor] = {}
                hooks = [unet.output_blocks[b][-1].register_forward_hook(
                    lambda m, inp, o, b=b: feats.__setitem__(b, o.detach())) for b in set(blocks.values())]
                try:
                    unet(zt, torch.tensor([float(t)]), context=ctx)
                finally:
                    for h in hooks:
                        h.remove()
                del a
                for label, b in blocks.items():
                    ft = feats[b][0]
                    occ = torch.nn.functional.interpolate(obj_cells[None, None], size=ft.shape[-2:], mode="area")[0, 0]
                    fo = ft[:, occ > 0.9].T
                    fb = ft[:, occ < 0.01].T
                    if fo.shape[0] < 2 or fb.shape[0] < 1:
                        continue
                    fo, fb = torch.nn.functional.normalize(fo, dim=1), torch.nn.functional.normalize(fb, dim=1)
                    oo = fo @ fo.T
                    n = fo.shape[0]
                    oo_mean = (oo.sum() - oo.diagonal().sum()) / (n * (n - 1))
                    ob_mean = (fo @ fb.T).mean()
                    g2[label][t].append(float(oo_mean - ob_mean))
            print(f"[gates] scene {i + 1}/{len(scenes)}: G1 {g1[-1] if g1 else float('nan'):.1f} dB", flush=True)
    res = {"name": name, "weights": label, "arch": arch.name, "image_size": size,
           "steps": _steps(weights) if not random_arch else 0, "seed": SEED, "scenes": len(scenes),
           "G1_background_psnr_db": {"median": statistics.median(g1), "min": min(g1), "max": max(g1), "n": len(g1)},
           "G2_cos_obj_obj_minus_obj_bg": {
               label: {str(t): {"mean": statistics.fmean(v), "median": statistics.median(v), "n": len(v)}
                       for t, v in per_t.items() if v} for label, per_t in g2.items()}}
    if write:
        _util.report(name, table([res]), {"result": res})
    return res


def _steps(weights: Path | None) -> int | None:
    """Training steps recorded in a weights file's metadata (None when absent)."""
    from dragedit.demo.shapes import model as sm
    v = sm.read_meta(weights or sm.default_weights()).get("steps")
    return int(v) if v is not None else None


def table(results: list[dict]) -> list[dict]:
    """One row per model: G1 median (min-max) and G2 per block and timestep (mean), with the goals."""
    rows = []
    for r in results:
        g1 = r["G1_background_psnr_db"]
        row = {"model": r["arch"], "steps": r["steps"],
               "G1 dB (>=30)": f"{g1['median']:.1f} ({g1['min']:.1f}-{g1['max']:.1f})"}
        for label, per_t in r["G2_cos_obj_obj_minus_obj_bg"].items():
            short = label.replace("dragdiffusion up_blocks[-2]", "G2 DD").replace("dragondiffusion out", "G2 Dragon ")
            for t, v in per_t.items():
                row[f"{short} t{t} (>=0.3)"] = round(v["mean"], 3)
        rows.append(row)
    return rows


def method_gates(bench_json: Path) -> list[dict]:
    """G3 and G4 from the per-case records of a ShapesBench run (medians)."""
    import json
    import math
    d = json.loads(Path(bench_json).read_text())
    recs = d["case_records"]
    src = {r["case"]: r.get("centroid_out") for r in recs if r["method"] == "no_edit"}

    def moved(r):
        s, g, o = src.get(r["case"]), r.get("centroid_gt"), r.get("centroid_out")
        if not (s and g and o):
            return None, None
        v = (g[0] - s[0], g[1] - s[1])
        n = math.hypot(*v)
        return (((o[0] - s[0]) * v[0] + (o[1] - s[1]) * v[1]) / (n * n) if n >= 1 else None), n

    def med(xs):
        xs = [x for x in xs if x is not None]
        return round(statistics.median(xs), 3) if xs else None

    rows = []
    dd = [r for r in recs if r["method"] == "dragdiffusion" and r["status"] == "ok"]
    if dd:
        pts = [r for r in dd if r["kind"] == "point_drag"]
        mid = [r for r in dd if r["kind"] in ("point_drag", "move") and 6 <= (moved(r)[1] or 0) <= 10]
        rows.append({"gate": "G3 DragDiffusion point drags: moved fraction (>= 0.7)", "value": med(moved(r)[0] for r in pts),
                     "n": len(pts)})
        rows.append({"gate": "G3 DragDiffusion 6-10 px drags: moved fraction (>= 0.7)",
                     "value": med(moved(r)[0] for r in mid), "n": len(mid)})
        rows.append({"gate": "G3 DragDiffusion point drags: PSNR outside dB (>= 35)", "value": med(r["psnr_out"] for r in pts),
                     "n": len(pts)})
    mv = [r for r in recs if r["method"] == "dragondiffusion" and r["kind"] == "move" and r["status"] == "ok"]
    if mv:
        rows.append({"gate": "G4 DragonDiffusion move: centroid error px (<= 2)", "value": med(r["centroid_err"] for r in mv), "n": len(mv)})
        rows.append({"gate": "G4 DragonDiffusion move: ghost (<= 0.1)", "value": med(r["ghost"] for r in mv), "n": len(mv)})
        rows.append({"gate": "G4 DragonDiffusion move: PSNR outside dB (>= 30)", "value": med(r["psnr_out"] for r in mv), "n": len(mv)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bench", nargs="*", default=None, help="ShapesBench JSON files: print G3 / G4 from them")
    ap.add_argument("--weights", nargs="*", default=None)
    ap.add_argument("--random", default=None, help="measure an untrained design instead (its name)")
    ap.add_argument("--name", default="shapes_gates_v1")
    ap.add_argument("--scenes", type=int, default=N_SCENES)
    a = ap.parse_args()
    if a.bench:
        rows = [dict(r, run=Path(b).stem) for b in a.bench for r in method_gates(Path(b))]
        _util.report(a.name, rows, {"bench": a.bench})
        return
    if a.random or not a.weights or len(a.weights) == 1:
        run(Path(a.weights[0]) if a.weights else None, a.name, a.scenes, random_arch=a.random)
        return
    results = [run(Path(w), a.name, a.scenes, write=False) for w in a.weights]
    _util.report(a.name, table(results), {"results": results})


if __name__ == "__main__":
    main()
