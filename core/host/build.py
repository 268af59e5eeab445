"""Real ComfyUI models built from a UNet config (no checkpoint): the tiny test models and the shapes demo model."""
from __future__ import annotations

from typing import Any, Optional

import torch

from . import internals
from .errors import HostError


def init_weights_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Deterministic init by module type: ComfyUI layers skip init (torch.empty), so models built from
    config without a state dict hold garbage. Linear/Conv ~ N(0, std), norms weight 1 bias 0, other biases 0."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            w = getattr(m, "weight", None)
            b = getattr(m, "bias", None)
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if isinstance(w, torch.Tensor):
                    w.fill_(1.0)
                if isinstance(b, torch.Tensor):
                    b.zero_()
            elif isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)):
                if isinstance(w, torch.Tensor):
                    w.copy_(torch.randn(w.shape, generator=g) * std)
                if isinstance(b, torch.Tensor):
                    b.zero_()


def build_model(unet_config: dict, *, latent_format: Any = "sd15", prediction: str = "eps", sdxl: bool = False,
                state_dict: Optional[dict] = None, seed: int = 0, dtype: torch.dtype = torch.float32,
                init_std: float = 0.02, text_start_tokens: int = 1) -> Any:
    """Build a real ComfyUI model (model_base + ModelPatcher on the CPU) from a UNet config: the tiny test
    models and the shapes demo model. `latent_format` is "sd15", "sdxl" or a comfy LatentFormat class;
    `text_start_tokens`: start tokens its text encoder puts before the words (see `facts.text_start_tokens`)."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    lf = {"sd15": comfy.latent_formats.SD15, "sdxl": comfy.latent_formats.SDXL}.get(latent_format, latent_format) \
        if isinstance(latent_format, str) else latent_format
    cfg = dict(unet_config)
    cfg.setdefault("dtype", dtype)
    mc = internals.model_config(cfg, lf, text_start_tokens)
    mtype = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}[prediction]
    base_cls = comfy.model_base.SDXL if sdxl else comfy.model_base.BaseModel
    with torch.inference_mode(False):
        m = base_cls(mc, model_type=mtype, device="cpu")
        if state_dict is not None:
            missing, unexpected = m.diffusion_model.load_state_dict(state_dict, strict=False)
            if missing or unexpected:
                raise HostError(f"state dict does not fit the UNet config: missing {missing[:4]}, unexpected {unexpected[:4]}")
        else:
            init_weights_(m.diffusion_model, seed=seed, std=init_std)
        m.diffusion_model.to(dtype)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(m, load_device=cpu, offload_device=cpu)
