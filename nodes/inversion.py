"""DDIM Inversion node: the clean latent walked back to a start step, with the INVERSION (latents per step,
sigmas, optional self-attention K/V) that the method nodes consume, and SIGMAS for a stock SamplerCustom."""
from __future__ import annotations

import torch

from ..core import host
from ..core import inversion as inv
from ..core.regiondrag import kv_cache_bytes
from ._common import (CATEGORY_BLOCKS, NodeInputError, Progress, check_conditioning, check_latent, check_range, kv_budget,
                      require, tooltips)

NODE = "DDIM Inversion"
KV_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def supported_model(model, node: str, input_name: str = "model") -> str:
    """'eps' or 'v' for a model this pack can edit with, else a NodeInputError naming the node."""
    try:
        return host.check_supported(model)
    except host.HostError as e:
        raise NodeInputError(node, input_name, str(e)) from None


def check_cond_fits(model, cond, node: str, input_name: str) -> None:
    """Clear error when a CONDITIONING comes from another model family than the MODEL."""
    check_conditioning(cond, node, input_name)
    msg = host.conditioning_family_check(model, cond)
    require(msg is None, node, input_name, f"{msg}.")


class DDIMInversion:
    DESCRIPTION = ("Walks a latent back along the DDIM schedule to a start step (deterministic inversion). "
                   "Sampling the output LATENT with the output SIGMAS (SamplerCustom, sampler 'ddim', add_noise off) "
                   "reconstructs the input; the INVERSION feeds the drag nodes.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "model": ("MODEL",),
                "latent": ("LATENT",),
                "positive": ("CONDITIONING",),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
                "strength": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}),
                "record_kv": ("BOOLEAN", {"default": False}),
            },
            "optional": {
                "negative": ("CONDITIONING",),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1}),
                "kv_dtype": (list(KV_DTYPES), {"default": "float16"}),
                "kv_max_gb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5}),
            },
        }, {
            "model": "The diffusion model (SD1.x, SD2.x incl. v-prediction, SDXL).",
            "latent": "The image to invert, as a latent (VAE Encode). One image (batch 1).",
            "positive": "Prompt describing the image; the same conditioning should be used when sampling back.",
            "steps": "Steps of the full DDIM grid (50 is the papers' default).",
            "strength": "Fraction of the grid to invert: 1.0 = to pure noise, 0.7 = DragDiffusion's default (t=681 of 50 steps).",
            "record_kv": "Record the self-attention K/V of every layer at every step (for memory-bank / reference K/V injection).",
            "negative": "Optional negative prompt; needed only when cfg > 1.",
            "cfg": "Classifier-free guidance during inversion (1 = conditional only, the papers' choice).",
            "kv_dtype": "Precision of the recorded K/V cache (kept on the offload device). float16 halves the RAM of "
                        "float32.",
            "kv_max_gb": "RAM limit for the recorded K/V in GB; the run is refused before it starts when the estimate "
                         "is above it. 0 = automatic: half the RAM available when the node runs. The K/V stay in "
                         "RAM while ComfyUI caches this node's output (about 46 MB per step for SD1.5 at 512x512, "
                         "419 MB for SDXL at 1024x1024, in float16).",
        })

    RETURN_TYPES = ("LATENT", "INVERSION", "SIGMAS")
    RETURN_NAMES = ("LATENT", "INVERSION", "SIGMAS")
    OUTPUT_TOOLTIPS = ("The noisy latent at the start step.", "Latents per step, sigmas and optional K/V for the method nodes.",
                       "The sampling sigmas from the start step to 0.")
    FUNCTION = "invert"
    CATEGORY = CATEGORY_BLOCKS

    def invert(self, model, latent, positive, steps, strength, record_kv, negative=None, cfg=1.0, kv_dtype="float16",
               kv_max_gb=0.0):
        supported_model(model, NODE)
        samples = check_latent(latent, NODE, model=model)
        check_cond_fits(model, positive, NODE, "positive")
        require(int(steps) >= 1, NODE, "steps", f"must be at least 1, got {steps}.")
        check_range(float(strength), 0.0, 1.0, NODE, "strength")
        require(kv_dtype in KV_DTYPES, NODE, "kv_dtype", f"must be one of {list(KV_DTYPES)}, got {kv_dtype!r}.")
        if negative is not None:
            check_cond_fits(model, negative, NODE, "negative")
        require(cfg <= 1.0 or negative is not None, NODE, "cfg", "is above 1 but no negative conditioning is connected: connect one or set cfg to 1.")

        grid = host.ddim_sigmas(model, int(steps))
        sigmas = grid[inv.start_index(int(steps), float(strength)):]
        run_model = host.clone(model)
        store = None
        if record_kv and len(sigmas) > 1:
            require(float(kv_max_gb) >= 0, NODE, "kv_max_gb", f"must be 0 (automatic) or more, got {kv_max_gb}.")
            halves = 2 if negative is not None and float(cfg) > 1.0 else 1
            n = len(sigmas) - 1
            est = kv_cache_bytes(host.attention_layers(model), samples.shape[-2:], n, KV_DTYPES[kv_dtype], halves,
                                 samples.shape[0])
            budget = kv_budget(NODE, "record_kv", est, float(kv_max_gb),
                               f"{n} steps, {samples.shape[-1]}x{samples.shape[-2]} latent, {kv_dtype}",
                               "lower steps or strength, use a smaller image, kv_dtype float16, raise kv_max_gb, or "
                               "turn record_kv off if no node uses the K/V")
            store = host.KVStore(dtype=KV_DTYPES[kv_dtype], device=model.offload_device, budget_bytes=budget)
            host.patch_kv_record(run_model, store)
        bar = Progress(max(len(sigmas) - 1, 1))
        holder = {}

        def loop(den, x, _sig):
            lat = inv.invert(den, x, sigmas.to(x.device), on_step=lambda i, n: bar.update(1))
            holder["latents"] = [t.to(model.offload_device) for t in lat]
            return lat[0]

        if len(sigmas) > 1:
            try:
                out = host.session(run_model, positive, negative, cfg if negative is not None else 1.0, samples, sigmas,
                                   loop)
            except host.KVBudgetError as e:
                store.clear()
                raise NodeInputError(NODE, "record_kv", f"{e}: lower steps or strength, use a smaller image or raise "
                                                        f"kv_max_gb.") from None
            latents = holder["latents"]
        else:  # strength 0: nothing to invert
            out = samples.clone()
            latents = [host.process_in(model, samples.clone())]
        result = inv.DDIMInversion(sigmas=sigmas.cpu(), latents=latents, kv=store, steps=int(steps), cfg=float(cfg),
                                   model_id=id(host.base_model(model)))
        return ({"samples": out}, result, sigmas.cpu())


NODE_CLASS_MAPPINGS = {"DragEditDDIMInversion": DDIMInversion}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditDDIMInversion": NODE}
