"""The host's DDIM sigma grid against diffusers' for any step count."""
from __future__ import annotations

from dragedit.core import host


def test_ddim_grid_matches_diffusers_for_any_step_count(sd15_model):
    from diffusers import DDIMScheduler
    for steps in (6, 12, 30, 50):
        sch = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                            timestep_spacing="leading")
        sch.set_timesteps(steps)
        sig = host.ddim_sigmas(sd15_model, steps)
        assert len(sig) == steps + 1 and float(sig[-1]) == 0.0
        assert [round(host.timestep_of(sd15_model, s)) for s in sig[:-1]] == sch.timesteps.tolist()
