"""Tiny random-weight diffusers pipelines (SD1.5-shaped components built from config, no downloads) for the parity
tests: diffusers' SemanticStableDiffusionPipeline (SEGA) and LEditsPPPipelineStableDiffusion (LEDITS++), its
recorded inversion, and a test image."""
from __future__ import annotations

import math
import string

import pytest
import torch


def tiny_sd_components() -> dict:
    """vae, text_encoder, tokenizer, unet, scheduler of a tiny SD1.5-shaped diffusers pipeline (random weights,
    built from config, no download; DDIM with the SD1.5 constants). Images 32², latents 4×16²."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
    for ch in string.ascii_lowercase:
        vocab[ch + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8).eval()
    vae = AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=8, sample_size=32).eval()
    sch = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                        set_alpha_to_one=False, clip_sample=False)
    return dict(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sch, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)


def tiny_sega_pipeline():
    """diffusers' SemanticStableDiffusionPipeline on the tiny components."""
    from diffusers.pipelines.deprecated.semantic_stable_diffusion.pipeline_semantic_stable_diffusion import (
        SemanticStableDiffusionPipeline)
    pipe = SemanticStableDiffusionPipeline(**tiny_sd_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_ledits_pp_pipeline():
    """diffusers' LEditsPPPipelineStableDiffusion on the tiny components (DDIM: edit-friendly inversion)."""
    from diffusers import LEditsPPPipelineStableDiffusion
    pipe = LEditsPPPipelineStableDiffusion(**tiny_sd_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def blob_image(seed: int = 0):
    """A 32×32 RGB PIL image of smooth random colour blobs."""
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(3, 4, 4, generator=g)
    big = torch.nn.functional.interpolate(small[None], size=(32, 32), mode="bilinear", align_corners=False)[0]
    return Image.fromarray((big.permute(1, 2, 0).numpy() * 255).astype("uint8"))


def ledits_pp_inverted(steps: int = 8, skip: float = 0.15, seed: int = 3):
    """The tiny LEDITS++ pipeline after `invert` (DDIM, source prompt "a cat", CFG 3.5), with the UNet calls of
    the inversion recorded as dicts (x, t, emb)."""
    pipe = tiny_ledits_pp_pipeline()
    add_noise = pipe.scheduler.add_noise
    # diffusers 0.39 indexes ᾱ with a float tensor in invert (rejected by this torch); cast, nothing else changes
    pipe.scheduler.add_noise = lambda x, n, t: add_noise(x, n, t.long())
    calls: list = []

    def pre(mod, args, kwargs):
        calls.append(dict(x=args[0].clone(), t=int(args[1] if len(args) > 1 else kwargs["timestep"]), emb=kwargs["encoder_hidden_states"].clone()))

    handle = pipe.unet.register_forward_pre_hook(pre, with_kwargs=True)
    with torch.no_grad():
        pipe.invert(image=blob_image(), source_prompt="a cat", source_guidance_scale=3.5, num_inversion_steps=steps,
                    skip=skip, generator=torch.Generator().manual_seed(seed))
    handle.remove()
    return pipe, calls


def ddim_grid(pipe) -> tuple[list[int], list[float], torch.Tensor]:
    """The inverted timesteps, their ᾱ (plus the final ᾱ_0 diffusers steps to) and σ = sqrt((1−ᾱ)/ᾱ)."""
    ac = pipe.scheduler.alphas_cumprod.double()
    ts = [int(t) for t in pipe.inversion_steps]
    abar = [float(ac[t]) for t in ts] + [float(pipe.scheduler.final_alpha_cumprod)]
    return ts, abar, torch.tensor([math.sqrt((1 - a) / a) for a in abar], dtype=torch.float32)
