"""RegionDrag nodes: "Latent Copy-Paste" (a SAMPLER wrapper), "Attention K/V Swap" (a MODEL patch) and the
all-in-one "RegionDrag" (stochastic inversion with K/V, then one drag-denoising pass)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..core import host
from ..core import regiondrag as rd
from ..core import regiondrag_dit as rdd
from ..core.drag_schema import DragInstructions, DragSchemaError
from ..core.geometry import GeometryError
from ._errors import NodeInputError, node_entry, require
from ._inputs import (KV_DTYPES, check_batch, check_cond_fits, check_conditioning, check_inversion_steps, check_range,
                      check_same_model, check_schedule, drag_input_name, guard_model, guard_sampler, image_or_latent,
                      kv_budget, read_drag, read_mask, supported_model)
from ._ui import CATEGORY_ALL_IN_ONE, CATEGORY_BLOCKS, SEED_MAX, Progress, tooltips

CP_NODE = "Latent Copy-Paste"
KV_NODE = "Attention K/V Swap"
RD_NODE = "RegionDrag"
LAYER_CHOICES = ("all", "decoder", "decoder, two highest resolutions")

_TIPS = {
    "model": "The diffusion model (SD1.x, SD2.x incl. v-prediction, SDXL, or a flow-matching DiT: FLUX, SD3 / "
             "SD3.5). Patches applied upstream (LoRA, IP-Adapter...) are used as they are.",
    "positive": "Prompt describing the image. RegionDrag runs without CFG (scale 1), like the paper.",
    "drag": "Region pairs, polygons or point pairs from 'Drag Instructions' (image pixels). Every target cell takes "
            "the content of one handle cell.",
    "drag_json": "Drag instructions as JSON text (the schema of 'Drag Instructions'), instead of the drag input. "
                 "Needs \"image_size\" when only a LATENT is connected.",
    "image": "The image to edit (one image), encoded with the VAE. Connect either IMAGE + VAE or a LATENT.",
    "vae": "The VAE that encodes the image.",
    "latent": "The image to edit as a clean latent (VAE Encode), instead of IMAGE + VAE. One image (batch 1).",
    "mask": "Editable area (white = may change): outside it the latent is reset to the cached inversion at every "
            "step, so it stays as it was. Defaults to the mask stored in the drag instructions, else the whole "
            "image. All black = no mask.",
    "steps": "Steps of the full DDIM grid (the paper: 20).",
    "strength": "Fraction of the grid that is inverted and re-denoised (the paper: 0.5 = 10 of 20 steps). Higher "
                "moves more freely but changes more.",
    "noise_scale": "How much fresh noise fills the place the dragged content leaves, so it can be redrawn: 0 "
                   "keeps a ghost of the old content, 1 or more = pure noise (the paper's UI 0.6, its benchmark "
                   "1.0) (α in z ← sqrt(1−α²)·z + α·n).",
    "seed": "Seed of the inversion's noise and of the vacate noise.",
    "paste_end": "Share of the last steps that run without pasting, so the pasted content blends into its new "
                 "surroundings (paste while step < (1 − paste_end)·steps).",
    "paste_every_step": "Paste at every step, ignoring paste_end: what the reference code actually runs (it compares "
                        "a timestep with a step count).",
    "kv_dtype": "Precision of the cached self-attention K/V (kept on the model's offload device).",
    "sampler": "The sampler to wrap (KSamplerSelect, Edit-friendly DDPM, ...). It is run one step at a time, so "
               "multistep samplers (DPM++ 2M, LMS, UniPC...) act as their one-step form.",
    "inversion": "An INVERSION with per-step latents (DDIM Inversion, DDPM Inversion, or Flow Inversion for a DiT: "
                 "then its NOISE goes to SamplerCustomAdvanced). The sampler's sigmas must be the inversion's (feed "
                 "its SIGMAS to SamplerCustom).",
    "kv_inversion": "An INVERSION that carries self-attention K/V (DDIM Inversion with record_kv on).",
    "layers": "Which self-attention layers take the cached K/V: all (RegionDrag), the decoder, or the decoder's two "
              "highest resolutions (DragDiffusion's reference-latent control).",
    "mode": "replace: K,V := the cached ones (RegionDrag). concat: attend to own and cached tokens.",
    "dit_layers": "DiTs only: which transformer blocks take the cached image K/V: all, the double (joint) blocks, "
                  "FLUX's single blocks, or Stable Flow's 'vital' blocks (fewer blocks = less memory, looser "
                  "background).",
    "reencode_keys": "DiTs only: rotate each moved key to its new place (RoPE models: FLUX, Qwen-Image) so the "
                     "moved content is attended to where it now is. Off: keys keep their old position.",
}


# ====================================================================== shared input handling
def _plan(drag: DragInstructions, latent_hw: tuple[int, int], mask: Optional[torch.Tensor], drag_name: str,
          require_moves: bool = False, **kw: Any) -> rd.EditPlan:
    """EditPlan with every geometry / mask problem as a NodeInputError naming the input; with require_moves the
    methods' "nothing to drag" rule (Latent Copy-Paste without instructions is its wrapped sampler)."""
    try:
        plan = rd.make_plan(drag, latent_hw, mask, **kw)
        if require_moves:
            drag.require_moves()
        return plan
    except rd.RegionDragError as e:
        raise NodeInputError(drag_name if e.field == "drag" else e.field, f"{e}.") from None
    except (GeometryError, DragSchemaError) as e:
        raise NodeInputError(drag_name, f"{e}.") from None


def _plan_options(noise_scale: float, paste_end: float, paste_every_step: bool, seed: int) -> dict:
    check_range(float(noise_scale), 0.0, 10.0, "noise_scale")
    check_range(float(paste_end), 0.0, 1.0, "paste_end")
    return dict(noise_scale=float(noise_scale), paste_end=float(paste_end), paste_every_step=bool(paste_every_step),
                seed=int(seed))


def _plan_spec() -> dict:
    return {
        "noise_scale": ("FLOAT", {"default": rd.DEFAULT_NOISE_SCALE, "min": 0.0, "max": 1.6, "step": 0.05}),
        "seed": ("INT", {"default": 42, "min": 0, "max": SEED_MAX}),
    }


def _schedule_spec() -> dict:
    return {
        "paste_end": ("FLOAT", {"default": rd.DEFAULT_PASTE_END, "min": 0.0, "max": 1.0, "step": 0.05}),
        "paste_every_step": ("BOOLEAN", {"default": False}),
    }


# ====================================================================== Latent Copy-Paste
class LatentCopyPaste:
    DESCRIPTION = ("Wraps any SAMPLER so that, before each step, the inversion's cached handle cells are pasted "
                   "onto the target cells and the cached latent is restored outside the editable mask; the vacated "
                   "handle area is re-noised first. Use in SamplerCustom with the inversion's SIGMAS and its start "
                   "latent (add_noise off); pair with 'Attention K/V Swap' for RegionDrag.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "sampler": ("SAMPLER",),
                "inversion": ("INVERSION",),
                **_plan_spec(),
                **_schedule_spec(),
            },
            "optional": {
                "drag": ("DRAG",),
                "drag_json": ("STRING", {"forceInput": True, "multiline": True, "dynamicPrompts": False}),
                "mask": ("MASK",),
            },
        }, _TIPS)

    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("The wrapped sampler (steps one at a time, pasting before each).",)
    FUNCTION = "wrap"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(CP_NODE)
    def wrap(self, sampler, inversion, noise_scale=rd.DEFAULT_NOISE_SCALE, seed=42, paste_end=rd.DEFAULT_PASTE_END,
             paste_every_step=False, drag=None, drag_json=None, mask=None):
        inner = getattr(sampler, "sampler_function", None)
        require(callable(inner), "sampler",
                f"expected a SAMPLER from KSamplerSelect or another sampler node (a KSAMPLER), got "
                f"{type(sampler).__name__}.")
        try:
            sig, state_at = rd.cached_states(inversion)
        except rd.RegionDragError as e:
            raise NodeInputError("inversion", f"{e}.") from None
        check_inversion_steps(inversion)
        latent = state_at(0)
        require(latent.ndim == 4, "inversion", f"holds a latent of shape {tuple(latent.shape)}, not an image latent.")
        check_batch(latent.shape[0], "inversion", "inverted latent")
        opts = _plan_options(noise_scale, paste_end, paste_every_step, seed)
        d = read_drag(drag, drag_json=drag_json, json_input=True)
        lat_hw = tuple(latent.shape[-2:])
        plan = _plan(d, lat_hw, read_mask(mask, latent_hw=lat_hw, image_size=d.image_size), drag_input_name(drag),
                     **opts)
        src = "the inversion node (DDIM Inversion / DDPM Inversion / Flow Inversion)"
        flow = rd.is_flow_inversion(inversion)          # its NOISE output is the inverted state: noise is expected
        fn = guard_sampler(
            rd.copy_paste_sampler_fn(inner, inversion, plan), CP_NODE,
            # a flow inversion's NOISE output is the inverted state (noise is expected, and the sampler's start
            # latent is mixed from it by the model sampling, so it is not compared with the inversion's)
            lambda run_sig, x, noise: check_schedule("inversion", run_sig, sig, source=src, latent_shape=x.shape,
                                                     inv_latent_hw=lat_hw, noise=None if flow else noise,
                                                     inv=inversion, latent=None if flow else x))
        return (host.ksampler(fn, sampler.extra_options, sampler.inpaint_options),)


# ====================================================================== Attention K/V Swap
class AttentionKVSwap:
    DESCRIPTION = ("Patches MODEL so that self-attention layers use the K/V cached in an INVERSION at the matching "
                   "step (queries still come from the latent being sampled). Works with any sampler whose sigmas "
                   "are the inversion's.")

    @classmethod
    def INPUT_TYPES(cls):
        spec = tooltips({
            "required": {
                "model": ("MODEL",),
                "inversion": ("INVERSION",),
                "layers": (list(LAYER_CHOICES), {"default": "all"}),
                "mode": (["replace", "concat"], {"default": "replace"}),
            },
        }, _TIPS)
        spec["required"]["inversion"] = ("INVERSION", {"tooltip": _TIPS["kv_inversion"]})
        return spec

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the cached K/V swapped in (a clone; the input model is unchanged).",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(KV_NODE)
    def patch(self, model, inversion, layers="all", mode="replace"):
        require(not host.dit.is_family(model), "model",
                "is a flow-matching DiT (FLUX / SD3 / Qwen-Image): its image-token K/V are recorded and injected "
                "inside the RegionDrag node, which takes DiTs; this node swaps the self-attention K/V of SD1.x / "
                "SD2.x / SDXL UNets.")
        supported_model(model)
        kv = getattr(inversion, "kv", None)         # the INVERSION contract's optional K/V (None for other values)
        require(kv is not None and len(kv) > 0, "inversion",
                "carries no self-attention K/V: turn record_kv on in 'DDIM Inversion' (or the inversion was freed).")
        check_same_model(model, inversion)
        require(layers in LAYER_CHOICES, "layers", f"must be one of {list(LAYER_CHOICES)}, got {layers!r}.")
        require(mode in ("replace", "concat"), "mode", f"must be 'replace' or 'concat', got {mode!r}.")
        if layers == "all":
            sel = host.attention_layers(model)
        elif layers == "decoder":
            sel = host.select_layers(model, part="output")
        else:
            lv = sorted({l.level for l in host.select_layers(model, part="output")})[:2]
            sel = host.select_layers(model, part="output", levels=lv)
        require(len(sel) > 0, "layers", f"'{layers}' selects no self-attention layer in this model.")
        run, _inj = rd.kv_swap_model(model, kv, sel, mode)
        if getattr(inversion, "num_latents", 0) > 0:
            # K/V exist only at the inversion's steps and for its batch; the sampled latent may differ (an edited
            # or optimised one: DragDiffusion's reference K/V), so its values are not compared.
            lat_hw = tuple(inversion.latent(0).shape[-2:])
            guard_model(run, f"kv_swap_{id(inversion)}", KV_NODE, lambda sig, x, noise: check_schedule(
                "inversion", sig, inversion.sigmas, source="the inversion node (DDIM Inversion)", latent_shape=x.shape,
                inv_latent_hw=lat_hw, inv=inversion, latent=x, same_start=False))
        return (run,)


# ====================================================================== RegionDrag (all-in-one)
class RegionDrag:
    DESCRIPTION = ("RegionDrag (ECCV'24) in one node: stochastic (cycle-SDE) inversion to the start step caching "
                   "latents, noise maps and self-attention K/V, then one denoising pass that pastes the handle regions "
                   "onto the targets and swaps in the cached K/V. One inversion + one denoising pass, no optimisation.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "steps": ("INT", {"default": rd.DEFAULT_STEPS, "min": 1, "max": 1000}),
                "strength": ("FLOAT", {"default": rd.DEFAULT_STRENGTH, "min": 0.01, "max": 1.0, "step": 0.01}),
                **_plan_spec(),
            },
            "optional": {
                "drag": ("DRAG",),
                "drag_json": ("STRING", {"forceInput": True, "multiline": True, "dynamicPrompts": False}),
                "image": ("IMAGE",),
                "vae": ("VAE",),
                "latent": ("LATENT",),
                "mask": ("MASK",),
                **_schedule_spec(),
                "kv_dtype": (list(KV_DTYPES), {"default": "float16"}),
                "dit_layers": (list(rdd.LAYER_SETS), {"default": "all"}),
                "reencode_keys": ("BOOLEAN", {"default": True}),
            },
        }, _TIPS)

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The edited clean latent (VAE Decode it).",)
    FUNCTION = "run"
    CATEGORY = CATEGORY_ALL_IN_ONE

    @node_entry(RD_NODE)
    def run(self, model, positive, steps=rd.DEFAULT_STEPS, strength=rd.DEFAULT_STRENGTH,
            noise_scale=rd.DEFAULT_NOISE_SCALE, seed=42, drag=None, drag_json=None, image=None, vae=None, latent=None,
            mask=None, paste_end=rd.DEFAULT_PASTE_END, paste_every_step=False, kv_dtype="float16",
            dit_layers="all", reencode_keys=True):
        flow = supported_model(model, flow=True) == "flow"
        if flow:
            check_conditioning(positive, "positive")
            msg = host.dit.conditioning_check(model, positive)
            require(msg is None, "positive", f"{msg}.")
        else:
            check_cond_fits(model, positive, "positive")
        require(dit_layers in rdd.LAYER_SETS, "dit_layers", f"must be one of {list(rdd.LAYER_SETS)}, got "
                                                            f"{dit_layers!r}.")
        require(int(steps) >= 1, "steps", f"must be at least 1, got {steps}.")
        check_range(float(strength), 0.0, 1.0, "strength")
        n = int(round(float(strength) * int(steps)))
        require(n >= 1, "strength", f"is {strength}: with {steps} steps nothing is inverted, so nothing can be "
                                    f"dragged; raise strength or steps.")
        require(kv_dtype in KV_DTYPES, "kv_dtype", f"must be one of {list(KV_DTYPES)}, got {kv_dtype!r}.")
        opts = _plan_options(noise_scale, paste_end, paste_every_step, seed)
        samples, image_size = image_or_latent(model, image, vae, latent)
        d = read_drag(drag, drag_json=drag_json, json_input=True, image_size=image_size)
        lat_hw = tuple(samples.shape[-2:])
        radius = None
        if flow and d.image_size is not None:
            try:
                radius = rdd.point_radius(model, d.image_size, lat_hw)
            except rd.RegionDragError:
                radius = None                       # _plan names the size mismatch
        plan = _plan(d, lat_hw, read_mask(mask, latent_hw=lat_hw, image_size=d.image_size), drag_input_name(drag),
                     require_moves=True, follow_nearest_handle=flow, point_radius=radius, **opts)
        if flow:
            try:
                est = rdd.kv_bytes(model, lat_hw, n, KV_DTYPES[kv_dtype], dit_layers)
            except rd.RegionDragError as e:
                raise NodeInputError(e.field, f"{e}.") from None
        else:
            est = host.kv.estimate_model_bytes(model, lat_hw, n, KV_DTYPES[kv_dtype])
        kv_budget("steps", est, what=f"{n} steps, {lat_hw[1]}x{lat_hw[0]} latent, {kv_dtype}")

        bar = Progress(2 * n)
        out = rd.run(model, positive, samples, plan, steps=int(steps), strength=float(strength), seed=int(seed),
                     kv_dtype=KV_DTYPES[kv_dtype], on_step=lambda i, total: bar.update(1), dit_layers=dit_layers,
                     reencode_keys=bool(reencode_keys))
        return ({"samples": out.to(samples.device)},)


NODE_CLASS_MAPPINGS = {
    "DragEditLatentCopyPaste": LatentCopyPaste,
    "DragEditAttentionKVSwap": AttentionKVSwap,
    "DragEditRegionDrag": RegionDrag,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DragEditLatentCopyPaste": CP_NODE,
    "DragEditAttentionKVSwap": KV_NODE,
    "DragEditRegionDrag": RD_NODE,
}
