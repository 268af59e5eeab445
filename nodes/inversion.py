"""DDIM Inversion node: the clean latent walked back to a start step, with the INVERSION (latents per step,
sigmas, optional self-attention K/V) that the method nodes consume, and SIGMAS for a stock SamplerCustom. The run
is core/inversion.py: run."""
from __future__ import annotations

from ..core import host
from ..core import inversion as inv
from ._errors import NodeInputError, node_entry, require
from ._inputs import KV_DTYPES, check_cond_fits, check_latent, check_range, kv_budget, supported_model
from ._inversion_spec import inversion_inputs
from ._ui import CATEGORY_BLOCKS, Progress

NODE = "DDIM Inversion"


class DDIMInversion:
    DESCRIPTION = ("Walks a latent back along the DDIM schedule to a start step (deterministic inversion). "
                   "Sampling the output LATENT with the output SIGMAS (SamplerCustom, sampler 'ddim', add_noise off) "
                   "reconstructs the input; the INVERSION feeds the drag nodes.")

    @classmethod
    def INPUT_TYPES(cls):
        return inversion_inputs({
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
            "strength": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}),
            "record_kv": ("BOOLEAN", {"default": False}),
        }, {
            "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1}),
            "kv_dtype": (list(KV_DTYPES), {"default": "float16"}),
            "kv_max_gb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5}),
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

    @node_entry(NODE)
    def invert(self, model, latent, positive, steps, strength, record_kv, negative=None, cfg=1.0, kv_dtype="float16",
               kv_max_gb=0.0):
        supported_model(model)
        samples = check_latent(latent, model=model)
        check_cond_fits(model, positive, "positive")
        require(int(steps) >= 1, "steps", f"must be at least 1, got {steps}.")
        check_range(float(strength), 0.0, 1.0, "strength")
        require(kv_dtype in KV_DTYPES, "kv_dtype", f"must be one of {list(KV_DTYPES)}, got {kv_dtype!r}.")
        if negative is not None:
            check_cond_fits(model, negative, "negative")
        require(cfg <= 1.0 or negative is not None, "cfg",
                "is above 1 but no negative conditioning is connected: connect one or set cfg to 1.")

        sigmas = inv.start_sigmas(model, int(steps), float(strength))
        budget, dtype = 0, None
        if record_kv and len(sigmas) > 1:
            require(float(kv_max_gb) >= 0, "kv_max_gb", f"must be 0 (automatic) or more, got {kv_max_gb}.")
            dtype = KV_DTYPES[kv_dtype]
            halves = 2 if negative is not None and float(cfg) > 1.0 else 1
            n = len(sigmas) - 1
            budget = kv_budget("record_kv", inv.kv_estimate(model, samples, sigmas, dtype, halves), float(kv_max_gb),
                               f"{n} steps, {samples.shape[-1]}x{samples.shape[-2]} latent, {kv_dtype}",
                               "lower steps or strength, use a smaller image, kv_dtype float16, raise kv_max_gb, or "
                               "turn record_kv off if no node uses the K/V")
        bar = Progress(max(len(sigmas) - 1, 1))
        try:
            out, result = inv.run(model, samples, positive, negative, float(cfg), sigmas, steps=int(steps),
                                  kv_dtype=dtype, kv_budget_bytes=budget, on_step=lambda i, n: bar.update(1))
        except host.KVBudgetError as e:
            raise NodeInputError("record_kv", f"{e}: lower steps or strength, use a smaller image or raise "
                                              f"kv_max_gb.") from None
        return ({"samples": out}, result, sigmas.cpu())


NODE_CLASS_MAPPINGS = {"DragEditDDIMInversion": DDIMInversion}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditDDIMInversion": NODE}
