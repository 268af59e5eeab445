"""What one UNet call of a full-size SD1.5 model costs on this machine at 512 px (latent 64 x 64), forward and
forward + backward (motion supervision), with random weights built from SD1.5's real config through ComfyUI's own
model classes (nothing downloaded). Multiplied by the calls each method makes at its shipped settings, it says how
long the real-image workflows take on a CPU.
    .venv/bin/python -m bench.sd_unet_cost [--threads 2] [--reps 3]   -> table + out/bench/sd_unet_cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SD15 = dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
            transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            transformer_depth_middle=1, context_dim=768, use_linear_in_transformer=False, adm_in_channels=None,
            use_temporal_attention=False, use_temporal_resblock=False, use_checkpoint=False, image_size=32,
            use_spatial_transformer=True, legacy=False)

# UNet calls per method at the settings of the example workflows "SD1.5 - *.json" (cfg 1 unless said; a backward ~ 2 forwards)
CALLS = {
    "RegionDrag (20 steps, strength 0.5)": 10 + 10,
    "LEDITS (50 steps, skip 15, 1 concept)": 35 * 2 + 35 * 3,
    "DragDiffusion (35 inv + 80 motion sup. + 35 den.)": 35 + 80 * 3 + 35,
    "Train LoRA (80 steps, fwd + bwd)": 80 * 3,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    from tools.support.comfy_env import setup_comfy
    setup_comfy()
    import torch
    torch.set_num_threads(a.threads)
    import comfy.supported_models as sm
    cfg = sm.SD15(dict(SD15))
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({}, "", device=torch.device("cpu"))
    unet = model.diffusion_model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim <= 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    params = sum(p.numel() for p in unet.parameters())
    x = torch.randn(1, 4, 64, 64, generator=g)
    ctx = torch.randn(1, 77, 768, generator=g)
    t = torch.tensor([500.0])
    fwd, bwd = [], []
    for _ in range(a.reps):
        with torch.no_grad():
            t0 = time.process_time()
            unet(x, t, context=ctx)
            fwd.append(time.process_time() - t0)
        xg = x.clone().requires_grad_(True)
        t0 = time.process_time()
        unet(xg, t, context=ctx).square().mean().backward()
        bwd.append(time.process_time() - t0)
        unet.zero_grad(set_to_none=True)
    f, b = statistics.median(fwd), statistics.median(bwd)
    load = os.getloadavg()
    print(f"SD1.5 UNet ({params / 1e6:.0f} M parameters, fp32) at 512 px on {a.threads} thread(s), "
          f"load average {load[0]:.1f}: CPU time per call, median of {a.reps}")
    print(f"  forward {f:.1f} s (min-max {min(fwd):.1f}-{max(fwd):.1f}), forward + backward {b:.1f} s "
          f"(min-max {min(bwd):.1f}-{max(bwd):.1f})")
    est = {k: n * f for k, n in CALLS.items()}
    for k, v in est.items():
        print(f"  {k:52s} ~{CALLS[k]:4d} call-equivalents  ~{v / 60:5.1f} min CPU")
    dest = ROOT / "out" / "bench" / "sd_unet_cost.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"params": params, "threads": a.threads, "loadavg": load, "forward_s": fwd,
                                "forward_backward_s": bwd, "estimates_s": est}, indent=2))
    print(f"-> {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
