"""Port of the diffusers community pipeline examples/community/pipeline_flux_rf_inversion.py (RF-Inversion, Rout et
al. 2410.10792): the controlled forward ODE loop of `RFInversionFluxPipeline.invert` and the controlled reverse ODE
loop of its `__call__` (do_rf_inversion, strength 1), in diffusers' packed token space, for the parity tests only.
`sigmas` is the pipeline's `scheduler.sigmas` (descending, ending in 0), `timesteps` = sigmas[:-1]·1000 as
FlowMatchEulerDiscreteScheduler makes them. `embeds` = (prompt_embeds, pooled_prompt_embeds, text_ids)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from flow_reference import calc_v_flux


@torch.no_grad()
def invert(transformer, image_latents, sigmas: Sequence[float], embeds: tuple, latent_image_ids, gamma: float,
           y_1: torch.Tensor, labels: Optional[Sequence[float]] = None,
           on_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """`invert`'s forward ODE loop (Eq. 8). `labels` replaces the pipeline's t_i = i / N (N = len(sigmas)) when
    given; everything else is the pipeline's."""
    prompt_embeds, pooled_prompt_embeds, text_ids = embeds
    Y_t = image_latents
    N = len(sigmas)
    for i in range(N - 1):
        t_i = torch.tensor(i / (N) if labels is None else float(labels[i]), dtype=Y_t.dtype)
        u_t_i = calc_v_flux(transformer, Y_t, prompt_embeds, pooled_prompt_embeds, None, text_ids, latent_image_ids,
                            t_i)
        u_t_i_cond = (y_1 - Y_t) / (1 - t_i)
        u_hat_t_i = u_t_i + gamma * (u_t_i_cond - u_t_i)
        Y_t = Y_t + u_hat_t_i * (float(sigmas[i]) - float(sigmas[i + 1]))
        if on_step is not None:
            on_step(i, Y_t)
    return Y_t


@torch.no_grad()
def edit(transformer, latents, image_latents, sigmas: Sequence[float], embeds: tuple, latent_image_ids,
         eta: float = 1.0, start_timestep: float = 0.0, stop_timestep: float = 0.25, decay_eta: bool = False,
         eta_decay_power: float = 1.0, on_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """`__call__`'s controlled reverse ODE loop (Algorithm 2 / Eq. 17) from the inverted `latents`."""
    prompt_embeds, pooled_prompt_embeds, text_ids = embeds
    sig = torch.tensor([float(s) for s in sigmas], dtype=torch.float32)
    timesteps = sig[:-1] * 1000
    num_inference_steps = len(timesteps)
    start_timestep = int(start_timestep * num_inference_steps)
    stop_timestep = min(int(stop_timestep * num_inference_steps), num_inference_steps)
    y_0 = image_latents.clone()
    for i, t in enumerate(timesteps):
        t_i = 1 - t / 1000
        noise_pred = calc_v_flux(transformer, latents, prompt_embeds, pooled_prompt_embeds, None, text_ids,
                                 latent_image_ids, t / 1000)
        v_t = -noise_pred
        v_t_cond = (y_0 - latents) / (1 - t_i)
        eta_t = eta if start_timestep <= i < stop_timestep else 0.0
        if decay_eta:
            eta_t = eta_t * (1 - i / num_inference_steps) ** eta_decay_power
        v_hat_t = v_t + eta_t * (v_t_cond - v_t)
        latents = latents + v_hat_t * (sig[i] - sig[i + 1])
        if on_step is not None:
            on_step(i, latents)
    return latents
