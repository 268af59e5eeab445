"""Saved workflows keep loading and running: the frozen copies in tests/data/saved_workflows/ (see
tools/saved_workflows.py) still convert, against today's /object_info, to exactly the API prompts they gave when they
were saved (same node types, input names, widget order), and the API prompts run through the real executor."""
from __future__ import annotations

import pytest

from tools import saved_workflows as sw
from tools.support import examples
from tools.support.workflow_api import ui_to_api

NAMES = sw.names()
MODEL_FILE_LOADERS = {"CheckpointLoaderSimple", "UNETLoader", "DualCLIPLoader", "TripleCLIPLoader", "CLIPLoader",
                      "VAELoader"}
NEEDS_CHECKPOINT = {n for n in NAMES if any(v["class_type"] in MODEL_FILE_LOADERS
                                            for v in sw.load(sw.API, n).values())}


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


def test_every_example_is_frozen():
    """Each example workflow has a frozen UI copy and its API conversion (under its key, tools/support/examples.py)."""
    assert {examples.key_of(p) for p in (sw.ROOT / "example_workflows").glob("*.json")} <= set(NAMES)
    assert NAMES == sorted(p.stem for p in sw.API.glob("*.json"))


@pytest.mark.parametrize("name", NAMES)
def test_frozen_workflow_converts_as_saved(name, object_info):
    """Node types, their input names and widget order are an API: the frozen UI workflow converts against today's
    /object_info to the prompt it gave when saved, and every class and input it names exists today."""
    api = sw.load(sw.API, name)
    assert ui_to_api(sw.load(sw.UI, name), object_info) == api
    for node_id, node in api.items():
        info = object_info.get(node["class_type"])
        assert info is not None, (name, node_id, node["class_type"])
        known = {k for section in ("required", "optional") for k in (info["input"].get(section) or {})}
        assert set(node["inputs"]) <= known, (name, node_id, set(node["inputs"]) - known)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(NAMES) - NEEDS_CHECKPOINT))
def test_frozen_workflow_runs(name, comfy_server):
    """The frozen API prompt runs through the real executor (the Shapes Demo Model workflows; the SD1.5 / SDXL / FLUX /
    SD3.5 ones need model files: tests/server/test_sd_workflows.py and test_dit_workflows.py run them on random-weight
    ones). The LoRA workflow trains 3 steps and drags with 3 iterations: this checks that it loads and runs, not its
    quality."""
    prompt = sw.load(sw.API, name)
    for node in prompt.values():
        if node["class_type"] == "TrainLoraNode":
            node["inputs"]["steps"] = 3
        if name == "dragdiffusion_lora" and node["class_type"] == "DragEditDragDiffusion":
            node["inputs"].update(steps=10, iterations=3)
    history = comfy_server.run_prompt(prompt)
    assert history["status"]["completed"], history["status"]
