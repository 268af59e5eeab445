"""The example workflows by short key (what demo/, bench/, tools/ and the tests call them: "regiondrag",
"sd15_ledits", ...) and their file names in example_workflows/.

The file name is what ComfyUI's template browser shows: frontends 1.32-1.58 title a custom node's template with its
file name (no title field, no index.json for custom nodes) and list them in the server's order (a directory listing,
unsorted); the pack's web/templates_order.js lists them alphabetically, so the names put the demo ones, which need
no download, first: "Demo - ...", then "FLUX.1-dev - ...", "SD1.5 - ...", "SD3.5 - ..." and "SDXL - ...". File names are not an API: saved workflows
embed the graph, not the file name (tests/data/saved_workflows keeps the frozen copies under their keys)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "example_workflows"

# key -> file name without extension (= the template browser's title)
EXAMPLES: dict[str, str] = {
    "regiondrag": "Demo - RegionDrag",
    "dragdiffusion": "Demo - DragDiffusion",
    "dragdiffusion_lora": "Demo - DragDiffusion + LoRA",
    "dragondiffusion_move": "Demo - DragonDiffusion move",
    "dragondiffusion_drag": "Demo - DragonDiffusion drag",
    "ledits": "Demo - LEDITS recolour",
    "shapes_dit_regiondrag": "Demo - RegionDrag on the demo DiT",
    "shapes_dit_ledits": "Demo - LEDITS recolour on the demo DiT",
    "sd15_regiondrag": "SD1.5 - RegionDrag",
    "sd15_dragdiffusion": "SD1.5 - DragDiffusion + LoRA",
    "sd15_dragondiffusion": "SD1.5 - DragonDiffusion move",
    "sd15_ledits": "SD1.5 - LEDITS add snow",
    "sdxl_regiondrag": "SDXL - RegionDrag",
    "sdxl_dragdiffusion": "SDXL - DragDiffusion + LoRA",
    "sdxl_ledits": "SDXL - LEDITS add snow",
    "flux_regiondrag": "FLUX.1-dev - RegionDrag",
    "flux_ledits": "FLUX.1-dev - LEDITS",
    "flux_flowedit": "FLUX.1-dev - FlowEdit",
    "sd35_regiondrag": "SD3.5 - RegionDrag",
}
DEMO_PREFIX = "Demo - "          # the workflows on the bundled Shapes Demo Model (nothing to download)


def file_name(key: str, ext: str = ".json") -> str:
    """The file name of example `key` ("regiondrag" -> "Demo - RegionDrag.json")."""
    if key not in EXAMPLES:
        raise KeyError(f"no example workflow {key!r}; known: {', '.join(EXAMPLES)}")
    return EXAMPLES[key] + ext


def path(key: str, ext: str = ".json", folder: Path = FOLDER) -> Path:
    """example_workflows/<file name of key><ext> (ext ".jpg": its template-browser thumbnail)."""
    return folder / file_name(key, ext)


def key_of(file: Path) -> str:
    """The key of an example workflow file (its path or name); KeyError for a file the table does not list."""
    stem = Path(file).name.rsplit(".", 1)[0]
    for key, name in EXAMPLES.items():
        if name == stem:
            return key
    raise KeyError(f"example_workflows/{Path(file).name} is not listed in tools/support/examples.py")


def is_demo(key: str) -> bool:
    """True for the workflows on the bundled Shapes Demo Model (no checkpoint needed)."""
    return EXAMPLES[key].startswith(DEMO_PREFIX)
