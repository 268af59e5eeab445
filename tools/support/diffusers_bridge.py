"""Build diffusers twins of the tiny ComfyUI test models (UNet, FLUX; same weights) for numerical cross-checks."""
from __future__ import annotations


from . import tiny_models


def sd15_unet_twin(model):
    """A diffusers UNet2DConditionModel with the weights of the tiny SD1.5-shaped ComfyUI model."""
    import comfy.utils
    from diffusers import UNet2DConditionModel

    cfg = tiny_models.SD15_UNET
    unet = UNet2DConditionModel(
        sample_size=cfg["image_size"], in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cfg["context_dim"],
        attention_head_dim=cfg["num_heads"], use_linear_projection=True, norm_num_groups=32,
    )
    key_map = comfy.utils.unet_to_diffusers(dict(cfg))
    comfy_sd = model.model.diffusion_model.state_dict()
    sd = {}
    for dk, ck in key_map.items():
        if ck in comfy_sd:
            sd[dk] = comfy_sd[ck].detach().clone().float()
    missing, unexpected = unet.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    return unet.eval()


def flux_twin(model):
    """A diffusers FluxTransformer2DModel with the weights of a tiny ComfyUI FLUX built from config
    (tiny_models.flux: 2 x 2 patches, no guidance embedding), mapped by comfy.utils.flux_to_diffusers. It works on
    packed latents [B, (H/2)(W/2), C·4] (`pack` / `unpack`)."""
    import comfy.utils
    from diffusers import FluxTransformer2DModel

    dm = model.model.diffusion_model
    p = dm.params
    hidden = int(p.hidden_size)
    twin = FluxTransformer2DModel(
        patch_size=1, in_channels=int(p.in_channels) * 4, out_channels=None, num_layers=int(p.depth),
        num_single_layers=int(p.depth_single_blocks), attention_head_dim=hidden // int(p.num_heads),
        num_attention_heads=int(p.num_heads), joint_attention_dim=int(p.context_in_dim),
        pooled_projection_dim=int(p.vec_in_dim), guidance_embeds=bool(p.guidance_embed),
        axes_dims_rope=tuple(int(a) for a in p.axes_dim))
    key_map = comfy.utils.flux_to_diffusers({"depth": int(p.depth), "depth_single_blocks": int(p.depth_single_blocks),
                                             "hidden_size": hidden})
    comfy_sd = {k: v.detach().float() for k, v in dm.state_dict().items()}
    sd = {}
    for dk, t in key_map.items():
        if isinstance(t, str):
            if t in comfy_sd:
                sd[dk] = comfy_sd[t].clone()
        elif t[0] in comfy_sd:
            w = comfy_sd[t[0]]
            if t[1] is not None:
                dim, start, n = t[1]
                w = w.narrow(dim, start, n)
            if len(t) > 2:
                w = t[2](w)
            sd[dk] = w.clone()
    missing, unexpected = twin.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    return twin.eval()


def pack(x):
    """[B, C, H, W] -> diffusers FLUX's packed [B, (H/2)(W/2), C·4] (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x, h, w):
    """Inverse of `pack` for a latent of H x W."""
    b, n, d = x.shape
    c = d // 4
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def flux_ids(h, w, tokens):
    """(img_ids [(H/2)(W/2), 3], txt_ids [tokens, 3]) as FluxPipeline makes them: (0, row, column) per image token."""
    import torch
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3), torch.zeros(tokens, 3)
