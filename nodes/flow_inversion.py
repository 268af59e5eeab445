"""Nodes "Flow Inversion", "Edit-friendly Flow Inversion" and the "Edit-friendly Flow" SAMPLER: inversions of
flow-matching DiTs (FLUX, SD3, Qwen-Image) that compose with stock SamplerCustomAdvanced. Thin: checks here, the
method in core/flow_inversion.py."""
from __future__ import annotations

from ..core import flow_inversion as fi
from ..core import host
from ..core import ledits
from ._errors import NodeInputError, node_entry, node_errors, require
from ._inputs import check_conditioning, check_latent, check_range, guard_sampler, supported_model
from ._inversion_spec import inversion_inputs
from ._ui import CATEGORY_BLOCKS, SEED_MAX, Progress, tooltips

NODE_ODE = "Flow Inversion"
NODE_EF = "Edit-friendly Flow Inversion"
NODE_SAMPLER = "Edit-friendly Flow"

USAGE = ("Wire SamplerCustomAdvanced with this NOISE, this SAMPLER, the same SIGMAS, and the same LATENT as "
         "latent_image; a guider with the source prompt reconstructs the image, another prompt edits it.")


def guarded_sampler(fn, node: str, grid, source: str):
    """A SAMPLER around a KSAMPLER function whose sigmas must be a run of the inversion's `grid`: other sigmas are
    refused inside SamplerCustomAdvanced with an error naming `node` and its sigmas."""
    def check(sig, x, noise):
        try:
            fi._match_run(sig, grid, f"{node} sampler")
        except (TypeError, ValueError) as e:
            raise NodeInputError("sigmas", f"{e} (the SIGMAS given to {source}).") from None
    return host.ksampler(guard_sampler(fn, node, check))


def inverted_noise(model, inv, sigma0: float, node: str, seed: int = 0) -> "fi.InvertedNoise":
    """The NOISE of a flow inversion: inside SamplerCustomAdvanced it refuses a LATENT of another shape than the
    inverted one (ComfyUI's noise scaling would otherwise fail with a raw size error), naming `node`."""
    want = tuple(inv.start.shape)

    def check(samples):
        with node_errors(node):
            got = tuple(getattr(samples, "shape", ()))
            require(len(got) == len(want) and got[1:] == want[1:] and got[0] in (1, want[0]), "latent",
                    f"SamplerCustomAdvanced's latent_image is {got} but this NOISE was inverted from a latent of "
                    f"shape {want}: give it the same LATENT as the inversion.")
    return fi.InvertedNoise(model, inv.start, float(sigma0), seed=int(seed), check=check)


def check_flow_inputs(model, latent, positive, sigmas, cfg, negative):
    """The shared checks of the flow inversions; the LATENT samples."""
    supported_model(model, flow=True)
    require(host.is_flow(model), "model", "is not a flow-matching model: use DDIM Inversion or DDPM Inversion for it.")
    samples = check_latent(latent, model=model)
    for name, cond in (("positive", positive), ("negative", negative)):
        if cond is None:
            continue
        check_conditioning(cond, name)
        msg = host.dit.conditioning_check(model, cond)
        require(msg is None, name, f"{msg}.")
    try:
        s = fi.check_sigmas(sigmas, "sigmas")
    except (TypeError, ValueError) as e:
        raise NodeInputError("sigmas", str(e)) from None
    require(float(s[-1]) == 0.0, "sigmas", f"must end at 0 (the clean image), got {float(s[-1]):.4g}: feed a "
                                           "scheduler's SIGMAS (BasicScheduler) or its last SplitSigmas part.")
    require(float(s[0]) <= 1.0, "sigmas", f"must start at or below 1 for a flow model, got {float(s[0]):.4g}.")
    check_range(float(cfg), 1.0, 100.0, "cfg")
    require(float(cfg) == 1.0 or negative is not None, "cfg",
            f"is {cfg} but no negative conditioning is connected: connect one or set cfg to 1.")
    return samples


_COMMON_TIPS = {
    "model": "A flow-matching DiT (FLUX, SD3 / SD3.5, Qwen-Image).",
    "latent": "The image to invert, as a latent (VAE Encode); give the same LATENT to SamplerCustomAdvanced.",
    "positive": "Source prompt describing the image (a FLUX guidance of 1-2 inverts best).",
    "sigmas": "The sampling sigmas (BasicScheduler for this model, ending at 0); sample with the same SIGMAS.",
    "cfg": "Classifier-free guidance during inversion (1 = positive only; above 1 needs the negative).",
    "negative": "Negative prompt for cfg > 1.",
}


class FlowInversion:
    DESCRIPTION = ("Deterministic inversion of a flow-matching DiT: integrates the flow ODE from the image up the "
                   "SIGMAS with Euler, RF-Solver (2nd order, 2 model calls a step) or FireFlow (2nd order, 1 call a "
                   "step). " + USAGE)

    @classmethod
    def INPUT_TYPES(cls):
        return inversion_inputs({
            "sigmas": ("SIGMAS",),
            "solver": (list(fi.SOLVERS), {"default": "fireflow"}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1}),
        }, {}, dict(_COMMON_TIPS, solver="euler: 1 call a step, 1st order; rf_solver: midpoint, 2 calls a step; "
                                     "fireflow: midpoint reusing the last velocity, 1 call a step."))

    RETURN_TYPES = ("NOISE", "SAMPLER", "INVERSION")
    RETURN_NAMES = ("NOISE", "SAMPLER", "INVERSION")
    OUTPUT_TOOLTIPS = ("Start noise for SamplerCustomAdvanced: with the same LATENT it starts at the inverted state.",
                       "The same solver, run down the SIGMAS.",
                       "The inverted latents at every sigma.")
    FUNCTION = "invert"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(NODE_ODE)
    def invert(self, model, latent, positive, sigmas, solver, cfg, negative=None):
        samples = check_flow_inputs(model, latent, positive, sigmas, cfg, negative)
        require(solver in fi.SOLVERS, "solver", f"must be one of {', '.join(fi.SOLVERS)}, got {solver!r}.")
        bar = Progress(int(sigmas.numel()) - 1)
        inv = fi.run_ode(model, samples, positive, negative, float(cfg), sigmas, solver,
                         on_step=lambda i, n: bar.update(1))
        noise = inverted_noise(model, inv, float(sigmas[0]), NODE_ODE)
        return (noise, guarded_sampler(fi.make_ode_sampler_fn(solver, inv), NODE_ODE, inv.sigmas, NODE_ODE), inv)


class EditFriendlyFlowInversion:
    DESCRIPTION = ("Edit-friendly inversion of a flow-matching DiT: independent noisy states at every sigma and the "
                   "noise maps that make the stochastic flow step (ComfyUI's rectified-flow ancestral step, η) land "
                   "on them, so the SAMPLER reproduces the image exactly and edits with another prompt. " + USAGE)

    @classmethod
    def INPUT_TYPES(cls):
        return inversion_inputs({
            "sigmas": ("SIGMAS",),
            "eta": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1}),
        }, {}, dict(_COMMON_TIPS, eta="How much fresh noise each step mixes in: 1 = fully stochastic, smaller keeps more of the inverted path (the noise level η of the stochastic flow step).",
                seed="Seed of the independent noisy states the inversion draws."))

    RETURN_TYPES = ("NOISE", "SAMPLER", "INVERSION")
    RETURN_NAMES = ("NOISE", "SAMPLER", "INVERSION")
    OUTPUT_TOOLTIPS = ("Start noise for SamplerCustomAdvanced: with the same LATENT it starts at the inverted state.",
                       "The Edit-friendly Flow sampler of this inversion (exact last step).",
                       "States and noise maps (for the Edit-friendly Flow sampler node).")
    FUNCTION = "invert"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(NODE_EF)
    def invert(self, model, latent, positive, sigmas, eta, seed, cfg, negative=None):
        samples = check_flow_inputs(model, latent, positive, sigmas, cfg, negative)
        check_range(float(eta), 1e-6, 1.0, "eta")
        bar = Progress(int(sigmas.numel()) - 1)
        inv = fi.run_edit_friendly(model, samples, positive, negative, float(cfg), sigmas, eta=float(eta),
                                   seed=int(seed), on_step=lambda i, n: bar.update(1))
        noise = inverted_noise(model, inv, float(sigmas[0]), NODE_EF, seed=int(seed))
        fn = fi.make_edit_friendly_sampler_fn(inv, region=ledits.mask_region)
        return (noise, guarded_sampler(fn, NODE_EF, inv.sigmas, NODE_EF), inv)


class EditFriendlyFlowSampler:
    DESCRIPTION = ("A SAMPLER for SamplerCustomAdvanced: stochastic flow steps that use an Edit-friendly Flow "
                   "Inversion's noise maps instead of fresh noise. Use the inversion's SIGMAS (or a SplitSigmas part) "
                   "and its NOISE.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {"inversion": ("INVERSION",)},
            "optional": {"exact_last_step": ("BOOLEAN", {"default": True})},
        }, {"inversion": "INVERSION from Edit-friendly Flow Inversion.",
            "exact_last_step": "Add the inversion's last-step residual so reconstruction is exact."})

    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced's sampler input.",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(NODE_SAMPLER)
    def get_sampler(self, inversion, exact_last_step=True):
        require(isinstance(inversion, fi.EditFriendlyFlowInversion), "inversion",
                f"expected the INVERSION of Edit-friendly Flow Inversion, got {type(inversion).__name__}.")
        require(inversion.xts.numel() > 0, "inversion", "was released; run the inversion again.")
        fn = fi.make_edit_friendly_sampler_fn(inversion, bool(exact_last_step), ledits.mask_region)
        return (guarded_sampler(fn, NODE_SAMPLER, inversion.sigmas, NODE_EF),)


NODE_CLASS_MAPPINGS = {"DragEditFlowInversion": FlowInversion,
                       "DragEditEditFriendlyFlowInversion": EditFriendlyFlowInversion,
                       "DragEditEditFriendlyFlow": EditFriendlyFlowSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditFlowInversion": NODE_ODE,
                              "DragEditEditFriendlyFlowInversion": NODE_EF,
                              "DragEditEditFriendlyFlow": NODE_SAMPLER}
