"""Node classes of the pack, one module per capability (modules not written yet are skipped)."""
import importlib

from ._common import iter_nodes

_MODULES = ["inversion", "ddpm_inversion", "sega", "drag_instructions", "regiondrag", "dragdiffusion",
            "dragondiffusion", "shapes_demo", "preview"]

_loaded = []
for _name in _MODULES:
    try:
        _loaded.append(importlib.import_module(f".{_name}", __name__))
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_name}":
            raise

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = iter_nodes(_loaded)
