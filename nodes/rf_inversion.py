"""Nodes "RF-Inversion" and the "RF-Inversion Sampler" SAMPLER (Rout et al. 2410.10792) for flow-matching DiTs,
composing with stock SamplerCustomAdvanced. Thin: checks here, the method in core/rf_inversion.py."""
from __future__ import annotations

from ..core import flow_inversion as fi
from ..core import host
from ..core import rf_inversion as rf
from ._errors import NodeInputError, node_entry, require
from ._inputs import check_range, guard_sampler
from ._inversion_spec import inversion_inputs
from ._ui import CATEGORY_BLOCKS, SEED_MAX, Progress, tooltips
from .flow_inversion import _COMMON_TIPS, USAGE, check_flow_inputs, inverted_noise

NODE_INV = "RF-Inversion"
NODE_SAMPLER = "RF-Inversion Sampler"

_REVERSE_TIPS = {
    "eta": "How strongly the edit is pulled back to the original image: 0 = a plain Euler sample of the prompt, "
           "1 = the image itself; higher keeps more, lower edits more (the controller strength η).",
    "start": "Fraction of the steps after which the pull towards the image begins (0 = from the first step; the "
             "start of the η window).",
    "stop": "Fraction of the steps after which the pull stops, so the later steps follow the prompt freely (the end "
            "of the η window).",
    "decay_power": "Fade the pull over the steps: 0 = constant, 1 = linear fade to 0 at the last step (η·(1 − i/n)^p).",
}


def _check_reverse(eta, start, stop, decay_power):
    check_range(float(eta), 0.0, 1.0, "eta")
    check_range(float(start), 0.0, 1.0, "start")
    check_range(float(stop), 0.0, 1.0, "stop")
    require(float(start) <= float(stop), "start", f"must not be after stop ({stop}), got {start}.")
    check_range(float(decay_power), 0.0, 10.0, "decay_power")


def _sampler(inv, node, eta, start, stop, decay_power):
    """The SAMPLER of the controlled reverse ODE; inside SamplerCustomAdvanced it refuses sigmas that are no flow
    schedule and a latent of another shape than the inverted one, naming `node`."""
    def check(sig, x, noise):
        shape = tuple(x.shape)                    # guard_sampler hands the start latent itself
        try:
            s = fi.check_sigmas(sig, f"sigmas given to the {node} sampler")
        except (TypeError, ValueError) as e:
            raise NodeInputError("sigmas", f"{e}.") from None
        require(float(s[0]) <= 1.0, "sigmas", f"must start at or below 1 for a flow model, got {float(s[0]):.4g}.")
        require(len(inv.latents) > 0, "inversion", "was released; run the inversion again.")
        y0 = inv.latents[-1]
        require(tuple(y0.shape[1:]) == tuple(shape[1:]) and y0.shape[0] in (1, shape[0]), "inversion",
                f"holds latents of shape {tuple(y0.shape)} but SamplerCustomAdvanced samples {tuple(shape)}: give it "
                "the LATENT that was inverted.")
    fn = rf.make_rf_sampler_fn(inv, float(eta), float(start), float(stop), float(decay_power))
    return host.ksampler(guard_sampler(fn, node, check))


class RFInversion:
    DESCRIPTION = ("RF-Inversion of a flow-matching DiT: inverts the image with the controlled forward ODE, steered "
                   "by gamma towards a drawn noise, so that its SAMPLER (the controlled reverse ODE, pulled back to the "
                   "image by eta over the first quarter of the steps) edits with another prompt. " + USAGE)

    @classmethod
    def INPUT_TYPES(cls):
        return inversion_inputs({
            "sigmas": ("SIGMAS",),
            "gamma": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1}),
        }, {}, dict(_COMMON_TIPS,
                    gamma="How far the inversion is steered towards fresh noise: 0 = the plain (explicit) Euler "
                          "inversion, faithful; higher gives a more typical noise that edits more easily; 1 = the "
                          "drawn noise itself (the controller strength γ).",
                    seed="Seed of the noise the inversion is steered towards (y1)."))

    RETURN_TYPES = ("NOISE", "SAMPLER", "INVERSION")
    RETURN_NAMES = ("NOISE", "SAMPLER", "INVERSION")
    OUTPUT_TOOLTIPS = ("Start noise for SamplerCustomAdvanced: with the same LATENT it starts at the inverted state.",
                       f"The controlled reverse ODE with eta {rf.DEFAULT_ETA} on the first quarter of the steps; "
                       "RF-Inversion Sampler sets other values.",
                       "The inverted latents at every sigma (for RF-Inversion Sampler).")
    FUNCTION = "invert"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(NODE_INV)
    def invert(self, model, latent, positive, sigmas, gamma, seed, cfg, negative=None):
        samples = check_flow_inputs(model, latent, positive, sigmas, cfg, negative)
        check_range(float(gamma), 0.0, 1.0, "gamma")
        bar = Progress(int(sigmas.numel()) - 1)
        inv = rf.run_rf_inversion(model, samples, positive, negative, float(cfg), sigmas, gamma=float(gamma),
                                  seed=int(seed), on_step=lambda i, n: bar.update(1))
        noise = inverted_noise(model, inv, float(sigmas[0]), NODE_INV)
        return (noise, _sampler(inv, NODE_INV, rf.DEFAULT_ETA, rf.DEFAULT_START, rf.DEFAULT_STOP, 0.0), inv)


class RFInversionSampler:
    DESCRIPTION = ("A SAMPLER for SamplerCustomAdvanced: the controlled reverse ODE of RF-Inversion, which follows "
                   "the prompt while pulled back towards the inverted image by eta on a window of the steps. Use the "
                   "RF-Inversion's NOISE, SIGMAS and LATENT.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "inversion": ("INVERSION",),
                "eta": ("FLOAT", {"default": rf.DEFAULT_ETA, "min": 0.0, "max": 1.0, "step": 0.05}),
                "start": ("FLOAT", {"default": rf.DEFAULT_START, "min": 0.0, "max": 1.0, "step": 0.05}),
                "stop": ("FLOAT", {"default": rf.DEFAULT_STOP, "min": 0.0, "max": 1.0, "step": 0.05}),
            },
            "optional": {"decay_power": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.1})},
        }, dict(_REVERSE_TIPS, inversion="INVERSION from RF-Inversion."))

    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced's sampler input.",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(NODE_SAMPLER)
    def get_sampler(self, inversion, eta, start, stop, decay_power=0.0):
        require(isinstance(inversion, rf.RFInversion), "inversion",
                f"expected the INVERSION of RF-Inversion, got {type(inversion).__name__}.")
        require(len(inversion.latents) > 0, "inversion", "was released; run the inversion again.")
        _check_reverse(eta, start, stop, decay_power)
        return (_sampler(inversion, NODE_SAMPLER, eta, start, stop, decay_power),)


NODE_CLASS_MAPPINGS = {"DragEditRFInversion": RFInversion, "DragEditRFInversionSampler": RFInversionSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditRFInversion": NODE_INV, "DragEditRFInversionSampler": NODE_SAMPLER}
