"""What the user sees of the pack's nodes besides errors: menu categories, tooltips, seed widgets, the progress bar
and Cancel, and the PNG previews of the editor and Drag Preview, written the way ComfyUI's own PreviewImage
writes them (the host's temp folder, "type": "temp", compress level 1, named by content so a re-queue adds no file).

The one place in nodes/ that imports ComfyUI: comfy.utils (progress bar), comfy.model_management (Cancel) and
folder_paths (temp and input folders), each imported where it is used so the helpers also run outside ComfyUI."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch

CATEGORY = "DragEdit"                                   # Drag Instructions, Drag Preview: used by every method
CATEGORY_ALL_IN_ONE = f"{CATEGORY}/all-in-one"          # one node per method: the place to start
CATEGORY_BLOCKS = f"{CATEGORY}/building blocks"         # inversions, patches, samplers to build a method from
CATEGORY_DEMO = f"{CATEGORY}/demo"                      # the bundled shapes model and its scenes
SEED_MAX = 0xFFFF_FFFF_FFFF_FFFF                        # like KSampler's noise_seed
log = logging.getLogger("dragedit")


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


def merge_mappings(modules: Iterable[Any]) -> tuple[dict, dict]:
    """NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS of the given node modules, merged."""
    classes, names = {}, {}
    for m in modules:
        classes.update(m.NODE_CLASS_MAPPINGS)
        names.update(m.NODE_DISPLAY_NAME_MAPPINGS)
    return classes, names


def to_uint8(image: torch.Tensor) -> Any:
    """[H, W, C] float 0..1 tensor -> contiguous uint8 numpy array [H, W, C] (C = 1 squeezed to [H, W])."""
    import numpy as np
    arr = (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def save_temp_png(pixels: Any, prefix: str) -> list[dict]:
    """Write pixels (a uint8 numpy array [H, W(, C)] or a PIL image) as a PNG in the host's temp folder; returns
    [{filename, subfolder, type: "temp"}] for a node's UI output, or [] when that is impossible (outside ComfyUI,
    an unwritable folder): a preview never fails the node."""
    try:
        import folder_paths  # ComfyUI's module; absent outside ComfyUI
        import numpy as np
        from PIL import Image

        arr = np.asarray(pixels, dtype=np.uint8)
        digest = hashlib.blake2b(arr.tobytes(), digest_size=10,
                                 person=b"dragedit-png").hexdigest() + f"_{arr.shape[1]}x{arr.shape[0]}"
        folder = folder_paths.get_temp_directory()
        os.makedirs(folder, exist_ok=True)
        name = f"{prefix}_{digest}.png"
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            tmp = f"{path}.{os.getpid()}.part"
            (pixels if isinstance(pixels, Image.Image) else Image.fromarray(arr)).save(tmp, format="PNG",
                                                                                         compress_level=1)
            os.replace(tmp, path)
        return [{"filename": name, "subfolder": "", "type": "temp"}]
    except Exception:
        return []


def save_preview(image: torch.Tensor, prefix: str = "dragedit_instructions") -> list[dict]:
    """Save image[0] as a PNG in ComfyUI's temp folder for the editor (save_temp_png); [{filename, subfolder,
    type}] or [] on failure."""
    try:
        return save_temp_png(to_uint8(image[0]), prefix)
    except Exception:
        return []


EXAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "demo" / "images" / "dragedit_example.png"


def install_example_image() -> None:
    """Copy the pack's example picture (the SD example workflows' Load Image) into ComfyUI's input folder, so the
    workflows find it in a fresh install; an existing file of that name is left alone. Never raises."""
    try:
        import folder_paths  # ComfyUI's module; absent outside ComfyUI
        dest = Path(folder_paths.get_input_directory()) / EXAMPLE_IMAGE.name
        if EXAMPLE_IMAGE.is_file() and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(EXAMPLE_IMAGE, dest)
    except Exception as e:  # pragma: no cover - a read-only input folder must not stop the pack loading
        log.warning("DragEdit: could not copy the example image into ComfyUI's input folder: %s", e)
