"""Node "Drag Preview": an image with the drag instructions drawn on it (arrows, regions, mask, tracked handles).
Thin: checks here, the drawing in core/preview.py."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ..core import preview
from ._errors import node_entry, require
from ._inputs import read_drag, read_mask
from ._ui import CATEGORY, save_temp_png, tooltips

NODE = "Drag Preview"

TIPS = {
    "image": "The image to draw on: the input image (what will move) or the edited result (where it went). "
             "A batch is drawn image by image.",
    "drag": "The drag instructions from Drag Instructions: point pairs (red handle -> blue target, yellow arrow) and "
            "region pairs (red handle outline, blue target outline).",
    "mask": "Optional editable area (white = may change); outside it the image is dimmed. Default: the mask stored "
            "in the drag instructions.",
    "tracked": "Optional: DragDiffusion's 'tracked' output. Each handle's tracked end position is drawn in green, "
               "joined to where it started.",
    "min_size": "Enlarge small images (nearest neighbour, by a whole factor up to 16x) until the longer side is at "
                "least this many pixels, so the arrows stay readable; 0 = keep the image's size. A batch is enlarged "
                "less when the whole batch would exceed 16.8 megapixels.",
}


class DragPreview:
    DESCRIPTION = ("Draws the drag instructions on an image: handle -> target arrows, region outlines, the editable "
                   "mask and (from DragDiffusion's 'tracked' output) where each handle ended up, like the demo's "
                   "before/after pictures. Shows the picture on the node and outputs it as an IMAGE.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Image and DRAG; optional mask, tracked DRAG and the enlargement size (all with tooltips)."""
        return tooltips({
            "required": {
                "image": ("IMAGE",),
                "drag": ("DRAG",),
                "min_size": ("INT", {"default": 512, "min": 0, "max": 4096, "step": 64}),
            },
            "optional": {
                "mask": ("MASK",),
                "tracked": ("DRAG",),
            },
        }, TIPS)

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The image with the instructions drawn on it (enlarged to min_size).",)
    FUNCTION = "draw"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    @node_entry(NODE)
    def draw(self, image: torch.Tensor, drag: Any, min_size: int = 512, mask: Optional[torch.Tensor] = None,
             tracked: Any = None) -> dict:
        """Executor entry: the drawn IMAGE batch, shown on the node as a preview."""
        require(isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[0] >= 1
                and image.shape[1] >= 1 and image.shape[2] >= 1, "image",
                f"expected an IMAGE [B, H, W, C], got {tuple(getattr(image, 'shape', ())) or type(image).__name__}.")
        require(0 <= int(min_size) <= 4096, "min_size", f"must be between 0 and 4096, got {min_size}.")
        size = (int(image.shape[2]), int(image.shape[1]))
        d = read_drag(drag, fit_to=size)
        t = None
        if tracked is not None:
            t = read_drag(tracked, fit_to=size, input_name="tracked")
            require(len(t.points) == len(d.points), "tracked",
                    f"has {len(t.points)} point pairs but drag has {len(d.points)}; connect the 'tracked' output of "
                    f"the DragDiffusion node that used these instructions.")
        m = read_mask(mask, image_size=size)
        # One image at a time into the output (the batch's enlargement is bounded by preview.MAX_OUTPUT_PIXELS):
        # the peak is the output plus one frame, and each frame's PNG is written from its uint8 pixels.
        B, H, W = int(image.shape[0]), int(image.shape[1]), int(image.shape[2])
        k = preview.upscale_factor((W, H), int(min_size), batch=B)
        out = torch.empty(B, H * k, W * k, 3, dtype=torch.float32)
        shown = []
        for i in range(B):
            frame = np.array(preview.render(image[i], d, mask=m, tracked=t, k=k), dtype=np.uint8)
            out[i].copy_(torch.from_numpy(frame)).div_(255.0)
            shown += save_temp_png(frame, "dragedit_preview")
        return {"ui": {"images": shown}, "result": (out.to(image.device),)}


NODE_CLASS_MAPPINGS = {"DragEditDragPreview": DragPreview}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditDragPreview": NODE}
