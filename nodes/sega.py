"""Nodes "SEGA Guidance" (an edit concept patched onto a MODEL; chain them for more) and "LEDITS Edit" (the
all-in-one: DDPM inversion + SEGA concepts + the edit-friendly sampler). Thin: checks here, the method in
core/ledits.py, core/sega.py and core/ddpm_inversion.py."""
from __future__ import annotations

import math
from typing import Any, Optional

from ..core import host, ledits
from ..core import sega
from ._common import (CATEGORY_ALL_IN_ONE, CATEGORY_BLOCKS, SEED_MAX, NodeInputError, Progress, check_range,
                      image_or_latent, require, tooltips)
from .ddpm_inversion import DDPMInversion, EditFriendlyDDPMSampler
from .inversion import check_cond_fits, supported_model

NODE = "SEGA Guidance"
EDIT = "LEDITS Edit"
DIRECTIONS = ["add", "remove"]
MODES = list(ledits.MODES)

TIPS = {
    "model": "The diffusion model (SD1.x, SD2.x incl. v-prediction, SDXL); chain SEGA Guidance nodes to add concepts.",
    "concept": "The edit concept as a prompt (CLIP Text Encode), e.g. 'glasses' or 'snow'.",
    "direction": "add: steer towards the concept; remove: steer away from it.",
    "scale": "Edit guidance scale s_e (SEGA default 5; 3-10 typical).",
    "threshold": "Quantile λ of |ψ| per latent channel below which the concept's guidance is zeroed: 0.9 edits the "
                 "strongest 10 % of positions (0.9-0.99 typical; higher = more local).",
    "warmup": "Steps (counted from the first step the sampler runs) before the concept is applied; its momentum "
              "still builds up meanwhile (SEGA default 10; LEDITS++ 0).",
    "cooldown": "Step from which the concept stops being applied (0 = never).",
    "weight": "Relative weight of this concept among the concepts of the chain (SEGA mode).",
    "momentum_scale": "SEGA momentum scale s_m (0 = off); shared by the whole chain (the last node's value wins).",
    "momentum_beta": "SEGA momentum β: how much of the previous momentum is kept; shared by the chain.",
    "mode": "SEGA: CFG on the sampler's prompt + concept terms with momentum. LEDITS++: no prompt CFG (the "
            "positive is not evaluated), each concept masked by its noise quantile and, optionally, its "
            "cross-attention map. One mode per chain. To edit a real image in LEDITS++ mode, invert with the empty "
            "prompt at cfg 1 (DDPM Inversion: positive = the negative, source_cfg 1), so that scale 0 reconstructs.",
    "cross_attention_mask": "LEDITS++: also mask each concept by its own cross-attention map (layers at 1/4 of the "
                            "latent resolution), intersected with the noise-quantile mask. Shared by the chain.",
    "concept_tokens": "LEDITS++ cross-attention mask: number of the concept prompt's first tokens (words / "
                      "sub-words, counted after the start token when the text encoder has one, as CLIP does) whose "
                      "attention makes the mask; 0 = all tokens but the start token and the last one, padding "
                      "included (what diffusers' LEDITS++ pipeline does).",
}


def _concept_entry(model: Any, concept: Any, direction: str, scale: float, threshold: float, warmup: int,
                   cooldown: int, weight: float, tokens: int, node: str, names: dict) -> ledits.ConceptEntry:
    """Validate one concept's inputs (errors name `node` and names[input]) and build its entry."""
    n = lambda k: names.get(k, k)  # noqa: E731
    require(concept is not None and isinstance(concept, list) and len(concept) > 0, node, n("concept"),
            "no concept: connect a CONDITIONING (CLIP Text Encode with the concept's words).")
    check_cond_fits(model, concept, node, n("concept"))
    require(direction in DIRECTIONS, node, n("direction"), f"must be one of {DIRECTIONS}, got {direction!r}.")
    require(math.isfinite(float(scale)) and float(scale) >= 0.0, node, n("scale"),
            f"must be a finite number >= 0 (use direction 'remove' to negate), got {scale}.")
    require(math.isfinite(float(threshold)), node, n("threshold"), f"must be a number between 0 and 1, got {threshold}.")
    check_range(float(threshold), 0.0, 1.0, node, n("threshold"))
    require(int(warmup) >= 0, node, n("warmup"), f"must be >= 0 steps, got {warmup}.")
    require(int(cooldown) >= 0, node, n("cooldown"), f"must be >= 0 steps (0 = never), got {cooldown}.")
    require(int(cooldown) == 0 or int(cooldown) > int(warmup), node, n("cooldown"),
            f"is {cooldown}, not after the warm-up ({warmup}): the concept would never apply (0 = never cool down).")
    require(math.isfinite(float(weight)) and float(weight) >= 0.0, node, n("weight"), f"must be >= 0, got {weight}.")
    require(int(tokens) >= 0, node, n("concept_tokens"), f"must be >= 0, got {tokens}.")
    c = sega.SegaConcept(scale=float(scale), threshold=float(threshold), reverse=direction == "remove",
                         warmup=int(warmup), cooldown=int(cooldown) if int(cooldown) > 0 else None, weight=float(weight))
    return ledits.ConceptEntry(conditioning=concept, concept=c, tokens=int(tokens))


class SEGAGuidance:
    DESCRIPTION = ("Semantic guidance (SEGA, LEDITS, LEDITS++): adds an edit concept to the MODEL. Every sampler then "
                   "evaluates the concept in the same batched UNet call as the prompt and the negative and steers "
                   "towards (add) or away from (remove) it where the concept's guidance is strongest. Chain nodes "
                   "for more concepts. Needs a negative (empty) prompt on the sampler. Pair with DDPM Inversion + "
                   "the Edit-friendly DDPM sampler to edit a real image.")

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
                "momentum_scale": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.01}),
                "momentum_beta": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.01}),
                "mode": (MODES, {"default": "SEGA"}),
            },
            "optional": {
                "cross_attention_mask": ("BOOLEAN", {"default": True}),
                "concept_tokens": ("INT", {"default": 0, "min": 0, "max": 1000}),
            },
        }, TIPS)

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with this concept (and those of upstream SEGA Guidance nodes).",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY_BLOCKS

    def patch(self, model, concept, direction, scale, threshold, warmup, cooldown, weight, momentum_scale,
              momentum_beta, mode, cross_attention_mask=True, concept_tokens=0, _names: Optional[dict] = None,
              _node: str = NODE):
        names = _names or {}
        supported_model(model, _node, names.get("model", "model"))
        entry = _concept_entry(model, concept, direction, scale, threshold, warmup, cooldown, weight, concept_tokens,
                               _node, names)
        require(mode in MODES, _node, names.get("mode", "mode"), f"must be one of {MODES}, got {mode!r}.")
        require(math.isfinite(float(momentum_scale)) and float(momentum_scale) >= 0.0, _node,
                names.get("momentum_scale", "momentum_scale"), f"must be >= 0, got {momentum_scale}.")
        check_range(float(momentum_beta), 0.0, 1.0, _node, names.get("momentum_beta", "momentum_beta"))
        prev = ledits.sega_patch_of(model)
        if prev is not None:
            require(prev.mode == mode, _node, names.get("mode", "mode"),
                    f"is {mode} but the upstream SEGA Guidance node uses {prev.mode}: one mode per chain.")
            for e in prev.entries:
                require(e.conditioning[0][0].shape[-1] == concept[0][0].shape[-1], _node, names.get("concept", "concept"),
                        "has another width than the upstream concepts (conditioning from another model family?).")
        settings = dict(momentum_scale=float(momentum_scale), momentum_beta=float(momentum_beta), mode=mode,
                        cross_attention_mask=bool(cross_attention_mask))
        patch = (prev or ledits.SegaPatch()).with_concept(entry, **settings)
        try:
            return (ledits.apply(model, patch),)
        except host.HostError as e:
            name = "cross_attention_mask" if patch.uses_attention else "model"
            raise NodeInputError(_node, names.get(name, name), f"{e}.") from None


class LEDITSEdit:
    DESCRIPTION = ("Add or remove concepts in a real image (LEDITS / LEDITS++): inverts the image with edit-friendly "
                   "DDPM inversion, adds up to three SEGA concepts and samples it back with the inversion's noise "
                   "maps, so what no concept touches stays as it was. Built from DDPM Inversion (edit-friendly), "
                   "SEGA Guidance and the Edit-friendly DDPM sampler.")

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
            "momentum_scale": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.01}),
            "momentum_beta": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.01}),
        })
        opt = {"image": ("IMAGE",), "latent": ("LATENT",), "target": ("CONDITIONING",)}
        for i in (1, 2, 3):
            opt[f"concept_{i}"] = ("CONDITIONING",)
        tips = {
            "model": "The diffusion model (SD1.x, SD2.x incl. v-prediction, SDXL).",
            "vae": "The model's VAE: encodes the image and decodes the edit.",
            "source": "Prompt describing the input image: the inversion's prompt in SEGA mode. LEDITS++ mode inverts "
                      "with the negative at cfg 1 instead (as diffusers' LEDITS++ with its empty source prompt), "
                      "because it samples without any prompt: that is what makes scale 0 give the input back.",
            "negative": "Unconditional prompt (an empty CLIP Text Encode): needed by CFG and by the concepts.",
            "steps": "Steps of the DDIM grid (LEDITS: 100; fewer is faster).",
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
            "momentum_scale": "SEGA momentum scale s_m (0 = off).",
            "momentum_beta": "SEGA momentum β.",
            "image": "The image to edit (or connect a latent instead).",
            "latent": "The latent to edit (instead of an image).",
            "target": "Target prompt while editing (default: the source prompt); SEGA mode only. With no concept "
                      "connected this is the plain prompt-switch edit: e.g. remove an object by giving the prompt "
                      "of what should remain.",
        }
        for i in (1, 2, 3):
            tips[f"concept_{i}"] = f"Edit concept {i} (CLIP Text Encode); at least one is needed."
            tips[f"direction_{i}"] = f"Concept {i}: add or remove."
            tips[f"scale_{i}"] = f"Concept {i}: edit guidance scale (5-15 typical; the shapes model: 10)."
        return tooltips({"required": req, "optional": opt}, tips)

    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("IMAGE", "LATENT")
    OUTPUT_TOOLTIPS = ("The edited image.", "The edited latent.")
    FUNCTION = "edit"
    CATEGORY = CATEGORY_ALL_IN_ONE

    def edit(self, model, vae, source, negative, steps, skip, source_cfg, target_cfg, mode, seed,
             direction_1="add", scale_1=10.0, direction_2="add", scale_2=10.0, direction_3="add", scale_3=10.0,
             threshold=0.95, warmup=2, momentum_scale=0.1, momentum_beta=0.4, image=None, latent=None, target=None,
             concept_1=None, concept_2=None, concept_3=None):
        concepts = [(i, c, d, s) for i, (c, d, s) in enumerate(
            [(concept_1, direction_1, scale_1), (concept_2, direction_2, scale_2), (concept_3, direction_3, scale_3)], 1)
            if c is not None]
        require(len(concepts) > 0 or (target is not None and mode != "LEDITS++"), EDIT, "concept_1",
                "no concepts: connect at least one concept (CLIP Text Encode)"
                + (" (LEDITS++ has no prompt CFG, so a target prompt alone edits nothing)." if mode == "LEDITS++"
                   else ", or a target prompt (the edit by prompt switch alone)."))
        require(vae is not None, EDIT, "vae", "is missing: connect the model's VAE.")
        supported_model(model, EDIT)
        samples, _size = image_or_latent(EDIT, model, image, vae, latent, allow_batch=True, vae_always=True)
        check_cond_fits(model, negative, EDIT, "negative")
        if target is not None:
            check_cond_fits(model, target, EDIT, "target")
        inv_names = {"latent": "latent" if latent is not None else "image", "positive": "source", "model": "model"}
        # LEDITS++ samples with ε_u + concept terms only, so it inverts with the same prediction: the negative at
        # cfg 1 (diffusers' LEditsPP invert with its default empty source prompt); SEGA inverts with the source.
        pp = mode == "LEDITS++"
        if pp:
            inv_names["positive"] = "negative"
        try:
            start, inv, sigmas = DDPMInversion().invert(model, {"samples": samples}, negative if pp else source, steps,
                                                       skip, 1.0 if pp else source_cfg, 1.0, seed, negative=negative)
        except NodeInputError as e:
            raise NodeInputError(EDIT, inv_names.get(e.input_name, e.input_name), _msg(e)) from None
        edit_model = model
        for i, c, d, s in concepts:
            names = {"concept": f"concept_{i}", "direction": f"direction_{i}", "scale": f"scale_{i}"}
            edit_model = SEGAGuidance().patch(edit_model, c, d, s, threshold, warmup, 0, 1.0, momentum_scale,
                                              momentum_beta, mode, True, 0, _names=names, _node=EDIT)[0]
        if not concepts:  # a target prompt alone: edit-friendly DDPM editing by prompt switch, no SEGA patch
            require(mode in MODES, EDIT, "mode", f"must be one of {MODES}, got {mode!r}.")
        (sampler,) = EditFriendlyDDPMSampler().get_sampler(inv)
        bar = Progress(inv.steps)
        out = host.sample_with_sampler(edit_model, target if target is not None else source, negative,
                                       float(target_cfg), sampler, sigmas, start["samples"], seed=int(seed),
                                       callback=lambda *a: bar.update(1))
        return (vae.decode(out), {"samples": out})


def _msg(e: NodeInputError) -> str:
    """The message part of a NodeInputError (without its '[node] input ...:' prefix)."""
    s = str(e)
    return s.split(": ", 1)[1] if ": " in s else s


NODE_CLASS_MAPPINGS = {"DragEditSEGAGuidance": SEGAGuidance, "DragEditLEDITSEdit": LEDITSEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditSEGAGuidance": NODE, "DragEditLEDITSEdit": EDIT}
