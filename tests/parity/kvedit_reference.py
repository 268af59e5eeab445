"""A port of KV-Edit's attention (Xilluill/KV-Edit, flux/modules/layers.py DoubleStreamBlock_kv / SingleStreamBlock_kv,
flux/math.py attention / apply_rope / apply_rope_qk, flux/model.py Flux_kv.forward), written for the parity test
only. It runs on a ComfyUI FLUX module's own sub-modules (BFL layer names: img_mod, img_attn.qkv, linear1, ...).

KV-Edit: during inversion ("inverse") every block caches the image tokens' K (after QK-norm, before RoPE) and V
per (step, block); while denoising only the foreground image tokens are fed (`mask_indices`), and each block attends
with keys / values [txt; cached image K/V with the foreground rows replaced by the current ones], queries rotated by
the foreground positions (`pe_mask`) and keys by the full image's."""
from __future__ import annotations

import torch
from einops import rearrange


def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    x_ = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[:, :, :x_.shape[2], :, :, 0] * x_[..., 0] + freqs[:, :, :x_.shape[2], :, :, 1] * x_[..., 1]
    return out.reshape(*x.shape).type_as(x)


def attention(q, k, v, pe, pe_q=None):
    """KV-Edit's attention: RoPE on q (with pe_q when given) and k (with pe), SDPA, heads merged."""
    q, k = _rope(q, pe if pe_q is None else pe_q), _rope(k, pe)
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return rearrange(x, "B H L D -> B L (H D)")


def double_block(blk, img, txt, vec, pe, info):
    img_mod1, img_mod2 = blk.img_mod(vec)
    txt_mod1, txt_mod2 = blk.txt_mod(vec)
    img_m = (1 + img_mod1.scale) * blk.img_norm1(img) + img_mod1.shift
    img_q, img_k, img_v = rearrange(blk.img_attn.qkv(img_m), "B L (K H D) -> K B H L D", K=3, H=blk.num_heads)
    img_q, img_k = blk.img_attn.norm(img_q, img_k, img_v)
    txt_m = (1 + txt_mod1.scale) * blk.txt_norm1(txt) + txt_mod1.shift
    txt_q, txt_k, txt_v = rearrange(blk.txt_attn.qkv(txt_m), "B L (K H D) -> K B H L D", K=3, H=blk.num_heads)
    txt_q, txt_k = blk.txt_attn.norm(txt_q, txt_k, txt_v)
    name = f"{info['t']}_{info['id']}_MB"
    q = torch.cat((txt_q, img_q), dim=2)
    if info["inverse"]:
        info["feature"][name + "_K"], info["feature"][name + "_V"] = img_k.clone(), img_v.clone()
        attn = attention(q, torch.cat((txt_k, img_k), 2), torch.cat((txt_v, img_v), 2), pe)
    else:
        sk, sv = info["feature"][name + "_K"].clone(), info["feature"][name + "_V"].clone()
        sk[:, :, info["mask_indices"], ...] = img_k
        sv[:, :, info["mask_indices"], ...] = img_v
        attn = attention(q, torch.cat((txt_k, sk), 2), torch.cat((txt_v, sv), 2), pe, pe_q=info["pe_mask"])
    txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
    img = img + img_mod1.gate * blk.img_attn.proj(img_attn)
    img = img + img_mod2.gate * blk.img_mlp((1 + img_mod2.scale) * blk.img_norm2(img) + img_mod2.shift)
    txt = txt + txt_mod1.gate * blk.txt_attn.proj(txt_attn)
    txt = txt + txt_mod2.gate * blk.txt_mlp((1 + txt_mod2.scale) * blk.txt_norm2(txt) + txt_mod2.shift)
    return img, txt


def single_block(blk, x, vec, pe, info, n_txt):
    mod, _ = blk.modulation(vec)
    x_mod = (1 + mod.scale) * blk.pre_norm(x) + mod.shift
    qkv, mlp = torch.split(blk.linear1(x_mod), [3 * blk.hidden_size, blk.mlp_hidden_dim], dim=-1)
    q, k, v = rearrange(qkv, "B L (K H D) -> K B H L D", K=3, H=blk.num_heads)
    q, k = blk.norm(q, k, v)
    name = f"{info['t']}_{info['id']}_SB"
    if info["inverse"]:
        info["feature"][name + "_K"], info["feature"][name + "_V"] = k[:, :, n_txt:].clone(), v[:, :, n_txt:].clone()
        attn = attention(q, k, v, pe)
    else:
        sk, sv = info["feature"][name + "_K"].clone(), info["feature"][name + "_V"].clone()
        sk[:, :, info["mask_indices"], ...] = k[:, :, n_txt:]
        sv[:, :, info["mask_indices"], ...] = v[:, :, n_txt:]
        attn = attention(q, torch.cat((k[:, :, :n_txt], sk), 2), torch.cat((v[:, :, :n_txt], sv), 2), pe,
                         pe_q=info["pe_mask"])
    return x + mod.gate * blk.linear2(torch.cat((attn, blk.mlp_act(mlp)), 2))


def forward(dm, img, img_ids, txt, txt_ids, timesteps, y, info):
    """Flux_kv.forward on ComfyUI's FLUX module `dm`: img holds every image token (inverse) or only the foreground
    ones (info["mask_indices"]); returns the final layer's output for the tokens fed."""
    from comfy.ldm.flux.layers import timestep_embedding
    img = dm.img_in(img)
    vec = dm.time_in(timestep_embedding(timesteps, 256)) + dm.vector_in(y)
    txt = dm.txt_in(txt)
    pe = dm.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
    n_txt = txt.shape[1]
    if not info["inverse"]:
        info["pe_mask"] = torch.cat((pe[:, :, :n_txt], pe[:, :, info["mask_indices"] + n_txt]), dim=2)
    for i, blk in enumerate(dm.double_blocks):
        info["id"] = i
        img, txt = double_block(blk, img, txt, vec, pe, info)
    x = torch.cat((txt, img), 1)
    for i, blk in enumerate(dm.single_blocks):
        info["id"] = i
        x = single_block(blk, x, vec, pe, info, n_txt)
    return dm.final_layer(x[:, n_txt:], vec)
