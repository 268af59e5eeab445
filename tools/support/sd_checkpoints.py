"""Random-weight single-file SD1.5 and SDXL checkpoints that ComfyUI's Load Checkpoint detects as SD1.5 / SDXL.

Written in the real single-file key layout (model.diffusion_model.*, first_stage_model.*, cond_stage_model.* for
SD1.5, conditioner.embedders.0/1.* for SDXL) by ComfyUI's own saving path (model_config.state_dict_for_saving, the
one CheckpointSave uses), so the example workflows made for v1-5-pruned-emaonly / sd_xl_base_1.0 can be run end to
end in tests without downloading weights.

What detection and loading fix (ComfyUI 0.3.64 / 0.3.75, comfy/model_detection.py, supported_models.py, sd.py):
- The UNet is matched on its config: SD15 needs model_channels 320 (the first conv's width), context_dim 768, conv
  proj_in and no ADM; SDXL needs model_channels 320, context_dim 2048, adm_in_channels 2816, linear proj_in and the
  input-block transformer depths [0, 0, 2, 2, 10, 10]. Everything else (channel_mult, decoder and middle depths,
  res blocks per level for SD1.5) is free, so the UNets here are as small as those rules allow: SD1.5 2 levels x
  1 res block at 320 channels (~40 M parameters); SDXL 3 levels at 320 channels with the 2+2+10+10 input
  transformers and one transformer per decoder block (~140 M).
- The text encoders are built from fixed JSON configs (CLIP-L 123 M, for SDXL also OpenCLIP bigG 695 M) and the VAE
  from a fixed config (84 M), whatever the file holds; missing weights would stay uninitialised. So they are written
  at full size. The files: SD1.5 ~0.5 GB, SDXL ~2 GB (fp16), generated in a few seconds.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

SD15_NAME = "v1-5-pruned-emaonly-fp16.safetensors"     # the name ComfyUI's own templates download
SDXL_NAME = "sd_xl_base_1.0.safetensors"

SD15_UNET = dict(
    in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 1], num_res_blocks=[1, 1],
    transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
    context_dim=768, use_linear_in_transformer=False, adm_in_channels=None, use_temporal_attention=False,
    use_temporal_resblock=False, use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False,
)

SDXL_UNET = dict(
    in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 1, 1], num_res_blocks=[2, 2, 2],
    transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],
    transformer_depth_middle=1, context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816,
    num_classes="sequential", use_temporal_attention=False, use_temporal_resblock=False, use_checkpoint=False,
    image_size=32, use_spatial_transformer=True, legacy=False,
)

VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _shapes(kind: str) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Key -> (shape, dtype) of a full single-file checkpoint, from ComfyUI's own modules built on the meta device
    and its own saving conversion (state_dict_for_saving)."""
    import comfy.supported_models as sm
    from comfy.ldm.models.autoencoder import AutoencoderKL

    cfg = (sm.SD15 if kind == "sd15" else sm.SDXL)(dict(SD15_UNET if kind == "sd15" else SDXL_UNET))
    cfg.set_inference_dtype(torch.float16, None)
    meta = torch.device("meta")
    model = cfg.get_model({}, "", device=meta)
    clip = cfg.clip_target().clip(device=meta, dtype=torch.float16, model_options={})
    with meta:
        vae = AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
    sd = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())
    return {k: (v.shape, v.dtype) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _init(key: str, shape: torch.Size, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Deterministic random weights that keep activations bounded: norms 1, biases 0, matrices N(0, 1/fan_in)."""
    if not dtype.is_floating_point:
        if not len(shape):
            return torch.zeros(shape, dtype=dtype)
        return torch.arange(shape[-1], dtype=dtype).expand(shape).contiguous()
    if key.endswith("logit_scale"):
        return torch.full(shape, math.log(100.0), dtype=torch.float16)
    if len(shape) <= 1:
        return (torch.ones if key.endswith("weight") else torch.zeros)(shape, dtype=torch.float16)
    fan_in = math.prod(shape[1:])
    return (torch.randn(shape, generator=g) * (0.5 / math.sqrt(fan_in))).to(torch.float16)


def write_checkpoint(path: Path, kind: str, seed: int = 0) -> Path:
    """Write a random-weight SD1.5 (kind "sd15") or SDXL ("sdxl") checkpoint to path (safetensors, fp16),
    streaming tensor by tensor so that only one is in memory at a time."""
    import json
    import struct
    g = torch.Generator().manual_seed(seed)
    shapes = sorted(_shapes(kind).items())
    header: dict = {"__metadata__": {"format": "pt", "dragedit": f"random-weight {kind} test checkpoint"}}
    off = 0
    for k, (shape, dtype) in shapes:
        dt = torch.float16 if dtype.is_floating_point else torch.int64
        n = math.prod(shape) * (2 if dt == torch.float16 else 8)
        header[k] = {"dtype": "F16" if dt == torch.float16 else "I64", "shape": list(shape),
                     "data_offsets": [off, off + n]}
        off += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for k, (shape, dtype) in shapes:
            t = _init(k, shape, dtype, g)
            t = t.to(torch.float16 if dtype.is_floating_point else torch.int64).contiguous()
            f.write(t.numpy().tobytes())
    tmp.replace(path)
    return path
