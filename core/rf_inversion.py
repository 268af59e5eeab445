"""RF-Inversion (Rout et al., "Semantic Image Inversion and Editing using Rectified Stochastic Differential
Equations", arXiv 2410.10792): a controlled forward ODE that inverts the image towards a drawn noise y1, and a
controlled reverse ODE that samples (edits) while being pulled back towards the image y0.

ComfyUI's CONST parameterisation (core/flow_inversion.py): x_σ = (1 − σ)·x0 + σ·ε, the denoiser returns x̂0, the
velocity is v = (x − x̂0)/σ = dx/dσ. The paper's time t is σ (t = 0 the image, t = 1 noise).

- Controlled forward ODE (Algorithm 1, Eq. 8), ascending σ_0 = 0 < σ_1 < … < σ_n:
  x_{i+1} = x_i + (σ_{i+1} − σ_i)·[v(x_i, σ_i) + γ·(u(x_i | y1) − v(x_i, σ_i))],  u(x | y1) = (y1 − x)/(1 − σ_i).
  The step is labelled with its start t_i = σ_i (explicit Euler, as in the paper), at least SIGMA_FLOOR: ComfyUI's
  x̂0 at σ = 0 is x itself, so the first step is labelled σ = 1e-3. γ = 0 is the explicit Euler inversion; γ = 1
  lands on y1 (when the grid reaches σ = 1).
- Controlled reverse ODE (Algorithm 2, Eq. 17 of the paper as the diffusers community pipeline implements it),
  descending sigmas: with the velocity towards the image −v and the conditional one (y0 − x)/σ_i,
  v̂ = −v + η_i·((y0 − x)/σ_i + v), x_{i+1} = x_i + (σ_i − σ_{i+1})·v̂ — the Euler step from the blended
  x̂0' = (1 − η_i)·x̂0 + η_i·y0. η_i = η on the steps start ≤ i < stop (fractions of the steps, floored as the
  pipeline does), times (1 − i/n)^p with the decay power p (0 = no decay), 0 elsewhere. η = 0 is the stock Euler
  sampler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from . import host
from .ddpm_inversion import _fit, _make_generator, check_sigmas
from .flow_inversion import SIGMA_FLOOR, X0Fn, FlowInversion, StepCallback, _run, _snap, _x0_fn

DEFAULT_ETA, DEFAULT_START, DEFAULT_STOP = 0.9, 0.0, 0.25
"""The diffusers community pipeline's example edit: η 0.9 on the first quarter of the steps."""


@dataclass
class RFInversion(FlowInversion):
    """The INVERSION of RF-Inversion: a FlowInversion (latents[0] the inverted state, latents[-1] = y0 the clean
    latent) with the controller strength γ and the seed of the target noise y1."""
    gamma: float = 0.5
    seed: int = 0


def controlled_forward(x0_fn: X0Fn, y0: torch.Tensor, sigmas_up: list[float], gamma: float, y1: torch.Tensor,
                       on_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> list[torch.Tensor]:
    """The controlled forward ODE (Eq. 8) from the clean latent y0 up the ascending `sigmas_up` towards the noise y1
    with controller strength γ; returns the state at every sigma (first y0)."""
    out = [y0]
    x = y0
    for i in range(len(sigmas_up) - 1):
        s, sn = float(sigmas_up[i]), float(sigmas_up[i + 1])
        t = max(s, SIGMA_FLOOR)                                 # the step's label t_i
        u = (x - x0_fn(x, t)) / t                               # u_t(Y_t): the model's velocity
        u_cond = (y1 - x) / (1.0 - t)                           # u_t(Y_t | y1): straight to y1
        x = x + (sn - s) * (u + gamma * (u_cond - u))
        out.append(x)
        if on_step is not None:
            on_step(i, x)
    return out


def eta_schedule(n: int, eta: float, start: float, stop: float, decay_power: float = 0.0) -> list[float]:
    """η_i for the n reverse steps: η on the steps int(start·n) ≤ i < min(int(stop·n), n), times (1 − i/n)^p."""
    lo, hi = int(start * n), min(int(stop * n), n)
    return [(eta if lo <= i < hi else 0.0) * (1.0 - i / n) ** decay_power for i in range(n)]


def controlled_reverse(x0_fn: X0Fn, x: torch.Tensor, sigmas: list[float], y0: torch.Tensor, etas: list[float],
                       on_step: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None) -> torch.Tensor:
    """The controlled reverse ODE down the descending `sigmas` from x, pulled towards y0 with η_i = etas[i]."""
    for i in range(len(sigmas) - 1):
        s, sn = float(sigmas[i]), float(sigmas[i + 1])
        x0_hat = x0_fn(x, s)
        if on_step is not None:
            on_step(i, x, x0_hat)
        x0_blend = x0_hat + etas[i] * (y0 - x0_hat)              # x̂0' = (1 − η_i)·x̂0 + η_i·y0
        x = x0_blend if sn <= 0.0 else x + (sn - s) * (x - x0_blend) / s
    return x


def draw_target_noise(y0: torch.Tensor, seed: int) -> torch.Tensor:
    """y1 ~ N(0, I) of y0's shape from `seed` (drawn on the CPU in float32, so it is the same on every device)."""
    gen = _make_generator(seed, None)
    return torch.randn(y0.shape, generator=gen, dtype=torch.float32).to(y0.device, y0.dtype)


def make_rf_sampler_fn(inversion: RFInversion, eta: float = DEFAULT_ETA, start: float = DEFAULT_START,
                       stop: float = DEFAULT_STOP, decay_power: float = 0.0) -> Callable[..., torch.Tensor]:
    """A KSAMPLER function running the controlled reverse ODE down the sampler's sigmas towards the inversion's
    clean latent y0 (the η window counted on those sigmas' steps)."""

    def sample_rf_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        extra_args = extra_args or {}
        if inversion.latents and torch.allclose(sigmas[0].cpu().double(), inversion.sigmas[0].double()):
            x = _snap(x, inversion.latents[0])
        y0 = _fit(inversion.latents[-1], x, "clean latent")
        sig = [float(s) for s in sigmas]
        etas = eta_schedule(len(sig) - 1, float(eta), float(start), float(stop), float(decay_power))

        def report(i, xx, x0_hat):
            if callback is not None:
                callback({"x": xx, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x0_hat})

        return controlled_reverse(_x0_fn(model, extra_args, x), x, sig, y0, etas, on_step=report)

    return sample_rf_inversion


def run_rf_inversion(model: Any, samples: torch.Tensor, positive: Any, negative: Any, cfg: float,
                     sigmas: torch.Tensor, gamma: float = 0.5, seed: int = 0,
                     on_step: Optional[StepCallback] = None) -> RFInversion:
    """RF-Inversion of LATENT `samples` up `sigmas` (descending, ending in 0) with the CFG denoiser of
    (positive, negative, cfg): the RFInversion (latents in model space on the offload device)."""
    s = check_sigmas(sigmas)
    asc = torch.flip(s, [0]).tolist()
    n = len(asc) - 1

    def loop(den: host.Denoiser, z0: torch.Tensor):
        y1 = draw_target_noise(z0, seed)
        lat = controlled_forward(lambda x, sg: den.x0(x, sg), z0, asc, float(gamma), y1,
                                 on_step=(lambda i, _x: on_step(i, n)) if on_step else None)
        return [t.to(model.offload_device) for t in lat[::-1]]

    latents = _run(model, samples, positive, negative, cfg, sigmas, loop)
    return RFInversion(sigmas=sigmas.detach().cpu().clone(), latents=latents, solver="rf_inversion",
                       model_id=id(host.base_model(model)), gamma=float(gamma), seed=int(seed))
