"""DDIM inversion: walk the noise schedule backwards from the clean latent z_0 to z_t at a start step,
keeping every intermediate latent (the memory bank of DragonDiffusion, the start of DragDiffusion).

Step i goes from σ_i up to σ_{i+1} with ε̂ evaluated on the current latent z_i but at timestep t_{i+1},
exactly as diffusers' DDIMInverseScheduler does: the K/V and ε̂ of that call then belong to the same timestep
as the sampling call that later undoes the step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import host
from .schedule import ddim_step, eps_from_x0, rescale_to_sigma


@dataclass
class DDIMInversion:
    """The INVERSION of the DDIM Inversion node: sampling sigmas (descending from the start step to 0),
    the latents x_i in sampler space at each of those sigmas (latents[0] = start, latents[-1] = clean),
    the optional self-attention K/V recorded at each step, and what produced it."""
    sigmas: torch.Tensor
    latents: list[torch.Tensor]
    kv: Optional[host.KVStore] = None
    steps: int = 0
    cfg: float = 1.0
    model_id: int = 0
    kind: str = "ddim"
    extras: dict = field(default_factory=dict)

    @property
    def start(self) -> torch.Tensor:
        """x at the start sigma (sampler space)."""
        return self.latents[0]

    def latent_at(self, sigma: float) -> torch.Tensor:
        """The stored latent nearest sigma (the guidance branch z_t^gud of DragonDiffusion)."""
        i = int(torch.argmin((self.sigmas - float(sigma)).abs()))
        return self.latents[i]

    def free(self) -> None:
        """Release the cached tensors."""
        self.latents.clear()
        if self.kv is not None:
            self.kv.clear()


def start_index(steps: int, strength: float) -> int:
    """Index into the descending grid where sampling starts: steps − round(strength·steps)."""
    return int(steps) - int(round(float(strength) * int(steps)))


def invert(den: host.Denoiser, x0: torch.Tensor, sigmas_desc: torch.Tensor,
           on_step: Optional[Callable[[int, int], None]] = None) -> list[torch.Tensor]:
    """DDIM-invert x0 (sampler space, σ = sigmas_desc[-1] = 0) up to sigmas_desc[0]; returns the latents in
    the order of sigmas_desc (latents[0] = most noisy)."""
    asc = torch.flip(sigmas_desc, [0]).tolist()
    x = x0
    out = [x0]
    n = len(asc) - 1
    for i in range(n):
        s, s_next = asc[i], asc[i + 1]
        x_in = rescale_to_sigma(x, s, s_next)           # same z_i, labelled t_{i+1}
        eps = eps_from_x0(x_in, den.x0(x_in, s_next), s_next)
        x = ddim_step(x, eps, s, s_next)
        out.append(x)
        if on_step is not None:
            on_step(i + 1, n)
    return out[::-1]


def sample(den: host.Denoiser, x: torch.Tensor, sigmas_desc: torch.Tensor,
           on_step: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Plain DDIM sampling (Euler in sampler space) along sigmas_desc."""
    s = sigmas_desc.tolist()
    for i in range(len(s) - 1):
        x0 = den.x0(x, s[i])
        x = x0 if s[i + 1] == 0 else ddim_step(x, eps_from_x0(x, x0, s[i]), s[i], s[i + 1])
        if on_step is not None:
            on_step(i + 1, len(s) - 1)
    return x
