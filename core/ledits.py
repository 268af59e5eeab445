"""LEDITS (Tsaban & Passos, arXiv 2307.00522) on ComfyUI: edit-friendly DDPM inversion run through the host, and
SEGA / LEDITS++ concept guidance as a model patch that any sampler applies.

The SEGA patch is an immutable `SegaPatch` (concept list + settings) handed to `host.patch_cond_guidance`: the
concepts' predictions come from the same batched UNet call as cond and uncond, and `SegaPatch.combine` replaces
the CFG step. Chaining builds a new `SegaPatch` with one more concept and installs it on the next clone, so the
upstream MODEL keeps its own list. The momentum ν and the attention maps live in the host's per-run state dict.
`run` is the whole LEDITS / LEDITS++ edit (inversion, concepts, the Edit-friendly DDPM sampler) of LEDITS Edit.

Flow-matching DiTs (FLUX, SD3, Qwen-Image) take the same patch and run: the concepts act on the velocity v (ComfyUI's
cfg "noise" of a CONST model is σ·v) with the FLUX semantic guidance pipeline's formula (core/sega_flow.py: simple
SEGA without a negative or at cfg 1, true CFG otherwise; per-token thresholds), LEDITS++ mode without
cross-attention masks (a DiT has no cross-attention), and `run` inverts with the edit-friendly flow inversion
(core/flow_inversion.py) on the model's "simple" schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch

from . import ddpm_inversion as ef
from . import flow_inversion as fi
from . import host
from . import sega
from . import sega_flow

KEY = "dragedit_sega"
MODES = ("SEGA", "LEDITS++")
LEDITS_PP_NOISE_MASK_MAX_T = 800.0
"""LEDITS++ intersects the attention mask with the noise-quantile mask only while t ≤ 800 (diffusers)."""


# ---------------------------------------------------------------------------------------------------- inversion

def invert(model: Any, samples: torch.Tensor, positive: Any, negative: Any, cfg: float, steps: int, *, skip: int = 0,
           eta: float = 1.0, seed: int = 0, on_step: Optional[Callable[[int, int], None]] = None) -> ef.Inversion:
    """Edit-friendly DDPM inversion of LATENT `samples` on the model's DDIM grid of `steps` (first `skip` noisiest steps
    dropped), with the CFG denoiser of (positive, negative, cfg) run inside ComfyUI's sampling machinery (den.x0)."""
    sigmas = host.ddim_sigmas(model, int(steps))
    holder: dict = {}

    def loop(den: host.Denoiser, x: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        inv = ef.invert_edit_friendly(den.x0, x, sig.to(x.device), seed=seed, eta=eta, skip=skip, callback=on_step)
        holder["inv"], holder["calls"] = inv, den.calls
        return inv.xts[-1]

    host.session(host.clone(model), positive, negative, cfg if negative is not None else 1.0, samples, sigmas, loop,
                 seed=seed)
    inv = holder["inv"]
    off = getattr(model, "offload_device", None) or torch.device("cpu")
    return replace(inv.to(device=off), sigmas=inv.sigmas.detach().cpu(), model_id=id(host.base_model(model)))


def invert_start(model: Any, samples: torch.Tensor, positive: Any, negative: Any, cfg: float, steps: int, *,
                 skip: int = 0, eta: float = 1.0, seed: int = 0, on_step: Optional[Callable[[int, int], None]] = None
                 ) -> tuple[torch.Tensor, ef.Inversion]:
    """`invert`, plus its start latent as LATENT samples (what DDPM Inversion outputs)."""
    inv = invert(model, samples, positive, negative, cfg, steps, skip=skip, eta=eta, seed=seed, on_step=on_step)
    return host.process_out(model, inv.start.clone()), inv


def mask_region(extra_args: dict, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The region an edit-friendly sampler may change on the model it samples (an `ef.RegionFn`): the union (max)
    of the SEGA concepts' user masks, area-resized to the latent x, when every concept has one; None (everywhere)
    when a concept has none or no SEGA patch is on the model. Outside it the sampler keeps the inversion's own
    states, so the image there is the reconstruction."""
    patch = host.cond_guidance_payload_in((extra_args or {}).get("model_options", {}), KEY)
    if not isinstance(patch, SegaPatch) or not patch.entries or any(e.mask is None for e in patch.entries):
        return None
    return torch.stack(patch.user_masks_at(x)).amax(0)


def edit_friendly_sampler(inv: ef.Inversion, apply_residual: bool = True,
                          wrap: Optional[Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]] = None
                          ) -> Any:
    """The SAMPLER (a KSAMPLER) that replays the inversion's noise maps, keeping the image outside the SEGA
    concepts' masks (`mask_region`); `wrap` may wrap its sampler function (the node's schedule check)."""
    fn = ef.make_sampler_fn(inv, apply_residual=apply_residual, region=mask_region)
    return host.ksampler(wrap(fn) if wrap is not None else fn)


def run(model: Any, samples: torch.Tensor, source: Any, negative: Any, patch: Optional["SegaPatch"], *, mode: str,
        steps: int, skip: int, source_cfg: float, target_cfg: float, seed: int, target: Any = None,
        on_step: Optional[Callable[[int, int], None]] = None, keep_structure: bool = False) -> torch.Tensor:
    """LEDITS / LEDITS++ whole run (what LEDITS Edit calls): edit-friendly DDPM inversion of LATENT `samples`, the
    SEGA concepts of `patch` (None: the prompt switch to `target` alone) on the model, and the Edit-friendly DDPM
    sampler replaying the inversion's noise maps. LEDITS++ samples with ε_u + concept terms only, so it inverts with
    the same prediction: the negative at cfg 1 (diffusers' LEditsPP invert with its default empty source prompt);
    SEGA inverts with the source at source_cfg. A flow model goes through `run_flow`. Returns the edited LATENT
    samples. `keep_structure`: the structure lock of `run_flow` (flow models only)."""
    if host.is_flow(model):
        return run_flow(model, samples, source, negative, patch, mode=mode, steps=steps, skip=skip,
                        source_cfg=source_cfg, target_cfg=target_cfg, seed=seed, target=target, on_step=on_step,
                        keep_structure=keep_structure)
    pp = mode == "LEDITS++"
    start, inv = invert_start(model, samples, negative if pp else source, negative, 1.0 if pp else source_cfg,
                              steps, skip=skip, eta=1.0, seed=seed, on_step=on_step)
    edit_model = apply(model, patch) if patch is not None else model
    sampler = edit_friendly_sampler(inv)
    cb = (lambda *a: on_step(0, inv.steps)) if on_step is not None else None
    return host.sample_with_sampler(edit_model, target if target is not None else source, negative, float(target_cfg),
                                    sampler, inv.sigmas.clone(), start, seed=int(seed), callback=cb)


def run_flow(model: Any, samples: torch.Tensor, source: Any, negative: Any, patch: Optional["SegaPatch"], *, mode: str,
             steps: int, skip: int, source_cfg: float, target_cfg: float, seed: int, target: Any = None,
             on_step: Optional[Callable[[int, int], None]] = None, keep_structure: bool = False) -> torch.Tensor:
    """LEDITS on a flow-matching DiT: edit-friendly flow inversion of LATENT `samples` on the model's "simple" grid of
    `steps` (first `skip` dropped), then the Edit-friendly Flow sampler replaying its noise maps on the model with
    the SEGA concepts of `patch`, started from the inverted state (InvertedNoise). Prompts and cfg as `run`.
    `keep_structure`: in the single-stream blocks every edit call attends with the image-token queries and keys of
    the same call on the inversion's state of its step (`host.dit_qk`: the source's attention maps, so shapes stay
    while the concepts change colours; one more model call per call; no effect on a DiT without single-stream
    blocks, SD3 / Qwen-Image)."""
    pp = mode == "LEDITS++"
    sigmas = host.scheduler_sigmas(model, int(steps))[int(skip):]
    inv = fi.run_edit_friendly(model, samples, negative if pp else source, negative, 1.0 if pp else source_cfg,
                               sigmas, eta=1.0, seed=seed, on_step=on_step)
    edit_model = apply(model, patch) if patch is not None else model
    if keep_structure and host.dit_qk.structure_blocks(model):
        edit_model = host.clone(edit_model)
        host.dit_qk.patch_source_attention(edit_model, inv.state_at)
    sampler = host.ksampler(fi.make_edit_friendly_sampler_fn(inv, region=mask_region))
    noise = fi.InvertedNoise(model, inv.start, float(sigmas[0]), seed=int(seed)).generate_noise({"samples": samples})
    cb = (lambda *a: on_step(0, inv.steps)) if on_step is not None else None
    return host.sample_with_sampler(edit_model, target if target is not None else source, negative, float(target_cfg),
                                    sampler, inv.sigmas.clone(), samples, seed=int(seed), callback=cb, noise=noise)


# ---------------------------------------------------------------------------------------------------- SEGA patch

@dataclass(frozen=True)
class ConceptEntry:
    """One edit concept on a model: its CONDITIONING, SEGA parameters and (LEDITS++) the number of its prompt
    tokens (after the start token, if the model's text encoder has one: host.text_start_tokens) whose
    cross-attention makes the implicit mask (0 = all but the start token and the last, padding included, as
    diffusers does)."""
    conditioning: Any
    concept: sega.SegaConcept
    tokens: int = 0
    mask: Optional[torch.Tensor] = None
    """The user's mask [H, W] (1 = the concept may act there; any resolution with the image's aspect, area-resized
    to the latent): diffusers LEDITS++'s `user_mask`, which multiplies the concept's guidance ψ_c. None = everywhere."""


@dataclass(frozen=True)
class SegaPatch:
    """Concepts and settings of the SEGA / LEDITS++ guidance on one MODEL (immutable; chaining makes a new one).
    mode "SEGA": ε̃ = CFG + γ (thresholds, warm-up, momentum); "LEDITS++": ε̃ = ε_u + Σ_c M_c ⊙ ψ_c (no
    target-prompt CFG, the positive is not evaluated), M from the noise quantile and optionally cross-attention.
    flow (set by `apply` for a flow-matching DiT): the same on the velocity, SEGA by the FLUX pipeline's formula
    (core/sega_flow.py) with per-token thresholds over `patch` × `patch` latent cells."""
    entries: tuple[ConceptEntry, ...] = ()
    momentum_scale: float = 0.1
    momentum_beta: float = 0.4
    mode: str = "SEGA"
    cross_attention_mask: bool = True
    flow: bool = False
    patch: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= float(self.momentum_beta) <= 1.0:
            raise ValueError(f"momentum beta must be in [0, 1], got {self.momentum_beta}")

    @property
    def concepts(self) -> list[sega.SegaConcept]:
        return [e.concept for e in self.entries]

    @property
    def uses_attention(self) -> bool:
        """True when the LEDITS++ cross-attention masks are recorded (never on a flow DiT: no cross-attention)."""
        return self.mode == "LEDITS++" and self.cross_attention_mask and not self.flow

    def with_concept(self, entry: ConceptEntry, **settings: Any) -> "SegaPatch":
        """A new patch with one more concept (settings given here replace the chain's)."""
        return replace(self, entries=self.entries + (entry,), **settings)

    def _user_masks(self, call: host.CondGuidanceCall, like: torch.Tensor) -> list[Optional[torch.Tensor]]:
        """Each concept's user mask resized to the latent `like` (None: none), once per run and latent shape (kept
        in the per-run state)."""
        key = ("user_masks", tuple(like.shape[-2:]), str(like.device), like.dtype)
        got = call.run.get(key)
        if got is None:
            got = call.run[key] = self.user_masks_at(like)
        return got

    def user_masks_at(self, like: torch.Tensor) -> list[Optional[torch.Tensor]]:
        """Each concept's user mask area-resized to the latent `like` as [1, 1, h, w] (None: it has none)."""
        return [None if e.mask is None else sega.user_mask_at(e.mask, like) for e in self.entries]

    def combine(self, call: host.CondGuidanceCall) -> torch.Tensor:
        """The guided cfg "noise" σ·ε̃ of one denoiser call (see the class docstring)."""
        x, sig = call.x, call.sigma.to(call.x.device, call.x.dtype)
        s = sig.reshape(-1, *([1] * (x.ndim - 1))) if sig.numel() > 1 else sig.reshape(())
        eps_u = call.noise_uncond / s
        eps_c = [n / s for n in call.noise_extra]
        simple = self.flow and self.mode == "SEGA" and not (call.has_uncond and call.cond_scale > 1.0)
        ref = call.noise_cond / s if simple else eps_u     # what the concept terms are taken against
        eps_c = [sega.masked_concept(e, ref, m) for e, m in zip(eps_c, self._user_masks(call, x))]
        if self.mode == "LEDITS++":
            masks = None
            if self.uses_attention:
                masks = []
                for c, m in zip(self.concepts, call.attn_maps):
                    if m is None:
                        raise host.HostError("LEDITS++ cross-attention masks: no attention was recorded for a concept "
                                             "(the probed layers did not run)")
                    masks.append(sega.attention_mask(m.to(eps_u.dtype), c.threshold, x.shape[-2:], x.shape[1]))
            active = call.timestep <= LEDITS_PP_NOISE_MASK_MAX_T
            term = sega.ledits_pp_term(call.step, eps_u, eps_c, self.concepts, masks, True, active)
            return call.noise_uncond + term * s
        state = call.run.get("sega_state")
        if state is None:
            state = call.run["sega_state"] = sega.SegaState()
        if self.flow:     # FLUX semantic guidance: simple SEGA (no negative / cfg 1) or true CFG, on the velocity
            term = sega_flow.flow_sega_term(call.step, call.steps, ref, eps_c, self.concepts, state,
                                            self.momentum_scale, self.momentum_beta, self.patch)
            return call.cfg() + term * s
        gamma = sega.sega_term(call.step, eps_u, eps_c, self.concepts, state, self.momentum_scale, self.momentum_beta)
        return call.cfg() + gamma * s


def sega_patch_of(model: Any) -> Optional[SegaPatch]:
    """The SEGA patch already on this MODEL (an upstream SEGA Guidance node), or None."""
    p = host.cond_guidance_payload(model, KEY)
    return p if isinstance(p, SegaPatch) else None


def attention_layers(model: Any) -> list[host.AttnLayer]:
    """LEDITS++'s probed cross-attention layers: encoder and decoder transformers at 1/4 of the latent resolution
    (SD1.5: input 7, 8 and output 3, 4, 5; diffusers down_blocks.2 / up_blocks.1)."""
    return host.select_layers(model, part=("input", "output"), levels=[4])


def apply(model: Any, patch: SegaPatch) -> Any:
    """A clone of `model` carrying `patch` (replacing an upstream SEGA patch)."""
    if not patch.entries:
        raise ValueError("SEGA needs at least one concept")
    flow = host.is_flow(model)
    if flow and patch.mode == "LEDITS++" and patch.cross_attention_mask:
        raise host.HostError("a flow-matching DiT has no cross-attention layers for LEDITS++'s attention masks: set "
                             "cross_attention_mask to false (the concepts are then masked by their noise quantile)")
    patch = replace(patch, flow=flow, patch=host.dit.patch_size(model) if flow else 1)
    run = host.clone(model)
    layers = attention_layers(model) if patch.uses_attention else None
    if patch.uses_attention and not layers:
        raise host.HostError("this model has no cross-attention layers at 1/4 of the latent resolution, where "
                             "LEDITS++ reads its attention masks")
    host.patch_cond_guidance(run, KEY, [e.conditioning for e in patch.entries], patch.combine, payload=patch,
                             drop_positive=patch.mode == "LEDITS++", attn_layers=layers,
                             attn_tokens=[e.tokens for e in patch.entries] if layers else None,
                             uncond_optional=flow and patch.mode == "SEGA")
    return run
