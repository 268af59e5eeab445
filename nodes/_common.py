"""Shared helpers for node classes: user-facing errors, validators, progress and Cancel."""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch

CATEGORY = "DragEdit"                                   # Drag Instructions, Drag Preview: used by every method
CATEGORY_ALL_IN_ONE = f"{CATEGORY}/all-in-one"          # one node per method: the place to start
CATEGORY_BLOCKS = f"{CATEGORY}/building blocks"         # inversions, patches, samplers to build a method from
CATEGORY_DEMO = f"{CATEGORY}/demo"                      # the bundled shapes model and its scenes
SEED_MAX = 0xFFFF_FFFF_FFFF_FFFF                        # like KSampler's noise_seed


class NodeInputError(ValueError):
    """A bad input, reported as '[Node Name] input 'name': what is wrong. How to fix it.'"""

    def __init__(self, node: str, input_name: str, message: str):
        self.node, self.input_name = node, input_name
        super().__init__(f"[{node}] input '{input_name}': {message}")


def require(cond: bool, node: str, input_name: str, message: str) -> None:
    """Raise NodeInputError(node, input_name, message) unless cond holds."""
    if not cond:
        raise NodeInputError(node, input_name, message)


def check_range(value: float, lo: float, hi: float, node: str, input_name: str) -> None:
    """Clear error when a number lies outside [lo, hi]."""
    require(lo <= value <= hi, node, input_name, f"must be between {lo} and {hi}, got {value}.")


def check_latent(latent: Any, node: str, input_name: str = "latent", allow_batch: bool = False) -> torch.Tensor:
    """Return latent['samples'] after checking it is a non-empty 4-D (or 5-D) batch of one (unless allowed)."""
    require(isinstance(latent, dict) and "samples" in latent, node, input_name,
            "expected a LATENT (a dict with 'samples'); connect VAE Encode or Empty Latent Image.")
    s = latent["samples"]
    require(isinstance(s, torch.Tensor) and s.ndim in (4, 5), node, input_name,
            f"expected a latent tensor [B,C,H,W], got shape {tuple(getattr(s, 'shape', ()))}.")
    require(s.shape[0] >= 1, node, input_name, "the latent batch is empty.")
    if not allow_batch:
        require(s.shape[0] == 1, node, input_name,
                f"batch size {s.shape[0]} is not supported: this node edits one image at a time (use a batch of 1).")
    return s


def check_conditioning(cond: Any, node: str, input_name: str) -> None:
    """Clear error when a CONDITIONING input is empty or malformed."""
    require(isinstance(cond, list) and len(cond) > 0 and all(isinstance(c, (list, tuple)) and len(c) == 2 for c in cond),
            node, input_name, "expected a CONDITIONING (connect CLIP Text Encode).")


class Progress:
    """ComfyUI progress bar + Cancel check, usable outside ComfyUI (then a no-op)."""

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        try:
            import comfy.utils
            self._bar = comfy.utils.ProgressBar(self.total)
        except Exception:  # pragma: no cover - outside ComfyUI
            self._bar = None

    def update(self, n: int = 1) -> None:
        check_interrupt()
        if self._bar is not None:
            self._bar.update(n)


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    try:
        import comfy.model_management as mm
    except Exception:  # pragma: no cover
        return
    mm.throw_exception_if_processing_interrupted()


def tooltips(spec: dict, tips: dict[str, str]) -> dict:
    """Add tooltips to an INPUT_TYPES dict in place: tips maps input name -> text."""
    for section in spec.values():
        for name, entry in section.items():
            if name in tips:
                if len(entry) == 1:
                    section[name] = (entry[0], {"tooltip": tips[name]})
                else:
                    entry[1].setdefault("tooltip", tips[name])
    return spec


def iter_nodes(modules: Iterable[Any]) -> tuple[dict, dict]:
    """Merge NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS of the given node modules."""
    classes, names = {}, {}
    for m in modules:
        classes.update(getattr(m, "NODE_CLASS_MAPPINGS", {}))
        names.update(getattr(m, "NODE_DISPLAY_NAME_MAPPINGS", {}))
    return classes, names


def check_mask(mask: Any, node: str, input_name: str = "mask",
               size: Optional[tuple[int, int]] = None) -> Optional[torch.Tensor]:
    """A single MASK ([H, W] or [1, H, W]) as float [H, W]; None when absent. With size (W, H), a mask of another
    size is an error naming the input."""
    if mask is None:
        return None
    require(isinstance(mask, torch.Tensor) and mask.ndim in (2, 3), node, input_name,
            f"expected a MASK [H, W] or [1, H, W], got {tuple(getattr(mask, 'shape', ())) or type(mask).__name__}.")
    if mask.ndim == 3:
        require(mask.shape[0] == 1, node, input_name, f"a batch of {mask.shape[0]} masks was given; connect one mask.")
        mask = mask[0]
    m = mask.detach().to("cpu", torch.float32)
    if size is not None:
        W, H = int(size[0]), int(size[1])
        require(tuple(m.shape) == (H, W), node, input_name,
                f"the mask is {m.shape[1]}x{m.shape[0]} but the image is {W}x{H}; use a mask of the image's size.")
    return m


def image_or_latent(node: str, model: Any, image: Any, vae: Any, latent: Any, *, allow_batch: bool = False,
                    vae_always: bool = False) -> tuple[torch.Tensor, Optional[tuple[int, int]]]:
    """The clean latent samples [B, C, h, w] to edit, from IMAGE + VAE (encoded here) or from a LATENT, plus the
    image size (W, H) when an image was given. One rule for every node that takes either: exactly one source,
    both halves of IMAGE + VAE, a batch of one unless allow_batch, latent channels that fit the model.
    vae_always: the node needs the VAE anyway (to decode), so a connected VAE alone does not mean 'IMAGE + VAE'."""
    from ..core import host
    from .drag_instructions import check_single_image

    have_image = image is not None or (vae is not None and not vae_always)
    require(not (have_image and latent is not None), node, "latent",
            "both a LATENT and an IMAGE are connected; connect either the LATENT or IMAGE + VAE.")
    require(have_image or latent is not None, node, "latent", "connect the image to edit: a LATENT, or IMAGE + VAE.")
    size = None
    if have_image:
        require(image is not None, node, "image", "a VAE is connected but no IMAGE; connect the image to encode.")
        require(vae is not None, node, "vae", "an IMAGE is connected but no VAE to encode it; connect the VAE.")
        require(isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[-1] >= 3, node, "image",
                f"expected an IMAGE [B, H, W, 3], got {tuple(getattr(image, 'shape', ())) or type(image).__name__}.")
        if not allow_batch:
            size = check_single_image(image, node, "image")
        else:
            size = (int(image.shape[2]), int(image.shape[1]))
        require(hasattr(vae, "encode"), node, "vae", f"expected a VAE, got {type(vae).__name__}.")
        samples = vae.encode(image[:, :, :, :3])
        require(isinstance(samples, torch.Tensor) and samples.ndim == 4, node, "vae",
                f"encoded the image to shape {tuple(getattr(samples, 'shape', ()))}; expected an image VAE's "
                f"[B, C, h, w] latent.")
    else:
        samples = check_latent(latent, node, allow_batch=allow_batch)
        require(samples.ndim == 4, node, "latent", f"expected an image latent [B, C, h, w], got "
                                                   f"{tuple(samples.shape)}.")
    try:
        want = getattr(host.latent_format(model), "latent_channels", None)
    except Exception:  # not a model: the node's model check reports it
        want = None
    require(want is None or samples.shape[1] == want, node, "vae" if have_image else "latent",
            f"the latent has {samples.shape[1]} channels but this model takes {want} (VAE of another model "
            f"family?).")
    return samples, size
