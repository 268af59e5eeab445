"""Node "FlowEdit": inversion-free editing of flow-matching DiTs (FLUX, SD3, Qwen-Image) as a GUIDER for stock
SamplerCustomAdvanced. Thin: checks here, the method in core/flowedit.py."""
from __future__ import annotations

from ..core import flowedit, host
from ..core.flow_inversion import check_sigmas
from ._errors import NodeInputError, node_entry, node_errors, require
from ._inputs import check_cond_fits, check_range, supported_model
from ._ui import CATEGORY_BLOCKS, SEED_MAX, tooltips

NODE = "FlowEdit"

TIPS = {
    "model": "A flow-matching DiT (FLUX, SD3 / SD3.5, Qwen-Image).",
    "source": "Prompt describing the input image (for FLUX-dev put FluxGuidance 1.5 on it, FlowEdit's source "
              "guidance).",
    "target": "Prompt describing the edited image, worded like the source except for the edit (for FLUX-dev "
              "FluxGuidance 5.5).",
    "source_cfg": "CFG of the source prompt (needs the negative above 1; FlowEdit on SD3: 3.5; FLUX-dev: 1, its "
                  "guidance is in the conditioning).",
    "target_cfg": "CFG of the target prompt: higher follows the target more strongly (FlowEdit on SD3: 13.5; "
                  "FLUX-dev: 1).",
    "n_avg": "Noise draws averaged per step: more = a smoother, more faithful edit, one more source and target "
             "model call per draw (FlowEdit: 1).",
    "seed": "Seed of FlowEdit's own noise draws (the NOISE input of the sampler is not used: FlowEdit starts from "
            "the image itself).",
    "negative": "Negative prompt for source_cfg / target_cfg above 1 (an empty prompt).",
    "n_min": "Last steps run as plain sampling of the target from the edited state (FlowEdit's n_min; 0 = all steps "
             "are edit steps): adds fine detail, changes more.",
}


def check_run(sampler, sigmas) -> None:
    """At sampling time: the plain Euler SAMPLER and SIGMAS of a flow schedule ending at 0."""
    with node_errors(NODE):
        require(host.guider.sampler_function(sampler) is host.guider.euler_function(), "sampler",
                "FlowEdit's steps are Euler steps: give SamplerCustomAdvanced the 'euler' SAMPLER (KSamplerSelect).")
        try:
            s = check_sigmas(sigmas, "sigmas")
        except (TypeError, ValueError) as e:
            raise NodeInputError("sigmas", str(e)) from None
        require(float(s[-1]) == 0.0, "sigmas", f"must end at 0 (the edited image), got {float(s[-1]):.4g}: feed "
                                               "BasicScheduler's SIGMAS or their last SplitSigmas part.")
        require(float(s[0]) <= 1.0, "sigmas", f"must start at or below 1 for a flow model, got {float(s[0]):.4g}.")


class FlowEdit:
    DESCRIPTION = ("FlowEdit (inversion-free editing of flow models, Kulikov et al. 2025): a GUIDER that moves the "
                   "image along the difference of the target and source prompts' velocities, without inverting it. "
                   "Wire SamplerCustomAdvanced with this GUIDER, the 'euler' SAMPLER, the image's LATENT as "
                   "latent_image, any NOISE (unused) and SIGMAS: FlowEdit's n_max is how many of the schedule's last "
                   "steps you keep (SplitSigmas; FLUX 24 of 28, SD3 33 of 50).")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "model": ("MODEL",),
                "source": ("CONDITIONING",),
                "target": ("CONDITIONING",),
                "source_cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1}),
                "target_cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1}),
                "n_avg": ("INT", {"default": 1, "min": 1, "max": 16}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX}),
            },
            "optional": {
                "negative": ("CONDITIONING",),
                "n_min": ("INT", {"default": 0, "min": 0, "max": 1000}),
            },
        }, TIPS)

    RETURN_TYPES = ("GUIDER",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced's guider input (with the 'euler' sampler).",)
    FUNCTION = "get_guider"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(NODE)
    def get_guider(self, model, source, target, source_cfg, target_cfg, n_avg, seed, negative=None, n_min=0):
        supported_model(model, flow=True)
        require(host.is_flow(model), "model", "is not a flow-matching model: FlowEdit needs a flow DiT (FLUX, SD3, "
                                              "Qwen-Image); for UNets use LEDITS Edit.")
        for name, cond in (("source", source), ("target", target), ("negative", negative)):
            if cond is not None or name != "negative":
                require(cond is not None, name, "is not connected: connect a CONDITIONING (CLIP Text Encode).")
                check_cond_fits(model, cond, name)
        for name, v in (("source_cfg", source_cfg), ("target_cfg", target_cfg)):
            check_range(float(v), 1.0, 100.0, name)
            require(float(v) == 1.0 or negative is not None, name,
                    f"is {v} but no negative conditioning is connected: connect one (an empty prompt) or set it to 1.")
        require(int(n_avg) >= 1, "n_avg", f"must be at least 1, got {n_avg}.")
        require(int(n_min) >= 0, "n_min", f"must be >= 0, got {n_min}.")
        settings = flowedit.FlowEditSettings(source_cfg=float(source_cfg), target_cfg=float(target_cfg),
                                             n_avg=int(n_avg), n_min=int(n_min), seed=int(seed))
        return (flowedit.guider(model, source, target, negative, settings, check=check_run),)


NODE_CLASS_MAPPINGS = {"DragEditFlowEdit": FlowEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditFlowEdit": NODE}
