"""Training cost of Shapes v2 candidates against the shipped v1, measured side by side (interleaved rounds,
process CPU time, one thread): one forward + backward of the UNet at batch 32, which is what a training step costs
beyond the data. With a step count this projects the CPU time of a training run (the issue's "measure before you
commit"). Candidates (demo/shapes/model.py ARCHS) follow the review's recipe for SD-like locality: two res blocks
per level and attention only at the two lowest resolutions, at the shipped 32 px (16x16 latent) or at 64 px
(32x32 latent through the same 2x2 unshuffle).

    python -m bench.shapes_v2_cost [--rounds 3] [--batch 32] [--steps 100000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from bench import _util  # noqa: E402


def candidates() -> dict[str, tuple[dict, int]]:
    """name -> (ComfyUI UNet config, latent side): every design in demo/shapes/model.py."""
    from dragedit.demo.shapes import model as sm
    return {a.name: (a.unet_config, a.latent_size) for a in sm.ARCHS.values()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100_000, help="training steps to project (the review's estimate)")
    a = ap.parse_args()
    _util.setup()
    import torch
    from dragedit.core import host
    from dragedit.demo.shapes import model as sm
    torch.set_num_threads(1)
    nets = {}
    for name, (cfg, hw) in candidates().items():
        u = host.diffusion_model(host.build_model(cfg, latent_format=sm.latent_format_class()))
        for p in u.parameters():
            p.requires_grad_(True)
        nets[name] = (u, hw)
    cpu = {k: [] for k in nets}
    with torch.inference_mode(False):
        for r in range(a.rounds + 1):                       # round 0 warms up, not counted
            for name, (u, hw) in nets.items():
                x = torch.randn(a.batch, 12, hw, hw)
                c = torch.randn(a.batch, 4, sm.CONTEXT_DIM)
                t0 = time.process_time()
                u(x, timesteps=torch.rand(a.batch) * 999, context=c).square().mean().backward()
                if r:
                    cpu[name].append(time.process_time() - t0)
                u.zero_grad(set_to_none=True)
    rows = []
    base = statistics.median(cpu[next(iter(cpu))])
    for name, v in cpu.items():
        med = statistics.median(v)
        rows.append({"model": name, "M params": round(sum(p.numel() for p in nets[name][0].parameters()) / 1e6, 2),
                     "CPU s/step (median)": round(med, 2), "spread": f"{min(v):.2f}-{max(v):.2f}",
                     "x v1": round(med / base, 1),
                     f"CPU h for {a.steps // 1000}k steps": round(med * a.steps / 3600, 0)})
    _util.report("shapes_v2_cost", rows, {"batch": a.batch, "rounds": a.rounds, "threads": 1,
                                          "load": os.getloadavg()})


if __name__ == "__main__":
    main()
