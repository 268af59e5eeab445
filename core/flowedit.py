"""FlowEdit (Kulikov et al., ICCV 2025, fallenshock/FlowEdit FlowEdit_utils.py): inversion-free editing of a real
image with a flow-matching model, as the denoiser of a GUIDER for stock SamplerCustomAdvanced with the "euler"
SAMPLER.

FlowEdit integrates the edit ODE dz/dt = E_ε[v(z_t^tar, c_tar) − v(z_t^src, c_src)] from the clean source latent
x_src, where each step draws ε and sets z_t^src = (1 − t)·x_src + t·ε, z_t^tar = z_edit + z_t^src − x_src; the
average over `n_avg` draws is Δv. The last `n_min` steps are plain sampling of the target from
x_t^tar = z_edit + (t·ε + (1 − t)·x_src − x_src). Which steps run at all (FlowEdit's n_max) is the SIGMAS' choice:
the last n_max steps of the schedule (SplitSigmas at steps − n_max).

ComfyUI's Euler step is x ← x + (σ' − σ)·(x − x̂0)/σ, so the denoiser returns x̂0 = z − σ·Δv for an edit step. In the
n_min phase the sampler's state stays z = x^tar − o with the fixed offset o = t·ε + (1 − t)·x_src − x_src drawn at its
first step, x̂0 = z − σ·v(z + o, c_tar), and the last step (σ' = 0, where Euler lands on x̂0) returns
z + o − σ·v(z + o, c_tar) = the target latent itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from . import host

SOURCE, TARGET, NEGATIVE = "source", "target", "negative"


@dataclass(frozen=True)
class FlowEditSettings:
    """FlowEdit's settings: CFG of the source and target velocities (FlowEdit's src / tar guidance scales for SD3;
    FLUX-dev takes its guidance through the conditioning, cfg 1), noise draws per step n_avg, final plain-sampling
    steps n_min, seed of the draws."""
    source_cfg: float = 1.0
    target_cfg: float = 1.0
    n_avg: int = 1
    n_min: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.n_avg) < 1:
            raise ValueError(f"n_avg must be at least 1, got {self.n_avg}")
        if int(self.n_min) < 0:
            raise ValueError(f"n_min must be >= 0, got {self.n_min}")


def velocity(x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """v = (x − x̂0)/σ (ComfyUI's CONST parameterisation)."""
    return (x - x0) / float(sigma)


class NoiseDraws:
    """FlowEdit's fresh noise: standard normal draws of x_src's shape from one CPU generator seeded per run."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(int(seed))

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.gen, dtype=torch.float32).to(like.device, like.dtype)


X0Fn = Callable[[torch.Tensor, float, str], torch.Tensor]
"""x0(x, σ, which) -> the CFG-combined x̂0 of the source or target prompt at x."""


def step_x0(x0: X0Fn, x_src: torch.Tensor, z: torch.Tensor, sigma: float, sigma_next: float, steps_left: int,
            settings: FlowEditSettings, draw: Callable[[torch.Tensor], torch.Tensor], state: dict) -> torch.Tensor:
    """The x̂0 that makes ComfyUI's Euler step from σ to σ_next the FlowEdit step at state z (`steps_left` steps
    remain, this one included; `state` carries the n_min phase's offset between calls)."""
    s = float(sigma)
    if steps_left > int(settings.n_min):
        dv = torch.zeros_like(z)
        for _ in range(int(settings.n_avg)):
            eps = draw(x_src)
            zt_src = (1.0 - s) * x_src + s * eps
            zt_tar = z + zt_src - x_src
            v_src = velocity(zt_src, x0(zt_src, s, SOURCE), s)
            v_tar = velocity(zt_tar, x0(zt_tar, s, TARGET), s)
            dv = dv + (v_tar - v_src) / int(settings.n_avg)
        return z - s * dv
    if "offset" not in state:
        eps = draw(x_src)
        state["offset"] = s * eps + (1.0 - s) * x_src - x_src
    xt = z + state["offset"]
    v = velocity(xt, x0(xt, s, TARGET), s)
    return (xt if float(sigma_next) <= 0.0 else z) - s * v


def method(settings: FlowEditSettings) -> Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The guider method (host.guider.Method) of FlowEdit with these settings."""

    def run_step(run: Any, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        i = run.step_of(sigma)
        s_next = float(run.sigmas[i + 1]) if i + 1 < run.sigmas.numel() else 0.0
        draw = run.state.get("draw")
        if draw is None:
            draw = run.state["draw"] = NoiseDraws(settings.seed)

        def x0(xx: torch.Tensor, s: float, which: str) -> torch.Tensor:
            cfg = settings.source_cfg if which == SOURCE else settings.target_cfg
            return run.x0(xx, sigma, which, NEGATIVE, cfg)

        return step_x0(x0, run.x_src, x, float(torch.as_tensor(sigma).reshape(-1)[0]), s_next, run.steps - i,
                       settings, draw, run.state)

    return run_step


def guider(model: Any, source: Any, target: Any, negative: Optional[Any], settings: FlowEditSettings,
           check: Optional[Callable[[Any, torch.Tensor], None]] = None) -> Any:
    """The FlowEdit GUIDER on `model` (source / target / optional negative CONDITIONINGs)."""
    return host.guider.method_guider(model, {SOURCE: source, TARGET: target, NEGATIVE: negative}, method(settings),
                                     check=check)
