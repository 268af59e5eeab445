"""Guidance that any sampler applies, through ComfyUI's sampler functions.

Post-CFG guidance (DragonDiffusion's feature guidance): a sampler_post_cfg_function that may run one extra,
differentiable UNet pass truncated after the deepest feature block (positive conditioning only, without this
pack's K/V record/inject patches: the reference's separate plain "estimator"), and a per-sampling-run state dict
that an OUTER_SAMPLE wrapper opens and drops, so caches live exactly as long as one sampling run.

Cond guidance (SEGA / LEDITS++ edit concepts): extra conditionings evaluated in the same batched UNet call as cond
and uncond, and a combine function that takes the place of the CFG step. An OUTER_SAMPLE wrapper adds each extra
CONDITIONING to the running guider's conds (host.internals.guider_extra_conds) so ComfyUI processes it exactly like
positive and negative; a sampler_calc_cond_batch_function appends those processed conds to [cond, uncond] and keeps
the extra x̂0's for the sampler_cfg_function, which hands everything to `combine`. Optional attn2 probes record
the extra conds' cross-attention probabilities (LEDITS++ implicit masks). Per-run state (momentum, maps) lives in a
dict that the wrapper opens and drops with each sampling run; the patch object itself is immutable and shared by
clones.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Sequence

import torch

from . import internals
from .errors import HostError
from .facts import concept_token_range, model_sampling, text_start_tokens
from .features import FeatureCapture, FeatureStore, install_capture
from .handle import SharedHandle
from .kv import chunks, without_kv_patches
from .session import grad_enabled
from .unet import AttnLayer, decoder_blocks


# --------------------------------------------------------------------------------------------------------------
# post-CFG guidance
# --------------------------------------------------------------------------------------------------------------

class GuidanceCall:
    """One denoiser call as a post-CFG guidance sees it: sampler state x, σ, the CFG result x̂0, the run's state
    dict, and `features(x)`, the extra truncated UNet pass (call it inside `differentiable()`)."""

    def __init__(self, args: dict, blocks: Sequence[int], run: dict, capture: FeatureCapture):
        self._args = args
        self._capture = capture
        self.blocks = [int(b) for b in blocks]
        self.run = run
        self.x: torch.Tensor = args["input"]
        self.x0: torch.Tensor = args["denoised"]
        self.sigma = float(torch.as_tensor(args["sigma"]).reshape(-1)[0])
        self.feature_calls = 0

    @property
    def model(self) -> Any:
        """The comfy BaseModel being sampled."""
        return self._args["model"]

    def differentiable(self) -> contextlib.AbstractContextManager:
        """Context for feature passes and backward: out of inference mode, grad on, weights aliased (no copy)."""
        return grad_enabled(self._args["model"])

    def features(self, x: torch.Tensor, blocks: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
        """Outputs of `blocks` (default: the patch's blocks; cond rows, in that order) for sampler state x at this
        call's σ: one UNet call on the positive conditioning, without this pack's K/V patches, stopped after the
        deepest block. Differentiable w.r.t. x when x requires grad (inside `differentiable()`)."""
        import comfy.samplers
        blocks = self.blocks if blocks is None else [int(b) for b in blocks]
        store = FeatureStore()
        store.truncate = True
        mo = without_kv_patches(self._args["model_options"])
        if not x.requires_grad and x.is_inference():
            with torch.inference_mode(False):
                x = x.detach().clone()
        cond = self._args["cond"]
        if not cond:
            raise HostError("feature guidance needs a positive conditioning")
        with self._capture.activate(store, blocks):
            comfy.samplers.calc_cond_batch(self.model, [cond], x, self._args["sigma"], mo)
        self.feature_calls += 1
        if store.calls != 1:
            raise HostError(f"feature guidance expected one UNet call for the positive conditioning, ComfyUI made "
                            f"{store.calls} (area / timestep-ranged conditionings are not supported here)")
        out = []
        for b in blocks:
            f = store.features.get(b)
            if f is None:
                raise HostError(f"output block {b} did not run during the feature pass")
            if f.shape[0] != x.shape[0]:  # several cond entries batched together: average them like calc_cond_batch
                f = f.reshape(f.shape[0] // x.shape[0], x.shape[0], *f.shape[1:]).mean(0)
            out.append(f)
        return out


class _GuidanceRun(SharedHandle):
    """OUTER_SAMPLE wrapper: opens a fresh state dict for one sampling run and drops it when the run ends."""

    def __init__(self) -> None:
        self.state: Optional[dict] = None

    def __call__(self, executor, *args, **kwargs):
        prev, self.state = self.state, {}
        try:
            return executor(*args, **kwargs)
        finally:
            self.state = prev


class _PostCfgGuidance(SharedHandle):
    """sampler_post_cfg_function: hands each call to `fn(GuidanceCall)`; fn returns the new x̂0 or None."""

    def __init__(self, fn: Callable[[GuidanceCall], Optional[torch.Tensor]], blocks: Sequence[int], run: _GuidanceRun,
                 capture: FeatureCapture):
        self.fn, self.blocks, self.run, self.capture = fn, list(blocks), run, capture

    def __call__(self, args: dict) -> torch.Tensor:
        state = self.run.state if self.run.state is not None else {}
        out = self.fn(GuidanceCall(args, self.blocks, state, self.capture))
        return args["denoised"] if out is None else out


def patch_post_cfg_guidance(model: Any, fn: Callable[[GuidanceCall], Optional[torch.Tensor]],
                            blocks: Sequence[int]) -> Any:
    """Make every sampler of `model` (a clone) pass each CFG result x̂0 through fn(GuidanceCall) -> new x̂0 or None;
    GuidanceCall.features gives outputs of output blocks `blocks`. GuidanceCall.run lives for one sampling run."""
    import comfy.patcher_extension as pe
    n = len(decoder_blocks(model))
    bad = [b for b in blocks if not 0 <= int(b) < n]
    if bad or not blocks:
        raise HostError(f"output block(s) {list(blocks)} invalid: this UNet has output blocks 0..{n - 1}")
    run = _GuidanceRun()
    model.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, f"dragedit_guidance_run_{id(run)}", run)
    capture = install_capture(model, None, blocks, f"dragedit_guidance_features_{id(run)}")   # active in features()
    model.set_model_sampler_post_cfg_function(_PostCfgGuidance(fn, blocks, run, capture))
    return model


# --------------------------------------------------------------------------------------------------------------
# cond guidance
# --------------------------------------------------------------------------------------------------------------

class CondGuidanceCall:
    """One denoiser call as a cond-guidance combine function sees it. Noise tensors are ComfyUI's cfg "noise"
    x − x̂0 = σ·ε̂ (batch B); `noise_extra[j]` belongs to extra conditioning j; `attn_maps[j]` is its cross-attention
    map [B, h, w] (probabilities summed over its tokens, averaged over heads and probed layers) or None; `steps` is
    the run's step count; `has_uncond` is False when no negative was connected (noise_uncond is then noise_cond)."""

    def __init__(self, args: dict, noise_extra: list[torch.Tensor], run: dict, step: int, timestep: float,
                 attn_maps: list[Optional[torch.Tensor]], prev_cfg: Optional[Callable[[dict], torch.Tensor]],
                 steps: int = 0, has_uncond: bool = True):
        self._args, self._prev_cfg = args, prev_cfg
        self.x: torch.Tensor = args["input"]
        self.sigma: torch.Tensor = torch.as_tensor(args["sigma"]).reshape(-1)
        self.cond_scale = float(args["cond_scale"])
        self.noise_cond: torch.Tensor = args["cond"]
        self.noise_uncond: torch.Tensor = args["uncond"]
        self.noise_extra = noise_extra
        self.run = run
        self.step = int(step)
        self.timestep = float(timestep)
        self.attn_maps = attn_maps
        self.steps = int(steps)
        self.has_uncond = bool(has_uncond)

    def cfg(self) -> torch.Tensor:
        """The CFG noise the model would use without this guidance (a cfg function patched in before, or plain
        uncond + s·(cond − uncond))."""
        if self._prev_cfg is not None:
            return self._prev_cfg(self._args)
        return self.noise_uncond + (self.noise_cond - self.noise_uncond) * self.cond_scale


class _CondGuidancePatch(SharedHandle):
    """The sampler_cfg_function (`__call__`) of one cond guidance, with its OUTER_SAMPLE wrapper (`outer`) and
    sampler_calc_cond_batch_function (`calc`); immutable apart from `run`, the state of the sampling run in
    progress."""

    def __init__(self, key: str, conds: Sequence[Any], combine: Callable[[CondGuidanceCall], torch.Tensor], payload: Any,
                 drop_positive: bool, attn_tokens: Optional[Sequence[int]], prev_cfg: Optional[Callable],
                 prev_calc: Optional[Callable], attn_start: int = 1, uncond_optional: bool = False):
        self.key, self.conds, self.combine, self.payload = key, list(conds), combine, payload
        self.drop_positive = bool(drop_positive)
        self.uncond_optional = bool(uncond_optional) and not self.drop_positive
        self.attn_tokens = list(attn_tokens) if attn_tokens is not None else None
        self.attn_start = int(attn_start)   # where the concept's words begin in its context
        self.ctx_lens = [int(c[0][0].shape[1]) if c and c[0][0] is not None and c[0][0].ndim == 3 else 0
                         for c in self.conds]  # token counts, to fold ComfyUI's repeated contexts (LCM padding)
        self.prev_cfg, self.prev_calc = prev_cfg, prev_calc
        self.outer, self.calc = _Outer(self), _Calc(self)
        self.run: Optional[dict] = None

    def cond_key(self, j: int) -> str:
        return f"{self.key}_{j}"

    def _state(self) -> dict:
        if self.run is None:
            raise HostError("edit concepts were evaluated outside a sampling run (a guider that skips ComfyUI's "
                            "OUTER_SAMPLE stage is not supported)")
        return self.run

    def __call__(self, args: dict) -> torch.Tensor:
        run = self._state()
        extra_x0 = run.pop("extra_x0", None)
        if extra_x0 is None:
            raise HostError("the edit concepts' predictions are missing at the CFG step: this guider does not use "
                            "ComfyUI's standard CFG path (use KSampler, SamplerCustom or CFGGuider)")
        x = args["input"]
        sigma = torch.as_tensor(args["sigma"]).reshape(-1)
        grid = internals.run_sigmas(args.get("model_options") or {})
        if grid is None:
            raise HostError("this ComfyUI does not report the run's sigmas (transformer_options['sample_sigmas'])")
        g = torch.as_tensor(grid).detach().to("cpu", torch.float64).reshape(-1)
        step = int(torch.argmin((g - float(sigma[0])).abs()).item())
        ts = float(model_sampling(args["model"]).timestep(sigma[:1].float().cpu())[0])
        maps: list[Optional[torch.Tensor]] = [None] * len(extra_x0)
        rec = run.get("attn")
        if rec:
            for j, (s, n) in rec.items():
                if j < len(maps) and n > 0:
                    maps[j] = s / n
        call = CondGuidanceCall(args, [x - e for e in extra_x0], run, step, ts, maps, self.prev_cfg,
                                steps=int(g.numel()) - 1, has_uncond=run.get("has_uncond", True))
        return self.combine(call)


class _Outer(SharedHandle):
    """OUTER_SAMPLE wrapper of a cond guidance: add the extra conds to the guider's conds (processed by ComfyUI with
    positive/negative) and open the run's state for the duration of this sampling run."""

    def __init__(self, owner: _CondGuidancePatch):
        self.owner = owner

    def __call__(self, executor, *args, **kwargs):
        p = self.owner
        guider = executor.class_obj
        with internals.guider_extra_conds(guider, {p.cond_key(j): c for j, c in enumerate(p.conds)}) as added:
            prev, p.run = p.run, {"guider": guider, "keys": added}
            try:
                return executor(*args, **kwargs)
            finally:
                p.run = prev


class _Calc(SharedHandle):
    """sampler_calc_cond_batch_function of a cond guidance: evaluate cond, uncond and every extra cond in one
    calc_cond_batch; return [cond, uncond] and keep the rest for the cfg function."""

    def __init__(self, owner: _CondGuidancePatch):
        self.owner = owner

    def __call__(self, args: dict) -> list[torch.Tensor]:
        import comfy.samplers
        p = self.owner
        run = p._state()
        conds = list(args["conds"])
        has_uncond = len(conds) >= 2 and bool(conds[1])
        run["has_uncond"] = has_uncond
        if not has_uncond and p.uncond_optional:
            conds = [conds[0], conds[0]]          # no negative: the positive stands in for it
        elif not has_uncond:
            raise HostError("edit concepts need the negative (unconditional) conditioning: connect a negative prompt "
                            "(an empty CLIP Text Encode) to the sampler or guider")
        extra = internals.guider_conds(run["guider"], run["keys"])
        if any(e is None for e in extra):
            raise HostError("the edit concepts' conditionings were lost before sampling (another patch replaced the "
                            "guider's conds)")
        if p.drop_positive:
            conds[0] = None
        run["attn"] = {} if p.attn_tokens is not None else None
        all_conds = conds[:2] + extra
        if p.prev_calc is not None:
            out = p.prev_calc(dict(args, conds=all_conds))
        else:
            out = comfy.samplers.calc_cond_batch(args["model"], all_conds, args["input"], args["sigma"],
                                                 args["model_options"])
        run["extra_x0"] = list(out[2:2 + len(extra)])
        first = out[1] if p.drop_positive else out[0]
        return [first, out[1]]


class _Attn2Probe(SharedHandle):
    """attn2 replace patch: plain cross-attention (or the patch that was there), plus, for rows of extra conds, the
    attention probabilities of their tokens recorded into the owner's run state."""

    def __init__(self, owner: _CondGuidancePatch, layer: AttnLayer, prev: Optional[Callable]):
        self.owner, self.layer, self.prev = owner, layer, prev

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict) -> torch.Tensor:
        run = self.owner.run
        rec = run.get("attn") if run is not None else None
        if rec is not None:
            self._record(rec, q, k, extra)
        if self.prev is not None:
            return self.prev(q, k, v, extra)
        from comfy.ldm.modules import attention as A
        return A.optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"))

    def _record(self, rec: dict, q: torch.Tensor, k: torch.Tensor, extra: dict) -> None:
        heads = int(extra["n_heads"])
        tokens = self.owner.attn_tokens or []
        shape = extra.get("original_shape") or [0, 0, 1, q.shape[1]]
        h, w = self.layer.tokens(shape[-2:])
        if h * w != q.shape[1]:
            return
        for idx, rows in chunks(extra, q.shape[0]):
            j = idx - 2
            if j < 0 or j >= len(tokens):
                continue
            qj, kj = q[rows].float(), k[rows].float()
            n, lq, dim = qj.shape
            dh = dim // heads
            qh = qj.reshape(n, lq, heads, dh).transpose(1, 2)
            kh = kj.reshape(n, kj.shape[1], heads, dh).transpose(1, 2)
            probs = torch.softmax(qh @ kh.transpose(-1, -2) * dh ** -0.5, dim=-1)  # [n, heads, HW, T]
            t_own = self.owner.ctx_lens[j]
            if t_own and probs.shape[-1] != t_own and probs.shape[-1] % t_own == 0:
                # batched with a longer context: ComfyUI repeated this one's tokens; fold the copies back together
                probs = probs.reshape(*probs.shape[:-1], probs.shape[-1] // t_own, t_own).sum(-2)
            lo, hi = concept_token_range(probs.shape[-1], int(tokens[j] or 0), self.owner.attn_start)
            m = probs[..., lo:hi].sum(-1).sum(1).reshape(n, h, w)  # summed over heads; divided by the count
            s, c = rec.get(j, (0.0, 0))
            rec[j] = (s + m, c + heads)


def _outer_key(key: str) -> str:
    return f"dragedit_cond_guidance_{key}"


def cond_guidance_patch(model: Any, key: str) -> Optional[_CondGuidancePatch]:
    """The cond guidance installed on `model` under `key`, or None."""
    import comfy.patcher_extension as pe
    for w in model.get_wrappers(pe.WrappersMP.OUTER_SAMPLE, _outer_key(key)):
        if isinstance(w, _Outer):
            return w.owner
    return None


def cond_guidance_payload(model: Any, key: str) -> Any:
    """The payload object given to `patch_cond_guidance` for `key` on this model (for chaining), or None."""
    p = cond_guidance_patch(model, key)
    return None if p is None else p.payload


def cond_guidance_payload_in(model_options: dict, key: str) -> Any:
    """The payload of the cond guidance under `key` in the model options a sampler is given (a KSAMPLER function's
    extra_args["model_options"]), or None: how a SAMPLER reads the guidance of the model it samples. ComfyUI merges
    the patcher's wrappers into those options when it prepares sampling (sampler_helpers.prepare_model_patcher, 0.3.64
    and 0.3.75); tests/host/test_ledits.py::test_mask_region_is_the_union_of_the_concepts_masks_read_from_the_sampled_model
    fails if that changes."""
    import comfy.patcher_extension as pe
    for w in pe.get_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, _outer_key(key), model_options or {},
                                      is_model_options=True):
        if isinstance(w, _Outer):
            return w.owner.payload
    return None


def patch_cond_guidance(model: Any, key: str, conds: Sequence[Any], combine: Callable[[CondGuidanceCall], torch.Tensor],
                        *, payload: Any = None, drop_positive: bool = False,
                        attn_layers: Optional[Sequence[AttnLayer]] = None,
                        attn_tokens: Optional[Sequence[int]] = None, uncond_optional: bool = False) -> Any:
    """Make every sampler of `model` (a clone) evaluate the extra CONDITIONINGs `conds` in the same batched UNet
    call as cond and uncond and return combine(CondGuidanceCall) (a cfg "noise" x − x̂0) as the CFG result. A guidance
    already installed under `key` is replaced (chained cfg / calc functions of others are kept). drop_positive:
    the positive is not evaluated (cond := uncond). attn_layers + attn_tokens: record the extra conds' cross-attention
    maps on those layers, summed over each one's first attn_tokens[j] tokens after the start token, if the encoder
    has one (`text_start_tokens`; 0 = all but the start token and the last, as diffusers' LEDITS++ does: its token
    count includes the padding; `concept_token_range`). uncond_optional: a run without a negative evaluates the
    positive in its place (CondGuidanceCall.has_uncond False) instead of failing (simple SEGA on FLUX)."""
    import comfy.patcher_extension as pe
    old = cond_guidance_patch(model, key)
    prev_cfg = internals.model_function(model.model_options, "sampler_cfg_function")
    if old is not None and prev_cfg is old:
        prev_cfg = old.prev_cfg
    prev_calc = internals.model_function(model.model_options, "sampler_calc_cond_batch_function")
    if old is not None and isinstance(prev_calc, _Calc) and prev_calc.owner is old:
        prev_calc = old.prev_calc
    if attn_layers and attn_tokens is None:
        attn_tokens = [0] * len(conds)
    patch = _CondGuidancePatch(key, conds, combine, payload, drop_positive, attn_tokens if attn_layers else None,
                               prev_cfg, prev_calc, attn_start=text_start_tokens(model),
                               uncond_optional=uncond_optional)
    model.remove_wrappers_with_key(pe.WrappersMP.OUTER_SAMPLE, _outer_key(key))
    model.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, _outer_key(key), patch.outer)
    model.set_model_sampler_calc_cond_batch_function(patch.calc)
    model.set_model_sampler_cfg_function(patch, disable_cfg1_optimization=True)
    for layer in (attn_layers or []):
        cur = internals.replace_patch(model.model_options, "attn2", layer.key)
        if isinstance(cur, _Attn2Probe) and cur.owner.key == key:
            cur = cur.prev
        model.set_model_attn2_replace(_Attn2Probe(patch, layer, cur), layer.part, layer.number, layer.block_index)
    if old is not None and old.attn_tokens is not None and not attn_layers:  # drop the old probes
        for lk, cur in internals.replace_patches(model.model_options, "attn2").items():
            if isinstance(cur, _Attn2Probe) and cur.owner.key == key:
                if cur.prev is None:
                    internals.drop_replace_patch(model, "attn2", lk)
                else:
                    model.set_model_patch_replace(cur.prev, "attn2", *lk)
    return model
