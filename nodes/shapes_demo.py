"""Shapes demo model nodes: "Shapes Demo Model" (MODEL, CLIP, VAE of the bundled tiny model; prompt it with the
stock CLIP Text Encode) and "Shapes Scene" (a seeded procedural scene as IMAGE plus its prompt)."""
from __future__ import annotations

from ..demo.shapes import dit as shapes_dit
from ..demo.shapes import model as shapes_model
from ..demo.shapes import renderer
from ..demo.shapes.prompt import COLOURS, KINDS
from ._errors import NodeInputError, node_entry
from ._ui import CATEGORY_DEMO, SEED_MAX, tooltips

NODE_MODEL = "Shapes Demo Model"
NODE_SCENE = "Shapes Scene"
DESIGNS = ("unet", "dit")


class ShapesDemoModel:
    DESCRIPTION = ("The bundled tiny text-to-image model trained on 32x32 scenes of coloured circles, squares and "
                   "triangles: runs on a laptop CPU in seconds. Prompt it with CLIP Text Encode using only the words "
                   f"{', '.join(COLOURS)}, {', '.join(KINDS)} and 'and' (e.g. 'red circle and blue square'). Images are "
                   "32x32 (Empty Latent Image 128x128 gives a 32x32 image, since that node assumes an 8x VAE); the VAE "
                   "is an exact 2x2 pixel-unshuffle, so VAE Encode -> VAE Decode returns the image unchanged.")
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("design unet: SD-style eps-prediction UNet (ComfyUI's own UNet class) with self- and "
                       "cross-attention at every level; dit: ComfyUI's FLUX class with flow-matching sampling.",
                       "Tiny prompt encoder: connect it to CLIP Text Encode.",
                       "Exact pixel-unshuffle VAE (3x32x32 image <-> 12x16x16 latent).")
    FUNCTION = "load"
    CATEGORY = CATEGORY_DEMO

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({"required": {}, "optional": {"design": (list(DESIGNS), {"default": "unet"})}}, {
            "design": "unet: the SD-style UNet (every method). dit: a FLUX-architecture flow-matching transformer "
                      "(2 double + 2 single blocks, 2x2 patches) for the methods that take DiTs (RegionDrag, the "
                      "flow inversions); its shapes are still blobs, its colours are right."})

    @node_entry(NODE_MODEL)
    def load(self, design: str = "unet"):
        if design not in DESIGNS:
            raise NodeInputError("design", f"must be one of {list(DESIGNS)}, got {design!r}.")
        if design == "dit":
            return self._load_dit()
        path = shapes_model.default_weights()
        try:
            model, clip, vae = shapes_model.load_demo(path, allow_random=False)
        except FileNotFoundError:
            raise NodeInputError("weights", f"the bundled weights file is missing ({path}); reinstall the "
                                 "pack or run `python -m tools.train_shapes` in its folder to recreate it.") from None
        except Exception as e:  # a damaged or foreign file
            raise NodeInputError("weights", f"could not load {path}: {e}") from None
        return (model, clip, vae)

    @staticmethod
    def _load_dit():
        path = shapes_dit.default_weights()
        if not path.exists():
            raise NodeInputError("design", f"the bundled DiT weights file is missing ({path}); reinstall the pack or "
                                 "run `python -m tools.train_shapes_dit` in its folder to recreate it.")
        try:
            return tuple(shapes_dit.load(path))
        except Exception as e:  # a damaged or foreign file
            raise NodeInputError("design", f"could not load {path}: {e}") from None


class ShapesScene:
    DESCRIPTION = ("Draws a seeded random scene of the kind the Shapes Demo Model was trained on (32x32, muted background "
                   "with a gentle gradient, one or two coloured shapes) and gives its prompt: a ready-made image to edit.")
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("IMAGE", "prompt")
    OUTPUT_TOOLTIPS = ("The scene as a 32x32 IMAGE.", "The scene's words, e.g. 'red circle and blue square'.")
    FUNCTION = "draw"
    CATEGORY = CATEGORY_DEMO

    @classmethod
    def INPUT_TYPES(cls):
        return tooltips({
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX}),
                "shapes": (["random", "1", "2"], {"default": "random"}),
            },
        }, {
            "seed": "Which scene: the same seed always draws the same scene.",
            "shapes": "Number of shapes in the scene ('random': one or two).",
        })

    @node_entry(NODE_SCENE)
    def draw(self, seed: int, shapes: str = "random"):
        if shapes not in ("random", "1", "2"):
            raise NodeInputError("shapes", f"must be 'random', '1' or '2', got {shapes!r}.")
        two_p = {"random": 0.5, "1": 0.0, "2": 1.0}[shapes]
        scene = renderer.random_scene(int(seed), two_p=two_p)
        img = renderer.render(scene).permute(1, 2, 0).unsqueeze(0).contiguous()
        return (img, renderer.prompt(scene))


NODE_CLASS_MAPPINGS = {"DragEditShapesDemoModel": ShapesDemoModel, "DragEditShapesScene": ShapesScene}
NODE_DISPLAY_NAME_MAPPINGS = {"DragEditShapesDemoModel": NODE_MODEL, "DragEditShapesScene": NODE_SCENE}
