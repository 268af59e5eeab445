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
G3 / G4 are method runs at the nodes' defaults: ShapesBench's point-drag and move rows (bench/shapesbench.py).

    python bench/shapes_gates.py                         # the shipped model (v1)
    python bench/shapes_gates.py --weights DIR/shapes_v1.safetensors --name candidate

Prints a table and writes out/bench/<name>.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

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


def run(weights: Path | None, name: str, n_scenes: int = N_SCENES) -> dict:
    import torch
    _util.setup()
    from dragedit.core.shapes import model as sm, renderer, vae
    from dragedit.core import dragdiffusion as ddiff, dragondiffusion as dragon

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("DRAGEDIT_BENCH_THREADS", "1")))
    mp, clip, _ = sm.load_demo(weights, allow_random=False) if weights else sm.load_demo(allow_random=False)
    unet, enc = sm.unet_of(mp), clip.encoder
    ab = sm.alphas_cumprod(mp).double()
    blocks = {"dragdiffusion up_blocks[-2]": ddiff.feature_block_index(mp, -2)}
    for b in dragon.feature_blocks(mp):
        blocks.setdefault(f"dragondiffusion out{b}", b)
    size = sm.IMAGE_SIZE
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
            x0_, y0_, x1_, y1_ = sh.x - sh.extent - 1, sh.y - sh.extent - 1, sh.x + sh.extent + 1, sh.y + sh.extent + 1
            c0, r0 = max(int(x0_ // f), 0), max(int(y0_ // f), 0)
            c1, r1 = min(int(-(-x1_ // f)), size // f), min(int(-(-y1_ // f)), size // f)
            lat = size // f
            dx = 3 if c1 + 3 <= lat else -3                     # 3 cells = 6 px
            dy = 0
            zc = z.clone()
            zc[:, :, r0:r1, c0 + dx:c1 + dx] = z[:, :, r0:r1, c0:c1]
            for a, b in zip(ts[::-1][:-1], ts[::-1][1:]):
                zc = _ddim(unet, ctx, ab.float(), zc, a, b)
            out = vae.decode(zc / sm.SCALE_FACTOR)[0].clamp(0, 1)
            keep = torch.ones(size, size, dtype=torch.bool)
            for cc0, cc1 in ((c0, c1), (c0 + dx, c1 + dx)):
                keep[max(r0 * f - 3, 0):r1 * f + 3, max(cc0 * f - 3, 0):cc1 * f + 3] = False
            if keep.sum() > 16:
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
    res = {"name": name, "weights": str(weights or sm.WEIGHTS), "seed": SEED, "scenes": len(scenes),
           "G1_background_psnr_db": {"median": statistics.median(g1), "min": min(g1), "max": max(g1), "n": len(g1)},
           "G2_cos_obj_obj_minus_obj_bg": {
               label: {str(t): {"mean": statistics.fmean(v), "median": statistics.median(v), "n": len(v)}
                       for t, v in per_t.items() if v} for label, per_t in g2.items()}}
    rows = [{"gate": "G1 background PSNR dB (median, min-max)", name: f"{res['G1_background_psnr_db']['median']:.1f} "
             f"({min(g1):.1f}-{max(g1):.1f})", "goal": ">= 30"}]
    for label, per_t in res["G2_cos_obj_obj_minus_obj_bg"].items():
        for t, v in per_t.items():
            rows.append({"gate": f"G2 {label} t={t} (mean)", name: f"{v['mean']:.3f}", "goal": ">= 0.3"})
    _util.report(name, rows, {k: v for k, v in res.items() if k in ("weights", "seed", "scenes")} | {"result": res})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--name", default="shapes_gates_v1")
    ap.add_argument("--scenes", type=int, default=N_SCENES)
    a = ap.parse_args()
    run(Path(a.weights) if a.weights else None, a.name, a.scenes)


if __name__ == "__main__":
    main()
