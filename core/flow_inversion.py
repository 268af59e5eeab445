"""Flow inversions for rectified-flow DiTs (FLUX, SD3, Qwen-Image): Euler, second-order (RF-Solver, FireFlow) and
edit-friendly, each with the SAMPLER that undoes it inside stock SamplerCustomAdvanced.

Parameterisation (ComfyUI's CONST sampling): x_σ = (1 − σ)·x0 + σ·ε, the wrapped model returns x̂0, and the
velocity is v = ε − x0 = (x − x̂0)/σ (`velocity`). `sigmas` are a ComfyUI SIGMAS (descending, normally ending in 0).

- Euler inversion: x_{i+1} = x_i + (σ_{i+1} − σ_i)·v(x_i, σ_{i+1}) going up from σ = 0 (the velocity labelled with the
  step's end, as DDIM inversion does; a flow model's input needs no rescale). Undone by the stock "euler" sampler.
- RF-Solver (Wang et al. 2024, 2nd-order Taylor): v1 = v(x_i, σ_i), x_mid = x_i + h/2·v1, x_{i+1} = x_i + h·v(x_mid,
  σ_i + h/2) — two model calls per step. FireFlow (Deng et al., arXiv 2412.07517): the same midpoint step, with v1
  the previous step's midpoint velocity (one call per step after the first). Their samplers run the same solver down.
  ComfyUI's x̂0 at σ = 0 is x itself, so a velocity at σ = 0 is taken at SIGMA_FLOOR.
- Edit-friendly (the flow counterpart of Huberman-Spiegelglas et al.'s DDPM inversion): x_i = (1 − σ_i)·x0 + σ_i·ε_i
  drawn independently per step, then from the noisiest step down the noise map of each stochastic flow step
  (`schedule.flow_step`, ComfyUI's rectified-flow ancestral step) that lands exactly on x_{i+1}; the last step to σ = 0
  stores the residual x0 − x̂0. The SAMPLER replays the maps: with the same model and conditioning it reproduces x0 to
  float rounding; with another prompt or a guidance patch it edits.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Optional

import torch

from . import host
from .ddpm_inversion import RegionFn, _fit, _make_generator, check_sigmas, keep_outside
from .inversion import LatentListStates
from .noise_map_states import NoiseMapStates
from .schedule import flow_step, flow_step_terms

SOLVERS = ("euler", "rf_solver", "fireflow")
SIGMA_FLOOR = 1e-3
_SIGMA_RTOL, _SIGMA_ATOL = 1e-5, 1e-6

X0Fn = Callable[[torch.Tensor, float], torch.Tensor]
"""x0(x, σ) -> x̂0: the (CFG-combined) denoiser in ComfyUI's parameterisation."""
StepCallback = Callable[[int, int], None]


def velocity(x0_fn: X0Fn, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """v̂ = (x − x̂0)/σ at σ (at least SIGMA_FLOOR)."""
    s = max(float(sigma), SIGMA_FLOOR)
    return (x - x0_fn(x, s)) / s


# --------------------------------------------------------------------------------------------------------------
# ODE solvers (either direction)
# --------------------------------------------------------------------------------------------------------------

def ode_solve(x0_fn: X0Fn, x: torch.Tensor, sigmas: list[float], solver: str, invert: bool = False,
              on_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> list[torch.Tensor]:
    """Integrate dx/dσ = v along `sigmas` (ascending to invert, descending to sample) with `solver`; returns the state
    at every sigma. Euler inversion labels the velocity with the step's end (σ_{i+1})."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    out = [x]
    v_prev: Optional[torch.Tensor] = None
    for i in range(len(sigmas) - 1):
        s, sn = float(sigmas[i]), float(sigmas[i + 1])
        h = sn - s
        if solver == "euler":
            if sn <= 0.0:
                x = x0_fn(x, s)                       # the last step to σ = 0 lands on x̂0
            else:
                x = x + h * velocity(x0_fn, x, sn if invert else s)
        else:
            v1 = v_prev if (solver == "fireflow" and v_prev is not None) else velocity(x0_fn, x, s)
            x_mid = x + 0.5 * h * v1
            v_mid = velocity(x0_fn, x_mid, s + 0.5 * h)
            x = x + h * v_mid
            v_prev = v_mid
        out.append(x)
        if on_step is not None:
            on_step(i, x)
    return out


@dataclass
class FlowInversion(LatentListStates):
    """The INVERSION of a deterministic flow inversion (core.inversion.Inversion): sigmas descending from the start to
    0, latents[i] the state at sigmas[i] (latents[0] = start, latents[-1] = the clean latent), the solver that made
    it (its SAMPLER undoes it), the base model's id."""
    sigmas: torch.Tensor
    latents: list[torch.Tensor]
    solver: str = "euler"
    model_id: int = 0
    extras: dict = field(default_factory=dict)

    kv: ClassVar[None] = None
    noise_maps: ClassVar[None] = None

    def release(self) -> None:
        self.latents.clear()


# --------------------------------------------------------------------------------------------------------------
# edit-friendly flow inversion
# --------------------------------------------------------------------------------------------------------------

@dataclass
class EditFriendlyFlowInversion(NoiseMapStates):
    """Result of an edit-friendly flow inversion (an INVERSION that is its own noise maps, no K/V).
    sigmas: (S+1,) descending grid; xts: (S+1, B, C, H, W) states, xts[0] the start, xts[S] the clean latent;
    zs: (S, B, C, H, W) noise maps (zero for the step to σ = 0); residual: x0 − x̂0 of the last step; eta: η."""
    kind: ClassVar[str] = "flow"
    kv: ClassVar[None] = None
    sigmas: torch.Tensor
    xts: torch.Tensor
    zs: torch.Tensor
    eta: float
    residual: Optional[torch.Tensor] = None
    model_id: int = 0

    def match_sigmas(self, sigmas: torch.Tensor) -> int:
        """Offset k with `sigmas` = this inversion's sigmas[k : k+len]; ValueError naming both grids otherwise."""
        return _match_run(sigmas, self.sigmas, "edit-friendly flow sampler")

    def state_at(self, sigma: float) -> Optional[torch.Tensor]:
        """The inverted state x_k of the grid's sigma_k equal to `sigma` (the source image's own state at that
        step, [B, C, H, W]), or None when no sigma of the grid (but the last, σ = 0) is it."""
        s = self.sigmas.detach().to("cpu", torch.float64)[:-1]
        hit = torch.isclose(s, torch.tensor(float(sigma), dtype=torch.float64), rtol=_SIGMA_RTOL, atol=_SIGMA_ATOL)
        idx = hit.nonzero()
        return self.xts[int(idx[0])] if idx.numel() else None


def _match_run(sigmas: torch.Tensor, grid: torch.Tensor, who: str) -> int:
    g = check_sigmas(sigmas, f"sigmas given to the {who}")
    s = grid.detach().to("cpu", torch.float64)
    m = g.numel()
    for k in range(0, s.numel() - m + 1):
        if torch.allclose(s[k:k + m], g, rtol=_SIGMA_RTOL, atol=_SIGMA_ATOL):
            return k
    raise ValueError(f"the sigmas given to the {who} ({m - 1} steps) are not a run of the inversion's "
                     f"({s.numel() - 1} steps): feed the same SIGMAS as the inversion (or a SplitSigmas part)")


def invert_edit_friendly(x0_fn: X0Fn, x0: torch.Tensor, sigmas: torch.Tensor, *, seed: int = 0, eta: float = 1.0,
                         on_step: Optional[StepCallback] = None) -> EditFriendlyFlowInversion:
    """Edit-friendly flow inversion of the clean latent x0 on `sigmas` (descending): independent states
    x_i = (1 − σ_i)·x0 + σ_i·ε_i, then the noise map z_i = (x_{i+1} − μ_i)/s_i of each stochastic flow step."""
    s64 = check_sigmas(sigmas)
    if not float(eta) > 0.0:
        raise ValueError(f"eta must be > 0 for an edit-friendly inversion (η = 0 has no noise to invert), got {eta}")
    n = s64.numel() - 1
    gen = _make_generator(seed, None)
    xts = torch.empty((n + 1, *x0.shape), dtype=x0.dtype, device=x0.device)
    for i in reversed(range(n)):                    # drawn least noisy first
        e = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(x0.device, x0.dtype)
        s = float(s64[i])
        xts[i] = (1.0 - s) * x0 + s * e
    xts[n] = x0
    zs = torch.zeros((n, *x0.shape), dtype=x0.dtype, device=x0.device)
    residual = None
    for i in range(n):
        s, sn = float(s64[i]), float(s64[i + 1])
        x0_hat = x0_fn(xts[i], s)
        if sn <= 0.0:
            residual = xts[i + 1] - x0_hat
            xts[i + 1] = x0_hat + residual
        else:
            mu, up = flow_step_terms(xts[i], x0_hat, s, sn, float(eta))
            zs[i] = (xts[i + 1] - mu) / up
            xts[i + 1] = flow_step(xts[i], x0_hat, s, sn, zs[i], float(eta))   # what the sampler computes
        if on_step is not None:
            on_step(i, n)
    return EditFriendlyFlowInversion(sigmas=sigmas.detach().cpu().clone(), xts=xts, zs=zs, eta=float(eta),
                                     residual=residual)


# --------------------------------------------------------------------------------------------------------------
# SAMPLER functions (KSAMPLER contract)
# --------------------------------------------------------------------------------------------------------------

def _snap(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The stored state itself when x is it up to the rounding of the NOISE round trip (exact reconstruction)."""
    ref = _fit(ref, x, "start latents")
    return ref.clone() if torch.allclose(x, ref, rtol=1e-4, atol=1e-5) else x


def _x0_fn(model: Callable, extra_args: dict, x: torch.Tensor) -> X0Fn:
    s_in = x.new_ones([x.shape[0]])
    return lambda xx, s: model(xx, float(s) * s_in, **extra_args)


def make_ode_sampler_fn(solver: str, inversion: Optional[FlowInversion] = None) -> Callable[..., torch.Tensor]:
    """A KSAMPLER function that integrates the flow ODE down `sigmas` with `solver` (the sampler of Flow Inversion);
    with an inversion it starts from the stored state when the incoming latent is it."""

    def sample_flow_ode(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        extra_args = extra_args or {}
        if inversion is not None and inversion.latents:
            k = _match_run(sigmas, inversion.sigmas, "flow ODE sampler")
            x = _snap(x, inversion.latents[k])
        sig = [float(s) for s in sigmas]

        def report(i, xx):
            if callback is not None:
                callback({"x": xx, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": xx})

        return ode_solve(_x0_fn(model, extra_args, x), x, sig, solver, on_step=report)[-1]

    return sample_flow_ode


def make_edit_friendly_sampler_fn(inversion: EditFriendlyFlowInversion, exact_last_step: bool = True,
                                  region: Optional[RegionFn] = None) -> Callable[..., torch.Tensor]:
    """A KSAMPLER function running the stochastic flow steps with the inversion's noise maps (and the last step's
    residual when exact_last_step); `sigmas` must be its grid or a contiguous run of it. `region` (a RegionFn):
    outside the region it gives, each state is the inversion's own (`keep_outside`)."""

    def sample_edit_friendly_flow(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        extra_args = extra_args or {}
        off = inversion.match_sigmas(sigmas)
        x = _snap(x, inversion.xts[off])
        x0_fn = _x0_fn(model, extra_args, x)
        reg = region(extra_args, x) if region is not None else None
        s64 = inversion.sigmas.detach().to("cpu", torch.float64)
        for i in range(int(sigmas.numel()) - 1):
            k = off + i
            s, sn = float(s64[k]), float(s64[k + 1])
            x0_hat = x0_fn(x, s)
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x0_hat})
            if sn <= 0.0:
                x = x0_hat + (_fit(inversion.residual, x, "residual") if exact_last_step and inversion.residual
                              is not None else 0.0)
            else:
                x = flow_step(x, x0_hat, s, sn, _fit(inversion.zs[k], x, "noise maps"), inversion.eta)
            x = keep_outside(x, reg, inversion.xts[k + 1]) if reg is not None else x
        return x

    return sample_edit_friendly_flow


# --------------------------------------------------------------------------------------------------------------
# NOISE for SamplerCustomAdvanced, and the runs
# --------------------------------------------------------------------------------------------------------------

class InvertedNoise:
    """A NOISE for SamplerCustomAdvanced that makes CONST noise scaling start from the inverted state:
    σ0·n + (1 − σ0)·z = x_start for the LATENT z that is given as latent_image (n = (x_start − (1 − σ0)·z)/σ0)."""

    def __init__(self, model: Any, start: torch.Tensor, sigma0: float, seed: int = 0,
                 check: Optional[Callable[[torch.Tensor], Any]] = None):
        self.model, self.start, self.sigma0, self.seed = model, start, float(sigma0), int(seed)
        self.check = check          # called with the given LATENT's samples first (the node's input rule)

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        if self.check is not None:
            self.check(input_latent["samples"])
        z = host.process_in(self.model, input_latent["samples"]).to(self.start.device, self.start.dtype)
        if self.sigma0 >= 1.0:
            return self.start.clone()
        return (self.start - (1.0 - self.sigma0) * z) / self.sigma0


def _run(model: Any, samples: torch.Tensor, positive: Any, negative: Any, cfg: float, sigmas: torch.Tensor,
         loop: Callable[[host.Denoiser, torch.Tensor], Any]) -> Any:
    """Run loop(den, z0) inside ComfyUI's sampling on a clone of `model`; returns what the loop stored."""
    holder: dict = {}

    def fn(den: host.Denoiser, x: torch.Tensor, _sig: torch.Tensor) -> torch.Tensor:
        holder["out"] = loop(den, x)
        return x

    host.session(host.clone(model), positive, negative, cfg if negative is not None else 1.0, samples,
                 sigmas.to(torch.float32), fn)
    return holder["out"]


def run_ode(model: Any, samples: torch.Tensor, positive: Any, negative: Any, cfg: float, sigmas: torch.Tensor,
            solver: str = "euler", on_step: Optional[StepCallback] = None) -> FlowInversion:
    """Invert LATENT `samples` up `sigmas` (descending, ending in 0) with `solver` and the CFG denoiser of
    (positive, negative, cfg): the FlowInversion (latents in model space on the offload device)."""
    s = check_sigmas(sigmas)
    asc = torch.flip(s, [0]).tolist()
    n = len(asc) - 1

    def loop(den: host.Denoiser, z0: torch.Tensor):
        lat = ode_solve(lambda x, sg: den.x0(x, sg), z0, asc, solver, invert=True,
                        on_step=(lambda i, _x: on_step(i, n)) if on_step else None)
        return [t.to(model.offload_device) for t in lat[::-1]]

    latents = _run(model, samples, positive, negative, cfg, sigmas, loop)
    return FlowInversion(sigmas=sigmas.detach().cpu().clone(), latents=latents, solver=solver,
                         model_id=id(host.base_model(model)))


def run_edit_friendly(model: Any, samples: torch.Tensor, positive: Any, negative: Any, cfg: float,
                      sigmas: torch.Tensor, eta: float = 1.0, seed: int = 0,
                      on_step: Optional[StepCallback] = None) -> EditFriendlyFlowInversion:
    """Edit-friendly flow inversion of LATENT `samples` on `sigmas` with the CFG denoiser of (positive, negative,
    cfg)."""
    def loop(den: host.Denoiser, z0: torch.Tensor):
        return invert_edit_friendly(lambda x, sg: den.x0(x, sg), z0, sigmas, seed=seed, eta=eta, on_step=on_step)

    inv = _run(model, samples, positive, negative, cfg, sigmas, loop)
    off = torch.device(model.offload_device)
    return replace(inv, xts=inv.xts.to(off), zs=inv.zs.to(off),
                   residual=None if inv.residual is None else inv.residual.to(off),
                   model_id=id(host.base_model(model)))
