"""Test-only ports of the official flow editing code, run on diffusers' FluxTransformer2DModel (the tiny ComfyUI
FLUX's twin, tools/support/diffusers_bridge.flux_twin), in its packed token space:

- `flowedit_flux`: fallenshock/FlowEdit FlowEdit_utils.py `FlowEditFLUX`, the loop from `zt_edit = x_src_packed` to
  its return (the prompt encoding, pipeline checks and the scheduler's timestep set-up are replaced by given
  embeddings and the sigma grid; `noise()` stands for `torch.randn_like(x_src_packed)`);
- `flux_sega`: diffusers examples/community/pipeline_flux_semantic_guidance.py `FluxSemanticGuidancePipeline.__call__`
  denoising loop (section "6. Denoising loop" with FlowMatchEulerDiscreteScheduler.step = an Euler step on the
  given sigmas), text embeddings given.
Written from the fetched sources; the structure and names follow them so that a reader can compare line by line."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch


def calc_v_flux(transformer, latents, prompt_embeds, pooled_prompt_embeds, guidance, text_ids, latent_image_ids, t):
    """FlowEdit_utils.calc_v_flux with t the sigma (its `timestep / 1000`)."""
    timestep = torch.as_tensor(t, dtype=latents.dtype).reshape(1).expand(latents.shape[0])
    with torch.no_grad():
        return transformer(hidden_states=latents, timestep=timestep, guidance=guidance,
                           encoder_hidden_states=prompt_embeds, txt_ids=text_ids, img_ids=latent_image_ids,
                           pooled_projections=pooled_prompt_embeds, joint_attention_kwargs=None, return_dict=False)[0]


@torch.no_grad()
def flowedit_flux(transformer, x_src_packed, sigmas: Sequence[float], src: tuple, tar: tuple, latent_image_ids,
                  noise: Callable[[], torch.Tensor], T_steps: int, n_avg: int = 1, n_min: int = 0, n_max: int = 24):
    """FlowEditFLUX's loop. src / tar = (prompt_embeds, pooled_prompt_embeds, text_ids, guidance)."""
    src_prompt_embeds, src_pooled_prompt_embeds, src_text_ids, src_guidance = src
    tar_prompt_embeds, tar_pooled_prompt_embeds, tar_text_ids, tar_guidance = tar
    zt_edit = x_src_packed.clone()
    for i in range(T_steps):
        if T_steps - i > n_max:
            continue
        t_i = float(sigmas[i])
        t_im1 = float(sigmas[i + 1])
        if T_steps - i > n_min:
            V_delta_avg = torch.zeros_like(x_src_packed)
            for k in range(n_avg):
                fwd_noise = noise()
                zt_src = (1 - t_i) * x_src_packed + (t_i) * fwd_noise
                zt_tar = zt_edit + zt_src - x_src_packed
                Vt_src = calc_v_flux(transformer, zt_src, src_prompt_embeds, src_pooled_prompt_embeds, src_guidance,
                                     src_text_ids, latent_image_ids, t_i)
                Vt_tar = calc_v_flux(transformer, zt_tar, tar_prompt_embeds, tar_pooled_prompt_embeds, tar_guidance,
                                     tar_text_ids, latent_image_ids, t_i)
                V_delta_avg += (1 / n_avg) * (Vt_tar - Vt_src)
            zt_edit = zt_edit.to(torch.float32)
            zt_edit = zt_edit + (t_im1 - t_i) * V_delta_avg
        else:
            if i == T_steps - n_min:
                fwd_noise = noise()
                xt_src = t_i * fwd_noise + (1.0 - t_i) * x_src_packed      # scale_noise
                xt_tar = zt_edit + xt_src - x_src_packed
            Vt_tar = calc_v_flux(transformer, xt_tar, tar_prompt_embeds, tar_pooled_prompt_embeds, tar_guidance,
                                 tar_text_ids, latent_image_ids, t_i)
            xt_tar = xt_tar.to(torch.float32)
            prev_sample = xt_tar + (t_im1 - t_i) * (Vt_tar)
            xt_tar = prev_sample
    return zt_edit if n_min == 0 else xt_tar


@torch.no_grad()
def flux_sega(transformer, latents, sigmas: Sequence[float], prompt: tuple, editing: list[tuple],
              latent_image_ids, *, negative: Optional[tuple] = None, true_cfg_scale: float = 1.0,
              reverse_editing_direction=False, edit_guidance_scale=5, edit_warmup_steps=10, edit_cooldown_steps=None,
              edit_threshold=0.9, edit_momentum_scale=0.1, edit_mom_beta=0.4, edit_weights=None,
              on_step: Optional[Callable[[int, torch.Tensor], None]] = None):
    """FluxSemanticGuidancePipeline's denoising loop; prompt / negative / editing[c] = (prompt_embeds,
    pooled_prompt_embeds, text_ids). Returns the final packed latents; on_step(i, latents) after each step."""
    device = latents.device
    prompt_embeds, pooled_prompt_embeds, text_ids = prompt
    num_inference_steps = len(sigmas) - 1
    enabled_editing_prompts = len(editing)
    enable_edit_guidance = enabled_editing_prompts > 0
    do_true_cfg = true_cfg_scale > 1 and negative is not None
    edit_momentum = None
    if edit_warmup_steps:
        tmp_e_warmup_steps = edit_warmup_steps if isinstance(edit_warmup_steps, list) else [edit_warmup_steps]
        min_edit_warmup_steps = min(tmp_e_warmup_steps)
    else:
        min_edit_warmup_steps = 0
    if edit_cooldown_steps:
        tmp_e_cooldown_steps = edit_cooldown_steps if isinstance(edit_cooldown_steps, list) else [edit_cooldown_steps]
        max_edit_cooldown_steps = min(max(tmp_e_cooldown_steps), num_inference_steps)
    else:
        max_edit_cooldown_steps = num_inference_steps
    guidance = None
    for i in range(num_inference_steps):
        t = float(sigmas[i])
        noise_pred = calc_v_flux(transformer, latents, prompt_embeds, pooled_prompt_embeds, guidance, text_ids,
                                 latent_image_ids, t)
        if enable_edit_guidance and max_edit_cooldown_steps >= i >= min_edit_warmup_steps:
            noise_pred_edit_concepts = []
            for e_embed, pooled_e_embed, e_text_id in editing:
                noise_pred_edit_concepts.append(calc_v_flux(transformer, latents, e_embed, pooled_e_embed, guidance,
                                                            e_text_id, latent_image_ids, t))
        if do_true_cfg:
            noise_pred_uncond = calc_v_flux(transformer, latents, negative[0], negative[1], guidance, text_ids,
                                            latent_image_ids, t)
            noise_guidance = true_cfg_scale * (noise_pred - noise_pred_uncond)
        else:
            noise_pred_uncond = noise_pred
            noise_guidance = noise_pred
        if edit_momentum is None:
            edit_momentum = torch.zeros_like(noise_guidance)
        if enable_edit_guidance and max_edit_cooldown_steps >= i >= min_edit_warmup_steps:
            concept_weights = torch.zeros((enabled_editing_prompts, noise_guidance.shape[0]), device=device,
                                          dtype=noise_guidance.dtype)
            noise_guidance_edit = torch.zeros((enabled_editing_prompts, *noise_guidance.shape), device=device,
                                              dtype=noise_guidance.dtype)
            warmup_inds = []
            for c, noise_pred_edit_concept in enumerate(noise_pred_edit_concepts):
                edit_guidance_scale_c = edit_guidance_scale[c] if isinstance(edit_guidance_scale, list) \
                    else edit_guidance_scale
                edit_threshold_c = edit_threshold[c] if isinstance(edit_threshold, list) else edit_threshold
                reverse_editing_direction_c = reverse_editing_direction[c] if isinstance(
                    reverse_editing_direction, list) else reverse_editing_direction
                edit_weight_c = edit_weights[c] if edit_weights else 1.0
                edit_warmup_steps_c = edit_warmup_steps[c] if isinstance(edit_warmup_steps, list) \
                    else edit_warmup_steps
                if isinstance(edit_cooldown_steps, list):
                    edit_cooldown_steps_c = edit_cooldown_steps[c]
                elif edit_cooldown_steps is None:
                    edit_cooldown_steps_c = i + 1
                else:
                    edit_cooldown_steps_c = edit_cooldown_steps
                if i >= edit_warmup_steps_c:
                    warmup_inds.append(c)
                if i >= edit_cooldown_steps_c:
                    noise_guidance_edit[c, :, :, :] = torch.zeros_like(noise_pred_edit_concept)
                    continue
                if do_true_cfg:
                    noise_guidance_edit_tmp = noise_pred_edit_concept - noise_pred_uncond
                else:  # simple sega
                    noise_guidance_edit_tmp = noise_pred_edit_concept - noise_pred
                tmp_weights = torch.full((noise_guidance.shape[0],), edit_weight_c, dtype=noise_guidance.dtype)
                if reverse_editing_direction_c:
                    noise_guidance_edit_tmp = noise_guidance_edit_tmp * -1
                concept_weights[c, :] = tmp_weights
                noise_guidance_edit_tmp = noise_guidance_edit_tmp * edit_guidance_scale_c
                tmp = torch.quantile(torch.abs(noise_guidance_edit_tmp).flatten(start_dim=2), edit_threshold_c, dim=2,
                                     keepdim=False)
                noise_guidance_edit_tmp = torch.where(torch.abs(noise_guidance_edit_tmp) >= tmp[:, :, None],
                                                      noise_guidance_edit_tmp, torch.zeros_like(noise_guidance_edit_tmp))
                noise_guidance_edit[c, :, :, :] = noise_guidance_edit_tmp
            warmup_inds = torch.tensor(warmup_inds, dtype=torch.long).to(device)
            if len(noise_pred_edit_concepts) > warmup_inds.shape[0] > 0:
                concept_weights_tmp = torch.index_select(concept_weights, 0, warmup_inds)
                concept_weights_tmp = torch.where(concept_weights_tmp < 0, torch.zeros_like(concept_weights_tmp),
                                                  concept_weights_tmp)
                concept_weights_tmp = concept_weights_tmp / concept_weights_tmp.sum(dim=0)
                noise_guidance_edit_tmp = torch.index_select(noise_guidance_edit, 0, warmup_inds)
                noise_guidance_edit_tmp = torch.einsum("cb,cbij->bij", concept_weights_tmp, noise_guidance_edit_tmp)
                noise_guidance = noise_guidance + noise_guidance_edit_tmp
            concept_weights = torch.where(concept_weights < 0, torch.zeros_like(concept_weights), concept_weights)
            concept_weights = torch.nan_to_num(concept_weights)
            noise_guidance_edit = torch.einsum("cb,cbij->bij", concept_weights, noise_guidance_edit)
            noise_guidance_edit = noise_guidance_edit + edit_momentum_scale * edit_momentum
            edit_momentum = edit_mom_beta * edit_momentum + (1 - edit_mom_beta) * noise_guidance_edit
            if warmup_inds.shape[0] == len(noise_pred_edit_concepts):
                noise_guidance = noise_guidance + noise_guidance_edit
        if do_true_cfg:
            noise_pred = noise_guidance + noise_pred_uncond
        else:
            noise_pred = noise_guidance
        latents = latents + (float(sigmas[i + 1]) - t) * noise_pred          # FlowMatchEulerDiscreteScheduler.step
        if on_step is not None:
            on_step(i, latents)
    return latents
