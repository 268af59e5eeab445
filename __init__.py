"""ComfyUI-DragEdit: drag editing (DragDiffusion, DragonDiffusion, RegionDrag) and semantic editing (LEDITS)
with the Stable Diffusion checkpoint the artist already has."""

try:
    import comfy.model_patcher  # noqa: F401  (present only inside ComfyUI)
except ImportError as _e:  # pragma: no cover - exercised by a test in a plain interpreter
    raise ImportError(
        "ComfyUI-DragEdit is a ComfyUI custom node pack: put this folder in ComfyUI/custom_nodes and start "
        "ComfyUI (python main.py). It cannot be imported on its own (ComfyUI's 'comfy' package was not found)."
    ) from _e

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
from .nodes._ui import install_example_image  # noqa: E402

install_example_image()          # the SD example workflows' input picture, into ComfyUI's input folder

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
