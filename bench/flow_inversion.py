"""Bench: reconstruction PSNR of the flow inversions against model calls, on the tiny FLUX (built from config, random
init), the tiny SD3 (through comfy.sd.load_diffusion_model) and the trained shapes demo DiT (`dit`: ShapesBench scenes
encoded by the shapes VAE, each with its own prompt), each inversion undone by its SAMPLER inside the stock
SamplerCustomAdvanced. Rows: model, inverter, steps; PSNR (dB, latent space, peak = the latent's range) as the median
over seeds with min / max, and the model calls of inversion + reconstruction (counted on the diffusion model).
Prints a table, writes out/bench/flow_inversion.json.

A random-init model has a smooth but meaningless velocity field: the figures compare solvers on the same field (the
demo DiT's figures come with its weights).

usage: python -m bench.flow_inversion [--steps 4 8 16] [--seeds 3] [--models flux sd3 dit]"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import _util

INVERTERS = ["euler", "rf_solver", "fireflow", "edit_friendly"]


def _count(model):
    """A forward pre-hook counting calls of the DiT."""
    from dragedit.core import host
    dm = host.dit.diffusion_model(model)
    n = {"calls": 0}
    h = dm.register_forward_pre_hook(lambda *_: n.__setitem__("calls", n["calls"] + 1))
    return n, h


def tiny_inputs(seed: int, size: int) -> tuple[dict, list]:
    """(LATENT, CONDITIONING) for the random-init tiny DiTs."""
    from tools.support import tiny_models
    return tiny_models.dit_latent(seed, size=size), tiny_models.dit_conditioning(seed)


def shapes_inputs(seed: int, encoder, vae) -> tuple[dict, list]:
    """(LATENT, CONDITIONING) of ShapesBench scene `seed` (its concept_recolour cases, in order) for the demo DiT."""
    from bench import shapes_cases as sc
    from dragedit.demo.shapes import dit
    cases = [c for c in sc.build_cases() if c.kind == "concept_recolour"]
    case = cases[seed % len(cases)]
    img = sc.input_image(case).permute(1, 2, 0).unsqueeze(0)
    return {"samples": vae.encode(img)}, dit.conditioning(encoder, [case.prompt])


def one(model, inverter: str, steps: int, seed: int, inputs) -> tuple[float, int]:
    from tools.support.flow_calls import psnr, sampler_custom_advanced, scheduler_sigmas
    from tools.support.node_calls import run_node
    from dragedit.core import host
    from dragedit.nodes.flow_inversion import EditFriendlyFlowInversion, FlowInversion
    lat, pos = inputs(seed)
    sig = scheduler_sigmas(model, steps)
    n, h = _count(model)
    try:
        if inverter == "edit_friendly":
            noise, sampler, _ = run_node(EditFriendlyFlowInversion, model=model, latent=lat, positive=pos, sigmas=sig,
                                         eta=1.0, seed=seed, cfg=1.0)
        else:
            noise, sampler, _ = run_node(FlowInversion, model=model, latent=lat, positive=pos, sigmas=sig,
                                         solver=inverter, cfg=1.0)
        out = sampler_custom_advanced(model, noise, sampler, sig, lat, pos)
    finally:
        h.remove()
    return psnr(host.process_in(model, out), host.process_in(model, lat["samples"])), n["calls"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["flux", "sd3"])
    a = ap.parse_args()
    _util.setup()
    import torch
    from tools.support import tiny_models
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    from dragedit.demo.shapes import dit

    def tiny(build, size):
        return build(), lambda s: tiny_inputs(s, size)

    def demo():
        model, clip, vae = dit.load(dit.default_weights())
        return model, lambda s: shapes_inputs(s, clip.encoder, vae)

    models = {"flux": lambda: tiny(tiny_models.flux, 16),
              "sd3": lambda: tiny(lambda: tiny_models.sd3(tmp / "sd3.safetensors"), 8), "dit": demo}
    rows = []
    for name in a.models:
        model, inputs = models[name]()
        for steps in a.steps:
            for inv in INVERTERS:
                res = [one(model, inv, steps, s, inputs) for s in range(a.seeds)]
                dbs = [r[0] for r in res]
                rows.append({"model": name, "inverter": inv, "steps": steps,
                             "psnr_db_median": statistics.median(dbs), "psnr_min": min(dbs), "psnr_max": max(dbs),
                             "model_calls": res[0][1]})
    _util.report("flow_inversion", rows, {"seeds": a.seeds, "latent": "tiny_models.dit_latent(seed)",
                                          "weights": "random init (tiny_models.flux / tiny_models.sd3); dit: "
                                                     f"{dit.default_weights().name} on ShapesBench "
                                                     "concept_recolour scenes (seed = case index) with their prompts"})


if __name__ == "__main__":
    main()
