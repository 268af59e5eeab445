"""Training of the shapes demo models (tools/train_shapes.py): the v2 designs train from a seed, export fp16 EMA
weights that name their design and step, continue from those weights alone (the multi-sitting CPU path), and draw
batch k as a pure function of (seed, k); the decoder-DC regulariser measures what it says."""
from __future__ import annotations

import torch

from dragedit.demo.shapes import model as shapes_model
from tools import train_shapes as shapes_train


def _args(out, *extra: str):
    return shapes_train.parse_args(["--arch", "v2-32", "--out", str(out), "--batch", "2", "--threads", "1",
                                    "--grid", "0", "--ckpt-every", "0", "--val-every", "1000", "--val-size", "8",
                                    "--log-every", "1", "--feature-dc", "0.1", *extra])


def test_v2_trains_exports_and_continues_from_its_fp16_weights(tmp_path):
    shapes_train.train(_args(tmp_path / "a", "--steps", "4", "--stop-at", "2", "--export-every", "1"))
    w = tmp_path / "a" / "shapes_v2-32.safetensors"
    meta = shapes_model.read_meta(w)
    assert meta["arch"] == "v2-32" and meta["steps"] == "2" and meta["feature_dc"] == "0.1"
    assert (tmp_path / "a" / "shapes_v2-32_step1.safetensors").exists()
    assert not (tmp_path / "a" / "train_state.pt").exists()             # nothing but the weights is needed
    model, clip, vae = shapes_model.load_demo(w, allow_random=False)
    assert shapes_model.arch_of_model(model).name == "v2-32"
    assert shapes_model.unet_of(model).input_blocks[0][0].weight.dtype == torch.float32

    shapes_train.train(_args(tmp_path / "b", "--steps", "4", "--stop-at", "3", "--init-from", str(w)))
    meta_b = shapes_model.read_meta(tmp_path / "b" / "shapes_v2-32.safetensors")
    assert meta_b["steps"] == "3"                                        # one more step on the same schedule


def test_batches_are_a_pure_function_of_seed_and_step():
    a = shapes_train.step_batch(0, 5, 3, 32, 0.1, 0.15)
    b = shapes_train.step_batch(0, 5, 3, 32, 0.1, 0.15)
    c = shapes_train.step_batch(0, 6, 3, 32, 0.1, 0.15)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (3, 12, 16, 16)
    assert shapes_train.step_batch(0, 5, 1, 64, 0.1, 0.15)[0].shape == (1, 12, 32, 32)


def test_decoder_dc_is_the_position_constant_share_of_the_energy():
    class Blk(torch.nn.Module):
        def forward(self, x):
            return x

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.output_blocks = torch.nn.ModuleList([torch.nn.Sequential(Blk())])

    net = Net()
    reg = shapes_train.DecoderDC(net)
    net.output_blocks[0](torch.ones(2, 4, 3, 3) * torch.arange(4.0).view(1, 4, 1, 1))   # constant over positions
    assert reg.take().tolist() == [1.0]
    x = torch.randn(1, 4, 8, 8)
    net.output_blocks[0](x - x.mean((2, 3), keepdim=True))                               # zero mean over positions
    assert float(reg.take().max()) < 1e-6
    reg.remove()
    assert not net.output_blocks[0][0]._forward_hooks


def test_every_design_builds_and_names_itself():
    for name, arch in shapes_model.ARCHS.items():
        model, _, _ = shapes_model.build(None, None, arch=name)
        assert shapes_model.arch_of_model(model) is arch
        out = shapes_model.unet_of(model)(torch.zeros(1, 12, arch.latent_size, arch.latent_size),
                                          timesteps=torch.tensor([10.0]), context=torch.zeros(1, 4, 32))
        assert out.shape == (1, 12, arch.latent_size, arch.latent_size)


def test_a_seeded_run_is_reproducible(tmp_path):
    for d in ("a", "b"):
        shapes_train.train(_args(tmp_path / d, "--steps", "2"))
    from safetensors.torch import load_file
    a, b = (tmp_path / d / "shapes_v2-32.safetensors" for d in ("a", "b"))
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert shapes_model.read_meta(a) == shapes_model.read_meta(b)   # (the file's header order may differ)


def test_gpu_training_script_refuses_without_cuda(tmp_path):
    """The prepared GPU command (tools/train_v2_gpu.sh) stops with a clear message where there is no CUDA device."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would train")
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(["bash", str(root / "tools" / "train_v2_gpu.sh")], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PY=sys.executable, OUT=str(tmp_path)))
    assert r.returncode != 0 and "no CUDA device" in r.stderr + r.stdout


def test_the_committed_v2_candidate_loads_and_names_its_step():
    """demo/shapes/weights/shapes_v2-32.safetensors: what a later sitting continues from (make train-v2 INIT=...)."""
    w = shapes_model.WEIGHTS.parent / shapes_train.weights_name("v2-32")
    meta = shapes_model.read_meta(w)
    assert meta["arch"] == "v2-32" and int(meta["steps"]) >= 3000 and meta["data"] == "per-step"
    model, _, _ = shapes_model.load_demo(w, allow_random=False)
    assert shapes_model.arch_of_model(model).name == "v2-32"
    total = sum(p.stat().st_size for p in shapes_model.WEIGHTS.parent.glob("*.safetensors"))
    assert total < 32e6                                                  # the budget for committed weights


def test_resumes_from_its_training_state_loaded_as_plain_data(tmp_path):
    """<out>/train_state.pt (parameters, EMA, optimizer, RNG states, history) loads with torch.load(weights_only=True):
    a resumed run ends where an uninterrupted one does."""
    shapes_train.train(_args(tmp_path / "a", "--steps", "3", "--ckpt-every", "1", "--stop-at", "2"))
    assert (tmp_path / "a" / "train_state.pt").exists()
    shapes_train.train(_args(tmp_path / "a", "--steps", "3", "--ckpt-every", "1"))
    shapes_train.train(_args(tmp_path / "b", "--steps", "3"))
    from safetensors.torch import load_file
    wa, wb = (load_file(str(tmp_path / d / "shapes_v2-32.safetensors")) for d in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
