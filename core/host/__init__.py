"""The one package that touches ComfyUI's models, patches and samplers; everything else in core/ talks to ComfyUI
only through it.

Modules, by concern:
  facts       family-neutral model facts (schedule, latent format, text encoder), the supported-model check
  unet        the UNet family: which models it runs, its layer map (AttnLayer, DecoderBlock, select_layers)
  dit         the DiT family (FLUX / Chroma / Kontext, SD3 / SD3.5, Qwen-Image): token map, layer map, RoPE re-encoding
  dit_build   a FLUX built from config (tests, benches)
  dit_grad    DiT gradient passes (out-of-place FLUX block forwards as dit replaces) and feature capture
  dit_kv      DiT image-token K/V record / inject (chained attention override, block tags, key re-encoding)
  dit_qk      DiT source attention maps in an edit (LEDITS-flow's structure lock: Q / K of the source pass)
  build       real ComfyUI models built from a UNet config (tests, the shapes demo model)
  kv          the K/V store and its life cycle (estimate, budget, placement, build, free), K/V record / inject
  features    decoder feature capture
  session     a method's loop inside ComfyUI's sampling (Denoiser), differentiable calls, stock sampling
  guidance    post-CFG guidance (DragonDiffusion) and cond guidance (SEGA / LEDITS++)
  guider      GUIDERs whose denoiser is a method of this pack (FlowEdit), CFGGuider subclasses as ComfyUI's own
  internals   every reach past ComfyUI's public patch mechanisms, one documented function each
A model family other than the UNet adds its own module beside unet.py and registers it in `families.families()`.

Stores (K/V caches, captured features) are owned by a run or by an INVERSION object, never by a patch: a patch
holds a handle that `ModelPatcher.clone()` passes on without copying. Every patch goes on a clone (`clone`).
Importing this package does not import ComfyUI; the first host call does.
"""
from ..schedule import alpha_bar
from . import (build, dit, dit_build, dit_grad, dit_kv, dit_qk, facts, families, features, guidance, guider, internals, kv, session,
               unet)
from .build import build_model, init_weights_
from .errors import HostError, KVBudgetError
from .families import check_supported, conditioning_family_check, family_of
from .facts import (base_model, concept_token_range, ddim_sigmas, is_flow, latent_format,
                    model_sampling, process_in, process_out, scheduler_sigmas, text_start_tokens, timestep_of)
from .features import FeatureStore, patch_feature_capture
from .guidance import (CondGuidanceCall, GuidanceCall, cond_guidance_patch, cond_guidance_payload,
                       cond_guidance_payload_in, patch_cond_guidance, patch_post_cfg_guidance)
from .kv import (KV_PLACEMENT_ENV, KVInjection, KVStore, MixFn, available_memory, masked_mix, patch_kv_inject,
                 patch_kv_record, release_pinned_memory)
from .kv import placement as kv_placement
from .session import (Denoiser, clone, grad_enabled, grad_input, ksampler, patch_sampling_check,
                      sample_with_sampler, session)
from .internals import added_noise
from .unet import (AttnLayer, DecoderBlock, attention_layers, decoder_blocks,
                   diffusion_model, min_latent_side, select_layers, up_block_outputs)

__all__ = [
    "build", "dit", "dit_build", "dit_grad", "dit_kv", "dit_qk", "facts", "families", "features", "guidance", "guider", "internals",
    "kv", "session", "unet",
    "alpha_bar", "build_model", "init_weights_", "HostError", "KVBudgetError",
    "base_model", "check_supported", "family_of", "concept_token_range", "ddim_sigmas", "is_flow", "latent_format", "model_sampling",
    "process_in", "process_out", "scheduler_sigmas", "text_start_tokens", "timestep_of",
    "FeatureStore", "patch_feature_capture",
    "CondGuidanceCall", "GuidanceCall", "cond_guidance_patch", "cond_guidance_payload", "cond_guidance_payload_in",
    "patch_cond_guidance",
    "patch_post_cfg_guidance",
    "KV_PLACEMENT_ENV", "KVInjection", "KVStore", "MixFn", "available_memory", "masked_mix", "patch_kv_inject",
    "patch_kv_record", "release_pinned_memory", "kv_placement",
    "Denoiser", "clone", "grad_enabled", "grad_input", "ksampler", "patch_sampling_check", "sample_with_sampler", "session",
    "AttnLayer", "DecoderBlock", "attention_layers", "conditioning_family_check", "decoder_blocks",
    "diffusion_model", "min_latent_side", "added_noise", "select_layers", "up_block_outputs",
]
