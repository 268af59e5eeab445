"""Bench: a SEGA edit (SEGA Guidance nodes + the Edit-friendly DDPM sampler through stock SamplerCustom sampling) with
1 and 3 concepts against diffusers' SemanticStableDiffusionPipeline on the same UNet config and weights, in the same
run: UNet calls and rows (batch entries) per edit, time per edit, peak memory; plus the DDPM inversion and LEDITS++
mode for reference. Goal: no more UNet evaluations than diffusers and time within 1.1x. Prints a table, writes
out/bench/ledits.json.

usage: python -m bench.ledits [--steps 20] [--size 32] [--repeats 5] [--threads 1] [--full] [--attention pytorch|default]
(--full: the real SD1.5 UNet size, for a GPU)

Attention kernel: ComfyUI on a CPU defaults to its sub-quadratic attention, which is slower there than the PyTorch
SDPA kernel diffusers uses; `--attention pytorch` (the default here) starts ComfyUI with --use-pytorch-cross-attention
(what it uses on NVIDIA GPUs anyway) so both sides run the same kernel. The plain rows (CFG only, no concepts) give
each framework's own baseline, so the cost of SEGA itself is visible whatever the kernel.

Times (bench/_util.py): on a CPU, process CPU seconds with one torch thread (robust on a shared machine), median and
min-max of `repeats` interleaved rounds of all rows, ratios per round; on a GPU, wall seconds (synchronised). UNet
calls and rows are counted on each UNet module (a forward pre-hook on ComfyUI's diffusion model, on diffusers'
UNet2DConditionModel). Peak memory: one run of
each row in a child process with MALLOC_MMAP_THRESHOLD_ fixed, so freed tensors leave the RSS (CPU), or
torch.cuda.max_memory_allocated (GPU)."""
from __future__ import annotations

import argparse
import json
import os
import string
import subprocess
import sys
from typing import Any, Callable

from bench import _util

ROWS = ["diffusers SEGA", "ours SEGA", "ours LEDITS++", "diffusers plain CFG", "ours plain CFG",
        "ours DDPM inversion"]


def _diffusers_unet(cfg: dict, model: Any):
    """diffusers UNet2DConditionModel of an SD1.5-layout config with the ComfyUI model's weights."""
    import comfy.utils
    from diffusers import UNet2DConditionModel
    n = len(cfg["channel_mult"])
    attn = [d > 0 for d in cfg["transformer_depth"][::cfg["num_res_blocks"][0]]][:n]
    unet = UNet2DConditionModel(
        sample_size=cfg["image_size"], in_channels=4, out_channels=4, layers_per_block=cfg["num_res_blocks"][0],
        block_out_channels=tuple(cfg["model_channels"] * k for k in cfg["channel_mult"]),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]),
        cross_attention_dim=cfg["context_dim"], attention_head_dim=cfg["num_heads"],
        use_linear_projection=cfg["use_linear_in_transformer"], norm_num_groups=32)
    key_map = comfy.utils.unet_to_diffusers(dict(cfg))
    csd = model.model.diffusion_model.state_dict()
    sd = {dk: csd[ck].detach().clone().float() for dk, ck in key_map.items() if ck in csd}
    missing, unexpected = unet.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weight conversion failed: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return unet.eval()


def _pipeline(cfg: dict, model: Any, device: Any, dtype: Any):
    """diffusers' SemanticStableDiffusionPipeline around the twin UNet (tiny text encoder / VAE, DDIM SD1.5)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from diffusers.pipelines.deprecated.semantic_stable_diffusion.pipeline_semantic_stable_diffusion import (
        SemanticStableDiffusionPipeline)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
    for ch in string.ascii_lowercase:
        vocab[ch + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(0)
    d = cfg["context_dim"]
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=d, intermediate_size=2 * d,
                                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                      projection_dim=d, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, norm_num_groups=8).eval()
    sch = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                        set_alpha_to_one=False, clip_sample=False)
    pipe = SemanticStableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=_diffusers_unet(cfg, model),
                                           scheduler=sch, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


CONCEPTS = ["glasses", "snow", "hat"]


def build(a: argparse.Namespace) -> dict:
    """Both implementations on the same config and weights, the conditionings, the inversion."""
    import torch
    from dragedit.core import host
    from dragedit.nodes.ddpm_inversion import DDPMInversion, EditFriendlyDDPMSampler
    cuda = _util.cuda_in_use()
    dtype = torch.float16 if cuda else torch.float32
    dev = torch.device("cuda" if cuda else "cpu")
    cfg = dict(_util.SD15_FULL if a.full else _util.SD15_MID, image_size=a.size)
    model = host.build_model(cfg, dtype=dtype, init_std=0.05)
    if cuda:
        import comfy.model_management as mm
        model.load_device, model.offload_device = mm.get_torch_device(), mm.unet_offload_device()
    pipe = _pipeline(cfg, model, dev, dtype)
    # the pipeline's own embeddings (uncond, prompt, concepts) become our CONDITIONINGs: same inputs both sides
    embs: list = []
    h = pipe.unet.register_forward_pre_hook(lambda m, args, kw: embs.append(kw["encoder_hidden_states"]), with_kwargs=True)
    with torch.no_grad():
        pipe(prompt="a cat", height=a.size * pipe.vae_scale_factor, width=a.size * pipe.vae_scale_factor,
             num_inference_steps=1, guidance_scale=7.5, output_type="latent", editing_prompt=CONCEPTS)
    h.remove()
    cond = {p: [[e.float().cpu(), {}]] for p, e in zip(["", "a cat"] + CONCEPTS, embs[0].chunk(2 + len(CONCEPTS)))}
    g = torch.Generator().manual_seed(0)
    lat = torch.nn.functional.interpolate(torch.randn(1, 4, a.size // 4, a.size // 4, generator=g),
                                          size=(a.size, a.size), mode="bilinear") * 3
    z_t = torch.randn(1, 4, a.size, a.size, generator=g)
    with torch.inference_mode():
        start, inv, sig = DDPMInversion().invert(model, {"samples": lat}, cond["a cat"], a.steps, 0, 3.5, 1.0, 0,
                                                 negative=cond[""])
        (sampler,) = EditFriendlyDDPMSampler().get_sampler(inv)
    return dict(cuda=cuda, dev=dev, dtype=dtype, cfg=cfg, model=model, pipe=pipe, cond=cond, latent=lat, z_t=z_t,
                start=start, inv=inv, sigmas=sig, sampler=sampler)


def _sega_model(env: dict, n: int, mode: str):
    from dragedit.nodes.sega import SEGAGuidance
    m = env["model"]
    for c in CONCEPTS[:n]:
        m = SEGAGuidance().patch(m, env["cond"][c], "add", 5.0, 0.9, 2 if mode == "SEGA" else 0, 0, 1.0, 0.1, 0.4,
                                 mode)[0]
    return m


def runners(env: dict, a: argparse.Namespace) -> dict[str, Callable[[int], dict]]:
    """name -> fn(n_concepts) running one edit and returning its UNet call / row counts."""
    import torch
    import comfy.sample

    def diffusers_sega(n: int) -> dict:
        pipe, count = env["pipe"], {"calls": 0, "rows": 0}
        edit = dict(editing_prompt=CONCEPTS[:n], edit_guidance_scale=5.0, edit_threshold=0.9, edit_warmup_steps=2,
                    edit_momentum_scale=0.1, edit_mom_beta=0.4) if n else {}

        def hook(mod, args, kwargs):
            count["calls"] += 1
            count["rows"] += int(args[0].shape[0])
        h = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                pipe(prompt="a cat", height=a.size * pipe.vae_scale_factor, width=a.size * pipe.vae_scale_factor,
                     num_inference_steps=a.steps, guidance_scale=7.5, latents=env["z_t"].to(env["dev"], env["dtype"]),
                     output_type="latent", **edit)
        finally:
            h.remove()
        return count

    def ours(mode: str) -> Callable[[int], dict]:
        def run(n: int) -> dict:
            m = (_sega_model(env, n, mode) if n else env["model"]).clone()
            x = env["start"]["samples"]
            with _util.count_unet(env["model"]) as count, torch.inference_mode():
                comfy.sample.sample_custom(m, torch.zeros_like(x), 7.5, env["sampler"], env["sigmas"], env["cond"]["a cat"],
                                           env["cond"][""], x, disable_pbar=True)
            return count.as_dict()
        return run

    def inversion(n: int) -> dict:
        from dragedit.nodes.ddpm_inversion import DDPMInversion
        m = env["model"].clone()
        with _util.count_unet(env["model"]) as count, torch.inference_mode():
            DDPMInversion().invert(m, {"samples": env["latent"]}, env["cond"]["a cat"], a.steps, 0, 3.5, 1.0, 0,
                                   negative=env["cond"][""])
        return count.as_dict()

    return {ROWS[0]: diffusers_sega, ROWS[1]: ours("SEGA"), ROWS[2]: ours("LEDITS++"),
            ROWS[3]: lambda n: diffusers_sega(0), ROWS[4]: lambda n: ours("SEGA")(0), ROWS[5]: inversion}


def measure(env: dict, a: argparse.Namespace, n: int) -> dict[str, dict]:
    """Counts from a warm-up run of each row, then `repeats` interleaved rounds (bench/_util.interleave): median and
    spread of the bench clock (process CPU s on a CPU, synchronised wall s on a GPU), ratios per round."""
    fns = runners(env, a)
    names = ROWS[:3] if n else ROWS[3:]
    counts = {k: fns[k](n) for k in names}  # warm-up + counts
    times = _util.interleave({k: (lambda k=k: fns[k](n)) for k in names}, a.repeats, warmup=False)
    clock = _util.primary()
    ref = times[names[0]][clock]
    out = {}
    for k in names:
        st = _util.summary(times[k][clock])
        out[k] = dict(counts[k], seconds=st["median"], s_min=st["min"], s_max=st["max"], times=times[k][clock],
                      ratio=_util.ratio_summary(times[k][clock], ref))
    return out


def child_peak(a: argparse.Namespace, row: str, n: int) -> dict:
    """Peak memory of one run of `row` in a fresh child process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", __spec__.name, "--child", row, "--concepts", str(n), "--steps", str(a.steps), "--size",
           str(a.size), "--threads", str(a.threads), "--attention", a.attention] + (["--full"] if a.full else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=_util.ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def child(a: argparse.Namespace) -> None:
    env = build(a)
    fn = runners(env, a)[a.child]
    fn(a.concepts)  # warm
    with _util.peak_memory() as mem:
        fn(a.concepts)
    print(json.dumps(mem))


def start_comfy(attention: str, cuda: bool) -> None:
    """Import ComfyUI with the chosen attention kernel (before _util.setup, which then finds it imported)."""
    from tools.support.comfy_env import setup_comfy
    setup_comfy(["--use-pytorch-cross-attention"] if attention == "pytorch" else [])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=32, help="latent side (64 = a 512x512 image)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="the real SD1.5 UNet size (slow on a CPU)")
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process memory pass")
    ap.add_argument("--attention", choices=["pytorch", "default"], default="pytorch",
                    help="ComfyUI's attention kernel (see the module docstring)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--concepts", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    start_comfy(a.attention, torch.cuda.is_available())
    _util.setup()
    if a.child:
        child(a)
        return
    env = build(a)
    rows = []

    def add(name: str, n: int, r: dict, ref: dict | None) -> None:
        row = {"run": name, "concepts": n, "unet_calls": r["calls"], "unet_rows": r["rows"], "s_median": r["seconds"],
               "s_min": r["s_min"], "s_max": r["s_max"]}
        if ref is not None:
            row["ratio_median"] = r["ratio"]["median"]
            row["ratio_min"], row["ratio_max"] = r["ratio"]["min"], r["ratio"]["max"]
            row["rows_ratio"] = r["rows"] / ref["rows"]
        if not a.no_memory:
            row["peak_MB"] = child_peak(a, name, n)["peak_bytes"] / 2 ** 20
        rows.append(row)

    base = measure(env, a, 0)
    add(ROWS[3], 0, base[ROWS[3]], base[ROWS[3]])
    add(ROWS[4], 0, base[ROWS[4]], base[ROWS[3]])
    for n in (1, 3):
        res = measure(env, a, n)
        for name in ROWS[:3]:
            add(name, n, res[name], res[ROWS[0]])
    add(ROWS[5], 0, base[ROWS[5]], None)
    ours = [r for r in rows if r["run"] == ROWS[1]]
    goal = {"rows_le_diffusers": all(r["rows_ratio"] <= 1.0 for r in ours),
            "time_within_1.1x": all(r["ratio_median"] <= 1.1 for r in ours)}
    _util.report("ledits", rows, {
        "attention": a.attention, "repeats": a.repeats, "steps": a.steps, "latent": f"{a.size}x{a.size}",
        "model": "SD1.5 full" if a.full else "SD1.5 layout, 64 base channels",
        "time": "wall s (GPU)" if env["cuda"] else f"process CPU s, {a.threads} torch thread(s), median of {a.repeats}",
        "memory": "cuda_allocated" if env["cuda"] else "cpu_rss_growth (child process, mmap threshold 64 KiB)",
        "goal": goal,
        "notes": "ours SEGA = SEGA Guidance nodes + Edit-friendly DDPM sampler via comfy.sample.sample_custom "
                 "(= SamplerCustom); diffusers SEGA = SemanticStableDiffusionPipeline (DDIM), same weights, CFG 7.5, "
                 "threshold 0.9, warm-up 2, momentum 0.1/0.4. LEDITS++ drops the prompt row (uncond + concepts).",
    })


if __name__ == "__main__":
    main()
