"""Node UI as the server reports it (/object_info): tooltips, menu, output names, seeds; Drag Instructions queued
alone, Drag Preview in the executor."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from tools.support.node_calls import run_node
from dragedit.core import preview
from dragedit.nodes.shapes_demo import ShapesScene


SEED_MAX = 0xFFFF_FFFF_FFFF_FFFF


DRAG_JSON = json.dumps({"version": 1, "image_size": [32, 32], "points": [{"handle": [11, 8], "target": [19, 8]}],
                        "regions": [{"kind": "rect", "handle": [[2, 20], [10, 28]], "target": [[20, 20], [28, 28]]}]})


POINT_JSON = json.dumps({"version": 1, "image_size": [32, 32], "points": [{"handle": [11, 8], "target": [19, 8]}],
                         "regions": []})


# ---------------------------------------------------------------------------------------------------- helpers
def _pack_nodes(info: dict) -> dict:
    """The /object_info entries of this pack's nodes."""
    from dragedit.nodes import NODE_CLASS_MAPPINGS
    return {k: v for k, v in info.items() if k in NODE_CLASS_MAPPINGS}


def _post(server, graph: dict, client_id: str, targets: list[str] | None = None) -> str:
    body = {"prompt": graph, "client_id": client_id}
    if targets is not None:
        body["partial_execution_targets"] = targets
    return server.post("/prompt", body)["prompt_id"]


def _wait(server, pid: str, timeout: float = 300.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        h = server.get(f"/history/{pid}")
        if pid in h and (h[pid].get("status", {}).get("completed") or
                         h[pid].get("status", {}).get("status_str") == "error"):
            assert h[pid]["status"]["status_str"] == "success", h[pid]["status"]
            return h[pid]
        time.sleep(0.2)
    raise TimeoutError(server.log()[-3000:])


def _scene_graph(drag_json: str = DRAG_JSON) -> dict:
    """Shapes model + scene -> Drag Instructions -> RegionDrag -> VAE Decode -> Save Image (ids as strings)."""
    return {
        "1": {"class_type": "DragEditShapesDemoModel", "inputs": {}},
        "2": {"class_type": "DragEditShapesScene", "inputs": {"seed": 2, "shapes": "1"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": ["2", 1], "clip": ["1", 1]}},
        "5": {"class_type": "DragInstructions", "inputs": {"image": ["2", 0], "drag_data": drag_json}},
        "6": {"class_type": "DragEditRegionDrag", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "drag": ["5", 0], "image": ["2", 0], "vae": ["1", 2],
            "mask": ["5", 1], "steps": 10, "strength": 0.5, "noise_scale": 0.6, "seed": 7}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": f"nodeui_{uuid.uuid4().hex[:6]}"}},
    }


async def _executed_messages(server, graph: dict, timeout: float = 300.0) -> list[dict]:
    """Queue `graph` with a websocket client and return the 'executed' messages it received (the frontend's path)."""
    import aiohttp
    cid = uuid.uuid4().hex
    got: list[dict] = []
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"ws://127.0.0.1:{server.port}/ws?clientId={cid}") as ws:
            pid = await asyncio.to_thread(_post, server, graph, cid)
            t0 = time.time()
            while time.time() - t0 < timeout:
                msg = await ws.receive(timeout=timeout)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                data = m.get("data", {})
                if data.get("prompt_id") != pid:
                    continue
                if m["type"] == "executed":
                    got.append(data)
                if m["type"] == "execution_error":
                    raise AssertionError(data)
                if m["type"] in ("execution_success",) or (m["type"] == "executing" and data.get("node") is None):
                    return got
    raise TimeoutError("no end of execution")


# ---------------------------------------------------------------------------------------------------- menu + sockets
@pytest.mark.slow
def test_every_input_and_output_has_a_tooltip(comfy_server):
    nodes = _pack_nodes(comfy_server.get("/object_info"))
    assert len(nodes) >= 17
    missing = []
    for name, spec in nodes.items():
        for section in ("required", "optional"):
            for inp, s in spec["input"].get(section, {}).items():
                opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
                if not str(opts.get("tooltip", "")).strip():
                    missing.append(f"{name} input {inp}")
        tips = spec.get("output_tooltips") or []
        for i, out in enumerate(spec["output_name"]):
            if i >= len(tips) or not str(tips[i] or "").strip():
                missing.append(f"{name} output {out}")
        assert spec.get("description"), name
    assert not missing, missing


@pytest.mark.slow
def test_menu_categories_output_names_and_seeds(comfy_server):
    nodes = _pack_nodes(comfy_server.get("/object_info"))
    cats = {k: v["category"] for k, v in nodes.items()}
    for k in ("DragEditRegionDrag", "DragEditDragDiffusion", "DragEditDragonDiffusion", "DragEditLEDITSEdit"):
        assert cats[k] == "DragEdit/all-in-one", (k, cats[k])
    for k in ("DragEditDDIMInversion", "DragEditDDPMInversion", "DragEditEditFriendlyDDPM", "DragEditSEGAGuidance",
              "DragEditLatentCopyPaste", "DragEditAttentionKVSwap", "DragEditMotionSupervision",
              "DragEditFeatureGuidance", "DragEditMemoryBankKV"):
        assert cats[k] == "DragEdit/building blocks", (k, cats[k])
    assert cats["DragEditShapesDemoModel"] == cats["DragEditShapesScene"] == "DragEdit/demo"
    assert cats["DragInstructions"] == cats["DragEditDragPreview"] == "DragEdit"
    for k, spec in nodes.items():
        # ComfyUI's convention: an output named after its type is spelled like the type (LATENT, not latent).
        for name, typ in zip(spec["output_name"], spec["output"]):
            assert not (name.lower() == str(typ).lower() and name != typ), (k, name, typ)
        for section in ("required", "optional"):
            for inp, s in spec["input"].get(section, {}).items():
                if "seed" in inp:
                    assert s[0] == "INT" and s[1]["min"] == 0 and s[1]["max"] == SEED_MAX, (k, inp, s)
    assert nodes["DragInstructions"]["output_node"] and nodes["DragEditDragPreview"]["output_node"]
    # IMAGE + VAE accepted wherever a node takes the image to edit as a LATENT (the all-in-ones).
    for k in ("DragEditRegionDrag", "DragEditDragDiffusion", "DragEditLEDITSEdit"):
        ins = {**nodes[k]["input"]["required"], **nodes[k]["input"].get("optional", {})}
        assert {"image", "vae", "latent"} <= set(ins), k


# ---------------------------------------------------------------------------------------------------- the editor's image
@pytest.mark.slow
def test_drag_instructions_queued_alone_gives_the_image_without_the_method(comfy_server):
    """'Queue Selected Output Nodes' on Drag Instructions (partial_execution_targets): its upstream runs, the
    method and Save Image do not, and the editor's image comes back in the node's UI output."""
    g = _scene_graph()
    pid = _post(comfy_server, g, uuid.uuid4().hex, targets=["5"])
    entry = _wait(comfy_server, pid)
    assert set(entry["outputs"]) == {"5"}, entry["outputs"]
    ref = entry["outputs"]["5"]["drag_image"][0]
    path = comfy_server.base / ref["type"] / ref["subfolder"] / ref["filename"]
    shown = np.asarray(Image.open(path).convert("RGB"))
    scene = run_node(ShapesScene, seed=2, shapes="1")[0]
    assert shown.shape == (32, 32, 3)
    assert np.abs(shown.astype(float) - scene[0].numpy() * 255).max() <= 1.0
    # The same node in the whole workflow, now cached: the method runs and the editor still gets its image.
    msgs = asyncio.run(_executed_messages(comfy_server, g))
    by_node = {m["node"]: m for m in msgs}
    assert "8" in by_node and "5" in by_node, sorted(by_node)
    assert by_node["5"]["output"]["drag_image"][0]["filename"] == ref["filename"]     # served from the cache
    # And a fully cached re-run (e.g. after a page reload) still sends it: nothing else would show the image.
    msgs = asyncio.run(_executed_messages(comfy_server, g))
    assert any(m["node"] == "5" and m["output"] and m["output"].get("drag_image") for m in msgs), msgs


@pytest.mark.slow
def test_drag_preview_in_the_executor_with_dragdiffusion_tracked_points(comfy_server):
    """Shapes scene -> Drag Instructions -> DragDiffusion fed IMAGE + VAE (a few iterations) -> its result and the
    tracked points drawn by Drag Preview, shown on the node and saved."""
    g = _scene_graph(POINT_JSON)
    del g["6"], g["7"], g["8"]
    g["6"] = {"class_type": "DragEditDragDiffusion", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "drag": ["5", 0], "image": ["2", 0], "vae": ["1", 2],
        "steps": 10, "strength": 0.5, "iterations": 3, "learning_rate": 0.01, "r_m": 1, "r_p": 3, "lam": 0.1,
        "feature_block": -2, "reference_kv": True}}
    g["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}
    g["9"] = {"class_type": "DragEditDragPreview", "inputs": {"image": ["7", 0], "drag": ["5", 0], "mask": ["5", 1],
                                                             "tracked": ["6", 1], "min_size": 256}}
    g["10"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "nodeui_preview"}}
    entry = comfy_server.run_prompt(g)
    shown = entry["outputs"]["9"]["images"]
    assert len(shown) == 1 and shown[0]["type"] == "temp"
    saved = [p for p in comfy_server.output_images(entry) if p.name.startswith("nodeui_preview")]
    im = np.asarray(Image.open(saved[0]).convert("RGB"))
    assert im.shape == (256, 256, 3)                         # 32 px x 8
    def near(x: float, y: float, colour) -> bool:      # the dot at image px (x, y), maybe partly under a ring
        win = im[int(y * 8) - 3:int(y * 8) + 4, int(x * 8) - 3:int(x * 8) + 4].astype(int)
        return bool((np.abs(win - np.array(colour)).sum(-1) == 0).any())
    assert near(11, 8, preview.HANDLE) and near(19, 8, preview.TARGET)
    assert (np.abs(im.astype(int) - np.array(preview.TRACKED)).sum(-1) == 0).any()   # the tracked handle
