"""The real-image example workflows (example_workflows/SD1.5 - *.json, SDXL - *.json) run through the real server and
executor on random-weight checkpoints written in the real single-file layout under the names the workflows ask for
(v1-5-pruned-emaonly.safetensors, sd_xl_base_1.0.safetensors): their wiring, widget values and ComfyUI's model
detection (SD1.5 / SDXL) are proven, not just their JSON. Only step counts and the image size are lowered for speed;
every other widget value is the workflow's own."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tools.support import examples, sd_checkpoints
from tools.support.comfy_server import ComfyServer
from tools.support.workflow_api import ui_to_api
from tools.sd_workflows import IMAGE

pytestmark = pytest.mark.slow

SIZE = 64                     # test image side (px): latents of 8 x 8

# Lowered for speed only (class_type -> inputs); each key must exist in the converted workflow.
FAST = {
    "ImageScale": {"width": SIZE, "height": SIZE},
    "DragEditRegionDrag": {"steps": 4},
    "DragEditDragDiffusion": {"steps": 4, "iterations": 1},
    "TrainLoraNode": {"steps": 1},
    "DragEditLEDITSEdit": {"steps": 4, "skip": 1, "warmup": 1},
    "DragEditDDIMInversion": {"steps": 4},
}
ARCH = {"sd15": ("sd15", sd_checkpoints.SD15_NAME, "SD1ClipModel", "BaseModel"),
        "sdxl": ("sdxl", sd_checkpoints.SDXL_NAME, "SDXLClipModel", "SDXL")}


@pytest.fixture(scope="module")
def sd_server(tmp_path_factory):
    """A server of its own (the checkpoints take GBs of memory once loaded: they leave with it) on a fresh base
    folder: its input/ holds only what the pack puts there when it loads; checkpoints are written on first use."""
    base = tmp_path_factory.mktemp("sd-base")
    srv = ComfyServer(base=base, extra_nodes=False).start()
    srv.written = set()
    yield srv
    srv.cleanup()


def _checkpoint(srv: ComfyServer, kind: str) -> None:
    if kind not in srv.written:
        sd_checkpoints.write_checkpoint(srv.base / "models" / "checkpoints" / ARCH[kind][1], kind)
        srv.written.add(kind)


def _prompt(srv: ComfyServer, name: str) -> dict:
    wf = json.loads(examples.path(name).read_text())
    prompt = ui_to_api(wf, srv.get("/object_info"))
    for node in prompt.values():
        for key, value in FAST.get(node["class_type"], {}).items():
            assert key in node["inputs"], f"{name}: {node['class_type']} has no input {key}"
            node["inputs"][key] = value
    return prompt


def _expected_outputs(name: str) -> int:
    """One image; the DragDiffusion workflows on a host whose Train LoRA takes no list input (0.3.64) runs once per item of
    the two-item list the workflow hands it (documented in the workflow's note), so it saves two."""
    if not name.endswith("_dragdiffusion"):
        return 1
    from tools.support.comfy_env import comfyui_path
    src = (comfyui_path() / "comfy_extras" / "nodes_train.py").read_text()
    cls = src[src.index("class TrainLoraNode"):]
    cls = cls[:cls.find("\nclass ", 1)] if "\nclass " in cls else cls
    return 1 if "is_input_list=True" in cls or "INPUT_IS_LIST = True" in cls else 2


# the real-image workflows on SD1.5 / SDXL checkpoints (the DiT ones: tests/server/test_dit_workflows.py)
REAL = [k for k in examples.EXAMPLES if not examples.is_demo(k) and k.startswith(("sd15_", "sdxl_"))]


def test_real_image_workflows_are_the_sd15_and_sdxl_ones():
    assert REAL == ["sd15_regiondrag", "sd15_dragdiffusion", "sd15_dragondiffusion", "sd15_ledits",
                    "sdxl_regiondrag", "sdxl_dragdiffusion", "sdxl_ledits"]


@pytest.mark.parametrize("name", REAL)
def test_real_image_workflow_runs(sd_server, name):
    kind = name.split("_")[0]
    _checkpoint(sd_server, kind)
    prompt = _prompt(sd_server, name)
    ckpts = [n["inputs"]["ckpt_name"] for n in prompt.values() if n["class_type"] == "CheckpointLoaderSimple"]
    assert ckpts == [ARCH[kind][1]]
    assert [n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage"] == [IMAGE]
    assert (sd_server.base / "input" / IMAGE).is_file()         # copied there by the pack when it loaded
    entry = sd_server.run_prompt(prompt, timeout=900)
    # ComfyUI's own detection (logged when Load Checkpoint first ran on the file; later runs use its cached output):
    # the text encoder it picked (SD1.5: CLIP-L alone; SDXL: CLIP-L + OpenCLIP bigG) and the UNet class.
    log = sd_server.log_path.read_text(errors="replace")
    assert f"Requested to load {ARCH[kind][2]}" in log, f"{name}: not loaded as {kind}:\n{log[-3000:]}"
    assert f"Requested to load {ARCH[kind][3]}" in log, f"{name}: not loaded as {kind}:\n{log[-3000:]}"
    files = [f for f in sd_server.output_images(entry) if "output" in f.parts]
    assert len(files) == _expected_outputs(name), files
    out = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float32)
    assert out.shape == (SIZE, SIZE, 3)
    assert np.isfinite(out).all()


def test_workflows_name_the_checkpoints_in_their_notes():
    """Each real-image workflow's note names the checkpoint it was made for and its resolution."""
    for name in REAL:
        path = examples.path(name)
        wf = json.loads(path.read_text())
        notes = " ".join(str(v) for n in wf["nodes"] if n["type"] in ("MarkdownNote", "Note")
                         for v in n.get("widgets_values") or [])
        ckpt = sd_checkpoints.SDXL_NAME if name.startswith("sdxl") else sd_checkpoints.SD15_NAME
        size = "1024" if name.startswith("sdxl") else "512"
        assert ckpt in notes and size in notes, path.name
