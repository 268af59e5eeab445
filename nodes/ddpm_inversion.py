"""Nodes "DDPM Inversion (edit-friendly)" and "Edit-friendly DDPM" (a SAMPLER for stock SamplerCustom /
SamplerCustomAdvanced that replays the inversion's noise maps). Thin: checks here, the method in
core/ddpm_inversion.py and core/ledits.py."""
from __future__ import annotations

from ..core import ledits
from ._errors import node_entry, require
from ._inputs import (check_cond_fits, check_ddpm_inversion, check_latent, check_range, check_result, check_schedule,
                      guard_sampler, supported_model)
from ._inversion_spec import inversion_inputs
from ._ui import CATEGORY_BLOCKS, SEED_MAX, Progress, tooltips

NODE = "DDPM Inversion (edit-friendly)"
SAMPLER_NODE = "Edit-friendly DDPM"


def check_inversion_inputs(model, latent, positive, steps, skip, source_cfg, eta, negative):
    """The checks of DDPM Inversion's inputs (also run by LEDITS Edit); the LATENT samples to invert."""
    supported_model(model)
    samples = check_latent(latent, allow_batch=True, model=model)
    require(ledits.sega_patch_of(model) is None, "model",
            "carries SEGA concepts: invert with the model from before SEGA Guidance (the concepts are for sampling).")
    check_cond_fits(model, positive, "positive")
    require(int(steps) >= 1, "steps", f"must be at least 1, got {steps}.")
    require(0 <= int(skip) < int(steps), "skip", f"must be between 0 and steps - 1 = {int(steps) - 1}, got {skip}.")
    check_range(float(eta), 1e-6, 1.0, "eta")
    check_range(float(source_cfg), 1.0, 100.0, "source_cfg")
    if negative is not None:
        check_cond_fits(model, negative, "negative")
    require(float(source_cfg) == 1.0 or negative is not None, "source_cfg",
            f"is {source_cfg} but no negative conditioning is connected: connect one (an empty prompt) or set it to 1.")
    return samples


def edit_friendly_sampler(inversion, exact_last_step: bool = True):
    """The Edit-friendly DDPM SAMPLER of an INVERSION; inside the stock sampler node it refuses (naming this node)
    sigmas that are not a run of the inversion's, another latent size, or added noise."""
    inv = check_ddpm_inversion(inversion)
    lat_hw = tuple(inv.xts.shape[-2:])

    def after(sig, out):
        """The sampled state against the inversion's at the same sigma (the input image at the end)."""
        k = inv.match_sigmas(sig)
        check_result(out, inv.xts[k + len(sig) - 1], {"inversion": None}, node=SAMPLER_NODE,
                     what="the sampled result", ref_name="the inverted image's",
                     fix="Lower the scale or momentum_scale of SEGA Guidance on the model, or the sampler node's cfg")

    def guard(fn):
        return guard_sampler(fn, SAMPLER_NODE, lambda sig, x, noise: check_schedule(
            "inversion", sig, inv.sigmas, source=NODE, rule="run", latent_shape=x.shape, inv_latent_hw=lat_hw,
            noise=noise, inv=inv, latent=x), after)
    return ledits.edit_friendly_sampler(inv, bool(exact_last_step), wrap=guard)


class DDPMInversion:
    DESCRIPTION = ("Edit-friendly DDPM inversion (LEDITS): noise maps that make the DDPM reverse process reproduce the "
                   "image exactly. Sample the output LATENT with SamplerCustom (add_noise off, sampler 'Edit-friendly "
                   "DDPM' fed by the INVERSION, sigmas from here): with the same conditioning and cfg you get the "
                   "input back; with SEGA Guidance on the model (or another prompt) you get the edit.")

    @classmethod
    def INPUT_TYPES(cls):
        return inversion_inputs({
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
            "skip": ("INT", {"default": 15, "min": 0, "max": 999}),
            "source_cfg": ("FLOAT", {"default": 3.5, "min": 1.0, "max": 30.0, "step": 0.1}),
            "eta": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX}),
        }, {}, {
            "model": "The diffusion model (SD1.x, SD2.x incl. v-prediction, SDXL), without SEGA Guidance.",
            "latent": "The image to invert, as a latent (VAE Encode).",
            "positive": "Source prompt describing the image (sample with the same one to reconstruct it).",
            "steps": "Steps of the DDIM grid the inversion covers (LEDITS: 100; LEDITS++: 30-50).",
            "skip": "Noisiest steps to drop: editing starts this many steps into the grid (LEDITS: 36 of 100). More "
                    "skip keeps more of the image.",
            "source_cfg": "Classifier-free guidance of the source prompt during inversion (LEDITS: 3.5); needs the "
                          "negative above 1.",
            "eta": "How much fresh noise each step carries: 1 = the papers' edit-friendly inversion (edits stay "
                   "local); lower moves towards plain deterministic DDIM. The sampler uses the same (DDPM η).",
            "seed": "Seed of the independent noisy latents the inversion draws.",
            "negative": "Unconditional / negative prompt (an empty CLIP Text Encode) for source_cfg > 1.",
        })

    RETURN_TYPES = ("LATENT", "INVERSION", "SIGMAS")
    RETURN_NAMES = ("LATENT", "INVERSION", "SIGMAS")
    OUTPUT_TOOLTIPS = ("The noisy latent the edit starts from (x_T−skip): feed SamplerCustom's latent_image, add_noise off.",
                       "Start latent and noise maps for the Edit-friendly DDPM sampler.",
                       "The sampling sigmas from the start step to 0.")
    FUNCTION = "invert"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(NODE)
    def invert(self, model, latent, positive, steps, skip, source_cfg, eta, seed, negative=None):
        samples = check_inversion_inputs(model, latent, positive, steps, skip, source_cfg, eta, negative)
        bar = Progress(int(steps) - int(skip))
        start, inv = ledits.invert_start(model, samples, positive, negative, float(source_cfg), int(steps),
                                         skip=int(skip), eta=float(eta), seed=int(seed),
                                         on_step=lambda j, n: bar.update(1))
        return ({"samples": start}, inv, inv.sigmas.clone())


class EditFriendlyDDPMSampler:
    DESCRIPTION = ("A SAMPLER for SamplerCustom / SamplerCustomAdvanced: DDPM (η of the inversion) that uses the "
                   "INVERSION's noise maps instead of fresh noise, so any guidance or model patch (SEGA Guidance, "
                   "another prompt, ControlNet...) edits the inverted image. Use the inversion's SIGMAS (or a "
                   "SplitSigmas part) and its start latent with add_noise off.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "inversion": ("INVERSION",),
            },
            "optional": {
                "exact_last_step": ("BOOLEAN", {"default": True}),
            },
        }, {
            "inversion": "INVERSION from DDPM Inversion (edit-friendly).",
            "exact_last_step": "Add the inversion's last-step residual so reconstruction is exact (the original "
                               "DDPM_inversion code drops it; off = plain last DDPM step).",
        })

    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustom's sampler input.",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(SAMPLER_NODE)
    def get_sampler(self, inversion, exact_last_step=True):
        return (edit_friendly_sampler(inversion, exact_last_step),)


NODE_CLASS_MAPPINGS = {"DragEditDDPMInversion": DDPMInversion, "DragEditEditFriendlyDDPM": EditFriendlyDDPMSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditDDPMInversion": NODE, "DragEditEditFriendlyDDPM": SAMPLER_NODE}
