"""Shared helpers for node classes: user-facing errors, validators, progress and Cancel."""
from __future__ import annotations

from typing import Any, Iterable

import torch

CATEGORY = "DragEdit"


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
    """Add tooltips to an INPUT_TYPES dict in place: tips maps input name -> text. Also declares the
    control_after_generate widget of INT "seed" inputs (see seed_control)."""
    for section in spec.values():
        for name, entry in section.items():
            if name in tips:
                if len(entry) == 1:
                    section[name] = entry = (entry[0], {"tooltip": tips[name]})
                else:
                    entry[1].setdefault("tooltip", tips[name])
            if name == "seed":
                section[name] = seed_control(section[name])
    return spec


def seed_control(entry: tuple) -> tuple:
    """An INT seed input spec with its "control after generate" widget declared (control_after_generate=True).

    The frontend adds that widget to any INT input named seed, but from about 1.5x it lines saved widget values
    up with the declared controls only: on a node that also has a forceInput input (drag_json) an undeclared one
    shifts every later value by one when a workflow loads ("control_after_generate = 0.2 is not one of its
    options"). Declared, every frontend (1.27 .. 1.58) builds the same widgets and reads the same values."""
    if entry[0] != "INT":
        return entry
    opts = dict(entry[1]) if len(entry) > 1 else {}
    opts.setdefault("control_after_generate", True)
    return (entry[0], opts)


def iter_nodes(modules: Iterable[Any]) -> tuple[dict, dict]:
    """Merge NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS of the given node modules."""
    classes, names = {}, {}
    for m in modules:
        classes.update(getattr(m, "NODE_CLASS_MAPPINGS", {}))
        names.update(getattr(m, "NODE_DISPLAY_NAME_MAPPINGS", {}))
    return classes, names
