"""Bench: LEDITS Edit on the trained shapes demo DiT (the flow path: edit-friendly flow inversion + SEGA concepts on the
velocity), on ShapesBench's concept_recolour cases (concepts "new-colour kind" add, "old-colour kind" remove), and
FlowEdit (method=flowedit: source prompt = the scene's words, target prompt = the edited scene's words; the GUIDER in
stock SamplerCustomAdvanced with euler on the last n_max of `steps` sigmas),
scored as ShapesBench scores them (bench/shapes_scoring.case_metrics: success = the new colour and kind found at the
object, the other shapes intact; PSNR outside the edit region against the ground truth). Runs in-process (the demo
DiT loaded directly, not through the server), one row per setting, plus the no-edit baseline. Writes
out/bench/ledits_flow.json and a contact sheet per setting (input | ground truth | edit) in out/bench/ledits_flow/.

usage: python -m bench.ledits_flow [--cases 12] [--seed 20261125] [--weights FILE] [--set steps=20,skip=2,cfg=1,scale=10 ...]
       (mask=1: LEDITS Edit's user mask = the object's box; rscale: the remove concept's scale, default scale;
        lock=1: keep_structure, the source's attention maps in the single-stream blocks)
       (--set method=flowedit,steps=20,n_max=16,cfg=1,target_cfg=3.5,n_avg=1)"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench import _util

DEFAULT = dict(steps=20, skip=2, cfg=1.0, scale=10.0, threshold=0.95, warmup=2, mode="SEGA")
FLOWEDIT = dict(method="flowedit", steps=20, n_max=16, cfg=1.0, target_cfg=1.0, n_avg=1, n_min=0)
INTS = ("steps", "skip", "warmup", "n_max", "n_avg", "n_min", "mask", "lock")


def parse_set(text: str) -> dict:
    s = dict(FLOWEDIT if "method=flowedit" in text else DEFAULT)
    for kv in filter(None, text.split(",")):
        k, v = kv.split("=")
        s[k] = v if k in ("mode", "method") else (int(v) if k in INTS else float(v))
    return s


def flowedit(model, encoder, vae, case, s: dict):
    """The FlowEdit result [3, 32, 32] of one case with setting s."""
    import torch
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, RandomNoise, SamplerCustomAdvanced
    from tools.support.flow_calls import _call, scheduler_sigmas
    from tools.support.node_calls import run_node
    from bench import shapes_cases as sc
    from dragedit.demo.shapes import dit, renderer
    from dragedit.nodes.flowedit import FlowEdit
    img = sc.input_image(case).permute(1, 2, 0).unsqueeze(0)
    cond = lambda t: dit.conditioning(encoder, [t])                       # noqa: E731
    g, = run_node(FlowEdit, model=model, source=cond(case.prompt), target=cond(renderer.prompt(case.target)),
                  source_cfg=s["cfg"], target_cfg=s["target_cfg"], n_avg=s["n_avg"], seed=0, negative=cond(""),
                  n_min=s["n_min"])
    sig = scheduler_sigmas(model, s["steps"])[s["steps"] - s["n_max"]:]
    with torch.inference_mode():
        out = _call(SamplerCustomAdvanced, noise=_call(RandomNoise, noise_seed=0)[0], guider=g,
                    sampler=_call(KSamplerSelect, sampler_name="euler")[0], sigmas=sig,
                    latent_image={"samples": vae.encode(img)})[0]["samples"]
        return vae.decode(out)[0].permute(2, 0, 1).clamp(0, 1)


def edit(model, encoder, vae, case, s: dict):
    """The edited image [3, 32, 32] of one case with setting s."""
    from tools.support.node_calls import run_node
    from bench import shapes_cases as sc
    from dragedit.demo.shapes import dit
    from dragedit.nodes.sega import LEDITSEdit
    img = sc.input_image(case).permute(1, 2, 0).unsqueeze(0)
    cond = lambda t: dit.conditioning(encoder, [t])                       # noqa: E731
    inputs = dict(model=model, vae=vae, source=cond(case.prompt), negative=cond(""), steps=s["steps"],
                  skip=s["skip"], source_cfg=s["cfg"], target_cfg=s["cfg"], mode=s["mode"], seed=0,
                  threshold=s["threshold"], warmup=s["warmup"], momentum_scale=0.1, momentum_beta=0.4, image=img)
    for i, (words, direction) in enumerate(case.concepts[:3], 1):
        scale = s.get("rscale", s["scale"]) if direction == "remove" else s["scale"]
        inputs[f"concept_{i}"], inputs[f"direction_{i}"], inputs[f"scale_{i}"] = cond(words), direction, scale
    if s.get("mask"):       # the object's box as the user's mask
        inputs["mask"] = case.handle_mask().float()[None]
    if s.get("lock"):       # keep_structure: the source's attention maps in the single blocks
        inputs["keep_structure"] = True
    out, _lat = run_node(LEDITSEdit, **inputs)
    return out[0].permute(2, 0, 1).clamp(0, 1)


def sheet(rows, path: Path) -> None:
    """A contact sheet: one line per case, input | ground truth | edit, 8x nearest."""
    import torch
    from PIL import Image
    lines = [torch.cat([a, b, c], dim=2) for a, b, c in rows]
    grid = torch.cat(lines, dim=1)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=4, mode="nearest")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--set", dest="sets", nargs="*", default=[""])
    ap.add_argument("--weights", default=None, help="a shapes DiT weights file (a training run's export)")
    ap.add_argument("--name", default="ledits_flow", help="out/bench/<name>.json and out/bench/<name>/")
    a = ap.parse_args()
    _util.setup()
    import torch
    torch.set_num_threads(1)
    from bench import shapes_cases as sc
    from bench import shapes_scoring as S
    from dragedit.demo.shapes import dit
    a.weights = a.weights or str(dit.default_weights())
    model, clip, vae = dit.load(Path(a.weights))
    cases = [c for c in sc.build_cases(**({"seed": a.seed} if a.seed is not None else {}))
             if c.kind == "concept_recolour"][:a.cases]
    rows = []
    base = [S.case_metrics(c, sc.input_image(c)) for c in cases]
    rows.append({"setting": "no edit", "cases": len(cases), "success": statistics.mean(m["success"] for m in base),
                 "psnr_out_median": statistics.median(m["psnr_out"] for m in base)})
    for text in a.sets:
        s = parse_set(text)
        ms, pics = [], []
        for c in cases:
            out = (flowedit if s.get("method") == "flowedit" else edit)(model, clip.encoder, vae, c, s)
            ms.append(S.case_metrics(c, out))
            pics.append((sc.input_image(c), sc.gt_image(c), out))
        name = ",".join(f"{k}={v}" for k, v in s.items())
        sheet(pics, _util.OUT / a.name / f"{name.replace('=', '').replace(',', '_')}.png")
        dbs = [m["psnr_out"] for m in ms]
        rows.append({"setting": name, "cases": len(cases), "success": statistics.mean(m["success"] for m in ms),
                     "psnr_out_median": statistics.median(dbs), "psnr_out_min": min(dbs), "psnr_out_max": max(dbs)})
    _util.report(a.name, rows, {"model": a.weights, "seed": a.seed,
                                       "cases": "ShapesBench concept_recolour (bench/shapes_cases.build_cases)"})


if __name__ == "__main__":
    main()
