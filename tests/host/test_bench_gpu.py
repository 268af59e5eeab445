"""The GPU bench (bench/gpu.py) and its plumbing, on the CPU: the script runs end to end in tiny mode (so it cannot
rot), ComfyUI's own SD1.5 / SDXL layouts are what it builds, CUDA is opt-in and never a silent fallback, and the K/V
store's transfer options keep values and placement safe without a GPU. No timed asserts."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tools.support import tiny_models

from bench import _util, gpu


def test_real_layouts_come_from_comfyui():
    """SD1.5: 16 self-attention layers, 46.2 MB of fp16 K/V per step at 512²; SDXL: 70 layers, 419.4 MB at 1024²."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from dragedit.core import host
    from dragedit.core import regiondrag as rd
    for family, n_layers, side, per_step in (("sd15", 16, 64, 46_202_880), ("sdxl", 70, 128, 419_430_400)):
        unet = UNetModel(**_util.comfy_unet_config(family), device="meta")
        layers = host.attention_layers(SimpleNamespace(diffusion_model=unet))
        assert len(layers) == n_layers
        assert rd.kv_cache_bytes(layers, (side, side), 1, torch.float16) == per_step


@pytest.mark.slow
def test_gpu_bench_tiny_mode_runs_every_method(tmp_path):
    res = gpu.main(["--tiny", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["mode"].startswith("tiny")
    for family in ("sd15", "sdxl"):
        fam = res["families"][family]
        assert set(fam["methods"]) == {"RegionDrag", "DragDiffusion", "DragonDiffusion", "LEDITS (1 concept)"}
        for name, m in fam["methods"].items():
            assert m["unet_calls"] > 0, name
            assert m["s_per_edit"]["n"] == 1
        rd_calls = fam["methods"]["RegionDrag"]["unet_calls"]
        assert rd_calls == 4                                  # 4-step grid at strength 0.5: 2 inversion + 2 denoising
        kv = fam["kv"]
        assert kv["bytes_per_step_fp16"] > 0 and "offload" in kv["transfer"]
        assert kv["auto_placement_regiondrag"] == "cpu"       # no CUDA: the offload device, no pinning
    assert not res["skipped"]


def test_comfy_gpu_opt_in_is_loud_without_cuda(monkeypatch):
    from tools.support import comfy_env
    monkeypatch.delenv(comfy_env.GPU_ENV, raising=False)
    assert comfy_env.comfy_flags() == ["--cpu"]
    monkeypatch.setenv(comfy_env.GPU_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA"):
        comfy_env.comfy_flags()


def test_gpu_bench_refuses_cpu_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("DRAGEDIT_COMFY_GPU", "0")                  # restored (unset) after the test
    with pytest.raises(SystemExit, match="no CUDA"):
        gpu.main(["--families", "sd15"])


def test_kv_store_transfer_options_keep_values_on_cpu():
    """use_pinned_memory on a machine without CUDA is a no-op; put/get keep values and convert dtypes."""
    from dragedit.core import host
    store = host.KVStore(dtype=torch.float16).use_pinned_memory(True)
    assert store.pinned is torch.cuda.is_available()
    k, v = torch.randn(1, 16, 8), torch.randn(1, 16, 8)
    store.put(2.0, ("output", 1, 0), 0, k, v)
    store.synchronize()
    k2, v2 = store.get(2.0, ("output", 1, 0), 0, device="cpu", dtype=torch.float32)
    assert k2.dtype == torch.float32 and torch.allclose(k2, k.half().float()) and torch.allclose(v2, v.half().float())
    store.clear()
    host.release_pinned_memory()


def test_kv_placement_is_the_offload_device_without_cuda(monkeypatch):
    from dragedit.core import host
    model = tiny_models.sd15()
    assert host.kv_placement(model, 10 ** 9) == (torch.device("cpu"), False)
    monkeypatch.setenv(host.KV_PLACEMENT_ENV, "gpu")               # a CPU model ignores a GPU placement
    assert host.kv_placement(model, 10 ** 9) == (torch.device("cpu"), False)
