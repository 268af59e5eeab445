"""Derived seeds: every seed the pack computes from a widget's seed (seed + 1 for a second noise draw, seed + i per
step) wrapped into the range torch.Generator.manual_seed and k-diffusion's noise samplers accept.

The seed widgets go up to 2^64 - 1 (KSampler's noise_seed); seed + 1 at that maximum is 2^64, which
manual_seed refuses ("Overflow when unpacking long"). Wrapping modulo 2^64 keeps every in-range seed as it is,
so results for seeds below the maximum do not change."""
from __future__ import annotations

import torch

SEED_RANGE = 1 << 64          # torch.Generator.manual_seed takes 0 .. 2^64 - 1


def derive_seed(seed: int, offset: int = 0) -> int:
    """seed + offset wrapped into 0 .. 2^64 - 1 (the generator's range); seed alone is wrapped as well."""
    return (int(seed) + int(offset)) % SEED_RANGE


def generator(seed: int, offset: int = 0, device: str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with derive_seed(seed, offset)."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, offset))
