"""Every place where the host reaches past ComfyUI's public patch mechanisms, one documented function each.

ComfyUI offers no public mechanism for what these functions do. Each one names the ComfyUI behaviour it relies
on; tests/test_comfy_contract.py checks each behaviour on the installed ComfyUI and fails with a message naming
the change when a ComfyUI release changes it. The rest of the host uses ModelPatcher methods, patcher_extension
wrappers and model_options functions only. Checked against ComfyUI 0.3.64 and 0.3.75.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import torch


# --------------------------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------------------------

def model_config(unet_config: dict, latent_format: Any, text_start_tokens: int) -> Any:
    """A ComfyUI model config (a `comfy.supported_models_base.BASE` subclass instance) for a UNet config that
    matches no checkpoint ComfyUI knows: the tiny test models and the shapes demo model.

    Relies on: `BASE(unet_config)` takes the config dict and the class attributes `unet_config`,
    `unet_extra_config`, `latent_format`, as every model in comfy/supported_models.py declares them."""
    import comfy.supported_models_base

    class _Config(comfy.supported_models_base.BASE):
        unet_extra_config: dict = {}

    _Config.unet_config = dict(unet_config)
    _Config.latent_format = latent_format
    _Config.text_start_tokens = int(text_start_tokens)
    return _Config(dict(unet_config))


# --------------------------------------------------------------------------------------------------------------
# reading and removing patches that ModelPatcher only lets one add
# --------------------------------------------------------------------------------------------------------------

def replace_patches(model_options: dict, name: str) -> dict:
    """The replace patches `name` ("attn1", "attn2"; "dit" for DiT blocks, keyed ("double_block" | "single_block", i))
    of model_options, keyed (part, number[, index]): read only.

    Relies on: `set_model_patch_replace` stores them in
    model_options["transformer_options"]["patches_replace"][name][(block_name, number, transformer_index)]
    (comfy.model_patcher.set_model_options_patch_replace)."""
    return dict(((model_options.get("transformer_options") or {}).get("patches_replace") or {}).get(name) or {})


def replace_patch(model_options: dict, name: str, key: tuple) -> Optional[Callable]:
    """The replace patch that ComfyUI would call for the layer key (part, number, index), or None: the per-index
    entry, else the per-block one (the lookup of BasicTransformerBlock.forward)."""
    rep = replace_patches(model_options, name)
    return rep.get(tuple(key)) or rep.get(tuple(key)[:2])


def with_replace_patches(model_options: dict, name: str, patches: dict) -> dict:
    """A copy of model_options whose replace patches `name` are exactly `patches`; the input is not mutated (the
    copy-on-write of comfy.model_patcher.set_model_options_patch_replace, which can add an entry but not remove
    one). Relies on the layout that `replace_patches` reads."""
    mo = dict(model_options)
    to = dict(mo.get("transformer_options") or {})
    pr = dict(to.get("patches_replace") or {})
    pr[name] = dict(patches)
    to["patches_replace"] = pr
    mo["transformer_options"] = to
    return mo


def drop_replace_patch(model: Any, name: str, key: tuple) -> None:
    """Remove the replace patch `name` at `key` from `model` (a clone), leaving every other entry; ModelPatcher
    can only set one. Copy-on-write like set_model_patch_replace, so clones sharing the dicts are not touched."""
    kept = {k: p for k, p in replace_patches(model.model_options, name).items() if k != tuple(key)}
    model.model_options = with_replace_patches(model.model_options, name, kept)


def model_function(model_options: dict, name: str) -> Optional[Callable]:
    """The sampler function stored under `name` ("sampler_cfg_function", "sampler_calc_cond_batch_function") by
    ModelPatcher.set_model_sampler_cfg_function / set_model_sampler_calc_cond_batch_function, or None: read so a
    new function can chain to the one it replaces. Relies on those setters storing the function under that key."""
    return (model_options or {}).get(name)


def run_sigmas(model_options: dict) -> Optional[torch.Tensor]:
    """The sigmas of the sampling run in progress, seen from a cfg function's args["model_options"], or None.
    Relies on: CFGGuider.inner_sample sets transformer_options["sample_sigmas"]."""
    return ((model_options or {}).get("transformer_options") or {}).get("sample_sigmas")


# --------------------------------------------------------------------------------------------------------------
# the UNet call
# --------------------------------------------------------------------------------------------------------------

def diffusion_model_call(args: Sequence[Any], kwargs: dict) -> tuple[torch.Tensor, dict]:
    """(x, transformer_options) of a call that a DIFFUSION_MODEL wrapper sees. Relies on: UNetModel._forward's
    signature (x, timesteps, context, y, control, transformer_options, ...)."""
    to = kwargs.get("transformer_options")
    if to is None and len(args) >= 6:
        to = args[5]
    x = args[0] if args else kwargs["x"]
    return x, (to or {})


def apply_model_options(args: Sequence[Any], kwargs: dict) -> Optional[dict]:
    """The transformer_options of a call that an APPLY_MODEL wrapper sees (after the executor). Relies on:
    BaseModel.apply_model's signature (x, t, c_concat, c_crossattn, control, transformer_options, ...), the same in
    0.3.64 and 0.3.75; args here start after x."""
    to = kwargs.get("transformer_options")
    if to is None and len(args) >= 5:
        to = args[4]
    return to


def current_block(transformer_options: dict) -> tuple[str, int]:
    """(part, number) of the UNet block about to run, as a patch sees it ("output", i) in output_block_patch: the
    patch's h is then the output of output block i−1. Relies on UNetModel._forward setting
    transformer_options["block"] before each block and calling output_block_patch before output block i."""
    part, number = (transformer_options.get("block") or (None, -1))[:2]
    return part, int(number)


class StopUNet(Exception):
    """Raised inside a UNet call to end it early (`stop_unet`), caught by `run_stoppable`."""


def stop_unet() -> None:
    """End the UNet call in progress (feature-only calls: nothing after the deepest captured block is needed).
    ComfyUI has no public way to stop a UNet call: this raises StopUNet, which `run_stoppable` catches.
    Relies on: ComfyUI lets an exception from a patch propagate out of the diffusion model call unchanged."""
    raise StopUNet()


def run_stoppable(executor: Callable, args: Sequence[Any], kwargs: dict, unet: torch.nn.Module) -> torch.Tensor:
    """executor(*args, **kwargs) of a DIFFUSION_MODEL wrapper; a call ended by `stop_unet` returns zeros of the
    output's shape (the caller reads only captured features). Relies on `diffusion_model_call` and on the UNet
    output having `unet.out_channels` channels at the input's spatial size."""
    try:
        return executor(*args, **kwargs)
    except StopUNet:
        x, _ = diffusion_model_call(args, kwargs)
        return torch.zeros(x.shape[0], unet.out_channels, *x.shape[2:], device=x.device, dtype=x.dtype)


@contextlib.contextmanager
def output_block_hook(unet: torch.nn.Module, index: int, fn: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Call fn(output) with the output of UNet output block `index` while the context is open. Used only for the
    last output block: ComfyUI's output_block_patch sees block i's output as the input of block i+1, and no patch
    sees the last block's output. Relies on UNetModel.output_blocks (a ModuleList of TimestepEmbedSequential)."""
    handle = unet.output_blocks[int(index)][-1].register_forward_hook(lambda _m, _i, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------------------------------
# gradients through a model ComfyUI loaded under inference mode
# --------------------------------------------------------------------------------------------------------------

def _alias_non_inference(t: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) tensor that shares t's memory: no copy of the weights."""
    with torch.inference_mode(False):
        a = torch.from_dlpack(t.detach())
    if a.is_inference():  # pragma: no cover - fall back to a copy if this torch keeps the flag
        with torch.inference_mode(False):
            a = t.detach().clone()
    return a


@contextlib.contextmanager
def differentiable_weights(module: torch.nn.Module) -> Iterator[None]:
    """While open, every inference-tensor parameter and buffer of `module` is swapped for a normal tensor that
    aliases the same memory (no copy), so autograd can save it for backward; the originals are restored on exit.
    ComfyUI runs nodes under torch.inference_mode(), so weights it loads are inference tensors, and torch has no
    public way to use them in a differentiable call. Relies on: ComfyUI reads module weights through the module's
    attributes at call time (comfy.ops cast_bias_weight), not through references taken at load time."""
    swapped: list[tuple[torch.nn.Module, str, str, torch.Tensor]] = []
    try:
        for mod in module.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.is_inference():
                    swapped.append((mod, "_parameters", name, p))
                    mod._parameters[name] = torch.nn.Parameter(_alias_non_inference(p), requires_grad=False)
            for name, b in list(mod._buffers.items()):
                if b is not None and b.is_inference():
                    swapped.append((mod, "_buffers", name, b))
                    mod._buffers[name] = _alias_non_inference(b)
        yield
    finally:
        for mod, where, name, t in reversed(swapped):
            getattr(mod, where)[name] = t


# --------------------------------------------------------------------------------------------------------------
# the running guider
# --------------------------------------------------------------------------------------------------------------

def session_positive(model_k: Any) -> tuple[Any, Any]:
    """(BaseModel, processed positive conds) of the sampling run that called a KSAMPLER function with `model_k`,
    or (BaseModel, None) when the guider has no positive. Relies on: the sampler function's model is
    KSamplerX0Inpaint whose inner_model is the CFGGuider, which holds `inner_model` (the BaseModel) and `conds`
    (processed by process_conds) during the run."""
    guider = model_k.inner_model
    conds = getattr(guider, "conds", None)
    cond = conds.get("positive") if isinstance(conds, dict) else None
    return guider.inner_model, cond


@contextlib.contextmanager
def guider_extra_conds(guider: Any, conds: dict[str, Any]) -> Iterator[list[str]]:
    """While open, the CONDITIONINGs `conds` (key -> CONDITIONING) sit in the running guider's conds beside
    positive and negative, so ComfyUI's prepare_sampling / process_conds treat them exactly like those (areas,
    masks, timestep ranges, model conds such as SDXL's pooled/size ADM); removed on exit. Yields the keys.
    ComfyUI has no public way to add a conditioning to a run. Relies on: CFGGuider.outer_sample (the OUTER_SAMPLE
    wrapper's executor.class_obj) reads `self.conds` (a dict of lists of cond dicts) after the wrapper runs, and
    registered hooks are filtered with comfy.samplers.filter_registered_hooks_on_conds before that."""
    import comfy.sampler_helpers as sh
    import comfy.samplers
    from .errors import HostError
    target = getattr(guider, "conds", None)
    if not isinstance(target, dict):
        raise HostError("edit concepts need ComfyUI's standard guider (KSampler, SamplerCustom or CFGGuider)")
    added = []
    try:
        for k, c in conds.items():
            target[k] = [d.copy() for d in sh.convert_cond(c)]
            added.append(k)
        comfy.samplers.filter_registered_hooks_on_conds({k: target[k] for k in added}, guider.model_options)
        yield added
    finally:
        for k in added:
            target.pop(k, None)


def guider_conds(guider: Any, keys: Sequence[str]) -> list[Any]:
    """The processed conds under `keys` of the running guider (None where a key is missing); see
    `guider_extra_conds`."""
    conds = getattr(guider, "conds", None) or {}
    return [conds.get(k) for k in keys]


# --------------------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------------------

def vram_managed_normally() -> bool:
    """True when ComfyUI manages VRAM normally (NORMAL_VRAM or HIGH_VRAM), False in its low-VRAM modes.
    Relies on comfy.model_management.vram_state and VRAMState."""
    import comfy.model_management as mm
    return mm.vram_state in (mm.VRAMState.NORMAL_VRAM, mm.VRAMState.HIGH_VRAM)


def weights_still_to_load(model: Any) -> int:
    """Bytes of `model`'s weights not yet on its load device (0 for a patcher without size bookkeeping).
    Relies on ModelPatcher.model_size() and loaded_size()."""
    try:
        return max(int(model.model_size()) - int(model.loaded_size()), 0)
    except Exception:  # pragma: no cover - a patcher without size bookkeeping
        return 0


def release_pinned_host_memory() -> None:
    """Return cached pinned host blocks (freed K/V stores) to the system: torch keeps them for reuse otherwise.
    Relies on torch's private torch._C._host_emptyCache (skipped when this torch lacks it)."""
    fn = getattr(torch._C, "_host_emptyCache", None)
    if fn is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        fn()


def added_noise(model: Any, x: torch.Tensor, sigmas: Any) -> Optional[torch.Tensor]:
    """The noise a stock sampler node put into its start latent, seen from inside a KSAMPLER sampler function
    (`model` is k-diffusion's KSamplerX0Inpaint): x minus the model's noise scaling of the latent with zero noise
    (x = noise_scaling(sigma_0, noise, latent_image)). Not `model.noise`: ComfyUI's "ddim" is euler with
    inpaint_options random, whose model.noise is fresh noise for inpainting even when add_noise is off. Falls back on
    model.noise when the latent is unknown. Reads KSamplerX0Inpaint's latent_image / noise and the wrapped model's
    model_sampling (no public accessor; tests/host/test_comfy_contract.py)."""
    latent = getattr(model, "latent_image", None)
    sampling = getattr(getattr(getattr(model, "inner_model", None), "inner_model", None), "model_sampling", None)
    if isinstance(latent, torch.Tensor) and latent.shape == x.shape and sampling is not None:
        return x - sampling.noise_scaling(sigmas[0], torch.zeros_like(x), latent)
    return getattr(model, "noise", None)
