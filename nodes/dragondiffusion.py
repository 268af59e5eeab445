"""Nodes "Feature Guidance", "Memory Bank K/V" and "DragonDiffusion" (DragonDiffusion / DiffEditor editing).

Thin: input checks and image px -> energy-grid conversion here, the method in core/dragondiffusion.py (the
all-in-one node calls its run)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..core import dragon_energy as de
from ..core import dragondiffusion as dragon
from ..core import host
from ..core.geometry import Grid, GeometryError
from ..core.inversion import DDIMInversion, latent_hw
from ._errors import NodeInputError, node_entry, require
from ._inputs import (check_cond_fits, check_inversion, check_mask, check_range, check_result, check_schedule,
                      guard_model, one_mask, read_drag, supported_model)
from ._ui import CATEGORY_ALL_IN_ONE, CATEGORY_BLOCKS, SEED_MAX, Progress, tooltips

FG, MB, DD = "Feature Guidance", "Memory Bank K/V", "DragonDiffusion"
MODES = list(de.MODES)
AUTO = -1.0

COMMON_TIPS = {
    "model": "The diffusion model (SD1.x, SD2.x incl. v-prediction, SDXL); the same one the inversion used.",
    "inversion": "INVERSION of the image to edit from DDIM Inversion (strength 1.0 = the papers' full inversion).",
    "mode": "move: move/resize the masked object along one point pair; drag: drag content along point pairs; "
            "appearance: give the masked region the look of the reference region; paste: paste the reference "
            "region into the masked region.",
    "drag": "Drag Instructions: point pairs in image pixels (drag: all pairs; move: one pair from the object to "
            "where it goes).",
    "mask": "move: the object; drag: the editable area (none or all white = boxes around the points); "
            "appearance/paste: the region to change. Image size (or the latent's size).",
    "reference": "appearance/paste: INVERSION of the second (reference) image, same size and steps.",
    "ref_mask": "appearance/paste: the region of the reference image to take (paste: same shape as mask).",
    "energy_scale": "How hard the edit pulls the picture: 0 turns the guidance off, higher moves more but can "
                    "smear. Multiplier of the mode's reference energy scale (move 0.5e3, drag 2e3, appearance 2e3, "
                    "paste 1.5e3). 0 turns the guidance off. 1 = the reference (SD1.5); the Shapes Demo Model "
                    "needs about 20 before the guidance shows (ShapesBench).",
    "resize_scale": "move: scale of the object at its new place (1 = same size).",
    "w_edit": "How much the guidance favours making the edit over keeping the rest (edit energy weight; -1 = the "
              "mode's default: move 4, drag 4, appearance 3.5, paste 4).",
    "w_content": "How much the guidance favours keeping the unedited picture as it was (content energy weight; -1 = "
                 "the mode's default: 6, appearance 5).",
    "center_features": "Compare the two images' features after removing what all their positions share (each "
                       "image's mean feature, before the cosine similarities; not in the reference). Helps when one shared component dominates the features, as on small models.",
}
CENTER_DEFAULT = False
VACATE_DEFAULT = 1.0


# --------------------------------------------------------------------------------------------------------------
# Input checks and conversions
# --------------------------------------------------------------------------------------------------------------

def image_grid(image_size: tuple[int, int], lat_hw: tuple[int, int], energy_hw: tuple[int, int],
               input_name: str) -> Grid:
    """The energy grid laid over an image of image_size (W, H) whose latent is lat_hw."""
    W, H = int(image_size[0]), int(image_size[1])
    f = max(W // max(lat_hw[1], 1), 1)
    try:
        return Grid.latent((W, H), f, hw=lat_hw).resized(energy_hw)
    except GeometryError as e:
        raise NodeInputError(input_name, f"a {W}x{H} image does not fit the inversion's "
                                         f"{lat_hw[1]}x{lat_hw[0]} latent ({e}).") from None


def mask_on_grid(mask: Any, input_name: str, lat_hw: tuple[int, int], energy_hw: tuple[int, int],
                 image_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """A MASK (image size, or the latent's size: check_mask) as bool cells of the energy grid; clear errors for a
    mask whose image does not fit the latent or an empty mask."""
    m = check_mask(mask, input_name, image_size=image_size, latent_hw=lat_hw)
    H, W = int(m.shape[0]), int(m.shape[1])
    h, w = lat_hw
    try:
        grid = Grid.latent((W, H), max(W // max(w, 1), 1), hw=lat_hw).resized(energy_hw)
    except GeometryError:
        raise NodeInputError(input_name, f"the mask is {W}x{H}, which does not fit the {w}x{h} latent of the image "
                                         f"(expected the image size, e.g. {w * 8}x{h * 8} for an SD model, or "
                                         f"{w}x{h}).") from None
    cells = grid.mask_cells(m)
    require(bool(cells.any()), input_name, "the mask is empty: paint the region in white.")
    return cells


def _is_full(mask: Any) -> bool:
    """True for an all-white mask (Drag Instructions' 'no mask drawn')."""
    return isinstance(mask, torch.Tensor) and mask.numel() > 0 and float(mask.min()) > 0.5


def build_spec(model: Any, inv: DDIMInversion, mode: str, *, drag: Any = None, mask: Any = None,
               reference: Optional[DDIMInversion] = None, ref_mask: Any = None, energy_scale: float = 1.0,
               resize_scale: float = 1.0, w_edit: float = AUTO, w_content: float = AUTO,
               center: bool = CENTER_DEFAULT) -> tuple[dragon.EditSpec, list[int]]:
    """Check the user's inputs for `mode` and build the EditSpec on the model's energy grid (+ feature blocks)."""
    require(mode in MODES, "mode", f"must be one of {MODES}, got {mode!r}.")
    check_range(float(energy_scale), 0.0, 1000.0, "energy_scale")
    blocks = dragon.feature_blocks(model)
    lat_hw = latent_hw(inv)
    grid_hw = dragon.energy_grid(model, lat_hw, blocks)
    d = None if drag is None else read_drag(drag)
    image_size = d.image_size if d is not None else None
    require(d is None or image_size is not None, "drag",
            "the instructions carry no image size: make them with Drag Instructions (or add \"image_size\": [W, H]).")
    grid = image_grid(image_size, lat_hw, grid_hw, "drag") if image_size is not None else None

    def cells(xy):
        u = grid.to_grid(xy)
        return (min(max(float(u[0]), 0.0), grid_hw[1] - 1e-3), min(max(float(u[1]), 0.0), grid_hw[0] - 1e-3))

    kw: dict = dict(energy_scale=float(energy_scale), w_edit=None if w_edit < 0 else float(w_edit),
                    w_content=None if w_content < 0 else float(w_content), center=bool(center))
    m = None
    for name, value in (("mask", mask), ("ref_mask", ref_mask)):
        if value is not None:
            one_mask(value, name)        # the batch rule even where a mode ignores the mask
    if mask is not None and not (mode == "drag" and _is_full(mask)):
        m = mask_on_grid(mask, "mask", lat_hw, grid_hw, image_size)
    try:
        if mode == "move":
            require(m is not None, "mask", "move mode needs the object mask (white = the object to move).")
            require(not _is_full(mask), "mask", "covers the whole image: mark only the object to move.")
            require(d is not None and len(d.points) == 1, "drag",
                    "move mode needs exactly one point pair: from a point on the object to where it should go"
                    + ("" if d is None else f" (got {len(d.points)})") + ".")
            check_range(float(resize_scale), 0.05, 20.0, "resize_scale")
            (hx, hy), (tx, ty) = (cells(p) for p in d.points[0])
            try:
                spec = dragon.make_spec("move", grid_hw, mask=m, offset=(tx - hx, ty - hy),
                                    resize_scale=float(resize_scale), **kw)
            except ValueError as e:
                raise NodeInputError("resize_scale", str(e)) from None
        elif mode == "drag":
            if d is not None:
                d = read_drag(d, require_moves=True)
            require(d is not None and len(d.points) > 0, "drag",
                    "drag mode needs point pairs (handle -> target) from Drag Instructions.")
            handles = [cells(h) for h, _ in d.points]
            targets = [cells(t) for _, t in d.points]
            if m is None and d.has_mask and not _is_full(d.mask_tensor()):
                m = mask_on_grid(d.mask_tensor(), "drag", lat_hw, grid_hw, image_size)
            spec = dragon.make_spec("drag", grid_hw, mask=m, handles=handles, targets=targets, **kw)
        else:
            require(reference is not None, "reference",
                    f"{mode} mode needs the second image: connect its INVERSION (DDIM Inversion of the reference).")
            check_inversion(reference, "reference", model=model)
            require(latent_hw(reference) == lat_hw, "reference",
                    f"the reference latent is {latent_hw(reference)[1]}x{latent_hw(reference)[0]} but the edited "
                    f"image's is {lat_hw[1]}x{lat_hw[0]}: resize the reference to the same size.")
            require(len(reference.sigmas) == len(inv.sigmas)
                    and torch.allclose(reference.sigmas.float(), inv.sigmas.float(), rtol=1e-4), "reference",
                    "was inverted with other steps or strength than the edited image: use the same settings.")
            require(m is not None, "mask", f"{mode} mode needs the mask of the region to change.")
            require(ref_mask is not None, "ref_mask", f"{mode} mode needs the mask of the reference region.")
            mr = mask_on_grid(ref_mask, "ref_mask", lat_hw, grid_hw)
            try:
                spec = dragon.make_spec(mode, grid_hw, mask=m, ref_mask=mr, **kw)
            except ValueError as e:
                raise NodeInputError("ref_mask", str(e)) from None
    except NodeInputError:
        raise
    except ValueError as e:
        raise NodeInputError("drag" if mode in ("drag", "move") else "mask", str(e)) from None
    return spec, blocks


def _check_model_inputs(model: Any, inversion: Any, need_kv: bool = False) -> DDIMInversion:
    """Supported model, a usable INVERSION made by that model (with K/V when needed)."""
    supported_model(model)
    return check_inversion(inversion, need_kv=need_kv, model=model)


def _percent_window(model: Any, start: float, end: float):
    """Checked start/end percents as a predicate σ -> active."""
    check_range(float(start), 0.0, 1.0, "start_percent")
    check_range(float(end), 0.0, 1.0, "end_percent")
    require(float(start) < float(end), "end_percent", f"must be above start_percent ({start}), got {end}.")
    return dragon.sigma_percent_window(model, start, end)


def _check_bank(model: Any, inv: DDIMInversion, mode: str, reference: Optional[DDIMInversion]) -> None:
    """The memory bank can go on this model: its K/V were recorded on the model's decoder layers, and appearance /
    paste have the reference image's INVERSION with K/V."""
    if mode in ("appearance", "paste"):
        require(reference is not None, "reference", f"{mode} mode needs the reference image's INVERSION.")
        check_inversion(reference, "reference", need_kv=True, model=model)
    try:
        dragon.check_bank_fits(inv.kv, host.select_layers(model, part="output"))
    except ValueError as e:
        raise NodeInputError("inversion", str(e)) from None


def _guard_schedule(model: Any, node: str, inv: DDIMInversion, rule: str, knobs: Optional[dict] = None) -> None:
    """The patched model refuses (naming `node`) a sampler schedule the patch cannot follow (check_schedule's rule:
    Memory Bank K/V "grid", K/V exist only at the inversion's steps; Feature Guidance "range", it interpolates the
    inverted latents between steps) or another latent size; with `knobs`, a blown-out result (check_result against
    the inverted image)."""
    lat_hw = latent_hw(inv)
    after = None
    if knobs:
        clean = host.process_out(model, inv.latent(inv.num_latents - 1).clone())
        after = lambda out: check_result(out, clean, knobs, node=node, what="the sampler node's result")  # noqa: E731
    guard_model(model, f"{node}_{id(inv)}", node, lambda sig, x, noise: check_schedule(
        "inversion", sig, inv.sigmas, source="DDIM Inversion", rule=rule, latent_shape=x.shape,
        inv_latent_hw=lat_hw, inv=inv, latent=x), after)


# --------------------------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------------------------

def _mode_inputs() -> dict:
    """Optional inputs shared by Feature Guidance and DragonDiffusion."""
    return {"drag": ("DRAG",), "mask": ("MASK",), "reference": ("INVERSION",), "ref_mask": ("MASK",)}


class FeatureGuidance:
    DESCRIPTION = ("Patches the MODEL so that any sampler applies DragonDiffusion's feature-correspondence guidance: "
                   "at guided steps an extra UNet pass (stopped after the feature blocks) compares the current "
                   "features with the inverted image's and steers x̂0 along the energy's gradient.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "model": ("MODEL",),
                "inversion": ("INVERSION",),
                "mode": (MODES, {"default": "drag"}),
                "energy_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.05}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "end_percent": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.01}),
                "resize_scale": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 20.0, "step": 0.05}),
            },
            "optional": {**_mode_inputs(),
                         "w_edit": ("FLOAT", {"default": AUTO, "min": -1.0, "max": 100.0, "step": 0.1}),
                         "w_content": ("FLOAT", {"default": AUTO, "min": -1.0, "max": 100.0, "step": 0.1}),
                         "center_features": ("BOOLEAN", {"default": CENTER_DEFAULT})},
        }, {**COMMON_TIPS,
            "start_percent": "Guidance starts at this fraction of the denoising process (0 = first step).",
            "end_percent": "Guidance stops here (0.6 = the reference's first 30 of 50 steps)."})

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the guidance; sample it from the inversion's latent and sigmas.",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(FG)
    def patch(self, model, inversion, mode, energy_scale, start_percent, end_percent, resize_scale, drag=None,
              mask=None, reference=None, ref_mask=None, w_edit=AUTO, w_content=AUTO, center_features=CENTER_DEFAULT):
        inv = _check_model_inputs(model, inversion)
        spec, blocks = build_spec(model, inv, mode, drag=drag, mask=mask, reference=reference, ref_mask=ref_mask,
                                  energy_scale=energy_scale, resize_scale=resize_scale, w_edit=w_edit,
                                  w_content=w_content, center=center_features)
        when = _percent_window(model, start_percent, end_percent)
        m = host.clone(model)
        guidance = dragon.FeatureGuidance(spec, inv, blocks, reference=reference if spec.needs_reference else None,
                                      active=when)
        dragon.patch_feature_guidance(m, guidance)
        _guard_schedule(m, FG, inv, "range", {"energy_scale": float(energy_scale)})
        return (m,)


class MemoryBankKV:
    DESCRIPTION = ("Patches the MODEL's decoder self-attention with the inverted image's K/V (memory bank): "
                   "replace for move, concatenate for drag, the region mix for appearance and paste.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "model": ("MODEL",),
                "inversion": ("INVERSION",),
                "mode": (MODES, {"default": "drag"}),
                "start_percent": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            },
            "optional": {"mask": ("MASK",), "reference": ("INVERSION",), "ref_mask": ("MASK",)},
        }, {**COMMON_TIPS,
            "inversion": "INVERSION from DDIM Inversion with record_kv on (its K/V are injected).",
            "reference": "appearance/paste: INVERSION (record_kv on) of the reference image.",
            "mask": "appearance/paste: the region to change (K/V outside it come from the bank).",
            "start_percent": "Injection starts here (0.1 = the reference's step 5 of 50 for move/drag; "
                             "appearance/paste used 0).",
            "end_percent": "Injection stops here (1 = to the end; appearance/paste used 0.72 = step 36 of 50)."})

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with the memory-bank K/V injection (a clone); add Feature Guidance and sample it "
                       "from the inversion's latent and sigmas.",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY_BLOCKS

    @node_entry(MB)
    def patch(self, model, inversion, mode, start_percent, end_percent, mask=None, reference=None, ref_mask=None):
        inv = _check_model_inputs(model, inversion, need_kv=True)
        require(mode in MODES, "mode", f"must be one of {MODES}, got {mode!r}.")
        for name, value in (("mask", mask), ("ref_mask", ref_mask)):
            if value is not None:
                one_mask(value, name)    # the batch rule even where a mode ignores the mask
        when = _percent_window(model, start_percent, end_percent)
        masks = (None, None)
        if mode in ("appearance", "paste"):
            lat_hw = latent_hw(inv)
            require(mask is not None, "mask", f"{mode} mode needs the mask of the region to change.")
            require(ref_mask is not None, "ref_mask", f"{mode} mode needs the mask of the reference region.")
            masks = (mask_on_grid(mask, "mask", lat_hw, lat_hw), mask_on_grid(ref_mask, "ref_mask", lat_hw, lat_hw))
        _check_bank(model, inv, mode, reference)
        m = host.clone(model)
        try:
            dragon.patch_memory_bank(m, inv, mode, when=when, base_mask=masks[0], reference=reference, ref_mask=masks[1])
        except ValueError as e:
            raise NodeInputError("inversion", str(e)) from None
        _guard_schedule(m, MB, inv, "grid")
        return (m,)


class DragonDiffusion:
    DESCRIPTION = ("DragonDiffusion in one node: memory-bank K/V + feature guidance + DDIM along the inversion's "
                   "sigmas. Modes move / drag / appearance / paste; DiffEditor's regional SDE and time travel are "
                   "options.")

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "inversion": ("INVERSION",),
                "mode": (MODES, {"default": "drag"}),
                "cfg": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 30.0, "step": 0.1}),
                "energy_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.05}),
                "resize_scale": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 20.0, "step": 0.05}),
            },
            "optional": {**_mode_inputs(),
                         "regional_sde": ("BOOLEAN", {"default": False}),
                         "time_travel": ("BOOLEAN", {"default": False}),
                         "init_paste": ("BOOLEAN", {"default": True}),
                         "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX}),
                         "w_edit": ("FLOAT", {"default": AUTO, "min": -1.0, "max": 100.0, "step": 0.1}),
                         "w_content": ("FLOAT", {"default": AUTO, "min": -1.0, "max": 100.0, "step": 0.1}),
                         "center_features": ("BOOLEAN", {"default": CENTER_DEFAULT}),
                         "vacate_noise": ("FLOAT", {"default": VACATE_DEFAULT, "min": 0.0, "max": 1.0, "step": 0.05})},
        }, {**COMMON_TIPS,
            "inversion": "INVERSION from DDIM Inversion with record_kv on (memory bank); strength 1.0 as in the paper.",
            "positive": "The prompt used for the inversion.",
            "negative": "Negative prompt for classifier-free guidance.",
            "cfg": "Classifier-free guidance (the reference: 4, appearance 5). 1 matches a cfg-1 DDIM Inversion, "
                   "so the sampler follows the inverted path (the example workflows use 1).",
            "regional_sde": "DiffEditor: stochastic steps (η 0.4) inside the edit mask at steps 11-19 of 50.",
            "time_travel": "DiffEditor: repeat steps 22-28 (even) three times, inverting back in between.",
            "init_paste": "DiffEditor: paste the object (move) or the cells around each handle (drag) into the start "
                          "latent at the target before denoising (with vacate_noise, so the old place does not "
                          "come back as a ghost).",
            "seed": "Noise seed of the regional SDE and of vacate_noise.",
            "vacate_noise": "With init_paste: re-noise the start latent where the object (move) or the handle cells "
                            "(drag) were and nothing was pasted (0 = off, 1 = fresh noise). Not in the reference; "
                            "without it the old object's inverted latent comes back as a ghost."})

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The edited latent (VAE Decode it).",)
    FUNCTION = "edit"
    CATEGORY = CATEGORY_ALL_IN_ONE

    @node_entry(DD)
    def edit(self, model, positive, negative, inversion, mode, cfg, energy_scale, resize_scale, drag=None, mask=None,
             reference=None, ref_mask=None, regional_sde=False, time_travel=False, init_paste=True, seed=0,
             w_edit=AUTO, w_content=AUTO, center_features=CENTER_DEFAULT, vacate_noise=VACATE_DEFAULT):
        inv = _check_model_inputs(model, inversion, need_kv=True)
        check_cond_fits(model, positive, "positive")
        check_cond_fits(model, negative, "negative")
        check_range(float(cfg), 1.0, 30.0, "cfg")
        spec, blocks = build_spec(model, inv, mode, drag=drag, mask=mask, reference=reference, ref_mask=ref_mask,
                                  energy_scale=energy_scale, resize_scale=resize_scale, w_edit=w_edit,
                                  w_content=w_content, center=center_features)
        defaults = de.mode_defaults(mode)
        check_range(float(vacate_noise), 0.0, 1.0, "vacate_noise")
        _check_bank(model, inv, spec.mode, reference if spec.needs_reference else None)
        opts = dragon.EditOptions(regional_sde=bool(regional_sde), time_travel=bool(time_travel),
                              init_paste=bool(init_paste), vacate_noise=float(vacate_noise), seed=int(seed),
                              sde_strength=defaults.sde_strength)
        bar = Progress(len(inv.sigmas) - 1)
        result = dragon.run(model, positive, negative, float(cfg), inv, spec, blocks, defaults, opts,
                        reference=reference if spec.needs_reference else None, on_step=lambda i, n: bar.update(1))
        check_result(result, host.process_out(model, inv.latent(inv.num_latents - 1).clone()),
                     {"energy_scale": float(energy_scale), "cfg": float(cfg)}, node=DD, what="the edit")
        return ({"samples": result},)


NODE_CLASS_MAPPINGS = {"DragEditFeatureGuidance": FeatureGuidance, "DragEditMemoryBankKV": MemoryBankKV,
                       "DragEditDragonDiffusion": DragonDiffusion}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditFeatureGuidance": FG, "DragEditMemoryBankKV": MB,
                              "DragEditDragonDiffusion": DD}
