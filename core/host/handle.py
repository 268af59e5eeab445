"""Objects that patches hold and that `ModelPatcher.clone()` must pass on by reference."""
from __future__ import annotations


class SharedHandle:
    """Base for objects that must survive ModelPatcher.clone()'s copy of model_options by reference: stores
    (K/V caches, captured features) are owned by a run or by an INVERSION object, never by a patch; a patch holds
    a handle that clone() and deepcopy pass on without copying."""

    def __deepcopy__(self, memo: dict) -> "SharedHandle":
        return self

    def __copy__(self) -> "SharedHandle":
        return self
