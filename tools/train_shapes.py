"""Train a shapes demo model from a seed (step-based schedule): AdamW + warm-up + cosine, EMA, min-SNR-weighted
ε-MSE, prompt dropout for CFG; writes <out>/shapes_<arch>.safetensors (fp16 EMA weights, the step count and the
design in its metadata) and a sample grid PNG.

Run from the repository root:
    python -m tools.train_shapes --out demo/shapes/weights                       # v1, as shipped
    python -m tools.train_shapes --arch v2-64 --out DIR [--device cuda] [--time-budget 480] [--export-every 500]

Resuming: from <out>/train_state.pt when it exists (full state); else `--init-from FILE` continues from committed fp16
EMA weights and their step count (a fresh optimizer, re-warmed; no optimizer state is committed). The v1 design draws
its batches from one seeded stream (as the shipped weights were made); the v2 designs draw batch k from a generator
seeded by (seed, k), so a run is the same whether it is resumed or how many data workers render it.
`--eval-only` redraws the grid of an existing weights file."""
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

from tools.support import comfy_env  # noqa: E402

ROOT = comfy_env.ROOT


# PyTorch SDPA attention: ~25% less CPU per training step than ComfyUI's CPU default (sub-quadratic)
COMFY_FLAGS = ("--use-pytorch-cross-attention",)


def stub_torchsde() -> None:
    """Register an empty `torchsde` module when it is not installed. ComfyUI imports it at start-up (k-diffusion's
    sampling module) but only its SDE samplers use it (BrownianTree noise); training never samples with them, and
    a bare GPU image (the prepared `make train-v2-gpu` run) does not have it."""
    try:
        import torchsde  # noqa: F401
    except ImportError:
        import types
        sys.modules["torchsde"] = types.ModuleType("torchsde")


def setup_comfy() -> None:
    """Import ComfyUI ($COMFYUI_PATH or .host/comfyui) in CPU mode with SDPA attention (training runs outside
    ComfyUI; a no-op for the flags when ComfyUI is already imported, as in the tests) and load the pack."""
    stub_torchsde()
    try:
        comfy_env.setup_comfy(COMFY_FLAGS)
    except RuntimeError as e:           # no ComfyUI checkout: say how to get one
        raise SystemExit(str(e)) from None
    comfy_env.load_pack()


# the shapes model is part of the pack (imported as `dragedit`), which needs ComfyUI imported first
setup_comfy()
from dragedit.demo.shapes import model as shapes_model  # noqa: E402
from dragedit.demo.shapes import renderer, vae  # noqa: E402
from dragedit.demo.shapes.prompt import WORD_ID, tokenize  # noqa: E402

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


def make_batch(rng: random.Random, n: int, p_uncond: float = 0.1, p_word: float = 0.15, size: int = 32
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """n random scenes rendered at size x size -> (model-space latents z_0 [n,12,size/2,size/2], token ids [n,T])."""
    scenes = [renderer.random_scene(rng) for _ in range(n)]
    imgs = torch.stack([renderer.render(s, size) for s in scenes])
    z0 = vae.encode(imgs) * shapes_model.SCALE_FACTOR
    ids = torch.tensor([tokenize(" ".join(prompt_words(s, rng, p_uncond, p_word))) for s in scenes], dtype=torch.long)
    return z0, ids


def step_batch(seed: int, step: int, n: int, size: int, p_uncond: float, p_word: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training batch number `step` of a seeded run, a pure function of (seed, step): (z_0, token ids, t, ε)."""
    key = (int(seed) << 32) + int(step)
    z0, ids = make_batch(random.Random(key), n, p_uncond, p_word, size)
    g = torch.Generator().manual_seed(key)
    return z0, ids, torch.randint(0, 1000, (n,), generator=g), torch.randn(z0.shape, generator=g)


class StepBatches(torch.utils.data.Dataset):
    """Batches by step number (for a DataLoader with workers: rendering runs beside the training step)."""

    def __init__(self, seed: int, first: int, last: int, n: int, size: int, p_uncond: float, p_word: float) -> None:
        self.seed, self.first, self.last, self.n, self.size = seed, first, last, n, size
        self.p_uncond, self.p_word = p_uncond, p_word

    def __len__(self) -> int:
        return max(0, self.last - self.first)

    def __getitem__(self, i: int):
        torch.set_num_threads(1)
        return step_batch(self.seed, self.first + i, self.n, self.size, self.p_uncond, self.p_word)


# ---------------------------------------------------------------------------------------------------------
# sampling (plain DDIM with CFG and x̂0 clipping, for the grid and the train-time check)
# ---------------------------------------------------------------------------------------------------------

@torch.no_grad()
def ddim_sample(unet: torch.nn.Module, encoder: torch.nn.Module, ab: torch.Tensor, prompts: Sequence[str],
                seed: int = 0, steps: int = 50, cfg: float = 3.0, batch: int = 64, latent_size: int = 16) -> torch.Tensor:
    """Images [N,3,2·latent_size,2·latent_size] for the prompts by DDIM (η = 0, timesteps 1 + k·1000/steps), CFG
    against the empty prompt, x̂0 clipped to the data range."""
    g = torch.Generator().manual_seed(seed)
    x_all = torch.randn(len(prompts), vae.LATENT_CHANNELS, latent_size, latent_size, generator=g)
    dev = next(unet.parameters()).device
    ts = list(range(1, 1000, 1000 // steps))[::-1]
    lim = shapes_model.SCALE_FACTOR
    out = []
    for i in range(0, len(prompts), batch):
        ps = list(prompts[i:i + batch])
        x = x_all[i:i + batch].to(dev)
        c = encoder(torch.tensor([tokenize(p) for p in ps] + [tokenize("")] * len(ps), device=dev))
        for j, t in enumerate(ts):
            a = ab[t]
            a_prev = ab[ts[j + 1]] if j + 1 < len(ts) else torch.tensor(1.0)
            e = unet(torch.cat([x, x]), timesteps=torch.full((2 * len(ps),), float(t), device=dev), context=c).float()
            e_c, e_u = e.chunk(2)
            eps = e_u + cfg * (e_c - e_u)
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-lim, lim)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        out.append(vae.decode(x.cpu() / lim).clamp(0, 1))
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
                seed: int = 0, steps: int = 50, cfg: float = 3.0, latent_size: int = 16) -> dict:
    """Sample every GRID_PROMPTS prompt per_prompt times, write the grid PNG (one row per prompt) and return the
    prompt-following scores."""
    prompts = [p for p in GRID_PROMPTS for _ in range(per_prompt)]
    imgs = ddim_sample(unet, encoder, ab, prompts, seed=seed, steps=steps, cfg=cfg, latent_size=latent_size)
    save_grid(imgs, len(GRID_PROMPTS), path, labels=list(GRID_PROMPTS))
    return score_samples(imgs, prompts)


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------

class DecoderDC:
    """Feature regulariser of the v2 designs: the share of the decoder features' energy that is constant over
    positions, ‖mean_p f‖² / mean_p ‖f_p‖², averaged over the UNet's output blocks and the batch.

    Plain ε-training drives it to ~0.95 on the shapes data (flat backgrounds: the time embedding's per-channel offsets
    dominate), so the raw cosine of any two cells is ~1 and the feature-based drags cannot tell an object from its
    background (Shapes v2 gate G2). Penalising it leaves the architecture and the ε-objective as they are."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.values: list[torch.Tensor] = []
        self.hooks = [blk[-1].register_forward_hook(self._hook) for blk in unet.output_blocks]

    def _hook(self, module, inputs, out) -> None:
        f = out.float().flatten(2)                                   # [B, C, N]
        dc = f.mean(2).square().sum(1) / f.square().sum(1).mean(1).clamp_min(1e-8)
        self.values.append(dc.mean())

    def take(self) -> torch.Tensor:
        """The per-block values of the last forward pass, [blocks] (and forget them)."""
        v = torch.stack(self.values)
        self.values = []
        return v

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


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


def val_set(n: int = 256, seed: int = 12345, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed validation set: (z_0, ids, t, noise) for unweighted ε-MSE."""
    rng = random.Random(seed)
    z0, ids = make_batch(rng, n, p_uncond=0.0, p_word=0.0, size=size)
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (n,), generator=g)
    return z0, ids, t, torch.randn(z0.shape, generator=g)


@torch.no_grad()
def val_loss(unet, encoder, ab, vs, batch: int = 64) -> float:
    """Unweighted ε-MSE on the validation set."""
    dev = next(unet.parameters()).device
    z0, ids, t, noise = (v.to(dev) for v in vs)
    tot = 0.0
    for i in range(0, len(z0), batch):
        a = ab[t[i:i + batch]].view(-1, 1, 1, 1)
        xt = a.sqrt() * z0[i:i + batch] + (1 - a).sqrt() * noise[i:i + batch]
        e = unet(xt, timesteps=t[i:i + batch].float(), context=encoder(ids[i:i + batch])).float()
        tot += float(((e - noise[i:i + batch]) ** 2).mean()) * len(a)
    return tot / len(z0)


def save_weights(unet_sd: dict, text_sd: dict, path: Path, meta: dict) -> None:
    """Write the shipped weights: 'unet.*' and 'text.*' tensors in fp16 plus metadata."""
    from safetensors.torch import save_file
    sd = {f"unet.{k}": v.detach().to("cpu", torch.float16).contiguous() for k, v in unet_sd.items()}
    sd.update({f"text.{k}": v.detach().to("cpu", torch.float16).contiguous() for k, v in text_sd.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={k: str(v) for k, v in meta.items()})


def weights_name(arch: str) -> str:
    """File name of a design's weights: shapes_v1.safetensors, shapes_v2-64.safetensors, ..."""
    return f"shapes_{arch}.safetensors"


def train(args: argparse.Namespace) -> None:
    """The training run (resumable from <out>/train_state.pt, or from committed EMA weights via --init-from)."""
    torch.set_num_threads(args.threads)
    arch = shapes_model.arch_of(args.arch)
    dev = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"
    step_data = arch.name != "v1"                     # v1: the one seeded stream the shipped weights came from

    torch.manual_seed(args.seed)
    with torch.inference_mode(False):
        mp, clip, _ = shapes_model.build(None, None, seed=args.seed, arch=arch.name)
    unet, encoder = shapes_model.unet_of(mp).to(dev), clip.encoder.to(dev)
    unet.train(), encoder.train()
    params = [p for p in unet.parameters()] + [p for p in encoder.parameters()]
    for p in params:
        p.requires_grad_(True)
    decay_params = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay_params, "weight_decay": args.wd}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99))
    ab = shapes_model.alphas_cumprod(mp).to(dev)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    step, hist, warm_from = 0, [], 0
    if state_path.exists():
        st = torch.load(state_path, weights_only=True, map_location=dev)     # tensors, numbers, lists only
        with torch.no_grad():
            for p, v in zip(params, st["params"]):
                p.copy_(v)
        ema = [e.to(dev) for e in st["ema"]]
        opt.load_state_dict(st["opt"])
        rng.setstate(st["rng"])
        gen.set_state(st["gen"])
        step, hist, warm_from = st["step"], st["hist"], st.get("warm_from", 0)
        print(f"resumed at step {step}", flush=True)
    elif args.init_from:
        meta = shapes_model.read_meta(args.init_from)
        if meta.get("arch", "v1") != arch.name:
            raise SystemExit(f"--init-from {args.init_from} holds design {meta.get('arch', 'v1')}, not {arch.name}")
        from safetensors.torch import load_file
        unet_sd, text_sd = shapes_model.split_state_dict(load_file(args.init_from))
        with torch.no_grad():
            unet.load_state_dict({k: v.float() for k, v in unet_sd.items()})
            encoder.load_state_dict({k: v.float() for k, v in text_sd.items()})
        step = warm_from = int(meta.get("steps", 0))
        if not step_data:
            rng = random.Random(args.seed + step)     # a stream cannot be resumed mid-way without its state
        print(f"continued from the EMA weights of step {step} ({args.init_from}); fresh optimizer, re-warmed", flush=True)
    if not state_path.exists():
        ema = [p.detach().clone() for p in params]
    vs = val_set(n=args.val_size, size=arch.image_size)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"{arch.name}: UNet {n_params / 1e6:.2f} M params, encoder {sum(p.numel() for p in encoder.parameters())} "
          f"params; {args.steps} steps x batch {args.batch} on {dev}, threads {args.threads}, workers {args.workers}",
          flush=True)

    def swap_ema():
        with torch.no_grad():
            for p, e in zip(params, ema):
                tmp = p.detach().clone()
                p.copy_(e)
                e.copy_(tmp)

    def meta_now() -> dict:
        return {"format": "dragedit-shapes-v1", "arch": arch.name, "image_size": arch.image_size, "steps": step,
                "schedule_steps": args.steps, "batch": args.batch, "seed": args.seed, "lr": args.lr,
                "scale_factor": shapes_model.SCALE_FACTOR, "data": "per-step" if step_data else "stream",
                "feature_dc": args.feature_dc, "feature_dc_target": args.feature_dc_target,
                "final_loss": next((h["loss"] for h in reversed(hist) if "loss" in h), None),
                "val_eps_mse_ema": next((h["val_eps_mse_ema"] for h in reversed(hist) if "val_eps_mse_ema" in h), None)}

    def export(path: Path) -> None:
        swap_ema()
        save_weights(unet.state_dict(), encoder.state_dict(), path, meta_now())
        swap_ema()

    last = min(args.steps, args.stop_at) if args.stop_at else args.steps  # stop early on the same schedule
    if step_data:
        loader = iter(torch.utils.data.DataLoader(
            StepBatches(args.seed, step, last, args.batch, arch.image_size, args.p_uncond, args.p_word),
            batch_size=None, shuffle=False, num_workers=args.workers, prefetch_factor=4 if args.workers else None,
            persistent_workers=False, pin_memory=dev.type == "cuda"))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" and args.amp else None
    dc_reg = DecoderDC(unet) if args.feature_dc > 0 else None
    t_start, run_loss, run_n, t_log, run_dc = time.time(), 0.0, 0, time.time(), 0.0
    while step < last:
        if args.time_budget and time.time() - t_start > args.time_budget:
            print(f"time budget of {args.time_budget} s reached at step {step}", flush=True)
            break
        if step_data:
            z0, ids, t, noise = next(loader)
        else:
            z0, ids = make_batch(rng, args.batch, args.p_uncond, args.p_word)
            t = torch.randint(0, 1000, (args.batch,), generator=gen)
            noise = torch.randn(z0.shape, generator=gen)
        z0, ids, t, noise = (v.to(dev, non_blocking=True) for v in (z0, ids, t, noise))
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        if amp is not None:
            with amp:
                e = unet(xt, timesteps=t.float(), context=encoder(ids)).float()
        else:
            e = unet(xt, timesteps=t.float(), context=encoder(ids))
        snr = (a / (1 - a)).view(-1)
        min_snr_on = args.min_snr > 0 and (args.min_snr_until <= 0 or step < args.min_snr_until)
        w = snr.clamp(max=args.min_snr) / snr if min_snr_on else torch.ones_like(snr)
        loss = (((e - noise) ** 2).mean(dim=(1, 2, 3)) * w).mean()
        if dc_reg is not None:
            dc = dc_reg.take()
            run_dc += float(dc.detach().mean())
            loss = loss + args.feature_dc * (dc - args.feature_dc_target).clamp_min(0).mean()
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        if warm_from:                                  # continuing from weights: re-warm the fresh optimizer
            lr *= min(1.0, (step - warm_from + 1) / max(1, args.warmup // 4))
        for g_ in opt.param_groups:
            g_["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ema_update(ema, params, min(args.ema, (1 + step) / (10 + step)))
        run_loss, run_n = run_loss + float(loss.detach()), run_n + 1
        if step % args.log_every == 0 or step == last:
            dt = (time.time() - t_log) / run_n
            dc_txt = f"  decoder DC {run_dc / run_n:.3f}" if dc_reg is not None else ""
            print(f"step {step:5d}  loss {run_loss / run_n:.4f}{dc_txt}  lr {lr:.2e}  {dt:.2f} s/step  "
                  f"elapsed {(time.time() - t_start) / 60:.1f} min", flush=True)
            hist.append({"step": step, "loss": run_loss / run_n} | ({"decoder_dc": run_dc / run_n} if dc_reg else {}))
            run_loss, run_n, t_log, run_dc = 0.0, 0, time.time(), 0.0
        if step % args.val_every == 0 or step == last:
            if dc_reg is not None:
                dc_reg.values = []
            swap_ema()
            unet.eval(), encoder.eval()
            vl = val_loss(unet, encoder, ab, vs)
            unet.train(), encoder.train()
            swap_ema()
            if dc_reg is not None:
                dc_reg.values = []
            hist.append({"step": step, "val_eps_mse_ema": vl})
            print(f"step {step:5d}  val eps-MSE (EMA) {vl:.4f}", flush=True)
        if args.export_every and step % args.export_every == 0:
            export(out / f"shapes_{arch.name}_step{step}.safetensors")
        if args.ckpt_every and (step % args.ckpt_every == 0 or step == last):
            torch.save({"params": [p.detach() for p in params], "ema": ema, "opt": opt.state_dict(),
                        "rng": rng.getstate(), "gen": gen.get_state(), "step": step, "hist": hist,
                        "warm_from": warm_from}, state_path)

    # ship the EMA weights
    if dc_reg is not None:
        dc_reg.remove()
    swap_ema()
    unet.eval(), encoder.eval()
    meta = meta_now()
    wpath = out / weights_name(arch.name)
    save_weights(unet.state_dict(), encoder.state_dict(), wpath, meta)
    (out / f"train_log_{arch.name}.json" if arch.name != "v1" else out / "train_log.json").write_text(
        json.dumps({"meta": meta, "history": hist}, indent=1))
    print(f"wrote {wpath} ({wpath.stat().st_size / 1e6:.1f} MB)", flush=True)
    if args.grid:
        sc = sample_grid(unet, encoder, ab, out / f"samples_{arch.name}.png", per_prompt=args.grid_per_prompt,
                         latent_size=arch.latent_size)
        print(f"wrote {out / f'samples_{arch.name}.png'}; prompt following {sc}", flush=True)
    print(f"done: {step} steps in {(time.time() - t_start) / 60:.1f} min", flush=True)


def eval_only(args: argparse.Namespace) -> None:
    """Redraw the sample grid of an existing weights file."""
    torch.set_num_threads(args.threads)
    arch = shapes_model.arch_of(args.arch)
    state = Path(args.out) / "train_state.pt"
    if args.from_state:  # the EMA weights of a running / stopped training
        mp, clip, _ = shapes_model.build(None, None, arch=arch.name)
        st = torch.load(state, weights_only=True, map_location="cpu")
        params = list(shapes_model.unet_of(mp).parameters()) + list(clip.encoder.parameters())
        with torch.no_grad():
            for p, v in zip(params, st["ema"]):
                p.copy_(v)
        print(f"EMA weights of step {st['step']}", flush=True)
    else:
        mp, clip, _ = shapes_model.load_demo(Path(args.out) / weights_name(arch.name), allow_random=False)
    unet = shapes_model.unet_of(mp)
    with torch.inference_mode(False):
        sc = sample_grid(unet.eval(), clip.encoder.eval(), shapes_model.alphas_cumprod(mp),
                         Path(args.grid_path or Path(args.out) / "samples.png"), per_prompt=args.grid_per_prompt,
                         cfg=args.cfg, latent_size=arch.latent_size)
    print(f"prompt following: {sc}", flush=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line of a training run (also used by the tests to call `train` directly)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="v1", help=f"model design: {', '.join(shapes_model.ARCHS)}")
    ap.add_argument("--out", default=str(ROOT / "demo" / "shapes" / "weights"))
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--stop-at", type=int, default=0, help="stop (and export the EMA weights) at this step of the --steps schedule")
    ap.add_argument("--time-budget", type=float, default=0, help="stop (and export) after this many seconds (0: none)")
    ap.add_argument("--init-from", default=None, help="continue from a weights file's fp16 EMA weights and step count")
    ap.add_argument("--export-every", type=int, default=0, help="also write the EMA weights every N steps (0: never)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--amp", type=int, default=1, help="bf16 autocast on CUDA (1) or fp32 (0)")
    ap.add_argument("--workers", type=int, default=0, help="data workers rendering batches (v2 designs)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-snr", type=float, default=5.0, help="min-SNR-γ loss weighting (0 = plain ε-MSE)")
    ap.add_argument("--min-snr-until", type=int, default=0,
                    help="plain ε-MSE from this step on (0 = min-SNR for the whole run)")
    ap.add_argument("--feature-dc", type=float, default=0.0,
                    help="weight of the decoder-DC feature regulariser (DecoderDC; 0 = plain ε-training)")
    ap.add_argument("--feature-dc-target", type=float, default=0.0,
                    help="penalise only the DC share above this value (a hinge; 0 = all of it)")
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--p-word", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--val-size", type=int, default=256, help="scenes in the fixed validation set")
    ap.add_argument("--ckpt-every", type=int, default=250, help="full training state every N steps (0: never)")
    ap.add_argument("--grid", type=int, default=1)
    ap.add_argument("--grid-per-prompt", type=int, default=6)
    ap.add_argument("--grid-path", default=None)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--eval-only", action="store_true", help="only draw the grid of <out>/shapes_<arch>.safetensors")
    ap.add_argument("--from-state", action="store_true", help="with --eval-only: use the EMA of <out>/train_state.pt")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    (eval_only if args.eval_only else train)(args)


if __name__ == "__main__":
    main()
