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


# ---------------------------------------------------------------------- FLUX (bench/gpu_flux.py)
def _flux_dev_meta():
    """FLUX.1-dev's transformer (ComfyUI's Flux class, the detected config) on the meta device, as a MODEL stand-in."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    from bench import gpu_flux
    m = Flux(**gpu_flux.dev_config(), dtype=torch.bfloat16, device="meta", operations=comfy.ops.disable_weight_init)
    return SimpleNamespace(diffusion_model=m)


def test_flux_dev_layer_sets_and_kv_bytes_at_the_real_shapes():
    """FLUX.1-dev: 19 double + 38 single blocks; Stable Flow's vital layers are doubles 0, 1, 17, 18 and singles 6, 9,
    34, 35, 37 (25, 28, 53, 54, 56 in its 0..56 numbering); image-token K + V at 1024² in bf16 is 50.3 MB per layer
    per step: 2.87 GB for all 57 layers, 1.91 GB for the single blocks, 0.45 GB for the vital ones."""
    from bench import gpu_flux
    model = _flux_dev_meta()
    sets = gpu_flux.layer_sets(model, tiny=False)
    assert [len(v) for v in sets.values()] == [57, 38, 9]
    assert [(b.kind, b.index) for b in sets["vital"]] == [("double", i) for i in (0, 1, 17, 18)] + [
        ("single", i) for i in (6, 9, 34, 35, 37)]
    assert [b.order for b in sets["vital"]] == [0, 1, 17, 18, 25, 28, 53, 54, 56]
    per_layer = 2 * 64 * 64 * 3072 * 2
    got = {k: gpu_flux.kv_bytes_per_step(model, v, gpu_flux.DEV_LATENT) for k, v in sets.items()}
    assert got == {"all": 57 * per_layer, "single": 38 * per_layer, "vital": 9 * per_layer}


def test_flux_dev_memory_estimate_fits_an_80_gb_card():
    """The full run's estimate: 11.9 B parameters (23.8 GB of bf16 weights); the 14 inverted steps' K/V of all layers
    (40.2 GB) would still leave the card's 78 GB, and the vital set's (6.3 GB) fits beside the weights easily."""
    from bench import gpu_flux
    e = gpu_flux.estimate_gb()
    assert 11.8 < e["params_B"] < 12.0 and 23.6 < e["weights_GB"] < 24.0
    assert abs(e["kv_store_GB"]["all"] - 57 * 14 * 2 * 4096 * 3072 * 2 / 1e9) < 1e-9
    assert max(e["peak_if_store_on_gpu_GB"].values()) < e["fits_gpu_GB"]


def test_gpu_bench_tiny_flux_runs_every_layer_set(tmp_path):
    """--tiny --families flux: the FLUX section's code on a tiny FLUX on the CPU: each layer set records the K/V bytes
    the shapes say, injects them at every denoising call, and the edit stays finite."""
    res = gpu.main(["--tiny", "--families", "flux", "--repeats", "1", "--out", str(tmp_path), "--json", "g.json"])
    saved = json.loads((tmp_path / "g.json").read_text())
    fam = res["families"]["flux"]
    assert saved["families"]["flux"]["blocks"] == fam["blocks"] == {"double": 2, "single": 4}
    assert set(fam["layer_sets"]) == {"all", "single", "vital"}
    for name, r in fam["layer_sets"].items():
        assert r["finite"], name
        assert r["model_calls"] == 4                         # 4-step grid at strength 0.5: 2 inversion + 2 denoising
        assert r["steps_recorded"] == 2
        assert r["kv_bytes_per_step_measured"] == r["kv_bytes_per_step"] > 0
        assert r["inject_hits"] == 2 * r["layers"] and r["inject_misses"] == 0
        assert r["s_per_edit"]["n"] == 1
    assert fam["layer_sets"]["all"]["kv_bytes_per_step"] == fam["kv_bytes_per_step_all"]
    assert fam["layer_sets"]["vital"]["layers"] < fam["layer_sets"]["all"]["layers"]
    assert not res["skipped"]


@pytest.mark.slow
def test_flux_dev_build_path_runs_on_the_cpu():
    """The full run's own path, short of the GPU: FLUX.1-dev's detected config through ComfyUI's model class in bf16
    (here 1 double + 0 single blocks: 404 M parameters), init_ drawing the weights, then one edit on a small latent:
    K/V recorded and injected at every denoising call, a finite result."""
    import comfy.model_management as mm
    from bench import gpu_flux
    from dragedit.core.host import dit
    model, cfg = gpu_flux.build(False, blocks=(1, 0))
    try:
        dm = dit.diffusion_model(model)
        assert dm.hidden_size == 3072 and dm.params.guidance_embed and next(dm.parameters()).dtype == torch.bfloat16
        assert all(bool(torch.isfinite(p).all()) for p in dm.parameters())
        x = gpu_flux.inputs(cfg, tiny=False, small=True)
        res = gpu_flux.edit_fn(model, x, dit.blocks(model), 4, torch.bfloat16)()
        assert res["finite"] and res["steps_recorded"] == 2
        assert res["inject_hits"] == 2 and res["inject_misses"] == 0
    finally:
        mm.unload_all_models()
