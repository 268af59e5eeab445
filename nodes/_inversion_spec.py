"""The input block every inversion node shares (DDIM Inversion, DDPM Inversion, Flow Inversion, Edit-friendly Flow
Inversion): required model, latent, positive first, then the node's own inputs; optional negative first, then the
node's own. Widget order is the saved-workflow API, so the shared inputs keep these places."""
from __future__ import annotations

from ._ui import tooltips


def inversion_inputs(required: dict, optional: dict, tips: dict) -> dict:
    """INPUT_TYPES of an inversion node: the shared model / latent / positive / negative sockets around the node's
    `required` and `optional` inputs, with `tips` (one per input, the shared ones included) as tooltips."""
    return tooltips({
        "required": {"model": ("MODEL",), "latent": ("LATENT",), "positive": ("CONDITIONING",), **required},
        "optional": {"negative": ("CONDITIONING",), **optional},
    }, tips)
