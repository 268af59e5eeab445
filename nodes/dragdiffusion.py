"""DragDiffusion nodes: "Motion Supervision" (optimise the inverted latent so the handles move to the targets)
and "DragDiffusion" (inversion + motion supervision + denoising with the source's K/V in one node)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import torch

from ..core import dragdiffusion as dd
from ..core import host
from ..core import inversion as inv
from ..core.drag_schema import DragInstructions
from ..core.geometry import GeometryError, Grid, point_tensors
from ._errors import NodeInputError, node_entry, require
from ._inputs import (check_batch, check_cond_fits, check_inversion_steps, check_latent, check_mask, check_range,
                      check_result, check_same_model, check_schedule, check_start_latent, guard_model,
                      image_or_latent, kv_budget, read_drag, supported_model)
from ._ui import CATEGORY_ALL_IN_ONE, CATEGORY_BLOCKS, Progress, tooltips

MS_NODE = "Motion Supervision"
DD_NODE = "DragDiffusion"

_TIPS = {
    "model": "The diffusion model (SD1.x, SD2.x incl. v-prediction, SDXL). A LoRA applied with the stock LoRA loader "
             "(e.g. an identity LoRA trained on the image) is used as is.",
    "positive": "Prompt describing the image (the one used for the inversion).",
    "drag": "Point pairs handle -> target from 'Drag Instructions' (image pixels). Regions are not used by this method.",
    "iterations": "Most optimisation steps (the reference's n_pix_step = 80); stops early once every handle is "
                  "within `threshold` supervision cells of its target.",
    "learning_rate": "How far each optimisation step moves the picture: higher drags faster but blurs more "
                     "(reference 0.01; 0.02-0.04 is faster at some quality cost) (Adam learning rate on z_t).",
    "r_m": "Size of the patch around each handle that is pushed toward its target: larger moves more of the "
           "object with the point (motion supervision radius r_m, in supervision cells: a (2r_m+1)² patch pushed "
           "one cell per step). The supervision grid has 4 cells per latent cell (= half the image "
           "resolution on SD, as the reference; 2 per pixel on the shapes demo model), i.e. a quarter of a cell of "
           "the feature map.",
    "r_p": "How far a handle may jump per step when it is found again after each push (point tracking radius r_p, "
           "in supervision cells, 4 per latent cell).",
    "threshold": "How close each handle must get to its target before the drag stops (in supervision cells, 4 per "
                 "latent cell): the optimisation ends once every handle is closer than this to its target (reference 2.0 = half a latent cell = 4 px on SD, 1 px on the "
                 "shapes demo model).",
    "lam": "How strongly the picture outside the editable mask is kept as it was: higher keeps it closer (mask "
           "term weight λ; used only with a mask).",
    "feature_block": "Decoder block whose features are supervised, as diffusers' up_blocks[k]; negative counts from "
                     "the last. -2 = SD1.5's up_blocks[2] (640 ch, the paper's default).",
    "reference_kv": "Denoise with the source's self-attention K/V in the decoder's two highest-resolution levels "
                    "(keeps identity and background).",
    "inversion": "From 'DDIM Inversion': sets the timestep (its start) and, with record_kv on, carries the source K/V "
                 "for reference_kv.",
    "latent": "The noisy latent at the start step (DDIM Inversion's latent output). Optional when an inversion is "
              "connected. One image (batch 1).",
    "mask": "Editable area (white = may change). Outside it the latent is held by the mask term. Defaults to the "
            "mask stored in the drag instructions; all white or all black = no mask (faster: the UNet forward then "
            "stops after the feature block).",
    "steps": "Without an inversion: the DDIM grid the latent was inverted on.",
    "strength": "Without an inversion: the fraction of that grid the latent was inverted to (0.7 = t 681 of 50 steps).",
    "half_precision": "Run the optimisation's UNet calls under autocast (fp16 on GPU, bf16 on CPU); the latent and "
                      "Adam stay fp32. Less memory and faster on GPUs.",
    "negative": "Optional negative prompt for the denoising pass (only with cfg > 1).",
    "cfg": "Classifier-free guidance of the denoising pass (1 = the reference's real-image mode).",
}
_TIPS_DD = dict(_TIPS, latent="The image to edit, as a clean latent (VAE Encode), instead of IMAGE + VAE. One image "
                                "(batch 1).",
                image="The image to edit (one image), encoded with the VAE. Connect either IMAGE + VAE or a LATENT.",
                vae="The VAE that encodes the image.",
                steps="Steps of the full DDIM grid (50 in the paper).",
                strength="Fraction of the grid to invert: 0.7 = the paper's t = 681 of 50 steps.")


def _settings_spec(reference_default: bool) -> dict:
    return {
        "iterations": ("INT", {"default": 80, "min": 1, "max": 1000}),
        "learning_rate": ("FLOAT", {"default": 0.01, "min": 0.0001, "max": 1.0, "step": 0.001}),
        "r_m": ("INT", {"default": 1, "min": 0, "max": 16}),
        "r_p": ("INT", {"default": 3, "min": 0, "max": 32}),
        "lam": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 100.0, "step": 0.01}),
        "feature_block": ("INT", {"default": -2, "min": -8, "max": 7}),
        "reference_kv": ("BOOLEAN", {"default": reference_default}),
    }


def _settings(iterations: int, learning_rate: float, r_m: int, r_p: int, lam: float, feature_block: int,
              half_precision: bool, threshold: float = 2.0) -> dd.DragSettings:
    """Checked DragSettings from the node's widgets."""
    require(int(iterations) >= 1, "iterations", f"must be at least 1, got {iterations}.")
    check_range(float(threshold), 0.1, 64.0, "threshold")
    require(float(learning_rate) > 0, "learning_rate", f"must be above 0, got {learning_rate}.")
    require(int(r_m) >= 0, "r_m", f"must be 0 or more, got {r_m}.")
    require(int(r_p) >= 0, "r_p", f"must be 0 or more, got {r_p}.")
    require(float(lam) >= 0, "lam", f"must be 0 or more, got {lam}.")
    return dd.DragSettings(iterations=int(iterations), lr=float(learning_rate), r_m=int(r_m), r_p=int(r_p),
                           lam=float(lam), feature_block=int(feature_block), half_precision=bool(half_precision),
                           threshold=float(threshold))


def _feature_block(model: Any, k: int) -> int:
    """The output block index for up_blocks[k], or a NodeInputError naming feature_block."""
    try:
        return dd.feature_block_index(model, k)
    except ValueError as e:
        raise NodeInputError("feature_block", f"{e}.") from None


def _drag_points(drag: Any, latent_hw: tuple[int, int]) -> tuple[DragInstructions, Grid, torch.Tensor, torch.Tensor]:
    """Validated DRAG (image size filled from the latent x 8 when absent), its supervision grid and the handles /
    targets as grid cells; clear errors for points outside the image, regions, and handle == target."""
    d = read_drag(drag, require_moves=True)
    if d.image_size is None:
        d = read_drag(d, image_size=(latent_hw[1] * dd.VAE_FACTOR, latent_hw[0] * dd.VAE_FACTOR))
    require(not d.regions, "drag", f"has {len(d.regions)} region(s): DragDiffusion moves point pairs only "
                                   "(use RegionDrag for regions, or remove them).")
    require(len(d.points) > 0, "drag", "has no point pairs: draw at least one handle -> target pair.")
    try:
        grid = dd.feature_grid(latent_hw, d.image_size)
    except GeometryError as e:
        raise NodeInputError("drag", f"{e}.") from None
    h_px, t_px = point_tensors(d)
    handles, targets = dd.points_on_grid(h_px, t_px, grid)
    for i in range(len(d.points)):
        require(not torch.equal(h_px[i], t_px[i]), "drag",
                f"points[{i}]: handle and target are the same point {tuple(h_px[i].tolist())}; move the target.")
        require(not torch.equal(handles[i], targets[i]), "drag",
                f"points[{i}]: handle {tuple(h_px[i].tolist())} and target {tuple(t_px[i].tolist())} fall in the same "
                f"feature cell ({grid.scale[0]:g} px); drag further.")
    return d, grid, handles, targets


def _tracked(drag: DragInstructions, handles: torch.Tensor, grid: Grid) -> DragInstructions:
    """The DRAG with each handle moved to its tracked position (centre of the tracked cell, image px)."""
    px = dd.cells_to_image(handles, grid).tolist()
    return replace(drag, points=tuple(((float(x), float(y)), t) for (x, y), (_h, t) in zip(px, drag.points)))


def _mask(mask: Optional[torch.Tensor], drag: DragInstructions, latent_hw: tuple[int, int]) -> Optional[torch.Tensor]:
    """The editable mask: the MASK input if connected (the pack's one mask rule), else the drag instructions' own."""
    if mask is None:
        return drag.mask_tensor()
    return check_mask(mask, "mask", image_size=drag.image_size, latent_hw=latent_hw)


def _finish_bar(bar: Progress, settings: dd.DragSettings, out: dd.OptimizeOutcome) -> None:
    """Early stop: fill the optimisation's part of the bar (and honour Cancel once more)."""
    left = settings.iterations - out.result.iterations
    if left > 0:
        bar.update(left)


class MotionSupervision:
    DESCRIPTION = ("DragDiffusion's latent optimisation: moves decoder features around each handle toward its "
                   "target on the inverted latent z_t, re-locating the handles after each step. Sample the output "
                   "latent with SamplerCustom (sampler ddim, add_noise off, the inversion's SIGMAS) using the output "
                   "MODEL.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "drag": ("DRAG",),
                **_settings_spec(False),
            },
            "optional": {
                "inversion": ("INVERSION",),
                "latent": ("LATENT",),
                "mask": ("MASK",),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
                "strength": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01}),
                "half_precision": ("BOOLEAN", {"default": False}),
                "threshold": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 64.0, "step": 0.1}),
            },
        }, _TIPS)

    RETURN_TYPES = ("LATENT", "DRAG", "MODEL")
    RETURN_NAMES = ("LATENT", "tracked", "MODEL")
    OUTPUT_TOOLTIPS = ("The optimised latent, still noisy at the start step.",
                       "The drag instructions with each handle moved to where tracking found it.",
                       "The model for the denoising pass: with reference_kv on, it uses the source's self-attention K/V.")
    FUNCTION = "run"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(MS_NODE)
    def run(self, model, positive, drag, iterations=80, learning_rate=0.01, r_m=1, r_p=3, lam=0.1, feature_block=-2,
            reference_kv=False, inversion=None, latent=None, mask=None, steps=50, strength=0.7, half_precision=False,
            threshold=2.0):
        supported_model(model)
        check_cond_fits(model, positive, "positive")
        settings = _settings(iterations, learning_rate, r_m, r_p, lam, feature_block, half_precision, threshold)
        require(inversion is not None or latent is not None, "latent",
                "connect the noisy latent or an INVERSION from 'DDIM Inversion'.")
        if inversion is not None:
            require(isinstance(inversion, inv.Inversion) and inversion.noise_maps is None, "inversion",
                    "expected an INVERSION from 'DDIM Inversion'.")
            check_inversion_steps(inversion)
            check_same_model(model, inversion)
            sigmas = inversion.sigmas
        else:
            require(int(steps) >= 1, "steps", f"must be at least 1, got {steps}.")
            check_range(float(strength), 0.0, 1.0, "strength")
            sigmas = inv.start_sigmas(model, int(steps), float(strength))
            require(len(sigmas) >= 2, "strength", f"is {strength}: no noise, so nothing to optimise; raise it.")
        if latent is not None:
            samples = check_latent(latent, model=model)
            if inversion is not None:
                inv_hw = inv.latent_hw(inversion)
                require(tuple(samples.shape[-2:]) == inv_hw, "latent",
                        f"is {tuple(samples.shape[-2:])} but the inversion is {inv_hw}.")
                check_start_latent(inversion, host.process_in(model, samples.clone()), "latent",
                                   what="the latent", fix="Connect the LATENT output of the DDIM Inversion that made "
                                                          "the INVERSION (or leave latent unconnected).")
        else:
            samples = host.process_out(model, inversion.latent(0).clone())
            check_batch(samples.shape[0], "inversion", "inverted latent")
        kv = None
        if reference_kv:
            kv = inversion.kv if inversion is not None else None
            require(kv is not None and len(kv) > 0, "reference_kv",
                    "needs the source K/V: connect an INVERSION from 'DDIM Inversion' with record_kv on, "
                    "or turn reference_kv off.")
        lat_hw = tuple(samples.shape[-2:])
        d, grid, handles, targets = _drag_points(drag, lat_hw)
        _feature_block(model, settings.feature_block)
        m = _mask(mask, d, lat_hw)
        bar = Progress(settings.iterations)
        out = dd.optimize(model, positive, samples, sigmas, handles, targets, grid, settings, mask=m,
                          on_iteration=lambda k, p, loss: bar.update(1))
        _finish_bar(bar, settings, out)
        model_out = dd.reference_kv_model(model, kv) if kv is not None else host.clone(model)
        src = ("the DDIM Inversion that made the latent" if inversion is not None
               else "DDIM Inversion (same steps and strength)")
        guard_model(model_out, f"ms_{id(out)}", MS_NODE, lambda sig, x, noise: check_schedule(
            "inversion" if inversion is not None else "steps", sig, sigmas, source=src,
            rule="grid" if kv is not None else "range", latent_shape=x.shape, inv_latent_hw=lat_hw,
            inv=inversion, latent=x, same_start=False))
        check_result(out.samples, samples, {"learning_rate": float(learning_rate)}, node=MS_NODE,
                     what="the optimised latent", ref_name="the inverted latent's")
        return ({"samples": out.samples}, _tracked(d, out.result.handles, out.grid), model_out)


class DragDiffusion:
    DESCRIPTION = ("DragDiffusion in one node: DDIM inversion, motion supervision with point tracking on the "
                   "inverted latent, then DDIM denoising with the source's self-attention K/V.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "drag": ("DRAG",),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
                "strength": ("FLOAT", {"default": 0.7, "min": 0.01, "max": 1.0, "step": 0.01}),
                **_settings_spec(True),
            },
            "optional": {
                "latent": ("LATENT",),
                "image": ("IMAGE",),
                "vae": ("VAE",),
                "mask": ("MASK",),
                "negative": ("CONDITIONING",),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1}),
                "half_precision": ("BOOLEAN", {"default": False}),
                "threshold": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 64.0, "step": 0.1}),
            },
        }, _TIPS_DD)

    RETURN_TYPES = ("LATENT", "DRAG")
    RETURN_NAMES = ("LATENT", "tracked")
    OUTPUT_TOOLTIPS = ("The edited clean latent (VAE Decode it).",
                       "The drag instructions with each handle moved to where tracking found it.")
    FUNCTION = "run"
    CATEGORY = CATEGORY_ALL_IN_ONE

    @node_entry(DD_NODE)
    def run(self, model, positive, drag, latent=None, steps=50, strength=0.7, iterations=80, learning_rate=0.01,
            r_m=1, r_p=3, lam=0.1, feature_block=-2, reference_kv=True, mask=None, negative=None, cfg=1.0,
            half_precision=False, threshold=2.0, image=None, vae=None):
        supported_model(model)
        samples, _size = image_or_latent(model, image, vae, latent)
        check_cond_fits(model, positive, "positive")
        if negative is not None:
            check_cond_fits(model, negative, "negative")
        require(float(cfg) <= 1.0 or negative is not None, "cfg",
                "is above 1 but no negative conditioning is connected: connect one or set cfg to 1.")
        require(int(steps) >= 1, "steps", f"must be at least 1, got {steps}.")
        check_range(float(strength), 0.0, 1.0, "strength")
        require(int(steps) - inv.start_index(int(steps), float(strength)) >= 1, "strength",
                f"is {strength}: with {steps} steps nothing is inverted, so nothing can be dragged; raise it.")
        settings = _settings(iterations, learning_rate, r_m, r_p, lam, feature_block, half_precision, threshold)
        lat_hw = tuple(samples.shape[-2:])
        d, grid, handles, targets = _drag_points(drag, lat_hw)
        m = _mask(mask, d, lat_hw)
        _feature_block(model, settings.feature_block)
        sigmas = inv.start_sigmas(model, int(steps), float(strength))
        budget = 0
        if reference_kv:
            n = len(sigmas) - 1
            budget = kv_budget("reference_kv", inv.kv_estimate(model, samples, sigmas, dd.KV_DTYPE),
                               what=f"{n} steps, {lat_hw[1]}x{lat_hw[0]} latent, float16",
                               fix="lower steps or strength, use a smaller image, or turn reference_kv off")
        bar = Progress(2 * (len(sigmas) - 1) + settings.iterations)
        try:
            final, out = dd.run(model, positive, negative, float(cfg), samples, sigmas, handles, targets, grid,
                                settings, steps=int(steps), mask=m, reference_kv=bool(reference_kv),
                                kv_budget_bytes=budget, on_step=lambda *a: bar.update(1),
                                on_iteration=lambda k, p, loss: bar.update(1))
        except host.KVBudgetError as e:
            raise NodeInputError("reference_kv", f"{e}: lower steps or strength, or use a smaller image.") from None
        check_result(final, samples, {"learning_rate": float(learning_rate), "cfg": float(cfg)}, node=DD_NODE,
                     what="the edit")
        return ({"samples": final}, _tracked(d, out.result.handles, out.grid))


NODE_CLASS_MAPPINGS = {"DragEditMotionSupervision": MotionSupervision, "DragEditDragDiffusion": DragDiffusion}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditMotionSupervision": MS_NODE, "DragEditDragDiffusion": DD_NODE}
