"""User-facing input errors of the pack's nodes.

Validators raise `NodeInputError(input_name, message)`, naming only the input. The node's entry function carries
`@node_entry("Display Name")` in its class body: it checks every FLOAT input finite and, for an error that names no
node yet, fills in the node's display name, so the user reads "[Node Name] input 'name': what is wrong. How to fix
it." without a node argument threaded through every validator."""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable, Iterator, Optional


class NodeInputError(ValueError):
    """A bad input: '[Node Name] input 'name': message' (just "input 'name': message" until a node is named)."""

    def __init__(self, input_name: str, message: str, node: Optional[str] = None):
        super().__init__(input_name, message)
        self.input_name, self.message, self.node = input_name, message, node

    def __str__(self) -> str:
        where = f"input '{self.input_name}': {self.message}"
        return f"[{self.node}] {where}" if self.node else where


def require(cond: bool, input_name: str, message: str) -> None:
    """Raise NodeInputError(input_name, message) unless cond holds."""
    if not cond:
        raise NodeInputError(input_name, message)


@contextlib.contextmanager
def node_errors(node: str, rename: Optional[dict[str, str]] = None) -> Iterator[None]:
    """Errors raised inside name `node` (unless a node is already named); `rename` maps the input names of a shared
    check to the names of this node's inputs (LEDITS Edit's "source" is the inversion's "positive")."""
    try:
        yield
    except NodeInputError as e:
        if rename and e.node is None:
            e.input_name = rename.get(e.input_name, e.input_name)
        if e.node is None:
            e.node = node
        raise


def check_finite(value: Any, input_name: str) -> float:
    """The value as a float; a clear error for NaN / inf (ComfyUI's min/max check lets NaN through)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise NodeInputError(input_name, f"must be a number, got {value!r}.") from None
    require(math.isfinite(f), input_name, f"must be a finite number, got {value}.")
    return f


def float_input_names(cls: type) -> list[str]:
    """Names of the FLOAT inputs a node class declares (required and optional)."""
    spec = cls.INPUT_TYPES()
    return [name for section in ("required", "optional") for name, entry in (spec.get(section) or {}).items()
            if isinstance(entry, (tuple, list)) and entry and entry[0] == "FLOAT"]


def node_entry(node: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator of a node class's FUNCTION: every FLOAT input is checked finite before it runs, and input errors
    raised while it runs name `node` (the display name)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        floats: list[list[str]] = []        # the class's FLOAT inputs, read on the first call

        @functools.wraps(fn)
        def entry(self, *args: Any, **kwargs: Any) -> Any:
            with node_errors(node):
                if not floats:
                    floats.append(float_input_names(type(self)))
                for name in floats[0]:
                    v = kwargs.get(name)
                    if v is not None and not isinstance(v, bool) and isinstance(v, (int, float)):
                        check_finite(v, name)
                return fn(self, *args, **kwargs)

        entry._dragedit_floats_checked = True
        entry.node = node
        return entry
    return wrap
