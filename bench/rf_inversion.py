"""Bench: RF-Inversion (nodes/rf_inversion.py) on the shapes demo DiT: reconstruction PSNR (latent space, the image's
own prompt, cfg 1) for controller strengths γ with the η = 0 reverse (the stock Euler sampler) and the pipeline's
example reverse (η 0.9 on the first quarter of the steps), next to the pack's Euler inversion (Flow Inversion,
velocity labelled with the step's end). ShapesBench concept_recolour scenes through the shapes VAE (seed = case
index); medians with min / max over seeds. Writes out/bench/rf_inversion.json and, for the first scene at the largest
step count, a strip out/bench/rf_inversion/recon.png (4x nearest): image | Euler inversion | each RF-Inversion row.

--edit runs edits instead: ShapesBench concept_recolour cases, the source prompt = the scene's words for the
inversion, the target prompt = the edited scene's words for the sampler, scored as bench/ledits_flow.py scores
(success, PSNR outside the edit region), with a contact sheet per setting in out/bench/rf_inversion/.

usage: python -m bench.rf_inversion [--steps 8 20] [--seeds 6] [--gammas 0 0.5 1]
       python -m bench.rf_inversion --edit steps=20,gamma=0.5,eta=0.9,start=0,stop=0.25 ... [--cases 12]"""
from __future__ import annotations

import argparse
import statistics

from bench import _util


def _rows(gammas):
    yield "Flow Inversion euler + its sampler", None, None
    for g in gammas:
        yield f"RF-Inversion gamma {g:g}, eta 0", g, (0.0, 0.0, 1.0)
        yield f"RF-Inversion gamma {g:g}, eta 0.9 first quarter", g, (0.9, 0.0, 0.25)


EDIT = dict(steps=20, gamma=0.5, eta=0.9, start=0.0, stop=0.25, decay=0.0, cfg=1.0)
"""An edit setting: the inversion's γ, the sampler's η window, and the target prompt's cfg (negative "")."""


def rf_edit(model, encoder, vae, case, s: dict):
    """The RF-Inversion edit [3, 32, 32] of one case with setting s (the inversion's own seed 0)."""
    from tools.support.flow_calls import sampler_custom_advanced, scheduler_sigmas
    from tools.support.node_calls import run_node
    from bench import shapes_cases as sc
    from dragedit.demo.shapes import dit, renderer
    from dragedit.nodes.rf_inversion import RFInversion, RFInversionSampler
    img = sc.input_image(case).permute(1, 2, 0).unsqueeze(0)
    cond = lambda t: dit.conditioning(encoder, [t])                       # noqa: E731
    lat = {"samples": vae.encode(img)}
    sig = scheduler_sigmas(model, int(s["steps"]))
    noise, _, inv = run_node(RFInversion, model=model, latent=lat, positive=cond(case.prompt), sigmas=sig,
                             gamma=s["gamma"], seed=0, cfg=1.0)
    (sampler,) = run_node(RFInversionSampler, inversion=inv, eta=s["eta"], start=s["start"], stop=s["stop"],
                          decay_power=s["decay"])
    neg = cond("") if s["cfg"] != 1.0 else None
    out = sampler_custom_advanced(model, noise, sampler, sig, lat, cond(renderer.prompt(case.target)), neg, s["cfg"])
    return vae.decode(out)[0].permute(2, 0, 1).clamp(0, 1)


def edits(settings: list[str], n_cases: int) -> None:
    import statistics as st
    from bench import shapes_cases as sc
    from bench import shapes_scoring as S
    from bench.ledits_flow import sheet
    from dragedit.demo.shapes import dit
    model, clip, vae = dit.load(dit.default_weights())
    cases = [c for c in sc.build_cases() if c.kind == "concept_recolour"][:n_cases]
    rows = []
    for text in settings:
        s = dict(EDIT)
        for kv in filter(None, text.split(",")):
            k, v = kv.split("=")
            s[k] = float(v)
        ms, pics = [], []
        for c in cases:
            out = rf_edit(model, clip.encoder, vae, c, s)
            ms.append(S.case_metrics(c, out))
            pics.append((sc.input_image(c), sc.gt_image(c), out))
        name = ",".join(f"{k}={v:g}" for k, v in s.items())
        sheet(pics, _util.OUT / "rf_inversion" / f"edit_{name.replace('=', '').replace(',', '_')}.png")
        dbs = [m["psnr_out"] for m in ms]
        rows.append({"setting": name, "cases": len(cases), "success": st.mean(m["success"] for m in ms),
                     "psnr_out_median": st.median(dbs), "psnr_out_min": min(dbs), "psnr_out_max": max(dbs)})
    _util.report("rf_inversion_edit", rows, {"model": dit.default_weights().name,
                                             "cases": "ShapesBench concept_recolour (bench/shapes_cases.build_cases)"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 20])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--edit", nargs="*", default=None)
    ap.add_argument("--cases", type=int, default=12)
    a = ap.parse_args()
    _util.setup()
    if a.edit is not None:
        import torch
        torch.set_num_threads(1)
        edits(a.edit or [""], a.cases)
        return
    import torch
    from bench.flow_inversion import shapes_inputs
    from tools.support.flow_calls import psnr, sampler_custom_advanced, scheduler_sigmas
    from tools.support.node_calls import run_node
    from dragedit.core import host
    from dragedit.demo.shapes import dit
    from dragedit.nodes.flow_inversion import FlowInversion
    from dragedit.nodes.rf_inversion import RFInversion, RFInversionSampler
    torch.set_num_threads(1)
    model, clip, vae = dit.load(dit.default_weights())
    res: dict = {}
    strip = []
    for steps in a.steps:
        sig = scheduler_sigmas(model, steps)
        for seed in range(a.seeds):
            lat, pos = shapes_inputs(seed, clip.encoder, vae)
            z0 = host.process_in(model, lat["samples"])
            keep = seed == 0 and steps == max(a.steps)
            if keep:
                strip.append(vae.decode(lat["samples"]))
            invs: dict = {}
            for name, g, rev in _rows(a.gammas):
                if g is None:
                    noise, sampler, _ = run_node(FlowInversion, model=model, latent=lat, positive=pos, sigmas=sig,
                                                 solver="euler", cfg=1.0)
                else:
                    if g not in invs:
                        invs[g] = run_node(RFInversion, model=model, latent=lat, positive=pos, sigmas=sig, gamma=g,
                                           seed=seed, cfg=1.0)
                    noise, _, inv = invs[g]
                    (sampler,) = run_node(RFInversionSampler, inversion=inv, eta=rev[0], start=rev[1], stop=rev[2])
                out = sampler_custom_advanced(model, noise, sampler, sig, lat, pos)
                res.setdefault((name, steps), []).append(psnr(host.process_in(model, out), z0))
                if keep:
                    strip.append(vae.decode(out))
    rows = []
    for (name, steps), dbs in res.items():
        rows.append({"method": name, "steps": steps, "psnr_db_median": statistics.median(dbs),
                     "psnr_min": min(dbs), "psnr_max": max(dbs)})
    out = _util.report("rf_inversion", rows, {"seeds": a.seeds, "weights": dit.default_weights().name,
                                                "cfg": 1.0})
    if strip:
        from PIL import Image
        img = torch.cat([s[0] for s in strip], dim=1).clamp(0, 1)
        path = out.parent / "rf_inversion" / "recon.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img.cpu().numpy() * 255).round().astype("uint8")).resize(
            (img.shape[1] * 4, img.shape[0] * 4), Image.NEAREST).save(path)
        print("wrote", path)


if __name__ == "__main__":
    main()
