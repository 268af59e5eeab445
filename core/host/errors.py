"""Errors the host raises with a message a user can act on."""
from __future__ import annotations


class HostError(RuntimeError):
    """A model or host that this pack cannot work with (raised with a message a user can act on)."""


class KVBudgetError(HostError):
    """Recording self-attention K/V would exceed, or did exceed, its memory budget."""
