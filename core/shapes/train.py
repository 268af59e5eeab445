"""Train the shapes demo model from a seed on the CPU (step-based schedule): AdamW + warm-up + cosine, EMA,
min-SNR-weighted ε-MSE, prompt dropout for CFG; writes weights/shapes_v1.safetensors and a sample grid PNG.

Run from the repository root:  python -m core.shapes.train --out core/shapes/weights
(resumes from <out>/train_state.pt when it exists; `--eval-only` redraws the grid of an existing weights file)."""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

# OpenMP threads that spin while waiting burn ~10x the CPU on a shared, oversubscribed machine (measured: 11 CPU-s
# vs 1 CPU-s per step with 2 threads); must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def setup_comfy() -> None:
    """Put ComfyUI ($COMFYUI_PATH or .host/comfyui) on sys.path in CPU mode (training runs outside ComfyUI)."""
    path = Path(os.environ.get("COMFYUI_PATH") or ROOT / ".host" / "comfyui").resolve()
    if not (path / "comfy" / "model_patcher.py").exists():
        raise SystemExit(f"no ComfyUI at {path}: run .ci/setup.sh or set COMFYUI_PATH")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if "comfy.model_management" not in sys.modules:
        # PyTorch SDPA attention: ~25% less CPU per training step than ComfyUI's CPU default (sub-quadratic)
        argv, sys.argv = sys.argv, [sys.argv[0], "--cpu", "--use-pytorch-cross-attention"]
        try:
            import comfy.options
            comfy.options.enable_args_parsing()
            import comfy.cli_args  # noqa: F401
            import comfy.model_management  # noqa: F401
        finally:
            sys.argv = argv


# the package modules import comfy lazily, so they can be imported before setup_comfy()
from . import model as shapes_model  # noqa: E402
from . import renderer, vae  # noqa: E402
from .prompt import WORD_ID, tokenize  # noqa: E402

GRID_PROMPTS: tuple[str, ...] = (
    "red circle", "blue square", "green triangle", "yellow circle", "white square", "black triangle",
    "orange square", "purple circle", "red triangle", "blue circle", "green square", "white triangle",
    "red circle and blue square", "yellow triangle and green circle", "white square and black circle",
    "purple triangle and orange square", "red", "triangle", "",
)


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------

def prompt_words(scene: renderer.Scene, rng: random.Random, p_uncond: float, p_word: float) -> list[str]:
    """The scene's words with prompt dropout: all dropped with p_uncond, else each colour/shape word with
    p_word (words removed, so 'circle' alone looks like a partial prompt a user types)."""
    if rng.random() < p_uncond:
        return []
    ws = [w for w in renderer.prompt(scene).split() if w == "and" or rng.random() >= p_word]
    while ws and ws[0] == "and":
        ws.pop(0)
    while ws and ws[-1] == "and":
        ws.pop()
    return [w for i, w in enumerate(ws) if not (w == "and" and i > 0 and ws[i - 1] == "and")]


def make_batch(rng: random.Random, n: int, p_uncond: float = 0.1, p_word: float = 0.15
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """n random scenes -> (model-space latents z_0 [n,12,16,16], token ids [n,T])."""
    scenes = [renderer.random_scene(rng) for _ in range(n)]
    imgs = torch.stack([renderer.render(s) for s in scenes])
    z0 = vae.encode(imgs) * shapes_model.SCALE_FACTOR
    ids = torch.tensor([tokenize(" ".join(prompt_words(s, rng, p_uncond, p_word))) for s in scenes], dtype=torch.long)
    return z0, ids


# ---------------------------------------------------------------------------------------------------------
# sampling (plain DDIM with CFG and x̂0 clipping, for the grid and the train-time check)
# ---------------------------------------------------------------------------------------------------------

@torch.no_grad()
def ddim_sample(unet: torch.nn.Module, encoder: torch.nn.Module, ab: torch.Tensor, prompts: Sequence[str],
                seed: int = 0, steps: int = 50, cfg: float = 3.0, batch: int = 64) -> torch.Tensor:
    """Images [N,3,32,32] for the prompts by DDIM (η = 0, timesteps 1 + k·1000/steps), CFG against the empty
    prompt, x̂0 clipped to the data range."""
    g = torch.Generator().manual_seed(seed)
    x_all = torch.randn(len(prompts), vae.LATENT_CHANNELS, shapes_model.LATENT_SIZE, shapes_model.LATENT_SIZE, generator=g)
    ts = list(range(1, 1000, 1000 // steps))[::-1]
    lim = shapes_model.SCALE_FACTOR
    out = []
    for i in range(0, len(prompts), batch):
        ps = list(prompts[i:i + batch])
        x = x_all[i:i + batch]
        c = encoder(torch.tensor([tokenize(p) for p in ps] + [tokenize("")] * len(ps)))
        for j, t in enumerate(ts):
            a = ab[t]
            a_prev = ab[ts[j + 1]] if j + 1 < len(ts) else torch.tensor(1.0)
            e = unet(torch.cat([x, x]), timesteps=torch.full((2 * len(ps),), float(t)), context=c)
            e_c, e_u = e.chunk(2)
            eps = e_u + cfg * (e_c - e_u)
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-lim, lim)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        out.append(vae.decode(x / lim).clamp(0, 1))
    return torch.cat(out)


def save_grid(images: torch.Tensor, rows: int, path: Path, scale: int = 3, labels: Optional[Sequence[str]] = None) -> None:
    """A PNG grid (rows x N/rows) of [N,3,H,W] images, upscaled by `scale` (nearest), 2 px gaps, optional row labels."""
    from PIL import Image, ImageDraw
    n, _, h, w = images.shape
    cols = math.ceil(n / rows)
    gap, lab = 2, (190 if labels else 0)
    canvas = Image.new("RGB", (lab + cols * (w * scale + gap), rows * (h * scale + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    arr = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for k in range(n):
        r, c = divmod(k, cols)
        tile = Image.fromarray(arr[k]).resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(tile, (lab + c * (w * scale + gap), r * (h * scale + gap)))
    for r, text in enumerate(labels or []):
        draw.text((4, r * (h * scale + gap) + h * scale // 2 - 6), text or '""', fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def score_samples(images: torch.Tensor, prompts: Sequence[str]) -> dict:
    """How well samples follow their prompts (renderer's classifier): for each full prompt, the fraction whose every
    named colour is present, and whose every named colour also forms the named shape kind."""
    colour_ok = shape_ok = n = 0
    for img, p in zip(images, prompts):
        ws = p.split()
        pairs = [(ws[i], ws[i + 1]) for i in range(0, len(ws) - 1, 3)] if len(ws) >= 2 else []
        if not pairs or any(c not in renderer.PALETTE or k not in renderer.KINDS for c, k in pairs):
            continue
        n += 1
        found = [renderer.classify(img, c) for c, _ in pairs]
        colour_ok += all(f is not None for f in found)
        shape_ok += all(f is not None and f[0] == k for f, (_, k) in zip(found, pairs))
    return {"n": n, "colour_ok": colour_ok / max(n, 1), "colour_and_shape_ok": shape_ok / max(n, 1)}


def sample_grid(unet: torch.nn.Module, encoder: torch.nn.Module, ab: torch.Tensor, path: Path, per_prompt: int = 6,
                seed: int = 0, steps: int = 50, cfg: float = 3.0) -> dict:
    """Sample every GRID_PROMPTS prompt per_prompt times, write the grid PNG (one row per prompt) and return the
    prompt-following scores."""
    prompts = [p for p in GRID_PROMPTS for _ in range(per_prompt)]
    imgs = ddim_sample(unet, encoder, ab, prompts, seed=seed, steps=steps, cfg=cfg)
    save_grid(imgs, len(GRID_PROMPTS), path, labels=list(GRID_PROMPTS))
    return score_samples(imgs, prompts)


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------

def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up to `peak`, then cosine down to floor·peak at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    q = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(q, 1.0))))


@torch.no_grad()
def ema_update(ema: Sequence[torch.Tensor], params: Sequence[torch.Tensor], decay: float) -> None:
    """θ_ema ← d·θ_ema + (1 − d)·θ."""
    torch._foreach_mul_(list(ema), decay)
    torch._foreach_add_(list(ema), [p.detach() for p in params], alpha=1 - decay)


def val_set(n: int = 256, seed: int = 12345) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed validation set: (z_0, ids, t, noise) for unweighted ε-MSE."""
    rng = random.Random(seed)
    z0, ids = make_batch(rng, n, p_uncond=0.0, p_word=0.0)
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (n,), generator=g)
    return z0, ids, t, torch.randn(z0.shape, generator=g)


@torch.no_grad()
def val_loss(unet, encoder, ab, vs, batch: int = 64) -> float:
    """Unweighted ε-MSE on the validation set."""
    z0, ids, t, noise = vs
    tot = 0.0
    for i in range(0, len(z0), batch):
        a = ab[t[i:i + batch]].view(-1, 1, 1, 1)
        xt = a.sqrt() * z0[i:i + batch] + (1 - a).sqrt() * noise[i:i + batch]
        e = unet(xt, timesteps=t[i:i + batch].float(), context=encoder(ids[i:i + batch]))
        tot += float(((e - noise[i:i + batch]) ** 2).mean()) * len(a)
    return tot / len(z0)


def save_weights(unet_sd: dict, text_sd: dict, path: Path, meta: dict) -> None:
    """Write the shipped weights: 'unet.*' and 'text.*' tensors in fp16 plus metadata."""
    from safetensors.torch import save_file
    sd = {f"unet.{k}": v.detach().to(torch.float16).contiguous() for k, v in unet_sd.items()}
    sd.update({f"text.{k}": v.detach().to(torch.float16).contiguous() for k, v in text_sd.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={k: str(v) for k, v in meta.items()})


def train(args: argparse.Namespace) -> None:
    """The training run (resumable from <out>/train_state.pt)."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"

    torch.manual_seed(args.seed)
    with torch.inference_mode(False):
        mp, clip, _ = shapes_model.build(None, None, seed=args.seed)
    unet, encoder = shapes_model.unet_of(mp), clip.encoder
    unet.train(), encoder.train()
    params = [p for p in unet.parameters()] + [p for p in encoder.parameters()]
    for p in params:
        p.requires_grad_(True)
    ema = [p.detach().clone() for p in params]
    decay_params = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay_params, "weight_decay": args.wd}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99))
    ab = shapes_model.alphas_cumprod(mp)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    step, hist = 0, []
    if state_path.exists():
        st = torch.load(state_path, weights_only=False)
        with torch.no_grad():
            for p, v in zip(params, st["params"]):
                p.copy_(v)
            for e, v in zip(ema, st["ema"]):
                e.copy_(v)
        opt.load_state_dict(st["opt"])
        rng.setstate(st["rng"])
        gen.set_state(st["gen"])
        step, hist = st["step"], st["hist"]
        print(f"resumed at step {step}", flush=True)
    vs = val_set()
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"UNet {n_params / 1e6:.2f} M params, encoder {sum(p.numel() for p in encoder.parameters())} params; "
          f"{args.steps} steps x batch {args.batch}, threads {args.threads}", flush=True)

    def swap_ema():
        with torch.no_grad():
            for p, e in zip(params, ema):
                tmp = p.detach().clone()
                p.copy_(e)
                e.copy_(tmp)

    t_start, run_loss, run_n, t_log = time.time(), 0.0, 0, time.time()
    last = min(args.steps, args.stop_at) if args.stop_at else args.steps  # stop early on the same schedule
    while step < last:
        z0, ids = make_batch(rng, args.batch, args.p_uncond, args.p_word)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        e = unet(xt, timesteps=t.float(), context=encoder(ids))
        snr = (a / (1 - a)).view(-1)
        min_snr_on = args.min_snr > 0 and (args.min_snr_until <= 0 or step < args.min_snr_until)
        w = snr.clamp(max=args.min_snr) / snr if min_snr_on else torch.ones_like(snr)
        loss = (((e - noise) ** 2).mean(dim=(1, 2, 3)) * w).mean()
        for g_ in opt.param_groups:
            g_["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ema_update(ema, params, min(args.ema, (1 + step) / (10 + step)))
        run_loss, run_n = run_loss + float(loss.detach()), run_n + 1
        if step % args.log_every == 0 or step == args.steps:
            dt = (time.time() - t_log) / run_n
            print(f"step {step:5d}  loss {run_loss / run_n:.4f}  lr {opt.param_groups[0]['lr']:.2e}  {dt:.2f} s/step  "
                  f"elapsed {(time.time() - t_start) / 60:.1f} min", flush=True)
            hist.append({"step": step, "loss": run_loss / run_n})
            run_loss, run_n, t_log = 0.0, 0, time.time()
        if step % args.val_every == 0 or step == args.steps:
            swap_ema()
            unet.eval(), encoder.eval()
            vl = val_loss(unet, encoder, ab, vs)
            unet.train(), encoder.train()
            swap_ema()
            hist.append({"step": step, "val_eps_mse_ema": vl})
            print(f"step {step:5d}  val eps-MSE (EMA) {vl:.4f}", flush=True)
        if step % args.ckpt_every == 0 or step == last:
            torch.save({"params": [p.detach() for p in params], "ema": ema, "opt": opt.state_dict(),
                        "rng": rng.getstate(), "gen": gen.get_state(), "step": step, "hist": hist}, state_path)

    # ship the EMA weights
    swap_ema()
    unet.eval(), encoder.eval()
    meta = {"format": "dragedit-shapes-v1", "steps": step, "schedule_steps": args.steps, "batch": args.batch, "seed": args.seed, "lr": args.lr,
            "scale_factor": shapes_model.SCALE_FACTOR, "final_loss": hist[-2]["loss"] if len(hist) > 1 else None,
            "val_eps_mse_ema": next((h["val_eps_mse_ema"] for h in reversed(hist) if "val_eps_mse_ema" in h), None)}
    wpath = out / "shapes_v1.safetensors"
    save_weights(unet.state_dict(), encoder.state_dict(), wpath, meta)
    (out / "train_log.json").write_text(json.dumps({"meta": meta, "history": hist}, indent=1))
    print(f"wrote {wpath} ({wpath.stat().st_size / 1e6:.1f} MB)", flush=True)
    if args.grid:
        sc = sample_grid(unet, encoder, ab, out / "samples.png", per_prompt=args.grid_per_prompt)
        print(f"wrote {out / 'samples.png'}; prompt following {sc}", flush=True)
    print(f"done: {step} steps in {(time.time() - t_start) / 60:.1f} min", flush=True)


def eval_only(args: argparse.Namespace) -> None:
    """Redraw the sample grid of an existing weights file."""
    torch.set_num_threads(args.threads)
    state = Path(args.out) / "train_state.pt"
    if args.from_state:  # the EMA weights of a running / stopped training
        mp, clip, _ = shapes_model.build(None, None)
        st = torch.load(state, weights_only=False)
        params = list(shapes_model.unet_of(mp).parameters()) + list(clip.encoder.parameters())
        with torch.no_grad():
            for p, v in zip(params, st["ema"]):
                p.copy_(v)
        print(f"EMA weights of step {st['step']}", flush=True)
    else:
        mp, clip, _ = shapes_model.load_demo(Path(args.out) / "shapes_v1.safetensors", allow_random=False)
    unet = shapes_model.unet_of(mp)
    with torch.inference_mode(False):
        sc = sample_grid(unet.eval(), clip.encoder.eval(), shapes_model.alphas_cumprod(mp),
                         Path(args.grid_path or Path(args.out) / "samples.png"), per_prompt=args.grid_per_prompt, cfg=args.cfg)
    print(f"prompt following: {sc}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "weights"))
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--stop-at", type=int, default=0, help="stop (and export the EMA weights) at this step of the --steps schedule")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-snr", type=float, default=5.0, help="min-SNR-γ loss weighting (0 = plain ε-MSE)")
    ap.add_argument("--min-snr-until", type=int, default=0,
                    help="plain ε-MSE from this step on (0 = min-SNR for the whole run)")
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--p-word", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--grid", type=int, default=1)
    ap.add_argument("--grid-per-prompt", type=int, default=6)
    ap.add_argument("--grid-path", default=None)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--eval-only", action="store_true", help="only draw the grid of <out>/shapes_v1.safetensors")
    ap.add_argument("--from-state", action="store_true", help="with --eval-only: use the EMA of <out>/train_state.pt")
    args = ap.parse_args(argv)
    setup_comfy()
    (eval_only if args.eval_only else train)(args)


if __name__ == "__main__":
    main()
