"""Node "Drag Instructions": image + the editor widget's JSON (or a script's JSON) -> DRAG and the editable MASK."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..core.drag_schema import DragInstructions, DragSchemaError
from ._common import CATEGORY, NodeInputError, check_mask, require, tooltips
from .temp_images import save_temp_png, to_uint8

NODE_NAME = "Drag Instructions"
EMPTY_DRAG_JSON = '{"version": 1, "points": [], "regions": []}'

TIPS = {
    "image": "The image to edit (one image, not a batch). Point and region coordinates are in its pixels.",
    "drag_data": "The editor's state as versioned JSON: point pairs {handle, target}, region pairs (rect or polygon), "
                 "optional run-length mask. Written by the editor on this node; a bare list [[hx, hy, tx, ty], ...] "
                 "also works. Coordinates are image pixels (x right, y down).",
    "mask": "Optional editable area (white = may change). Combined with a mask painted in the editor by "
            "intersection. An all-black mask counts as no mask (Load Image gives one for images without alpha).",
    "drag_json": "Optional JSON string from another node or a script, same schema as drag_data. When connected it "
                 "replaces the editor's drag_data.",
}
OUTPUT_TIPS = ("The drag instructions (points, regions, image size) for RegionDrag, DragDiffusion and "
               "DragonDiffusion.",
               "The editable mask at image size (1 = editable); all ones when none was drawn.")


class DragInstructionsNode:
    """Validate drag instructions against the image and emit them with the editable mask."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Image, the editor's JSON widget, optional mask and optional JSON input (all with tooltips)."""
        return tooltips({
            "required": {
                "image": ("IMAGE",),
                "drag_data": ("STRING", {"multiline": True, "default": EMPTY_DRAG_JSON, "dynamicPrompts": False}),
            },
            "optional": {
                "mask": ("MASK",),
                "drag_json": ("STRING", {"forceInput": True, "multiline": True, "dynamicPrompts": False}),
            },
        }, TIPS)

    RETURN_TYPES = ("DRAG", "MASK")
    RETURN_NAMES = ("DRAG", "MASK")
    OUTPUT_TOOLTIPS = OUTPUT_TIPS
    FUNCTION = "run"  # added by the web-editor engineer: run() = build() + the editor's image preview
    CATEGORY = CATEGORY
    # An output node, so that (1) "Queue Selected Output Nodes" on it runs only its upstream and shows the image in
    # the editor without running the method, and (2) a fully cached re-run still sends its "executed" UI message
    # (ComfyUI re-sends cached UI only for nodes in the execution list, i.e. output nodes and what they need).
    OUTPUT_NODE = True
    DESCRIPTION = ("Handle -> target point pairs, region pairs and an editable mask for the drag-editing nodes, "
                   "drawn on the image in the editor or given as JSON. To see an image that is not a Load Image "
                   "before running the method, select this node and use Queue Selected Output Nodes.")

    # Added for the web editor (web/drag_editor.js): the executor calls run(), which returns build()'s outputs
    # plus a "drag_image" UI message; the editor's onExecuted shows that image after a run. A key other than
    # "images" keeps the frontend from drawing a second preview under the node. build() is unchanged.
    def run(self, image: torch.Tensor, drag_data: str = "", mask: Optional[torch.Tensor] = None,
            drag_json: Optional[str] = None) -> dict:
        """Executor entry: build() plus the image this run used, for the editor widget."""
        drag, editable = self.build(image, drag_data, mask, drag_json)
        return {"ui": {"drag_image": save_preview(image)}, "result": (drag, editable)}

    def build(self, image: torch.Tensor, drag_data: str = "", mask: Optional[torch.Tensor] = None,
              drag_json: Optional[str] = None) -> tuple[DragInstructions, torch.Tensor]:
        """Parse + validate the JSON for this image; return (DRAG, editable MASK [1, H, W])."""
        W, H = check_single_image(image, NODE_NAME, "image")
        source, text = ("drag_json", drag_json) if drag_json is not None else ("drag_data", drag_data)
        require(isinstance(text, str), NODE_NAME, source, f"expected a JSON string, got {type(text).__name__}.")
        try:
            drag = DragInstructions.from_json(text, image_size=(W, H))
        except DragSchemaError as e:
            raise NodeInputError(NODE_NAME, source, str(e)) from None

        editable = _input_mask(mask, W, H)
        drawn = drag.mask_tensor()
        if drawn is not None and not drawn.any():
            drawn = None
        if editable is not None and drawn is not None:
            combined = editable * drawn
            require(bool(combined.any()), NODE_NAME, "mask",
                    f"the mask input and the mask drawn in the editor ({source}) do not overlap, so nothing is "
                    f"editable; clear one of them.")
            editable = combined
        elif drawn is not None:
            editable = drawn
        if editable is None:
            editable = torch.ones(H, W)
        editable = editable.to(torch.float32).clamp(0, 1)
        return drag, editable[None]


def check_single_image(image: Any, node: str, input_name: str) -> tuple[int, int]:
    """(W, H) of a ComfyUI IMAGE [1, H, W, C]; clear errors for a batch or a malformed tensor."""
    require(isinstance(image, torch.Tensor) and image.ndim == 4, node, input_name,
            f"expected an IMAGE tensor [B, H, W, C], got {_shape(image)}.")
    B, H, W, C = image.shape
    require(B >= 1 and H >= 1 and W >= 1, node, input_name, f"the image is empty ({_shape(image)}).")
    require(B == 1, node, input_name, f"a batch of {B} images was given; drag instructions describe one image. "
                                      f"Pick one with 'Image From Batch' (batch_index, length 1).")
    return int(W), int(H)


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _input_mask(mask: Any, W: int, H: int) -> Optional[torch.Tensor]:
    """The MASK input as float [H, W], or None when absent or all zero (no mask painted)."""
    if mask is None:
        return None
    m = check_mask(mask, NODE_NAME, "mask", image_size=(W, H))   # the pack's one mask rule
    return m if bool((m > 0).any()) else None


def save_preview(image: torch.Tensor, prefix: str = "dragedit_instructions") -> list[dict]:
    """Save image[0] as a PNG in ComfyUI's temp folder for the editor (nodes/temp_images.py); [{filename,
    subfolder, type}] or [] on failure."""
    try:
        return save_temp_png(to_uint8(image[0]), prefix)
    except Exception:
        return []


NODE_CLASS_MAPPINGS = {"DragInstructions": DragInstructionsNode}
NODE_DISPLAY_NAME_MAPPINGS = {"DragInstructions": NODE_NAME}
