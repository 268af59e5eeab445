"""Build diffusers twins of the tiny ComfyUI test UNets (same weights) for numerical cross-checks."""
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
