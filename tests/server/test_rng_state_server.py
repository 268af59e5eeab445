"""No random state outlives a prompt through the pack's nodes (the "Noticed" item of issue 21's closing note): the
LoRA example's result differed when it ran after DragDiffusion in the same server. The cause: ComfyUI's Train LoRA
draws its training timesteps from the process's global torch RNG (its seed only seeds the LoRA init and the noise),
and the Shapes Demo Model node reseeded that global RNG whenever it loaded, which happened in a fresh server but not
after an earlier workflow had cached it. The pack's nodes now leave the global RNG as they found it; checked here on
the real server, with a test node that reports a digest of the global RNG state."""
from __future__ import annotations

import json
import time
import uuid

import pytest

from tools.support import examples
from tools.support.workflow_api import ui_to_api


def _digest(server, prompt: dict) -> tuple[set, dict]:
    """Run the prompt; (the RNG digests its probes reported, its history entry)."""
    entry = server.run_prompt(prompt)
    probes = {out["rng"][0] for out in entry["outputs"].values() if "rng" in out}
    assert probes, entry["outputs"]
    return probes, entry


def _probe(after: list | None = None) -> dict:
    node = {"class_type": "DragEditTestRNGState", "inputs": {"nonce": uuid.uuid4().int % 2**31}}
    if after:
        node["inputs"]["after"] = after
    return node


def _ran(entry: dict, node_id: str) -> bool:
    cached = [m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"]
    return not cached or node_id not in cached[0]


def _fresh_cache(server) -> None:
    """Drop the executor's caches (POST /free), so that the next prompt runs every node again."""
    server.post("/free", {"unload_models": True, "free_memory": True})
    time.sleep(2.0)


def test_shapes_demo_model_leaves_the_global_rng_alone(comfy_server):
    before, _ = _digest(comfy_server, {"p": _probe()})
    _fresh_cache(comfy_server)
    after, entry = _digest(comfy_server, {"m": {"class_type": "DragEditShapesDemoModel", "inputs": {}},
                                          "s": {"class_type": "DragEditShapesScene",
                                                "inputs": {"seed": 3, "shapes": "random"}},
                                          "p": _probe(after=["m", 0]),
                                          "q": _probe(after=["s", 0])})
    assert _ran(entry, "m"), "the Shapes Demo Model came from the cache: nothing was checked"
    assert after == before


@pytest.mark.slow
def test_regiondrag_example_leaves_the_global_rng_alone(comfy_server):
    """The RegionDrag example (pack nodes and ComfyUI's deterministic ones: no sampler seeding the global RNG)."""
    prompt = ui_to_api(json.loads(examples.path("regiondrag").read_text()), comfy_server.get("/object_info"))
    rd = next(k for k, v in prompt.items() if v["class_type"] == "DragEditRegionDrag")
    before, _ = _digest(comfy_server, {"p": _probe()})
    _fresh_cache(comfy_server)
    after, entry = _digest(comfy_server, {**prompt, "p": _probe(after=[rd, 0])})
    assert _ran(entry, rd)
    assert after == before
