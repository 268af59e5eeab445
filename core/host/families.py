"""The model families the pack runs and the supported-model check: each family module (unet.py, dit.py) answers
`is_family(model)` and `check_supported(model)` and holds its own layer map; a new family adds a module and a line in
`families()`."""
from __future__ import annotations

from types import ModuleType
from typing import Any, Optional

from . import dit, unet
from .errors import HostError


def families() -> list[ModuleType]:
    """The model-family modules, each with `is_family(model) -> bool` and `check_supported(model) -> str`."""
    return [unet, dit]


def family_of(model: Any) -> ModuleType:
    """The family module that runs `model`; HostError (the first family's message) when none does."""
    fams = families()
    for fam in fams:
        if fam.is_family(model):
            return fam
    fams[0].check_supported(model)   # raises its "unsupported model family" message
    raise HostError("unsupported model family")  # pragma: no cover


def check_supported(model: Any) -> str:
    """The prediction type of a model this pack runs ('eps' or 'v' for a UNet, 'flow' for a DiT), else HostError."""
    return family_of(model).check_supported(model)


def conditioning_family_check(model: Any, cond: Any) -> Optional[str]:
    """A message when a CONDITIONING does not fit the model's text input (conditioning of another model family),
    else None: the UNet's cross-attention width or the DiT's text-input width."""
    for fam in families():
        if fam.is_family(model):
            return (dit.conditioning_check if fam is dit else unet.conditioning_family_check)(model, cond)
    return None
