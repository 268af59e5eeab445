"""PNG previews for the UI (the editor's image, Drag Preview's pictures) written the way ComfyUI's own PreviewImage
writes them: into folder_paths.get_temp_directory() with "type": "temp" and compress_level 1, so the host serves
them through /view and removes them with the rest of its temp folder (at start-up and exit).

Files are named by their content (prefix + a hash of the pixels): queueing the same image again reuses its file
instead of adding one per prompt."""
from __future__ import annotations

import hashlib
import os
from typing import Any

import torch


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
