"""Where widget extremes saturate (issue 23, class 7) on the Shapes Demo Model: the edited latent's std over the input
latent's std, its largest |value| and whether it is finite, for DragDiffusion's learning_rate, DragonDiffusion's
energy_scale and cfg, and LEDITS Edit's concept scale (with momentum_scale 0.1 and 10), momentum_scale and source_cfg = target_cfg.

Each row is one run of the node, in-process, on one seeded scene. Prints a table; writes out/bench/saturation.json.
`--quick` runs fewer values (what the tests' thresholds were read from is the full run)."""
from __future__ import annotations

import argparse
import time

from bench import _util


def _stats(out, ref) -> dict:
    import torch
    out = out.float()
    finite = bool(torch.isfinite(out).all())
    std = float(out[torch.isfinite(out)].std()) if finite else float("nan")
    rms = float(out.pow(2).mean().sqrt()) if finite else float("nan")
    return {"rms_ratio": round(rms / float(ref.float().pow(2).mean().sqrt()), 3),
            "std_ratio": round(std / float(ref.float().std()), 3), "max_abs": round(float(out.abs().max()), 3),
            "finite": finite}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated: dragdiffusion, dragon_energy, dragon_cfg, ledits_scale, "
                                               "ledits_momentum, ledits_cfg")
    args = ap.parse_args()
    _util.setup()
    import torch
    from tools.support.node_calls import run_node
    from dragedit.nodes import NODE_CLASS_MAPPINGS as N
    from dragedit.core.drag_schema import DragInstructions

    model, clip, vae = run_node(N["DragEditShapesDemoModel"])
    image, prompt = run_node(N["DragEditShapesScene"], seed=1, shapes="1")
    import nodes as comfy_nodes
    encode = comfy_nodes.CLIPTextEncode().encode
    with torch.inference_mode():
        pos = encode(clip, prompt)[0]
        neg = encode(clip, "")[0]
        blue = encode(clip, "blue")[0]
    latent = {"samples": vae.encode(image[:, :, :, :3])}
    ref = latent["samples"]
    drag = DragInstructions.from_json('{"version": 1, "points": [[8, 16, 20, 16]]}', image_size=(32, 32))
    only = {s for s in args.only.split(",") if s}
    rows: list[dict] = []

    def row(knob: str, value: float, fn, **extra) -> None:
        t = time.process_time()
        try:
            out = fn()
            r = dict(_stats(out, ref), error="")
        except Exception as e:      # a refusal or a crash: recorded as it is
            r = {"rms_ratio": None, "std_ratio": None, "max_abs": None, "finite": None, "error": f"{type(e).__name__}: {e}"[:160]}
        rows.append({"knob": knob, "value": value, **extra, **r, "cpu_s": round(time.process_time() - t, 1)})
        print(rows[-1], flush=True)

    def want(name: str) -> bool:
        return not only or name in only

    if want("dragdiffusion"):
        for lr in ([0.01, 0.1, 1.0] if args.quick else [0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0]):
            row("DragDiffusion learning_rate", lr, lambda lr=lr: run_node(
                N["DragEditDragDiffusion"], model=model, positive=pos, drag=drag, latent=latent, steps=10,
                strength=0.5, iterations=20, learning_rate=lr, reference_kv=False, threshold=0.1)[0]["samples"])
    inv = None
    if want("dragon_energy") or want("dragon_cfg"):
        _, inv, _ = run_node(N["DragEditDDIMInversion"], model=model, latent=latent, positive=pos, steps=10,
                             strength=1.0, record_kv=True)

    def dragon(energy: float, cfg: float):
        return run_node(N["DragEditDragonDiffusion"], model=model, positive=pos, negative=neg, inversion=inv,
                        mode="drag", cfg=cfg, energy_scale=energy, resize_scale=1.0, drag=drag)[0]["samples"]

    if want("dragon_energy"):
        for e in ([1, 30, 1000] if args.quick else [1, 3, 10, 30, 100, 300, 1000]):
            row("DragonDiffusion energy_scale", e, lambda e=e: dragon(float(e), 1.0))
    if want("dragon_cfg"):
        for c in ([1, 7.5, 30] if args.quick else [1, 4, 7.5, 10, 15, 20, 30]):
            row("DragonDiffusion cfg", c, lambda c=c: dragon(1.0, float(c)))

    def ledits(scale: float, momentum: float, cfg: float):
        return run_node(N["DragEditLEDITSEdit"], model=model, vae=vae, source=pos, negative=neg, steps=20, skip=2,
                        source_cfg=cfg, target_cfg=cfg, mode="SEGA", seed=0, latent=latent, concept_1=blue,
                        direction_1="add", scale_1=scale, direction_2="add", scale_2=0.0, direction_3="add",
                        scale_3=0.0, threshold=0.9, warmup=0, momentum_scale=momentum,
                        momentum_beta=0.4)[1]["samples"]

    if want("ledits_scale"):
        for m in (0.1, 10.0):
            for s in ([5, 100] if args.quick else [5, 10, 20, 30, 50, 100]):
                row("LEDITS scale_1", s, lambda s=s, m=m: ledits(float(s), m, 1.0), momentum_scale=m)
    if want("ledits_momentum"):
        for m in ([0.5, 0.95] if args.quick else [0.3, 0.5, 0.8, 0.9, 0.95, 0.99]):
            row("LEDITS momentum_scale", m, lambda m=m: ledits(10.0, m, 1.0), scale_1=10.0)
    if want("motion_supervision"):
        _, inv_ms, _ = run_node(N["DragEditDDIMInversion"], model=model, latent=latent, positive=pos, steps=10,
                                strength=0.5, record_kv=False)
        for lr in ([0.1, 1.0] if args.quick else [0.1, 0.3, 0.5, 1.0]):
            row("Motion Supervision learning_rate (noisy latent)", lr, lambda lr=lr: run_node(
                N["DragEditMotionSupervision"], model=model, positive=pos, drag=drag, inversion=inv_ms,
                iterations=20, learning_rate=lr, threshold=0.1)[0]["samples"])
    if want("feature_guidance"):
        _, inv_fg, sig_fg = run_node(N["DragEditDDIMInversion"], model=model, latent=latent, positive=pos, steps=10,
                                     strength=1.0, record_kv=False)
        import comfy.samplers
        from tools.support.node_calls import stock_sampler_custom
        start = {"samples": __import__("dragedit.core.host", fromlist=["host"]).process_out(
            model, inv_fg.latent(0).clone())}
        for e in ([1, 1000] if args.quick else [1, 100, 300, 1000]):
            row("Feature Guidance energy_scale (SamplerCustom, ddim)", e, lambda e=e: stock_sampler_custom(
                run_node(N["DragEditFeatureGuidance"], model=model, inversion=inv_fg, mode="drag", energy_scale=e,
                         start_percent=0.0, end_percent=0.6, resize_scale=1.0, drag=drag)[0],
                pos, neg, 1.0, comfy.samplers.sampler_object("ddim"), sig_fg, start))
    if want("ledits_cfg"):
        for c in ([1, 30] if args.quick else [1, 3.5, 7.5, 15, 30]):
            row("LEDITS source_cfg = target_cfg", c, lambda c=c: ledits(10.0, 0.1, float(c)))

    _util.report("saturation", rows, extra={"model": "Shapes Demo Model", "scene": "seed 1, one shape"})


if __name__ == "__main__":
    main()
