"""Feature layers pinned on UNets built from the real SD1.5 and SDXL configs (random weights: layer identity only).

The tiny test UNets have two or three levels, so they cannot tell SD1.5's up_blocks[0..1] from [1..2]. Here the
UNets have the real layouts (ComfyUI's comfy/model_detection.py configs): on SD1.5 the pack's DragonDiffusion
`feature_blocks` give exactly the outputs of diffusers' up_blocks[1] and up_blocks[2] (the official
DragonDiffusion `up_ft_index = [1, 2]`) and DragDiffusion's default `feature_block` gives up_blocks[2] (the official
`unet_feature_idx = [3]` of [mid, up_0, up_1, up_2, ...]), compared on a diffusers twin with the same weights; on
SDXL (no official code) the same widths and resolutions: 1280 channels at 1/2 and 640 at the latent resolution.
"""
from __future__ import annotations

import gc

import pytest
import torch

from dragedit.core import dragdiffusion as ddf
from dragedit.core import dragondiffusion as dd
from dragedit.core import host

SD15 = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
        "use_temporal_resblock": False}
SDXL = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
        "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
        "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False, "use_temporal_resblock": False}


def _blocks(model, idx):
    """(channels, level) of output blocks idx (level 1 = latent resolution)."""
    by = {b.index: b for b in host.decoder_blocks(model)}
    return [(by[i].channels, by[i].level) for i in idx]


@pytest.mark.slow
def test_sd15_feature_layers_are_the_official_up_blocks():
    pytest.importorskip("diffusers")
    import comfy.utils
    from diffusers import UNet2DConditionModel
    model = host.build_model(SD15, latent_format="sd15", prediction="eps", seed=0, init_std=0.02)
    assert dd.feature_blocks(model) == [5, 8]
    assert ddf.feature_block_index(model, ddf.DragSettings().feature_block) == 8
    assert _blocks(model, [5, 8]) == [(1280, 2), (640, 1)]
    # the twin: diffusers' SD1.5 layout with the same weights; up-block outputs = the captured output blocks
    twin = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
    dm = model.model.diffusion_model
    csd = dm.state_dict()
    sd = {dk: csd[ck] for dk, ck in comfy.utils.unet_to_diffusers(dict(SD15)).items() if ck in csd}
    missing, unexpected = twin.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing[:4], unexpected[:4])
    twin.eval()
    g = torch.Generator().manual_seed(0)
    z, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 8, 768, generator=g)
    t = torch.tensor([500.0])
    got_c, got_d = {}, {}
    # ComfyUI runs each output block's layers one by one (forward_timestep_embed): the block's output is its last
    # layer's output
    hooks = [dm.output_blocks[i][-1].register_forward_hook(lambda _m, _a, o, i=i: got_c.__setitem__(i, o))
             for i in range(len(dm.output_blocks))]
    hooks += [twin.up_blocks[k].register_forward_hook(lambda _m, _a, o, k=k: got_d.__setitem__(k, o))
              for k in range(len(twin.up_blocks))]
    with torch.no_grad():
        dm(z, timesteps=t, context=ctx)
        twin(z, t, encoder_hidden_states=ctx)
    for hk in hooks:
        hk.remove()
    for k, b in zip((1, 2), dd.feature_blocks(model)):         # DragonDiffusion: up_ft_index [1, 2]
        torch.testing.assert_close(got_c[b], got_d[k], rtol=1e-3, atol=1e-3 * float(got_d[k].abs().max()))
    # DragDiffusion: unet_feature_idx 3 of [mid, up_0, up_1, up_2] = up_blocks[2]
    b = ddf.feature_block_index(model, ddf.DragSettings().feature_block)
    torch.testing.assert_close(got_c[b], got_d[2], rtol=1e-3, atol=1e-3 * float(got_d[2].abs().max()))
    # the neighbours differ (the pin tells the levels apart)
    assert got_c[2].shape[-1] != got_d[1].shape[-1] and got_c[11].shape[1] != got_d[2].shape[1]
    del model, twin, dm, csd, sd
    gc.collect()


@pytest.mark.slow
def test_sdxl_feature_layers_have_the_sd15_widths_and_resolutions():
    model = host.build_model(SDXL, latent_format="sdxl", prediction="eps", sdxl=True, seed=0, dtype=torch.bfloat16)
    assert host.up_block_outputs(model) == [2, 5, 8]
    assert dd.feature_blocks(model) == [2, 5]
    assert _blocks(model, [2, 5]) == [(1280, 2), (640, 1)]
    assert ddf.feature_block_index(model, ddf.DragSettings().feature_block) == 5
    del model
    gc.collect()
