"""Train the FLUX-architecture shapes demo model (demo/shapes/dit.py) from a seed: flow matching exactly as ComfyUI's
FLUX sampling reads the model (x_σ = σ·ε + (1 − σ)·x0, timestep σ, target v = ε − x0), σ drawn logit-normal
(σ = sigmoid(n), n ~ N(0, 1), as SD3 / FLUX train), AdamW + warm-up + cosine, EMA, prompt dropout for CFG; exports
fp16 EMA weights (design, config, shift and step count in the metadata) and a sample grid drawn by ComfyUI's own
sampler (KSAMPLER euler on the model's ModelSamplingFlux sigmas, CFG against the empty prompt) through the MODEL
that `dit.build_model` makes, so every export proves the round trip.

Run from the repository root:
    python -m tools.train_shapes_dit --out DIR --steps 3500 --batch 32 --seed 0 [--design dit-p2] [--export-every 250]

The data pipeline is the UNet trainer's (tools/train_shapes.py: scene rendering, VAE encode, prompt encode, prompt
dropout): batch k is a pure function of (seed, k), so a run resumed from <out>/train_state.pt (torch.save of tensors,
lists and numbers, loaded with weights_only=True) is the same run. The in-place residual adds of ComfyUI's FLUX blocks
would break backward; training runs the forward under a saved-tensors hook that keeps a copy of each saved tensor
(`grad_safe`), so ComfyUI's blocks run unchanged."""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Optional, Sequence

# OpenMP threads that spin while waiting burn ~10x the CPU on a shared machine; set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from tools import train_shapes as unet_train  # noqa: E402  (setup_comfy, step_batch, lr_at, ema_update, grids)
from dragedit.demo.shapes import dit  # noqa: E402
from dragedit.demo.shapes import vae as shapes_vae  # noqa: E402
from dragedit.demo.shapes.prompt import tokenize  # noqa: E402

STATE = "train_state.pt"


def grad_safe():
    """Context manager for a training forward through ComfyUI's FLUX blocks: every tensor autograd saves is copied
    when saved, so the blocks' in-place residual adds (`img +=`, `x +=`) do not invalidate it."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t if isinstance(t, torch.nn.Parameter) else t.clone(),
                                                    lambda t: t)


def sigmas_for(seed: int, step: int, n: int, mode: str) -> torch.Tensor:
    """σ of training batch `step`, a pure function of (seed, step): logit-normal (sigmoid of N(0, 1)) or uniform."""
    g = torch.Generator().manual_seed(((int(seed) << 32) + int(step)) ^ 0x5EED_D17)
    if mode == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=g))
    if mode == "uniform":
        return torch.rand(n, generator=g)
    raise ValueError(f"unknown sigma sampling {mode!r} (logit-normal or uniform)")


def flow_batch(seed: int, step: int, n: int, p_uncond: float, p_word: float, sigma_mode: str
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training batch `step`: (x0 [n,12,16,16] model space, token ids [n,T], σ [n], ε) from the UNet trainer's
    per-step seeded scenes and noise, with σ from `sigmas_for`."""
    z0, ids, _, noise = unet_train.step_batch(seed, step, n, 32, p_uncond, p_word)
    return z0, ids, sigmas_for(seed, step, n, sigma_mode), noise


def flow_loss(dm: torch.nn.Module, encoder: torch.nn.Module, z0: torch.Tensor, ids: torch.Tensor,
              sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Rectified-flow MSE: ‖v_θ(x_σ, σ, c, y) − (ε − x0)‖², x_σ = σ·ε + (1 − σ)·x0 (ComfyUI CONST, denoised = x_σ − σ·v)."""
    s = sigma.view(-1, 1, 1, 1)
    xt = s * noise + (1 - s) * z0
    c = encoder(ids)
    with grad_safe():
        v = dm(xt, sigma, c, y=c.mean(1))
    return ((v.float() - (noise - z0)) ** 2).mean()


@torch.no_grad()
def sample(model, encoder: torch.nn.Module, prompts: Sequence[str], seed: int = 0, steps: int = 20, cfg: float = 3.0,
           batch: int = 64) -> torch.Tensor:
    """Images [N,3,32,32] for the prompts, sampled by ComfyUI (comfy.sample.sample_custom with KSAMPLER euler on
    the MODEL's own sigmas, 'simple' scheduler), CFG against the empty prompt."""
    import comfy.sample
    import comfy.samplers
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    sampler = comfy.samplers.sampler_object("euler")
    g = torch.Generator().manual_seed(seed)
    noise_all = torch.randn(len(prompts), shapes_vae.LATENT_CHANNELS, 16, 16, generator=g)
    out = []
    for i in range(0, len(prompts), batch):
        ps = list(prompts[i:i + batch])
        noise = noise_all[i:i + batch]
        pos, neg = dit.conditioning(encoder, ps), dit.conditioning(encoder, [""] * len(ps))
        lat = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, pos, neg, torch.zeros_like(noise),
                                         disable_pbar=True, seed=seed)
        out.append(shapes_vae.decode(lat.float()).clamp(0, 1))
    return torch.cat(out)


def sample_grid(model, encoder: torch.nn.Module, path: Path, per_prompt: int = 6, steps: int = 20, cfg: float = 3.0
                ) -> dict:
    """Sample every grid prompt of the UNet trainer per_prompt times, write the grid PNG (one row per prompt) and
    return the prompt-following scores."""
    prompts = [p for p in unet_train.GRID_PROMPTS for _ in range(per_prompt)]
    imgs = sample(model, encoder, prompts, steps=steps, cfg=cfg)
    unet_train.save_grid(imgs, len(unet_train.GRID_PROMPTS), path, labels=list(unet_train.GRID_PROMPTS))
    return unet_train.score_samples(imgs, prompts)


def val_set(n: int = 128, seed: int = 12345) -> tuple[torch.Tensor, ...]:
    """A fixed validation set (full prompts): (x0, ids, σ on an even grid over (0, 1), ε)."""
    z0, ids = unet_train.make_batch(random.Random(seed), n, p_uncond=0.0, p_word=0.0)
    g = torch.Generator().manual_seed(seed)
    return z0, ids, (torch.arange(n) + 0.5) / n, torch.randn(z0.shape, generator=g)


@torch.no_grad()
def val_loss(dm, encoder, vs, batch: int = 64) -> float:
    """Flow MSE on the validation set."""
    z0, ids, sig, noise = vs
    tot = 0.0
    for i in range(0, len(z0), batch):
        sl = slice(i, i + batch)
        s = sig[sl].view(-1, 1, 1, 1)
        c = encoder(ids[sl])
        v = dm(s * noise[sl] + (1 - s) * z0[sl], sig[sl], c, y=c.mean(1))
        tot += float(((v - (noise[sl] - z0[sl])) ** 2).mean()) * len(s)
    return tot / len(z0)


def train(args: argparse.Namespace) -> dict:
    """The training run (resumes from <out>/train_state.pt when it exists). Returns the last metadata."""
    torch.set_num_threads(args.threads)
    design = dit.design_of(args.design)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE

    model = dit.build_model(design.config, None, shift=args.shift, seed=args.seed)
    dm = dit.dit_of(model)
    with torch.inference_mode(False):
        torch.manual_seed(args.seed)
        encoder = dit.PromptEncoder()
    dm.train(), encoder.train()
    names = [f"dit.{k}" for k, _ in dm.named_parameters()] + [f"text.{k}" for k, _ in encoder.named_parameters()]
    params = list(dm.parameters()) + list(encoder.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": args.wd},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99))
    ema = [p.detach().clone() for p in params]
    step, hist = 0, []
    if state_path.exists():
        st = torch.load(state_path, weights_only=True, map_location="cpu")
        if st["design"] != design.name:
            raise SystemExit(f"{state_path} is a {st['design']} run, not {design.name}")
        with torch.no_grad():
            for p, v, e, ev in zip(params, st["params"], ema, st["ema"]):
                p.copy_(v)
                e.copy_(ev)
        opt.load_state_dict(st["opt"])
        step, hist = int(st["step"]), list(st["hist"])
        print(f"resumed at step {step}", flush=True)
    vs = val_set(args.val_size)
    print(f"{design.name}: Flux {sum(p.numel() for p in dm.parameters()) / 1e6:.2f} M params, encoder "
          f"{sum(p.numel() for p in encoder.parameters())} params; {args.steps} steps x batch {args.batch}, "
          f"threads {args.threads}, sigma {args.sigma_sampling}, shift {args.shift}", flush=True)

    def meta_now() -> dict:
        return {"design": design.name, "config": design.config, "shift": args.shift, "steps": step,
                "schedule_steps": args.steps, "batch": args.batch, "seed": args.seed, "lr": args.lr,
                "objective": "flow: x_s = s*noise + (1-s)*x0, timestep s, target noise - x0 (ComfyUI CONST)",
                "sigma_sampling": args.sigma_sampling, "scale_factor": dit.shapes_model.SCALE_FACTOR,
                "image_size": 32,
                "final_loss": next((h["loss"] for h in reversed(hist) if "loss" in h), None),
                "val_flow_mse_ema": next((h["val"] for h in reversed(hist) if "val" in h), None)}

    def ema_state() -> tuple[dict, dict]:
        d = {n[4:]: e for n, e in zip(names, ema) if n.startswith("dit.")}
        t = {n[5:]: e for n, e in zip(names, ema) if n.startswith("text.")}
        return d, t

    def export(path: Path, grid: Optional[Path], per_prompt: int) -> None:
        d, t = ema_state()
        meta = meta_now()
        if grid is not None:
            m = dit.build_model(design.config, {k: v.half().float() for k, v in d.items()}, shift=args.shift)
            enc = dit.PromptEncoder()
            enc.load_state_dict({k: v.half().float() for k, v in t.items()})
            sc = sample_grid(m, enc.eval(), grid, per_prompt=per_prompt, cfg=args.cfg)
            meta["prompt_following"] = sc
            print(f"step {step:5d}  grid {grid.name}: {sc}", flush=True)
        dit.save_weights(d, t, path, meta)

    last = min(args.steps, args.stop_at) if args.stop_at else args.steps
    t_start = t_log = time.time()
    run_loss = run_n = 0
    while step < last:
        z0, ids, sig, noise = flow_batch(args.seed, step, args.batch, args.p_uncond, args.p_word, args.sigma_sampling)
        loss = flow_loss(dm, encoder, z0, ids, sig, noise)
        lr = unet_train.lr_at(step, args.steps, args.lr, args.warmup)
        for g_ in opt.param_groups:
            g_["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        unet_train.ema_update(ema, params, min(args.ema, (1 + step) / (10 + step)))
        run_loss, run_n = run_loss + float(loss.detach()), run_n + 1
        if step % args.log_every == 0 or step == last:
            print(f"step {step:5d}  loss {run_loss / run_n:.4f}  lr {lr:.2e}  {(time.time() - t_log) / run_n:.2f} s/step  "
                  f"elapsed {(time.time() - t_start) / 60:.1f} min", flush=True)
            hist.append({"step": step, "loss": run_loss / run_n})
            run_loss, run_n, t_log = 0.0, 0, time.time()
        if args.val_every and (step % args.val_every == 0 or step == last):
            d, t = ema_state()
            m = dit.build_model(design.config, d, shift=args.shift)
            enc = dit.PromptEncoder()
            enc.load_state_dict(t)
            vl = val_loss(dit.dit_of(m), enc.eval(), vs)
            hist.append({"step": step, "val": vl})
            print(f"step {step:5d}  val flow-MSE (EMA) {vl:.4f}", flush=True)
        if args.export_every and step % args.export_every == 0 and step < last:
            export(out / f"{design.name}_step{step}.safetensors",
                   out / f"samples_{design.name}_step{step}.png" if args.grid else None, args.grid_per_prompt_export)
        if args.ckpt_every and (step % args.ckpt_every == 0 or step == last):
            tmp = state_path.with_suffix(".tmp")
            torch.save({"design": design.name, "params": [p.detach().clone() for p in params], "ema": ema,
                        "opt": opt.state_dict(), "step": step, "hist": hist}, tmp)
            os.replace(tmp, state_path)

    export(out / f"{design.name}.safetensors", out / f"samples_{design.name}.png" if args.grid else None,
           args.grid_per_prompt)
    meta = meta_now()
    (out / f"train_log_{design.name}.json").write_text(json.dumps({"meta": meta, "history": hist}, indent=1))
    print(f"done: {step} steps in {(time.time() - t_start) / 60:.1f} min; wrote {out / f'{design.name}.safetensors'}",
          flush=True)
    return meta


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line of a training run (the tests call `train(parse_args([...]))`)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--design", default="dit-p2", help=f"model design: {', '.join(dit.DESIGNS)}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=3500, help="length of the cosine schedule")
    ap.add_argument("--stop-at", type=int, default=0, help="stop (and export) at this step of the schedule")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--shift", type=float, default=dit.DEFAULT_SHIFT, help="ModelSamplingFlux mu stored in the weights")
    ap.add_argument("--sigma-sampling", default="logit-normal", choices=["logit-normal", "uniform"])
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--p-word", type=float, default=0.15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--val-size", type=int, default=128)
    ap.add_argument("--ckpt-every", type=int, default=250, help="full training state every N steps (0: never)")
    ap.add_argument("--export-every", type=int, default=250, help="fp16 EMA weights + grid every N steps (0: never)")
    ap.add_argument("--grid", type=int, default=1)
    ap.add_argument("--grid-per-prompt", type=int, default=6)
    ap.add_argument("--grid-per-prompt-export", type=int, default=3)
    ap.add_argument("--cfg", type=float, default=3.0)
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    unet_train.setup_comfy()
    train(args)


if __name__ == "__main__":
    main()
