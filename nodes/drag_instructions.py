"""Node "Drag Instructions": image + the editor widget's JSON (or a script's JSON) -> DRAG and the editable MASK."""
from __future__ import annotations

from typing import Optional

import torch

from ..core.drag_schema import DragInstructions, DragSchemaError
from ._errors import NodeInputError, node_entry, require
from ._inputs import check_single_image, read_mask
from ._ui import CATEGORY, save_preview, tooltips

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
    FUNCTION = "run"           # build() + the image for the editor widget
    CATEGORY = CATEGORY
    # An output node, so that (1) "Queue Selected Output Nodes" on it runs only its upstream and shows the image in
    # the editor without running the method, and (2) a fully cached re-run still sends its "executed" UI message
    # (ComfyUI re-sends cached UI only for nodes in the execution list, i.e. output nodes and what they need).
    OUTPUT_NODE = True
    DESCRIPTION = ("Handle -> target point pairs, region pairs and an editable mask for the drag-editing nodes, "
                   "drawn on the image in the editor or given as JSON. To see an image that is not a Load Image "
                   "before running the method, select this node and use Queue Selected Output Nodes.")

    # run() returns build()'s outputs plus a "drag_image" UI message; the editor (web/drag_editor.js) shows that
    # image in onExecuted. A key other than "images" keeps the frontend from drawing a second preview under the node.
    @node_entry(NODE_NAME)
    def run(self, image: torch.Tensor, drag_data: str = "", mask: Optional[torch.Tensor] = None,
            drag_json: Optional[str] = None) -> dict:
        """Executor entry: build() plus the image this run used, for the editor widget."""
        drag, editable = self.build(image, drag_data, mask, drag_json)
        return {"ui": {"drag_image": save_preview(image)}, "result": (drag, editable)}

    @node_entry(NODE_NAME)
    def build(self, image: torch.Tensor, drag_data: str = "", mask: Optional[torch.Tensor] = None,
              drag_json: Optional[str] = None) -> tuple[DragInstructions, torch.Tensor]:
        """Parse + validate the JSON for this image; return (DRAG, editable MASK [1, H, W])."""
        W, H = check_single_image(image, "image")
        source, text = ("drag_json", drag_json) if drag_json is not None else ("drag_data", drag_data)
        require(isinstance(text, str), source, f"expected a JSON string, got {type(text).__name__}.")
        try:
            drag = DragInstructions.from_json(text, image_size=(W, H))
        except DragSchemaError as e:
            raise NodeInputError(source, str(e)) from None

        editable = read_mask(mask, image_size=(W, H))
        drawn = drag.mask_tensor()
        if drawn is not None and not drawn.any():
            drawn = None
        if editable is not None and drawn is not None:
            combined = editable * drawn
            require(bool(combined.any()), "mask",
                    f"the mask input and the mask drawn in the editor ({source}) do not overlap, so nothing is "
                    f"editable; clear one of them.")
            editable = combined
        elif drawn is not None:
            editable = drawn
        if editable is None:
            editable = torch.ones(H, W)
        editable = editable.to(torch.float32).clamp(0, 1)
        return drag, editable[None]


NODE_CLASS_MAPPINGS = {"DragInstructions": DragInstructionsNode}
NODE_DISPLAY_NAME_MAPPINGS = {"DragInstructions": NODE_NAME}
