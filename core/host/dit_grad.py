"""Gradient passes and feature capture through a FLUX-type DiT, with "dit" replaces only (no class swap, no
forward_orig replacement).

FLUX's DoubleStreamBlock and SingleStreamBlock add their residuals in place (`img +=`, `txt +=`, `x +=` in
comfy/ldm/flux/layers.py), so backward w.r.t. the latent fails ("modified by an inplace operation"). The forwards
below are the same computations with out-of-place additions, installed as dit replaces for gradient passes; they use
the blocks' own sub-modules and ComfyUI's flux `attention` (RoPE + optimized_attention with the override), so
outputs match the stock blocks exactly. Each new ComfyUI block signature has to be tracked here (tests run on 0.3.64
and 0.3.75)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from . import dit
from .dit_kv import IMG_TOKENS, TXT_TOKENS, dit_replace, install_block_tags
from .errors import HostError
from .handle import SharedHandle


def _double_mods(block: torch.nn.Module, vec: Any) -> Any:
    """((img_mod1, img_mod2), (txt_mod1, txt_mod2)): the block's own Modulations of vec, or vec itself where the
    model passes them in (Chroma, FLUX.2: `modulation` False)."""
    if getattr(block, "modulation", True):
        return block.img_mod(vec), block.txt_mod(vec)
    return vec


def double_block_forward(block: torch.nn.Module, img: torch.Tensor, txt: torch.Tensor, vec: Any, pe: torch.Tensor,
                         attn_mask: Optional[torch.Tensor] = None, transformer_options: Optional[dict] = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX DoubleStreamBlock.forward with out-of-place residual additions: (img, txt)."""
    from comfy.ldm.flux.layers import apply_mod
    from comfy.ldm.flux.math import attention
    to = transformer_options if transformer_options is not None else {}
    (img_mod1, img_mod2), (txt_mod1, txt_mod2) = _double_mods(block, vec)
    img_m = apply_mod(block.img_norm1(img), (1 + img_mod1.scale), img_mod1.shift, None)
    img_qkv = block.img_attn.qkv(img_m)
    img_q, img_k, img_v = img_qkv.view(img_qkv.shape[0], img_qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)
    txt_m = apply_mod(block.txt_norm1(txt), (1 + txt_mod1.scale), txt_mod1.shift, None)
    txt_qkv = block.txt_attn.qkv(txt_m)
    txt_q, txt_k, txt_v = txt_qkv.view(txt_qkv.shape[0], txt_qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)
    if getattr(block, "flipped_img_txt", False):
        attn = attention(torch.cat((img_q, txt_q), 2), torch.cat((img_k, txt_k), 2), torch.cat((img_v, txt_v), 2),
                         pe=pe, mask=attn_mask, transformer_options=to)
        img_attn, txt_attn = attn[:, :img.shape[1]], attn[:, img.shape[1]:]
    else:
        attn = attention(torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2), torch.cat((txt_v, img_v), 2),
                         pe=pe, mask=attn_mask, transformer_options=to)
        txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
    img = img + apply_mod(block.img_attn.proj(img_attn), img_mod1.gate, None, None)
    img = img + apply_mod(block.img_mlp(apply_mod(block.img_norm2(img), (1 + img_mod2.scale), img_mod2.shift, None)),
                          img_mod2.gate, None, None)
    txt = txt + apply_mod(block.txt_attn.proj(txt_attn), txt_mod1.gate, None, None)
    txt = txt + apply_mod(block.txt_mlp(apply_mod(block.txt_norm2(txt), (1 + txt_mod2.scale), txt_mod2.shift, None)),
                          txt_mod2.gate, None, None)
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return img, txt


def single_block_forward(block: torch.nn.Module, x: torch.Tensor, vec: Any, pe: torch.Tensor,
                         attn_mask: Optional[torch.Tensor] = None, transformer_options: Optional[dict] = None
                         ) -> torch.Tensor:
    """FLUX SingleStreamBlock.forward with an out-of-place residual addition."""
    from comfy.ldm.flux.layers import apply_mod
    from comfy.ldm.flux.math import attention
    to = transformer_options if transformer_options is not None else {}
    mod = block.modulation(vec)[0] if getattr(block, "modulation", None) else vec
    hidden = block.hidden_size
    mlp_first = getattr(block, "mlp_hidden_dim_first", block.mlp_hidden_dim)
    qkv, mlp = torch.split(block.linear1(apply_mod(block.pre_norm(x), (1 + mod.scale), mod.shift, None)),
                           [3 * hidden, mlp_first], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = block.norm(q, k, v)
    attn = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=to)
    output = block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2))
    x = x + apply_mod(output, mod.gate, None, None)
    if x.dtype == torch.float16:
        x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


class OutOfPlaceBlock(SharedHandle):
    """dit replace running a FLUX block out of place (gradient passes); a replace that was there before runs with
    this forward as its original_block."""

    def __init__(self, kind: str, block: torch.nn.Module, prev: Optional[Callable] = None):
        self.kind, self.block, self.prev = kind, block, prev

    def _run(self, args: dict) -> dict:
        to = args.get("transformer_options")
        if self.kind == "double":
            img, txt = double_block_forward(self.block, args["img"], args["txt"], args["vec"], args["pe"],
                                            args.get("attn_mask"), to)
            return {"img": img, "txt": txt}
        return {"img": single_block_forward(self.block, args["img"], args["vec"], args["pe"], args.get("attn_mask"), to)}

    def __call__(self, args: dict, extra: dict) -> dict:
        if self.prev is not None:
            return self.prev(args, dict(extra, original_block=self._run))
        return self._run(args)


def patch_out_of_place(model: Any, blocks: Optional[Sequence[dit.DitBlock]] = None) -> Any:
    """Run `blocks` (default all) of a FLUX-type `model` (a clone) with out-of-place forwards."""
    if dit.kind_of(model) != dit.FLUX:
        raise HostError("out-of-place block forwards exist for FLUX-type models (FLUX, Chroma, Kontext)")
    dm = dit.diffusion_model(model)
    for b in (blocks if blocks is not None else dit.blocks(model)):
        mod = (dm.double_blocks if b.kind == "double" else dm.single_blocks)[b.index]
        cur = dit_replace(model, b)
        if isinstance(cur, OutOfPlaceBlock):
            continue
        model.set_model_patch_replace(OutOfPlaceBlock(b.kind, mod, cur), "dit", f"{b.kind}_block", b.index)
    install_block_tags(model)
    return model


class DitFeatureStore(SharedHandle):
    """Image-token hidden states captured at block outputs: features[(block_type, index)] = [B, n_img, hidden] (with
    grad when the call had grad); `grid` the token grid of the last call."""

    def __init__(self) -> None:
        self.features: dict[tuple[str, int], torch.Tensor] = {}

    def clear(self) -> None:
        self.features.clear()

    def grid_features(self, key: tuple[str, int], grid: tuple[int, int]) -> torch.Tensor:
        """Captured features of block `key` as an image [B, hidden, rows, cols]."""
        f = self.features[key]
        return f.transpose(1, 2).reshape(f.shape[0], f.shape[2], int(grid[0]), int(grid[1]))


class FeatureTap(SharedHandle):
    """dit replace: runs the block (the replace before it, or the stock block) and stores its image-token output."""

    def __init__(self, kind: str, index: int, store: DitFeatureStore, prev: Optional[Callable] = None):
        self.kind, self.index, self.store, self.prev = kind, int(index), store, prev

    def __call__(self, args: dict, extra: dict) -> dict:
        out = self.prev(args, extra) if self.prev is not None else extra["original_block"](args)
        to = args.get("transformer_options") or {}
        img = out["img"]
        n_txt = int(args["txt"].shape[1]) if self.kind == "double" else int(to.get(TXT_TOKENS, 0))
        lo = 0 if self.kind == "double" else n_txt
        n_img = int(to.get(IMG_TOKENS, img.shape[1] - lo))
        self.store.features[(self.kind, self.index)] = img[:, lo:lo + n_img]
        return out


def patch_dit_feature_capture(model: Any, store: DitFeatureStore, blocks: Sequence[dit.DitBlock]) -> Any:
    """Capture the image-token outputs of `blocks` of `model` (a clone) into `store` on every call."""
    for b in blocks:
        cur = dit_replace(model, b)
        model.set_model_patch_replace(FeatureTap(b.kind, b.index, store, cur), "dit", f"{b.kind}_block", b.index)
    install_block_tags(model)
    return model
