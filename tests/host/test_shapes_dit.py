"""The FLUX-architecture shapes demo model (demo/shapes/dit.py) and its trainer (tools/train_shapes_dit.py): the
model builds from config as ComfyUI's own Flux class, a weights file round-trips with its metadata, the MODEL runs
through ComfyUI's sampler on the CPU, the training target is what ComfyUI's FLUX sampling reads back, and a seeded run
is reproducible (also when resumed)."""
from __future__ import annotations

import comfy.ldm.flux.model
import comfy.model_base
import comfy.model_sampling
import comfy.sample
import torch
from safetensors.torch import load_file

from dragedit.demo.shapes import dit
from tools import train_shapes_dit as trainer


def test_builds_from_config_as_comfy_flux():
    model = dit.build_model(dit.design_of("dit-p2").config, shift=0.7)
    base = model.model
    assert isinstance(base, comfy.model_base.Flux)
    assert isinstance(dit.dit_of(model), comfy.ldm.flux.model.Flux)
    assert isinstance(base.model_sampling, comfy.model_sampling.ModelSamplingFlux)
    assert isinstance(base.model_sampling, comfy.model_sampling.CONST)
    assert base.model_sampling.shift == 0.7
    dm = dit.dit_of(model)
    assert dm.patch_size == 2 and len(dm.double_blocks) == 2 and len(dm.single_blocks) == 2
    assert not dm.params.guidance_embed and dm.params.qkv_bias
    n = sum(p.numel() for p in dm.parameters())
    assert 1.5e6 < n < 2.5e6, n


def test_flow_target_is_what_comfy_reads_back():
    """x_σ = σ·ε + (1 − σ)·x0, timestep σ, v = ε − x0: ComfyUI's denoised is x0 again."""
    ms = dit.build_model(dit.design_of("dit-p2").config).model.model_sampling
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 12, 16, 16, generator=g), torch.randn(2, 12, 16, 16, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    s = sigma.view(-1, 1, 1, 1)
    xt = s * eps + (1 - s) * x0
    assert torch.allclose(ms.noise_scaling(sigma, eps, x0), xt)
    assert torch.equal(ms.timestep(sigma), sigma)
    assert torch.allclose(ms.calculate_denoised(sigma, eps - x0, xt), x0, atol=1e-6)


def test_weights_round_trip_with_metadata(tmp_path):
    design = dit.design_of("dit-p2")
    model = dit.build_model(design.config, seed=3, init_std=0.05)
    sd = {k: v.clone() for k, v in dit.dit_of(model).state_dict().items()}
    enc = dit.PromptEncoder()
    path = tmp_path / "w.safetensors"
    dit.save_weights(sd, enc.state_dict(), path, {"design": design.name, "config": design.config, "shift": 0.6,
                                                  "steps": 7})
    meta = dit.read_meta(path)
    assert meta["format"] == dit.FORMAT and meta["design"] == "dit-p2" and meta["steps"] == "7"
    assert meta["config"] == design.config and float(meta["shift"]) == 0.6
    assert all(v.dtype == torch.float16 for v in load_file(str(path)).values())
    m2, clip, vae = dit.load(path)
    assert m2.model.model_sampling.shift == 0.6
    for k, v in dit.dit_of(m2).state_dict().items():
        assert torch.equal(v, sd[k].half().float()), k
    assert torch.equal(clip.encoder.tok.weight, enc.tok.weight.half().float())
    assert vae.latent_channels == 12


def test_model_runs_one_comfy_sampling_step(tmp_path):
    model = dit.build_model(dit.design_of("dit-p2").config, seed=1, init_std=0.05)
    with torch.no_grad():                    # adaLN-zero init outputs 0: give the output layer weights
        torch.nn.init.normal_(dit.dit_of(model).final_layer.linear.weight, std=0.05)
    clip = dit.ShapesDiTClip(dit.PromptEncoder())
    pos = clip.encode_from_tokens_scheduled(clip.tokenize("red circle"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    assert pos[0][1]["pooled_output"].shape == (1, 32)
    latent = torch.zeros(1, 12, 16, 16)
    noise = comfy.sample.prepare_noise(latent, 0)
    out = comfy.sample.sample(model, noise, 1, 2.0, "euler", "simple", pos, neg, latent, disable_pbar=True, seed=0)
    assert out.shape == (1, 12, 16, 16) and torch.isfinite(out).all()
    assert not torch.equal(out, noise)


def _args(out, *extra):
    return trainer.parse_args(["--out", str(out), "--design", "dit-p2", "--steps", "3", "--batch", "2", "--seed", "0",
                               "--warmup", "2", "--grid", "0", "--export-every", "0", "--val-every", "0",
                               "--log-every", "1", *extra])


def test_trainer_is_reproducible_and_resumes_exactly(tmp_path):
    trainer.train(_args(tmp_path / "a", "--ckpt-every", "0"))
    trainer.train(_args(tmp_path / "b", "--ckpt-every", "0"))
    trainer.train(_args(tmp_path / "c", "--ckpt-every", "1", "--stop-at", "2"))
    assert dit.read_meta(tmp_path / "c" / "dit-p2.safetensors")["steps"] == "2"
    trainer.train(_args(tmp_path / "c", "--ckpt-every", "1"))            # resumes at step 2 from train_state.pt
    a, b, c = (load_file(str(tmp_path / d / "dit-p2.safetensors")) for d in "abc")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    meta = dit.read_meta(tmp_path / "a" / "dit-p2.safetensors")
    assert meta["steps"] == "3" and meta["sigma_sampling"] == "logit-normal" and float(meta["shift"]) == dit.DEFAULT_SHIFT
    st = torch.load(tmp_path / "c" / trainer.STATE, weights_only=True)
    assert st["step"] == 3


def test_shipped_weights_and_the_developer_override(monkeypatch, tmp_path):
    """The node loads the shipped file (present, in this format) unless $DRAGEDIT_SHAPES_DIT_WEIGHTS names a
    candidate."""
    monkeypatch.delenv("DRAGEDIT_SHAPES_DIT_WEIGHTS", raising=False)
    assert dit.default_weights() == dit.WEIGHTS and dit.WEIGHTS.exists()
    assert dit.read_meta(dit.WEIGHTS)["format"] == dit.FORMAT
    monkeypatch.setenv("DRAGEDIT_SHAPES_DIT_WEIGHTS", str(tmp_path / "candidate.safetensors"))
    assert dit.default_weights() == tmp_path / "candidate.safetensors"
