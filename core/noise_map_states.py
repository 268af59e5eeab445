"""The part of the INVERSION contract (core.inversion.Inversion) shared by the inversions that are their own noise
maps (edit-friendly DDPM, edit-friendly flow): states xts[0..S] on sigmas[0..S] (xts[0] the start, xts[S] the clean
latent), noise maps zs and the last step's residual."""
from __future__ import annotations

import torch


class NoiseMapStates:
    """Mixin for a dataclass with fields sigmas, xts, zs and residual: steps, start, latent(i), num_latents,
    noise_maps (itself) and release()."""

    sigmas: torch.Tensor
    xts: torch.Tensor
    zs: torch.Tensor
    residual: "torch.Tensor | None"

    @property
    def steps(self) -> int:
        """Number of reverse steps S."""
        return int(self.sigmas.numel()) - 1

    @property
    def start(self) -> torch.Tensor:
        """The start latent xts[0] in sampler units."""
        return self.xts[0]

    @property
    def num_latents(self) -> int:
        return int(self.xts.shape[0]) if self.xts.numel() else 0

    def latent(self, i: int) -> torch.Tensor:
        """The state xts[i] at sigmas[i]."""
        return self.xts[i]

    @property
    def noise_maps(self) -> "NoiseMapStates":
        return self

    def release(self) -> None:
        """Release the cached tensors (states, noise maps, residual)."""
        empty = self.xts.new_zeros((0,))
        self.xts, self.zs, self.residual = empty, empty, None
