"""Nodes "SEGA Guidance" (an edit concept patched onto a MODEL; chain them for more) and "LEDITS Edit" (the
all-in-one: DDPM inversion + SEGA concepts + the edit-friendly sampler). Thin: checks here, the method in
core/ledits.py, core/sega.py and core/ddpm_inversion.py."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Optional

from ..core import host, ledits
from ..core import sega
from ._errors import NodeInputError, node_entry, node_errors, require
from ._inputs import (check_cond_fits, check_mask, check_range, check_result, guard_model, image_or_latent, read_mask,
                      supported_model)
from ._ui import CATEGORY_ALL_IN_ONE, CATEGORY_BLOCKS, SEED_MAX, Progress, tooltips
from .ddpm_inversion import check_inversion_inputs

NODE = "SEGA Guidance"
EDIT = "LEDITS Edit"
DIRECTIONS = ["add", "remove"]
MODES = list(ledits.MODES)

TIPS = {
    "model": "The diffusion model (SD1.x, SD2.x incl. v-prediction, SDXL, or a flow-matching DiT: FLUX, SD3 / SD3.5, "
             "Qwen-Image); chain SEGA Guidance nodes to add concepts.",
    "concept": "The edit concept as a prompt (CLIP Text Encode), e.g. 'glasses' or 'snow'.",
    "direction": "add: steer towards the concept; remove: steer away from it.",
    "scale": "How strongly the concept is added or removed: higher changes more (SEGA default 5; 3-10 typical) "
             "(edit guidance scale s_e).",
    "threshold": "How much of the picture the concept may change: 0.9 edits the 10 % of positions where the "
                 "concept matters most; higher = a smaller, more local edit (0.9-0.99 typical) (quantile λ of |ψ| "
                 "per latent channel).",
    "warmup": "Steps (counted from the first step the sampler runs) before the concept is applied; its momentum "
              "still builds up meanwhile (SEGA default 10; LEDITS++ 0).",
    "cooldown": "Step from which the concept stops being applied (0 = never).",
    "weight": "Relative weight of this concept among the concepts of the chain (SEGA mode).",
    "momentum_scale": "How much the edit keeps building up over the steps, so it sets in earlier and firmer (0 = "
                      "off; below 1, since from 1 up it grows without bound); shared by the whole chain, the last "
                      "node's value wins (SEGA momentum scale s_m).",
    "momentum_beta": "How long that build-up remembers earlier steps: higher = smoother, slower to change; shared by "
                     "the chain (SEGA momentum β).",
    "mode": "SEGA: CFG on the sampler's prompt + concept terms with momentum. LEDITS++: no prompt CFG (the "
            "positive is not evaluated), each concept masked by its noise quantile and, optionally, its "
            "cross-attention map. One mode per chain. To edit a real image in LEDITS++ mode, invert with the empty "
            "prompt at cfg 1 (DDPM Inversion: positive = the negative, source_cfg 1), so that scale 0 reconstructs. "
            "On a flow DiT SEGA acts on the velocity as diffusers' FLUX semantic guidance: with cfg 1 or no negative "
            "(FLUX-dev) each concept pulls away from the prompt's velocity ('simple SEGA'), with cfg > 1 and a "
            "negative from the negative's; thresholds count per image token.",
    "cross_attention_mask": "LEDITS++: also mask each concept by its own cross-attention map (layers at 1/4 of the "
                            "latent resolution), intersected with the noise-quantile mask. Shared by the chain. "
                            "UNets only: set it to false for a flow DiT (no cross-attention).",
    "concept_tokens": "LEDITS++ cross-attention mask: number of the concept prompt's first tokens (words / "
                      "sub-words, counted after the start token when the text encoder has one, as CLIP does) whose "
                      "attention makes the mask; 0 = all tokens but the start token and the last one, padding "
                      "included (what diffusers' LEDITS++ pipeline does).",
}


def concept_entry(model: Any, concept: Any, direction: str, scale: float, threshold: float, warmup: int,
                  cooldown: int, weight: float, tokens: int) -> ledits.ConceptEntry:
    """Validate one concept's inputs (SEGA Guidance's input names) and build its entry."""
    require(concept is not None and isinstance(concept, list) and len(concept) > 0, "concept",
            "no concept: connect a CONDITIONING (CLIP Text Encode with the concept's words).")
    check_cond_fits(model, concept, "concept")
    require(direction in DIRECTIONS, "direction", f"must be one of {DIRECTIONS}, got {direction!r}.")
    require(math.isfinite(float(scale)) and float(scale) >= 0.0, "scale",
            f"must be a finite number >= 0 (use direction 'remove' to negate), got {scale}.")
    require(math.isfinite(float(threshold)), "threshold", f"must be a number between 0 and 1, got {threshold}.")
    check_range(float(threshold), 0.0, 1.0, "threshold")
    require(int(warmup) >= 0, "warmup", f"must be >= 0 steps, got {warmup}.")
    require(int(cooldown) >= 0, "cooldown", f"must be >= 0 steps (0 = never), got {cooldown}.")
    require(int(cooldown) == 0 or int(cooldown) > int(warmup), "cooldown",
            f"is {cooldown}, not after the warm-up ({warmup}): the concept would never apply (0 = never cool down).")
    require(math.isfinite(float(weight)) and float(weight) >= 0.0, "weight", f"must be >= 0, got {weight}.")
    require(int(tokens) >= 0, "concept_tokens", f"must be >= 0, got {tokens}.")
    c = sega.SegaConcept(scale=float(scale), threshold=float(threshold), reverse=direction == "remove",
                         warmup=int(warmup), cooldown=int(cooldown) if int(cooldown) > 0 else None, weight=float(weight))
    return ledits.ConceptEntry(conditioning=concept, concept=c, tokens=int(tokens))


MOMENTUM_MAX_EXCL = 1.0     # momentum_scale >= 1 makes SEGA's momentum grow geometrically (chain_settings)


def chain_settings(prev: Optional[ledits.SegaPatch], concept: Any, momentum_scale: float, momentum_beta: float,
                   mode: str, cross_attention_mask: bool) -> dict:
    """Check the chain-wide settings against an upstream SEGA patch; the settings for SegaPatch.with_concept."""
    require(mode in MODES, "mode", f"must be one of {MODES}, got {mode!r}.")
    require(math.isfinite(float(momentum_scale)) and float(momentum_scale) >= 0.0, "momentum_scale",
            f"must be >= 0, got {momentum_scale}.")
    check_range(float(momentum_beta), 0.0, 1.0, "momentum_beta")
    growth = float(momentum_beta) + (1.0 - float(momentum_beta)) * float(momentum_scale)
    require(growth < 1.0 or float(momentum_beta) >= 1.0, "momentum_scale",
            f"is {float(momentum_scale):g}: from 1 up the momentum grows at every step (it is multiplied by "
            f"momentum_beta + (1 - momentum_beta) x momentum_scale = {growth:.2g} per step), so the edit blows up "
            f"(a scale of 10 gave a latent 10^11 times the image's). Use a value below {MOMENTUM_MAX_EXCL:g} "
            f"(SEGA: 0.1-0.5).")
    if prev is not None:
        require(prev.mode == mode, "mode",
                f"is {mode} but the upstream SEGA Guidance node uses {prev.mode}: one mode per chain.")
        for e in prev.entries:
            require(e.conditioning[0][0].shape[-1] == concept[0][0].shape[-1], "concept",
                    "has another width than the upstream concepts (conditioning from another model family?).")
    return dict(momentum_scale=float(momentum_scale), momentum_beta=float(momentum_beta), mode=mode,
                cross_attention_mask=bool(cross_attention_mask))


def apply_patch(model: Any, patch: ledits.SegaPatch) -> Any:
    """ledits.apply, a model the patch cannot go on named as the input at fault."""
    try:
        return ledits.apply(model, patch)
    except host.HostError as e:
        attn = patch.mode == "LEDITS++" and patch.cross_attention_mask
        raise NodeInputError("cross_attention_mask" if attn else "model", f"{e}.") from None


def check_flow_ledits_inputs(model, samples, source, negative, steps, skip, source_cfg):
    """LEDITS Edit's inversion checks for a flow-matching DiT (edit-friendly flow inversion on the model's schedule)."""
    require(ledits.sega_patch_of(model) is None, "model",
            "carries SEGA concepts: use the model from before SEGA Guidance (the concepts are for sampling).")
    check_cond_fits(model, source, "source")
    if negative is not None:
        check_cond_fits(model, negative, "negative")
    require(int(steps) >= 1, "steps", f"must be at least 1, got {steps}.")
    require(0 <= int(skip) < int(steps), "skip", f"must be between 0 and steps - 1 = {int(steps) - 1}, got {skip}.")
    check_range(float(source_cfg), 1.0, 100.0, "source_cfg")


MASK_TIP = ("Where this concept may act (white = here), e.g. painted roughly over the object to recolour (Load "
            "Image's mask editor): the concept's guidance is multiplied by it (LEDITS++'s user mask), and when every "
            "concept has a mask the edit-friendly sampler keeps the image outside them exactly as it was. "
            "Unconnected or all black: everywhere.")


class SEGAGuidance:
    DESCRIPTION = ("Semantic guidance (SEGA, LEDITS, LEDITS++): adds an edit concept to the MODEL. Every sampler then "
                   "evaluates the concept in the same batched model call as the prompt and the negative and steers "
                   "towards (add) or away from (remove) it where the concept's guidance is strongest. Chain nodes "
                   "for more concepts. Needs a negative (empty) prompt on the sampler (a flow DiT at cfg 1 does "
                   "without: simple SEGA). Pair with DDPM Inversion + the Edit-friendly DDPM sampler (UNets) or "
                   "Edit-friendly Flow Inversion and its sampler (FLUX, SD3, Qwen-Image) to edit a real image.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "model": ("MODEL",),
                "concept": ("CONDITIONING",),
                "direction": (DIRECTIONS, {"default": "add"}),
                "scale": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 100.0, "step": 0.1}),
                "threshold": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 1.0, "step": 0.005}),
                "warmup": ("INT", {"default": 10, "min": 0, "max": 10000}),
                "cooldown": ("INT", {"default": 0, "min": 0, "max": 10000}),
                "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05}),
                "momentum_scale": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 0.99, "step": 0.01}),
                "momentum_beta": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.01}),
                "mode": (MODES, {"default": "SEGA"}),
            },
            "optional": {
                "cross_attention_mask": ("BOOLEAN", {"default": True}),
                "concept_tokens": ("INT", {"default": 0, "min": 0, "max": 1000}),
                "mask": ("MASK",),
            },
        }, dict(TIPS, mask=MASK_TIP + " The size of the image the sampler edits, or of its latent (checked when "
                                      "sampling)."))

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with this concept (and those of upstream SEGA Guidance nodes).",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(NODE)
    def patch(self, model, concept, direction, scale, threshold, warmup, cooldown, weight, momentum_scale,
              momentum_beta, mode, cross_attention_mask=True, concept_tokens=0, mask=None):
        supported_model(model, flow=True)
        entry = concept_entry(model, concept, direction, scale, threshold, warmup, cooldown, weight, concept_tokens)
        user_mask = read_mask(mask, "mask")
        entry = replace(entry, mask=user_mask)
        prev = ledits.sega_patch_of(model)
        settings = chain_settings(prev, concept, momentum_scale, momentum_beta, mode, cross_attention_mask)
        patch = (prev or ledits.SegaPatch()).with_concept(entry, **settings)
        out = apply_patch(model, patch)
        if user_mask is not None:      # the latent is known only when sampling: check the mask fits it then
            def fits(_sigmas, x, _noise):
                check_mask(user_mask, "mask", latent_hw=tuple(x.shape[-2:]))
            out = guard_model(out, f"dragedit_sega_mask_{len(patch.entries)}", NODE, fits)
        return (out,)


class LEDITSEdit:
    DESCRIPTION = ("Add or remove concepts in a real image (LEDITS / LEDITS++): inverts the image with edit-friendly "
                   "DDPM inversion (edit-friendly flow inversion on FLUX / SD3 / Qwen-Image), adds up to three SEGA "
                   "concepts and samples it back with the inversion's noise maps, so what no concept touches stays as "
                   "it was. Built from DDPM Inversion (edit-friendly), SEGA Guidance and the Edit-friendly DDPM "
                   "sampler (their flow counterparts on a DiT).")

    @classmethod
    def INPUT_TYPES(cls):
        req = {
            "model": ("MODEL",),
            "vae": ("VAE",),
            "source": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
            "skip": ("INT", {"default": 15, "min": 0, "max": 999}),
            "source_cfg": ("FLOAT", {"default": 3.5, "min": 1.0, "max": 30.0, "step": 0.1}),
            "target_cfg": ("FLOAT", {"default": 3.5, "min": 1.0, "max": 30.0, "step": 0.1}),
            "mode": (MODES, {"default": "SEGA"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX}),
        }
        for i in (1, 2, 3):
            req[f"direction_{i}"] = (DIRECTIONS, {"default": "add"})
            req[f"scale_{i}"] = ("FLOAT", {"default": 10.0, "min": 0.0, "max": 100.0, "step": 0.1})
        req.update({
            "threshold": ("FLOAT", {"default": 0.95, "min": 0.0, "max": 1.0, "step": 0.005}),
            "warmup": ("INT", {"default": 2, "min": 0, "max": 10000}),
            "momentum_scale": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 0.99, "step": 0.01}),
            "momentum_beta": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.01}),
        })
        opt = {"image": ("IMAGE",), "latent": ("LATENT",), "target": ("CONDITIONING",)}
        for i in (1, 2, 3):
            opt[f"concept_{i}"] = ("CONDITIONING",)
        opt["mask"] = ("MASK",)
        opt["keep_structure"] = ("BOOLEAN", {"default": False})
        tips = {
            "model": "The diffusion model (SD1.x, SD2.x incl. v-prediction, SDXL), or a flow-matching DiT (FLUX, "
                     "SD3 / SD3.5, Qwen-Image): then the inversion is the edit-friendly flow inversion on the model's "
                     "'simple' schedule and the concepts act on the velocity (FLUX semantic guidance; LEDITS++ mode "
                     "without cross-attention masks).",
            "vae": "The model's VAE: encodes the image and decodes the edit.",
            "source": "Prompt describing the input image: the inversion's prompt in SEGA mode. LEDITS++ mode inverts "
                      "with the negative at cfg 1 instead (as diffusers' LEDITS++ with its empty source prompt), "
                      "because it samples without any prompt: that is what makes scale 0 give the input back.",
            "negative": "Unconditional prompt (an empty CLIP Text Encode): needed by CFG and by the concepts.",
            "steps": "Steps of the DDIM grid (LEDITS: 100; fewer is faster); on a flow DiT, of the model's 'simple' "
                     "schedule (FLUX: 28).",
            "skip": "Noisiest steps to drop (LEDITS: 36 of 100): more skip keeps more of the image, but the edit "
                    "must start before the model has fixed what it changes (the shapes model fixes colours in its "
                    "first 2-3 of 20 steps: recolour at skip 2, remove by target prompt at skip 1).",
            "source_cfg": "CFG of the source prompt during the inversion (LEDITS: 3.5); SEGA mode only. Keep it "
                          "equal to target_cfg: any difference moves the whole image, not just the concepts.",
            "target_cfg": "CFG of the target prompt (default: the source) while editing; unused in LEDITS++ mode. "
                          "Equal to source_cfg, scale 0 gives the input back exactly; a higher value pulls towards "
                          "the source prompt (e.g. back to the old colour).",
            "mode": TIPS["mode"],
            "seed": "Seed of the inversion's noise.",
            "threshold": TIPS["threshold"] + " Shared by the concepts.",
            "warmup": "Steps (from the first step run) before the concepts apply; their momentum builds up meanwhile.",
            "momentum_scale": "How much the edit keeps building up over the steps, so it sets in earlier and firmer "
                              "(0 = off; below 1, since from 1 up it grows without bound) (SEGA momentum scale s_m).",
            "momentum_beta": "How long that build-up remembers earlier steps: higher = smoother, slower to change "
                             "(SEGA momentum β).",
            "image": "The image to edit (or connect a latent instead).",
            "latent": "The latent to edit (instead of an image).",
            "mask": "Where the concepts may act (white = here), e.g. painted roughly over the object to recolour "
                    "(Load Image's mask editor): their guidance is multiplied by it (LEDITS++'s user mask), and "
                    "everything outside the mask stays exactly as it was. The image's size (or the latent's). "
                    "Unconnected or all black: everywhere. A target prompt is not masked.",
            "keep_structure": "FLUX / Chroma (flow DiTs with single-stream blocks) only. On: the shapes stay while "
                              "the concepts change colours or textures (recolour: turn it on). In the single-stream "
                              "blocks the edit attends with the attention maps of the source image at the same step "
                              "(one more model pass per step: about twice the edit's time). Off: the concepts may "
                              "also reshape, add or remove things (removal: leave it off). No effect on SD1.x / SDXL, "
                              "SD3 or Qwen-Image.",
            "target": "Target prompt while editing (default: the source prompt); SEGA mode only. With no concept "
                      "connected this is the plain prompt-switch edit: e.g. remove an object by giving the prompt "
                      "of what should remain.",
        }
        for i in (1, 2, 3):
            tips[f"concept_{i}"] = f"Edit concept {i} (CLIP Text Encode); at least one is needed."
            tips[f"direction_{i}"] = f"Concept {i}: add or remove."
            tips[f"scale_{i}"] = (f"Concept {i}: how strongly it is added or removed, higher changes more (5-15 "
                                  f"typical; the shapes model: 10) (edit guidance scale s_e).")
        return tooltips({"required": req, "optional": opt}, tips)

    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("IMAGE", "LATENT")
    OUTPUT_TOOLTIPS = ("The edited image.", "The edited latent.")
    FUNCTION = "edit"
    CATEGORY = CATEGORY_ALL_IN_ONE

    @node_entry(EDIT)
    def edit(self, model, vae, source, negative, steps, skip, source_cfg, target_cfg, mode, seed,
             direction_1="add", scale_1=10.0, direction_2="add", scale_2=10.0, direction_3="add", scale_3=10.0,
             threshold=0.95, warmup=2, momentum_scale=0.1, momentum_beta=0.4, image=None, latent=None, target=None,
             concept_1=None, concept_2=None, concept_3=None, mask=None, keep_structure=False):
        concepts = [(i, c, d, s) for i, (c, d, s) in enumerate(
            [(concept_1, direction_1, scale_1), (concept_2, direction_2, scale_2), (concept_3, direction_3, scale_3)], 1)
            if c is not None]
        require(len(concepts) > 0 or (target is not None and mode != "LEDITS++"), "concept_1",
                "no concepts: connect at least one concept (CLIP Text Encode)"
                + (" (LEDITS++ has no prompt CFG, so a target prompt alone edits nothing)." if mode == "LEDITS++"
                   else ", or a target prompt (the edit by prompt switch alone)."))
        require(vae is not None, "vae", "is missing: connect the model's VAE.")
        flow = supported_model(model, flow=True) == "flow"
        samples, _size = image_or_latent(model, image, vae, latent, allow_batch=True, vae_always=True)
        check_cond_fits(model, negative, "negative")
        if target is not None:
            check_cond_fits(model, target, "target")
        user_mask = read_mask(mask, "mask", image_size=_size, latent_hw=tuple(samples.shape[-2:]))
        require(user_mask is None or len(concepts) > 0, "mask",
                "masks the concepts, but none is connected: connect a concept (a target prompt is not masked).")
        pp = mode == "LEDITS++"
        if flow:
            check_flow_ledits_inputs(model, samples, source, negative, steps, skip, source_cfg)
        else:
            with node_errors(EDIT, rename={"latent": "latent" if latent is not None else "image",
                                           "positive": "negative" if pp else "source"}):
                check_inversion_inputs(model, {"samples": samples}, negative if pp else source, steps, skip,
                                       1.0 if pp else source_cfg, 1.0, negative)
        patch = None
        for i, c, d, s in concepts:
            with node_errors(EDIT, rename={"concept": f"concept_{i}", "direction": f"direction_{i}",
                                           "scale": f"scale_{i}"}):
                entry = replace(concept_entry(model, c, d, s, threshold, warmup, 0, 1.0, 0), mask=user_mask)
                settings = chain_settings(patch, c, momentum_scale, momentum_beta, mode, not flow)
            patch = (patch or ledits.SegaPatch()).with_concept(entry, **settings)
        require(mode in MODES, "mode", f"must be one of {MODES}, got {mode!r}.")
        if patch is not None:
            apply_patch(model, patch)        # refuse a model the concepts cannot go on before the inversion runs
        bar = Progress(2 * (int(steps) - int(skip)))
        out = ledits.run(model, samples, source, negative, patch, mode=mode, steps=int(steps), skip=int(skip),
                         source_cfg=float(source_cfg), target_cfg=float(target_cfg), seed=int(seed), target=target,
                         on_step=lambda *a: bar.update(1), keep_structure=bool(keep_structure))
        knobs = {f"scale_{i}": float(s) for i, _c, _d, s in concepts}
        knobs.update(momentum_scale=float(momentum_scale), **({} if pp else {"target_cfg": float(target_cfg)}))
        check_result(out, samples, knobs, node=EDIT, what="the edit")
        return (vae.decode(out), {"samples": out})


NODE_CLASS_MAPPINGS = {"DragEditSEGAGuidance": SEGAGuidance, "DragEditLEDITSEdit": LEDITSEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditSEGAGuidance": NODE, "DragEditLEDITSEdit": EDIT}
