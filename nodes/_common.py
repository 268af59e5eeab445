"""Shared helpers for node classes: user-facing errors, validators, progress and Cancel."""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

CATEGORY = "DragEdit"                                   # Drag Instructions, Drag Preview: used by every method
CATEGORY_ALL_IN_ONE = f"{CATEGORY}/all-in-one"          # one node per method: the place to start
CATEGORY_BLOCKS = f"{CATEGORY}/building blocks"         # inversions, patches, samplers to build a method from
CATEGORY_DEMO = f"{CATEGORY}/demo"                      # the bundled shapes model and its scenes
SEED_MAX = 0xFFFF_FFFF_FFFF_FFFF                        # like KSampler's noise_seed
log = logging.getLogger("dragedit")


class NodeInputError(ValueError):
    """A bad input, reported as '[Node Name] input 'name': what is wrong. How to fix it.'"""

    def __init__(self, node: str, input_name: str, message: str):
        self.node, self.input_name = node, input_name
        super().__init__(f"[{node}] input '{input_name}': {message}")


def require(cond: bool, node: str, input_name: str, message: str) -> None:
    """Raise NodeInputError(node, input_name, message) unless cond holds."""
    if not cond:
        raise NodeInputError(node, input_name, message)


def check_range(value: float, lo: float, hi: float, node: str, input_name: str) -> None:
    """Clear error when a number lies outside [lo, hi]."""
    require(lo <= value <= hi, node, input_name, f"must be between {lo} and {hi}, got {value}.")


def check_finite(value: Any, node: str, input_name: str) -> float:
    """The value as a float; a clear error for NaN / inf (ComfyUI's min/max check lets NaN through)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise NodeInputError(node, input_name, f"must be a number, got {value!r}.") from None
    require(math.isfinite(f), node, input_name, f"must be a finite number, got {value}.")
    return f


def float_input_names(cls: type) -> list[str]:
    """Names of the FLOAT inputs a node class declares (required and optional)."""
    try:
        spec = cls.INPUT_TYPES()
    except Exception:  # pragma: no cover - a node whose INPUT_TYPES needs the running server
        return []
    return [name for section in ("required", "optional") for name, entry in (spec.get(section) or {}).items()
            if isinstance(entry, (tuple, list)) and entry and entry[0] == "FLOAT"]


def guard_float_inputs(cls: type, node: str) -> type:
    """Wrap the node's FUNCTION so that every FLOAT input is checked finite (check_finite) before it runs: the one
    place that rule lives, applied to every node of the pack by iter_nodes."""
    fname = getattr(cls, "FUNCTION", None)
    fn = getattr(cls, fname, None) if fname else None
    if fn is None or getattr(fn, "_dragedit_floats_checked", False):
        return cls

    names: list[list[str]] = []     # filled on the first call (INPUT_TYPES may need the running host)

    @functools.wraps(fn)
    def checked(self, *args, **kwargs):
        if not names:
            names.append(float_input_names(cls))
        for name in names[0]:
            v = kwargs.get(name)
            if v is not None and not isinstance(v, bool) and isinstance(v, (int, float)):
                check_finite(v, node, name)
        return fn(self, *args, **kwargs)

    checked._dragedit_floats_checked = True
    setattr(cls, fname, checked)
    return cls


def check_latent(latent: Any, node: str, input_name: str = "latent", allow_batch: bool = False,
                 model: Any = None) -> torch.Tensor:
    """Return latent['samples'] after checking it is a non-empty 4-D (or 5-D) batch of one (unless allowed); with a
    model, also that it fits the model (check_latent_fits)."""
    require(isinstance(latent, dict) and "samples" in latent, node, input_name,
            "expected a LATENT (a dict with 'samples'); connect VAE Encode or Empty Latent Image.")
    s = latent["samples"]
    require(isinstance(s, torch.Tensor) and s.ndim in (4, 5), node, input_name,
            f"expected a latent tensor [B,C,H,W], got shape {tuple(getattr(s, 'shape', ()))}.")
    require(s.shape[0] >= 1, node, input_name, "the latent batch is empty.")
    if not allow_batch:
        require(s.shape[0] == 1, node, input_name,
                f"batch size {s.shape[0]} is not supported: this node edits one image at a time (use a batch of 1).")
    if model is not None:
        check_latent_fits(model, s, node, input_name)
    return s


def check_latent_fits(model: Any, samples: torch.Tensor, node: str, input_name: str,
                      size_input: Optional[str] = None) -> None:
    """The latent is not below the model's smallest size (min_latent_side), has the model's channel count (a latent
    of another model family otherwise reaches the UNet as a raw torch error), and is not beyond the model's size
    limit (the Shapes Demo Model, see its latent format's `dragedit_max_latent_side`). The size errors name
    size_input, e.g. the IMAGE that was encoded."""
    from ..core import host
    fmt = host.latent_format(model)
    h, w = int(samples.shape[-2]), int(samples.shape[-1])
    least, halvings = min_latent_side(model)
    require(min(h, w) >= least, node, size_input or input_name,
            f"the latent is {w}x{h}, smaller than this model's minimum of {least}x{least} (its UNet halves the "
            f"latent {halvings} times and needs at least 2x2 cells at the deepest level). Use a larger image.")
    want = getattr(fmt, "latent_channels", None)
    require(want is None or samples.shape[1] == want, node, input_name,
            f"the latent has {samples.shape[1]} channels but this model takes {want} (VAE of another model "
            f"family?).")
    limit = getattr(fmt, "dragedit_max_latent_side", None)
    if limit:
        require(max(h, w) <= int(limit), node, size_input or input_name,
                f"the latent is {w}x{h}, larger than this model's limit of {limit}x{limit} "
                f"({getattr(fmt, 'dragedit_size_reason', 'cost grows with the square of the pixel count')}). "
                f"Use a smaller image.")


def min_latent_side(model: Any) -> tuple[int, int]:
    """(smallest latent side the model's UNet takes, how many times it halves the latent): 2 * 2^halvings, so the
    deepest level keeps 2x2 cells (at 1x1 a group norm of one value per group, or a 3x3 smoothing of an attention
    map, fails with a raw torch error). (1, 0) for a model without a UNet."""
    from ..core import host
    try:
        dm = host.diffusion_model(model)
    except Exception:
        return 1, 0
    halvings = sum(1 for m in dm.input_blocks.modules() if type(m).__name__ == "Downsample")
    return 2 << halvings, halvings


def check_mask(mask: Any, node: str, input_name: str, *, image_size: Optional[Sequence[int]] = None,
               latent_hw: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The one mask rule of the pack: a single MASK ([H, W] or [1, H, W]) the size of the image (W x H) or of its
    latent (w x h). A latent-size mask is returned nearest-upscaled to the image size when that is known; when only
    the latent is known, any power-of-two multiple of it is accepted (the VAE factor). An all-black mask means "no
    mask" and is returned as it is, whatever its size. Returns float [H, W]."""
    require(isinstance(mask, torch.Tensor) and mask.ndim in (2, 3), node, input_name,
            f"expected a MASK [H, W] or [1, H, W], got {tuple(getattr(mask, 'shape', ())) or type(mask).__name__}.")
    if mask.ndim == 3:
        require(mask.shape[0] == 1, node, input_name, f"a batch of {mask.shape[0]} masks was given; connect one mask.")
        mask = mask[0]
    m = mask.detach().float().cpu()
    if not bool((m > 0).any()):
        return m      # all black = no mask, whatever its size (Load Image gives a 64x64 one for images without alpha)
    H, W = int(m.shape[0]), int(m.shape[1])
    lat = (int(latent_hw[0]), int(latent_hw[1])) if latent_hw is not None else None
    if image_size is not None:
        iw, ih = int(image_size[0]), int(image_size[1])
        if (W, H) == (iw, ih):
            return m
        if lat is not None and (H, W) == lat:
            return torch.nn.functional.interpolate(m[None, None], size=(ih, iw), mode="nearest-exact")[0, 0]
        also = f" or the latent's {lat[1]}x{lat[0]}" if lat is not None else ""
        raise NodeInputError(node, input_name, f"is {W}x{H} but the image is {iw}x{ih}; use a mask of the image's "
                                               f"size{also} (paint it on this image, or resize it).")
    if lat is not None:
        h, w = lat
        f = W // w if W >= w else 0
        ok = f >= 1 and (f & (f - 1)) == 0 and H == h * f and W == w * f
        require(ok, node, input_name, f"the mask is {W}x{H}, which does not fit the {w}x{h} latent of the image "
                                      f"(expected the image size, e.g. {w * 8}x{h * 8} for an SD model, or {w}x{h}).")
    return m


# ---------------------------------------------------------------------------------------------- schedule match
def _fmt_sigmas(s: torch.Tensor) -> str:
    v = [f"{float(x):.4g}" for x in s]
    return "[" + ", ".join(v if len(v) <= 6 else v[:3] + ["…"] + v[-2:]) + f"] ({len(v) - 1} steps)"


def check_schedule(node: str, input_name: str, sigmas: Any, inv_sigmas: Any, *, source: str, rule: str = "grid",
                   latent_shape: Optional[Sequence[int]] = None, inv_latent_hw: Optional[Sequence[int]] = None,
                   noise: Optional[torch.Tensor] = None) -> None:
    """The schedule-match rule for everything sampled by a stock sampler node from an INVERSION. `rule`:
    "grid": every sigma of the sampler is one of the INVERSION's (what is stored per step, e.g. K/V, exists only
    there); "run": a contiguous run of them (a SplitSigmas part); "range": the sampler does not start above the
    INVERSION's first sigma (the patch interpolates between its steps, but nothing exists above its start).
    Also: the sampler's latent has the inversion's size, and no noise is added (add_noise off), when given.
    `source` names the node whose SIGMAS / LATENT outputs to connect."""
    from ..core import schedule
    run = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)
    grid = torch.as_tensor(inv_sigmas).detach().to("cpu", torch.float64).reshape(-1)
    where = "(raised while the sampler node ran it)"
    fix = f"Connect the SIGMAS output of {source} (or a SplitSigmas part of it) to the sampler node's sigmas."
    if rule == "range":
        ok = run.numel() > 0 and grid.numel() > 0 and float(run[0]) <= float(grid[0]) * 1.02 + 1e-6
        require(ok, node, input_name, f"the sampler node's sigmas {_fmt_sigmas(run)} start above the INVERSION's "
                                      f"first sigma {float(grid[0]):.4g}, where it has no inverted latent, so the "
                                      f"edit would be wrong {where}. {fix}")
    else:
        k = schedule.match_run(run, grid, contiguous=rule == "run")
        what = "a contiguous run of the INVERSION's sigmas" if rule == "run" else "among the INVERSION's sigmas"
        require(k is not None, node, input_name, f"the sampler node runs sigmas {_fmt_sigmas(run)}, which do not "
                                                 f"match the INVERSION's {_fmt_sigmas(grid)} (not {what}), so the "
                                                 f"edit would be lost {where}. {fix}")
    if latent_shape is not None and inv_latent_hw is not None:
        got, want = tuple(int(v) for v in latent_shape[-2:]), tuple(int(v) for v in inv_latent_hw)
        require(got == want, node, input_name, f"the sampler node's latent is {got[1]}x{got[0]} but the INVERSION's "
                                               f"is {want[1]}x{want[0]} {where}. Connect the LATENT output of {source} "
                                               f"to the sampler node's latent_image.")
    if noise is not None and isinstance(noise, torch.Tensor) and noise.numel() and bool(noise.ne(0).any()):
        raise NodeInputError(node, input_name, f"the sampler node adds noise to the start latent {where}, but the "
                                               f"LATENT of {source} is already noisy: turn add_noise off in "
                                               f"SamplerCustom (or use DisableNoise with SamplerCustomAdvanced).")


def guard_sampler(sampler_fn: Callable[..., torch.Tensor], check: Callable[[Any, Sequence[int], Any], Any]
                  ) -> Callable[..., torch.Tensor]:
    """Wrap a KSAMPLER sampler function so that `check(sigmas, latent_shape, noise)` (a check_schedule call naming
    this pack's node) runs before the first step, inside the stock sampler node."""

    @functools.wraps(sampler_fn)
    def guarded(model, x, sigmas, *args, **kwargs):
        check(sigmas, tuple(x.shape), added_noise(model, x, sigmas))
        return sampler_fn(model, x, sigmas, *args, **kwargs)
    return guarded


def added_noise(model: Any, x: torch.Tensor, sigmas: Any) -> Optional[torch.Tensor]:
    """The noise the sampler node put into its start latent: x minus the model's noise scaling of the latent with
    zero noise (k-diffusion's KSamplerX0Inpaint keeps latent_image; x = noise_scaling(sigma_0, noise, latent)).
    Not model.noise: ComfyUI's "ddim" is euler with inpaint_options random, whose model.noise is fresh noise for
    inpainting even when add_noise is off. Falls back on model.noise when the latent is unknown."""
    latent = getattr(model, "latent_image", None)
    sampling = getattr(getattr(getattr(model, "inner_model", None), "inner_model", None), "model_sampling", None)
    if isinstance(latent, torch.Tensor) and latent.shape == x.shape and sampling is not None:
        try:
            clean = sampling.noise_scaling(sigmas[0], torch.zeros_like(x), latent)
            return x - clean
        except Exception:   # pragma: no cover - a model sampling without noise_scaling
            pass
    return getattr(model, "noise", None)


def guard_model(model: Any, key: str, check: Callable[[Any, Sequence[int], Any], Any]) -> Any:
    """Make every sampler of `model` (a clone) run `check(sigmas, latent_shape, noise)` before sampling."""
    from ..core import host
    return host.patch_sampling_check(model, key, lambda sig, latent, noise: check(sig, tuple(latent.shape), None))


# ---------------------------------------------------------------------------------------------- K/V memory
KV_RAM_FRACTION = 0.5


def kv_budget(node: str, input_name: str, estimate: int, limit_gb: float = 0.0, what: str = "",
              fix: str = "lower steps or strength, or use a smaller image") -> int:
    """The RAM guard of recorded K/V: log the estimate; refuse (clear error) when it exceeds the user's limit
    (limit_gb > 0) or, automatically, KV_RAM_FRACTION of the RAM available now. Returns the budget in bytes for the
    KVStore (its hard stop if the estimate was short)."""
    from ..core import host
    gb = 1024 ** 3
    avail = host.available_memory()
    auto = int(KV_RAM_FRACTION * avail) if avail else None
    limit = int(float(limit_gb) * gb) if float(limit_gb) > 0 else auto
    log.info("DragEdit %s: recording self-attention K/V needs about %.2f GB%s (limit %s)", node, estimate / gb,
             f" ({what})" if what else "", "none" if limit is None else f"{limit / gb:.2f} GB")
    if limit is not None and estimate > limit:
        src = (f"kv_max_gb = {float(limit_gb):g}" if float(limit_gb) > 0 else
               f"half of the {avail / gb:.1f} GB of RAM available now")
        raise NodeInputError(node, input_name, f"recording the self-attention K/V would keep about "
                                               f"{estimate / gb:.2f} GB in RAM{f' ({what})' if what else ''}, above "
                                               f"the limit of {limit / gb:.2f} GB ({src}): {fix}.")
    return limit or 0


def check_conditioning(cond: Any, node: str, input_name: str) -> None:
    """Clear error when a CONDITIONING input is empty or malformed."""
    require(isinstance(cond, list) and len(cond) > 0 and all(isinstance(c, (list, tuple)) and len(c) == 2 for c in cond),
            node, input_name, "expected a CONDITIONING (connect CLIP Text Encode).")


class Progress:
    """ComfyUI progress bar + Cancel check, usable outside ComfyUI (then a no-op)."""

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        try:
            import comfy.utils
            self._bar = comfy.utils.ProgressBar(self.total)
        except Exception:  # pragma: no cover - outside ComfyUI
            self._bar = None

    def update(self, n: int = 1) -> None:
        check_interrupt()
        if self._bar is not None:
            self._bar.update(n)


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    try:
        import comfy.model_management as mm
    except Exception:  # pragma: no cover
        return
    mm.throw_exception_if_processing_interrupted()


def tooltips(spec: dict, tips: dict[str, str]) -> dict:
    """Add tooltips to an INPUT_TYPES dict in place: tips maps input name -> text. Also declares the
    control_after_generate widget of INT "seed" inputs (see seed_control)."""
    for section in spec.values():
        for name, entry in section.items():
            if name in tips:
                if len(entry) == 1:
                    section[name] = entry = (entry[0], {"tooltip": tips[name]})
                else:
                    entry[1].setdefault("tooltip", tips[name])
            if name == "seed":
                section[name] = seed_control(section[name])
    return spec


def seed_control(entry: tuple) -> tuple:
    """An INT seed input spec with its "control after generate" widget declared (control_after_generate=True).

    The frontend adds that widget to any INT input named seed, but from about 1.5x it lines saved widget values
    up with the declared controls only: on a node that also has a forceInput input (drag_json) an undeclared one
    shifts every later value by one when a workflow loads ("control_after_generate = 0.2 is not one of its
    options"). Declared, every frontend (1.27 .. 1.58) builds the same widgets and reads the same values."""
    if entry[0] != "INT":
        return entry
    opts = dict(entry[1]) if len(entry) > 1 else {}
    opts.setdefault("control_after_generate", True)
    return (entry[0], opts)


def iter_nodes(modules: Iterable[Any]) -> tuple[dict, dict]:
    """Merge NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS of the given node modules; every node's FLOAT inputs
    are checked finite (guard_float_inputs)."""
    classes, names = {}, {}
    for m in modules:
        classes.update(getattr(m, "NODE_CLASS_MAPPINGS", {}))
        names.update(getattr(m, "NODE_DISPLAY_NAME_MAPPINGS", {}))
    for key, cls in classes.items():
        guard_float_inputs(cls, names.get(key, key))
    return classes, names


def image_or_latent(node: str, model: Any, image: Any, vae: Any, latent: Any, *, allow_batch: bool = False,
                    vae_always: bool = False) -> tuple[torch.Tensor, Optional[tuple[int, int]]]:
    """The clean latent samples [B, C, h, w] to edit, from IMAGE + VAE (encoded here) or from a LATENT, plus the
    image size (W, H) when an image was given. One rule for every node that takes either: exactly one source,
    both halves of IMAGE + VAE, a batch of one unless allow_batch, a latent that fits the model (check_latent_fits:
    call supported_model first). vae_always: the node needs the VAE anyway (to decode), so a connected VAE alone
    does not mean 'IMAGE + VAE'."""
    from .drag_instructions import check_single_image

    have_image = image is not None or (vae is not None and not vae_always)
    require(not (have_image and latent is not None), node, "latent",
            "both a LATENT and an IMAGE are connected; connect either the LATENT or IMAGE + VAE.")
    require(have_image or latent is not None, node, "latent", "connect the image to edit: a LATENT, or IMAGE + VAE.")
    size = None
    if have_image:
        require(image is not None, node, "image", "a VAE is connected but no IMAGE; connect the image to encode.")
        require(vae is not None, node, "vae", "an IMAGE is connected but no VAE to encode it; connect the VAE.")
        require(isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[-1] >= 3, node, "image",
                f"expected an IMAGE [B, H, W, 3], got {tuple(getattr(image, 'shape', ())) or type(image).__name__}.")
        if not allow_batch:
            size = check_single_image(image, node, "image")
        else:
            size = (int(image.shape[2]), int(image.shape[1]))
        require(hasattr(vae, "encode"), node, "vae", f"expected a VAE, got {type(vae).__name__}.")
        samples = vae.encode(image[:, :, :, :3])
        require(isinstance(samples, torch.Tensor) and samples.ndim == 4, node, "vae",
                f"encoded the image to shape {tuple(getattr(samples, 'shape', ()))}; expected an image VAE's "
                f"[B, C, h, w] latent.")
    else:
        samples = check_latent(latent, node, allow_batch=allow_batch)
        require(samples.ndim == 4, node, "latent", f"expected an image latent [B, C, h, w], got "
                                                   f"{tuple(samples.shape)}.")
    check_latent_fits(model, samples, node, "vae" if have_image else "latent", "image" if have_image else "latent")
    return samples, size
