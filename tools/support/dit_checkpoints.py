"""Random-weight DiT checkpoint files in the real single-file key layouts, for tests and measurements that must go
through ComfyUI's own loaders and model detection without downloading weights.

- FLUX (`write_flux`): the diffusion-model file UNETLoader reads (BFL key layout, no prefix: double_blocks.N.*,
  single_blocks.N.*, img_in, txt_in, vector_in, guidance_in, ...). ComfyUI's detection fixes 24 heads, RoPE axes
  [16, 56, 56] and hence hidden 3072, context 4096 (T5-XXL) and pooled 768 (CLIP-L), so even one double block and no
  single block is 393.7 M parameters (~790 MB in bf16); a guidance_in layer makes it FLUX.1-dev (guidance-distilled).
- SD3 / SD3.5 (`write_sd3_checkpoint`): an all-in-one checkpoint like Comfy-Org's `sd3.5_*_incl_clips*` files, read by
  Load Checkpoint: a depth-2 MMDiT (hidden 128; detection takes depth = x_embedder width / 64) with SD3's real
  context (4096) and pooled (2048) widths under model.diffusion_model.*, CLIP-L under text_encoders.clip_l.* (its
  config is fixed: 123 M), and a 16-channel VAE under first_stage_model.* (fixed config: 84 M). SD3's text encoder
  runs with CLIP-L alone (context padded to 4096, pooled to 2048), so the workflow's own CLIP Text Encode nodes run.
  About 420 MB in fp16; T5-XXL (4.7 B, fixed config) is left out.
Keys and shapes come from ComfyUI's own modules built on the meta device; files are written tensor by tensor."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Callable

import torch

FLUX_DEV_NAME = "flux1-dev.safetensors"
SD35_NAME = "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors"

# What ComfyUI's detection derives from a FLUX.1 file whatever its size (comfy/model_detection.py, "flux").
FLUX_FIXED = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                  hidden_size=3072, mlp_ratio=4.0, num_heads=24, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True,
                  patch_size=2)

SD3_DEPTH = 2                 # hidden 64 * depth; detection reads depth from x_embedder
SD3_VAE_DDCONFIG = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}

_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}


def flux_config(depth: int = 1, depth_single: int = 0, guidance: bool = True) -> dict:
    """comfy.ldm.flux.model.Flux keyword arguments of a FLUX.1 file with `depth` double and `depth_single` single
    blocks (FLUX.1-dev: 19 + 38, guidance-distilled)."""
    return dict(FLUX_FIXED, depth=int(depth), depth_single_blocks=int(depth_single), guidance_embed=bool(guidance))


def flux_shapes(depth: int = 1, depth_single: int = 0, guidance: bool = True
                ) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Key -> (shape, dtype) of a FLUX.1 diffusion-model file (BFL layout, no prefix)."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    m = Flux(**flux_config(depth, depth_single, guidance), dtype=torch.bfloat16, device="meta",
             operations=comfy.ops.disable_weight_init)
    return {k: (v.shape, v.dtype) for k, v in m.state_dict().items()}


def flux_params(depth: int, depth_single: int, guidance: bool = True) -> int:
    """Parameters of such a FLUX (FLUX.1-dev: 11.9 B)."""
    return sum(math.prod(s) for s, _ in flux_shapes(depth, depth_single, guidance).values())


def write_flux(path: Path, depth: int = 1, depth_single: int = 0, guidance: bool = True, seed: int = 0,
               dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write a random-weight FLUX.1 diffusion-model file (the smallest ComfyUI detects by default: 1 double block)."""
    return write_safetensors(path, flux_shapes(depth, depth_single, guidance), dtype, seed, init=init_tiled,
                             note=f"random-weight FLUX.1 ({depth} double + {depth_single} single blocks) test file")


def _sd3_mmdit_meta(depth: int = SD3_DEPTH):
    """A depth-`depth` MMDiT with SD3's context / pooled widths, on the meta device (for its key layout)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
    hidden = 64 * depth
    return MMDiT(input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=depth, adm_in_channels=2048,
                 pos_embed_max_size=32, num_patches=1024,
                 context_embedder_config={"target": "torch.nn.Linear",
                                          "params": {"in_features": 4096, "out_features": hidden}},
                 dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init)


def vae16_shapes() -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Key -> (shape, dtype) of a 16-channel KL VAE without quant convs: the layout of FLUX's ae.safetensors and of
    SD3's VAE (the encoder / decoder config is fixed: 84 M parameters)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=dict(SD3_VAE_DDCONFIG), embed_dim=16)
    return {k: (v.shape, v.dtype) for k, v in vae.state_dict().items() if "quant_conv" not in k}


def write_flux_vae(path: Path, seed: int = 0) -> Path:
    """Write a random-weight VAE in the layout of FLUX's ae.safetensors (Load VAE reads it as a 16-channel VAE)."""
    return write_safetensors(path, vae16_shapes(), torch.float16, seed, note="random-weight 16-channel VAE")


def sd3_checkpoint_shapes() -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Key -> (shape, dtype) of the all-in-one SD3 checkpoint (tiny MMDiT + CLIP-L + 16-channel VAE), in the
    layout ComfyUI's own saving path writes (model_base.state_dict_for_saving, as CheckpointSave)."""
    import comfy.model_detection as md
    from comfy.text_encoders import sd3_clip
    meta = torch.device("meta")
    unet_sd = _sd3_mmdit_meta().state_dict()
    mc = md.model_config_from_unet(unet_sd, "")
    if mc is None or type(mc).__name__ not in ("SD3", "SD35"):
        raise RuntimeError(f"ComfyUI does not detect the tiny MMDiT as SD3 (got {type(mc).__name__})")
    mc.set_inference_dtype(torch.float16, None)
    model = mc.get_model({}, "", device=meta)
    clip = sd3_clip.SD3ClipModel(clip_l=True, clip_g=False, t5=False, device=meta, dtype=torch.float16)
    vae = {k: torch.empty(s, dtype=dt, device=meta) for k, (s, dt) in vae16_shapes().items()}
    sd = model.state_dict_for_saving(clip.state_dict(), vae)
    return {k: (v.shape, v.dtype) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def write_sd3_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write the all-in-one random-weight SD3 checkpoint (fp16, ~420 MB)."""
    return write_safetensors(path, sd3_checkpoint_shapes(), torch.float16, seed,
                             note="random-weight SD3 test checkpoint (tiny MMDiT, CLIP-L, VAE)")


def init_tensor(key: str, shape: torch.Size, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Deterministic random weights that keep activations bounded: norm weights / scales 1, other vectors 0,
    matrices N(0, 0.25 / fan_in); CLIP's logit scale log(100), integer buffers (position ids) 0..n-1."""
    if not dtype.is_floating_point:
        if not len(shape):
            return torch.zeros(shape, dtype=torch.int64)
        return torch.arange(shape[-1], dtype=torch.int64).expand(shape).contiguous()
    if key.endswith("logit_scale"):
        return torch.full(shape, math.log(100.0))
    if len(shape) <= 1:
        return (torch.ones if key.endswith(("weight", "scale")) else torch.zeros)(shape)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) * (0.5 / math.sqrt(fan_in))


_TILE = 1 << 20


def init_tiled(key: str, shape: torch.Size, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """`init_tensor`'s scales with one seeded block of 2^20 normal values repeated over each matrix: bounded,
    deterministic, and about 20x faster to write than fresh values for a file of hundreds of MB (for load and timing
    tests, where the weights' statistics do not matter)."""
    if not dtype.is_floating_point or len(shape) <= 1 or math.prod(shape) <= _TILE:
        return init_tensor(key, shape, dtype, g)
    block = torch.randn(_TILE, generator=g)
    n = math.prod(shape)
    reps = -(-n // _TILE)
    return (block.repeat(reps)[:n].reshape(shape)) * (0.5 / math.sqrt(math.prod(shape[1:])))


def write_safetensors(path: Path, shapes: dict[str, tuple[torch.Size, torch.dtype]], dtype: torch.dtype, seed: int,
                      note: str = "", init: Callable = init_tensor) -> Path:
    """Stream a safetensors file of `shapes` (floating tensors stored as `dtype`, integer ones as int64) tensor by
    tensor: one tensor in memory at a time. Written to a .part file, then renamed."""
    g = torch.Generator().manual_seed(int(seed))
    items = sorted(shapes.items())
    header: dict = {"__metadata__": {"format": "pt", "dragedit": note}}
    off = 0
    for k, (shape, dt) in items:
        st = dtype if dt.is_floating_point else torch.int64
        n = math.prod(shape) * st.itemsize
        header[k] = {"dtype": _DTYPES[st], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for k, (shape, dt) in items:
            t = init(k, shape, dt, g)
            t = t.to(dtype if dt.is_floating_point else torch.int64).contiguous()
            f.write(t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    tmp.replace(path)
    return path
