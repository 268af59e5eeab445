"""The input rules every node of the pack shares, each in one place: MODEL and CONDITIONING, IMAGE / LATENT, MASK,
DRAG, INVERSION, the schedule a stock sampler runs, and the RAM budget of recorded K/V. Every check raises
NodeInputError naming the input; the node's `@node_entry` adds the node's name (nodes/_errors.py)."""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional, Sequence

import torch

from ..core.drag_schema import DragInstructions, DragSchemaError
from ._errors import NodeInputError, require

KV_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ---------------------------------------------------------------------------------------------- numbers, models
def check_range(value: float, lo: float, hi: float, input_name: str) -> None:
    """Clear error when a number lies outside [lo, hi]."""
    require(lo <= value <= hi, input_name, f"must be between {lo} and {hi}, got {value}.")


def supported_model(model: Any, input_name: str = "model", flow: bool = False) -> str:
    """'eps' or 'v' for a model this pack can edit with ('flow' too for a node that takes flow-matching DiTs, `flow`),
    else a NodeInputError."""
    from ..core import host
    try:
        kind = host.check_supported(model)
    except host.HostError as e:
        raise NodeInputError(input_name, str(e)) from None
    if kind == "flow" and not flow:
        raise NodeInputError(input_name, "is a flow-matching DiT (FLUX / SD3 / Qwen-Image): this node runs SD1.x / "
                                         "SD2.x / SDXL UNets; the DragEdit Flow Inversion nodes take DiTs.")
    return kind


def check_conditioning(cond: Any, input_name: str) -> None:
    """Clear error when a CONDITIONING input is empty or malformed."""
    require(isinstance(cond, list) and len(cond) > 0 and all(isinstance(c, (list, tuple)) and len(c) == 2 for c in cond),
            input_name, "expected a CONDITIONING (connect CLIP Text Encode).")


def check_cond_fits(model: Any, cond: Any, input_name: str) -> None:
    """Clear error when a CONDITIONING comes from another model family than the MODEL."""
    from ..core import host
    check_conditioning(cond, input_name)
    msg = host.conditioning_family_check(model, cond)
    require(msg is None, input_name, f"{msg}.")


# ---------------------------------------------------------------------------------------------- IMAGE / LATENT
# The batch rule (docs/limits.md, "Batches"): DDPM Inversion, LEDITS Edit, SEGA Guidance, the Edit-friendly DDPM
# sampler and Drag Preview take batches; every other node edits one image and refuses a batch with this one message;
# a node sampled from an INVERSION refuses a sampler latent whose batch is not the inversion's (check_schedule).
def check_batch(n: int, input_name: str, what: str = "latent") -> None:
    """Refuse a batch of n > 1 images / latents / masks on a node that edits one image at a time."""
    pick = {"image": "Pick one with 'Image From Batch' (length 1)",
            "latent": "Pick one with 'Latent From Batch' (length 1)",
            "mask": "Connect one mask"}.get(what, "Use a batch of 1")
    lead = f"batch size {int(n)}" if what == "latent" else f"a batch of {int(n)} {what}s was given"
    require(int(n) == 1, input_name, f"{lead}: this node edits one image at a time. {pick}.")


def check_latent(latent: Any, input_name: str = "latent", allow_batch: bool = False, model: Any = None
                 ) -> torch.Tensor:
    """Return latent['samples'] after checking it is a non-empty 4-D (or 5-D) batch of one (unless allowed); with a
    model, also that it fits the model (check_latent_fits)."""
    require(isinstance(latent, dict) and "samples" in latent, input_name,
            "expected a LATENT (a dict with 'samples'); connect VAE Encode or Empty Latent Image.")
    s = latent["samples"]
    require(isinstance(s, torch.Tensor) and s.ndim in (4, 5), input_name,
            f"expected a latent tensor [B,C,H,W], got shape {tuple(getattr(s, 'shape', ()))}.")
    require(s.shape[0] >= 1, input_name, "the latent batch is empty.")
    if not allow_batch:
        check_batch(s.shape[0], input_name, "latent")
    if model is not None:
        check_latent_fits(model, s, input_name)
    return s


def check_latent_fits(model: Any, samples: torch.Tensor, input_name: str, size_input: Optional[str] = None) -> None:
    """The latent is not below the model's smallest size (host.min_latent_side), has the model's channel count (a
    latent of another model family otherwise reaches the UNet as a raw torch error), and is not beyond the model's
    size limit (the Shapes Demo Model, see its latent format's `dragedit_max_latent_side`). The size errors name
    size_input, e.g. the IMAGE that was encoded."""
    from ..core import host
    fmt = host.latent_format(model)
    h, w = int(samples.shape[-2]), int(samples.shape[-1])
    least, halvings = host.min_latent_side(model)
    require(min(h, w) >= least, size_input or input_name,
            f"the latent is {w}x{h}, smaller than this model's minimum of {least}x{least} (its UNet halves the "
            f"latent {halvings} times and needs at least 2x2 cells at the deepest level). Use a larger image.")
    want = getattr(fmt, "latent_channels", None)
    require(want is None or samples.shape[1] == want, input_name,
            f"the latent has {samples.shape[1]} channels but this model takes {want} (VAE of another model "
            f"family?).")
    limit = getattr(fmt, "dragedit_max_latent_side", None)
    if limit:
        require(max(h, w) <= int(limit), size_input or input_name,
                f"the latent is {w}x{h}, larger than this model's limit of {limit}x{limit} "
                f"({getattr(fmt, 'dragedit_size_reason', 'cost grows with the square of the pixel count')}). "
                f"Use a smaller image.")


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_single_image(image: Any, input_name: str) -> tuple[int, int]:
    """(W, H) of a ComfyUI IMAGE [1, H, W, C]; clear errors for a batch or a malformed tensor."""
    require(isinstance(image, torch.Tensor) and image.ndim == 4, input_name,
            f"expected an IMAGE tensor [B, H, W, C], got {_shape(image)}.")
    B, H, W, C = image.shape
    require(B >= 1 and H >= 1 and W >= 1, input_name, f"the image is empty ({_shape(image)}).")
    check_batch(B, input_name, "image")
    return int(W), int(H)


def image_or_latent(model: Any, image: Any, vae: Any, latent: Any, *, allow_batch: bool = False,
                    vae_always: bool = False) -> tuple[torch.Tensor, Optional[tuple[int, int]]]:
    """The clean latent samples [B, C, h, w] to edit, from IMAGE + VAE (encoded here) or from a LATENT, plus the
    image size (W, H) when an image was given. One rule for every node that takes either: exactly one source,
    both halves of IMAGE + VAE, a batch of one unless allow_batch, a latent that fits the model (check_latent_fits:
    call supported_model first). vae_always: the node needs the VAE anyway (to decode), so a connected VAE alone
    does not mean 'IMAGE + VAE'."""
    have_image = image is not None or (vae is not None and not vae_always)
    require(not (have_image and latent is not None), "latent",
            "both a LATENT and an IMAGE are connected; connect either the LATENT or IMAGE + VAE.")
    require(have_image or latent is not None, "latent", "connect the image to edit: a LATENT, or IMAGE + VAE.")
    size = None
    if have_image:
        require(image is not None, "image", "a VAE is connected but no IMAGE; connect the image to encode.")
        require(vae is not None, "vae", "an IMAGE is connected but no VAE to encode it; connect the VAE.")
        require(isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[-1] >= 3, "image",
                f"expected an IMAGE [B, H, W, 3], got {tuple(getattr(image, 'shape', ())) or type(image).__name__}.")
        if not allow_batch:
            size = check_single_image(image, "image")
        else:
            size = (int(image.shape[2]), int(image.shape[1]))
        require(hasattr(vae, "encode"), "vae", f"expected a VAE, got {type(vae).__name__}.")
        samples = vae.encode(image[:, :, :, :3])
        require(isinstance(samples, torch.Tensor) and _image_latent(model, samples), "vae",
                f"encoded the image to shape {tuple(getattr(samples, 'shape', ()))}; expected an image VAE's "
                f"[B, C, h, w] latent.")
    else:
        samples = check_latent(latent, allow_batch=allow_batch)
        require(_image_latent(model, samples), "latent",
                f"expected an image latent [B, C, h, w], got {tuple(samples.shape)}.")
    check_latent_fits(model, samples, "vae" if have_image else "latent", "image" if have_image else "latent")
    return samples, size


def _image_latent(model: Any, samples: torch.Tensor) -> bool:
    """An image latent: [B, C, h, w], or for a flow DiT with video-VAE latents (Qwen-Image's Wan VAE) one frame
    [B, C, 1, h, w]."""
    from ..core import host
    return samples.ndim == 4 or (samples.ndim == 5 and int(samples.shape[2]) == 1 and host.is_flow(model))


# ---------------------------------------------------------------------------------------------- MASK
def one_mask(mask: Any, input_name: str) -> torch.Tensor:
    """A MASK input as one float [H, W] mask on the CPU: [H, W], or a batch of one; a batch of several is refused
    (check_batch). The shape part of check_mask, for nodes that look at a mask before its size is known."""
    require(isinstance(mask, torch.Tensor) and mask.ndim in (2, 3), input_name,
            f"expected a MASK [H, W] or [1, H, W], got {tuple(getattr(mask, 'shape', ())) or type(mask).__name__}.")
    if mask.ndim == 3:
        check_batch(mask.shape[0], input_name, "mask")
        mask = mask[0]
    return mask.detach().float().cpu()


def check_mask(mask: Any, input_name: str, *, image_size: Optional[Sequence[int]] = None,
               latent_hw: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The one mask rule of the pack: a single MASK ([H, W] or [1, H, W]) the size of the image (W x H) or of its
    latent (w x h). A latent-size mask is returned nearest-upscaled to the image size when that is known; when only
    the latent is known, any power-of-two multiple of it is accepted (the VAE factor). An all-black mask means "no
    mask" and is returned as it is, whatever its size. Returns float [H, W]."""
    m = one_mask(mask, input_name)
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
        raise NodeInputError(input_name, f"is {W}x{H} but the image is {iw}x{ih}; use a mask of the image's "
                                         f"size{also} (paint it on this image, or resize it).")
    if lat is not None:
        h, w = lat
        f = W // w if W >= w else 0
        ok = f >= 1 and (f & (f - 1)) == 0 and H == h * f and W == w * f
        require(ok, input_name, f"the mask is {W}x{H}, which does not fit the {w}x{h} latent of the image "
                                f"(expected the image size, e.g. {w * 8}x{h * 8} for an SD model, or {w}x{h}).")
    return m


def read_mask(mask: Any, input_name: str = "mask", *, image_size: Optional[Sequence[int]] = None,
              latent_hw: Optional[Sequence[int]] = None) -> Optional[torch.Tensor]:
    """An optional MASK input as float [H, W] (check_mask), or None when absent or all black (no mask painted)."""
    if mask is None:
        return None
    m = check_mask(mask, input_name, image_size=image_size, latent_hw=latent_hw)
    return m if bool((m > 0).any()) else None


# ---------------------------------------------------------------------------------------------- DRAG
def read_drag(drag: Any, *, drag_json: Any = None, json_input: bool = False,
              image_size: Optional[Sequence[int]] = None, fit_to: Optional[Sequence[int]] = None,
              input_name: str = "drag", require_moves: bool = False) -> DragInstructions:
    """The DRAG input (or, with json_input, the drag_json text instead) as DragInstructions: image_size fills in a
    missing size and is checked against a given one; fit_to rescales same-aspect instructions to that image size;
    require_moves applies the drag methods' "nothing to drag" rule (DragInstructions.require_moves). Errors name the
    input that was used."""
    has_json = json_input and isinstance(drag_json, str) and drag_json.strip() != ""
    if json_input:
        require(not (drag is not None and has_json), "drag_json",
                "both 'drag' and 'drag_json' are connected; connect one of them.")
        require(drag is not None or has_json, input_name,
                "connect 'Drag Instructions' (or give the instructions as JSON text in drag_json).")
        require(drag_json is None or isinstance(drag_json, str), "drag_json",
                f"expected JSON text, got {type(drag_json).__name__}.")
    else:
        require(drag is not None, input_name, "connect 'Drag Instructions'.")
    name, value = (input_name, drag) if drag is not None else ("drag_json", drag_json)
    try:
        d = DragInstructions.coerce(value, image_size=None if image_size is None else tuple(image_size))
        if require_moves:
            d.require_moves()
        return d.fit_to(tuple(fit_to)) if fit_to is not None else d
    except DragSchemaError as e:
        raise NodeInputError(name, f"{e}.") from None
    except (TypeError, AttributeError, ValueError) as e:
        raise NodeInputError(name, f"is not drag instructions ({type(value).__name__}): {e}.") from None


def drag_input_name(drag: Any) -> str:
    """The input the drag instructions came from: 'drag' when connected, else 'drag_json'."""
    return "drag" if drag is not None else "drag_json"


# ---------------------------------------------------------------------------------------------- INVERSION
# How far (relative RMS) the latent a node or sampler starts from may be from the INVERSION's own start latent.
# Measured on the demo model (10 steps, strength 0.5 / 1, three scenes): the inversion node's LATENT output after
# process_out / process_in differs by 2e-8, a float16 round trip of it by 2e-4, another scene's start by 1.1-1.4.
START_TOLERANCE = 1e-2


def check_inversion_steps(inv: Any, input_name: str = "inversion") -> None:
    """The one "nothing was inverted" rule: an INVERSION made at strength 0 (its sigmas are just [0]), or freed, has
    no inverted step and no noisy start latent; every node that samples from one refuses it."""
    sig = inv.sigmas
    require(len(sig) > 1 and float(sig[0]) > 0 and inv.num_latents == len(sig), input_name,
            "has no steps: it was made with strength 0 (nothing inverted) or freed; invert with strength > 0.")


def check_inversion(inv: Any, input_name: str = "inversion", *, need_kv: bool = False, model: Any = None) -> Any:
    """An INVERSION of DDIM Inversion (deterministic: no noise maps) with at least one step, and recorded K/V when
    need_kv; with a model, made by that model (check_same_model)."""
    from ..core.inversion import Inversion
    require(inv is not None, input_name, "is missing: connect the INVERSION output of DDIM Inversion.")
    require(isinstance(inv, Inversion) and inv.noise_maps is None, input_name,
            "expected an INVERSION from DDIM Inversion.")
    check_inversion_steps(inv, input_name)
    if need_kv:
        require(inv.kv is not None and len(inv.kv) > 0, input_name,
                "was made without K/V: switch record_kv on in DDIM Inversion.")
    if model is not None:
        check_same_model(model, inv, input_name)
    return inv


def check_ddpm_inversion(inv: Any, input_name: str = "inversion") -> Any:
    """The noise maps (core.ddpm_inversion.Inversion) of an INVERSION from DDPM Inversion (edit-friendly)."""
    from ..core.inversion import Inversion
    require(inv is not None, input_name, "is missing: connect the INVERSION output of DDPM Inversion (edit-friendly).")
    maps = inv.noise_maps if isinstance(inv, Inversion) else None
    require(maps is not None, input_name,
            "expected an INVERSION from DDPM Inversion (edit-friendly); a DDIM Inversion has no noise maps.")
    require(maps.zs.numel() > 0 and maps.steps >= 1, input_name, "holds no noise maps (freed or empty).")
    return maps


def check_same_model(model: Any, inv: Any, input_name: str = "inversion") -> None:
    """The one "made with another model" rule: an INVERSION's latents and K/V belong to the base model that made it
    (its model_id; 0 = unknown, accepted). A clone of that model with patches or a LoRA on top is the same model;
    another checkpoint, another family or the demo model is not, and its K/V or latents would be silently wrong or
    crash inside the sampler."""
    from ..core import host
    mid = getattr(inv, "model_id", 0)
    require(not mid or mid == id(host.base_model(model)), input_name,
            "was made with another model: invert the image with the same MODEL that edits it.")


def check_start_latent(inv: Any, x: torch.Tensor, input_name: str, *, what: str, fix: str) -> None:
    """The one "inversion of another image" rule: `x` (sampler space, what the graph actually passes) must be the
    INVERSION's own start latent inv.latent(0), the same batch size and within START_TOLERANCE (relative RMS). The
    inversion of image A with image B's latent otherwise runs silently and gives a wrong edit. `what` names x in the
    message, `fix` says what to connect."""
    ref = inv.latent(0).detach().to("cpu", torch.float32)
    got = x.detach().to("cpu", torch.float32)
    require(got.shape[0] == ref.shape[0], input_name,
            f"{what} is a batch of {got.shape[0]} but the INVERSION holds {ref.shape[0]}: each INVERSION belongs to "
            f"the latent batch it was made from. {fix}")
    if got.shape != ref.shape:
        return                                      # other sizes: the schedule rule's latent size check names them
    rel = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
    require(rel <= START_TOLERANCE, input_name,
            f"{what} is not the latent this INVERSION starts from (relative difference {rel:.3g}, more than "
            f"{START_TOLERANCE:g}): the inversion was made from another image, or with other settings. {fix}")


# ---------------------------------------------------------------------------------------------- schedule match
def _fmt_sigmas(s: torch.Tensor) -> str:
    v = [f"{float(x):.4g}" for x in s]
    return "[" + ", ".join(v if len(v) <= 6 else v[:3] + ["…"] + v[-2:]) + f"] ({len(v) - 1} steps)"


def check_schedule(input_name: str, sigmas: Any, inv_sigmas: Any, *, source: str, rule: str = "grid",
                   latent_shape: Optional[Sequence[int]] = None, inv_latent_hw: Optional[Sequence[int]] = None,
                   noise: Optional[torch.Tensor] = None, inv: Any = None, latent: Optional[torch.Tensor] = None,
                   same_start: bool = True) -> None:
    """The schedule-match rule for everything sampled by a stock sampler node from an INVERSION. `rule`:
    "grid": every sigma of the sampler is one of the INVERSION's (what is stored per step, e.g. K/V, exists only
    there); "run": a contiguous run of them (a SplitSigmas part); "range": the sampler does not start above the
    INVERSION's first sigma (the patch interpolates between its steps, but nothing exists above its start).
    Also: the sampler's latent has the inversion's size, and no noise is added (add_noise off), when given. With the
    INVERSION `inv` and the sampler's start `latent` (sampler space): the same batch size as the inversion's, and,
    when the sampler starts at the inversion's first sigma and `same_start`, the inversion's own start latent
    (check_start_latent; a sampler that starts later may be fed an earlier sampler's output).
    `source` names the node whose SIGMAS / LATENT outputs to connect."""
    from ..core import schedule
    run = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)
    grid = torch.as_tensor(inv_sigmas).detach().to("cpu", torch.float64).reshape(-1)
    where = "(raised while the sampler node ran it)"
    fix = f"Connect the SIGMAS output of {source} (or a SplitSigmas part of it) to the sampler node's sigmas."
    if rule == "range":
        ok = run.numel() > 0 and grid.numel() > 0 and float(run[0]) <= float(grid[0]) * 1.02 + 1e-6
        require(ok, input_name, f"the sampler node's sigmas {_fmt_sigmas(run)} start above the INVERSION's "
                                f"first sigma {float(grid[0]):.4g}, where it has no inverted latent, so the "
                                f"edit would be wrong {where}. {fix}")
    else:
        k = schedule.match_run(run, grid, contiguous=rule == "run")
        what = "a contiguous run of the INVERSION's sigmas" if rule == "run" else "among the INVERSION's sigmas"
        require(k is not None, input_name, f"the sampler node runs sigmas {_fmt_sigmas(run)}, which do not "
                                           f"match the INVERSION's {_fmt_sigmas(grid)} (not {what}), so the "
                                           f"edit would be lost {where}. {fix}")
    if latent_shape is not None and inv_latent_hw is not None:
        got, want = tuple(int(v) for v in latent_shape[-2:]), tuple(int(v) for v in inv_latent_hw)
        require(got == want, input_name, f"the sampler node's latent is {got[1]}x{got[0]} but the INVERSION's "
                                         f"is {want[1]}x{want[0]} {where}. Connect the LATENT output of {source} "
                                         f"to the sampler node's latent_image.")
    if noise is not None and isinstance(noise, torch.Tensor) and noise.numel() and bool(noise.ne(0).any()):
        raise NodeInputError(input_name, f"the sampler node adds noise to the start latent {where}, but the "
                                         f"LATENT of {source} is already noisy: turn add_noise off in "
                                         f"SamplerCustom (or use DisableNoise with SamplerCustomAdvanced).")
    if inv is not None and latent is not None and inv.num_latents > 0:
        fix = f"Connect the LATENT output of {source} that made this INVERSION to the sampler node's latent_image."
        n_inv = int(inv.latent(0).shape[0])
        require(int(latent.shape[0]) == n_inv, input_name,
                f"the sampler node's latent is a batch of {int(latent.shape[0])} but the INVERSION holds {n_inv} "
                f"{where}: each INVERSION belongs to the latent batch it was made from. {fix}")
        if same_start and abs(float(run[0]) - float(grid[0])) <= 1e-4 * max(float(grid[0]), 1e-6):
            check_start_latent(inv, latent, input_name, what=f"the sampler node's latent {where}", fix=fix)


ScheduleCheck = Callable[[Any, torch.Tensor, Any], Any]


def guard_sampler(sampler_fn: Callable[..., torch.Tensor], node: str, check: ScheduleCheck,
                  after: Optional[Callable[[Any, torch.Tensor], Any]] = None) -> Callable[..., torch.Tensor]:
    """Wrap a KSAMPLER sampler function so that `check(sigmas, x, noise)` (a check_schedule call; x the start latent
    in sampler space, noise what the sampler node added to it) runs before the first step, inside the stock sampler
    node, and `after(sigmas, result)` (sampler space) on what it returns; their errors name `node`."""
    from ..core import host
    from ._errors import node_errors

    @functools.wraps(sampler_fn)
    def guarded(model, x, sigmas, *args, **kwargs):
        with node_errors(node):
            check(sigmas, x, host.added_noise(model, x, sigmas))
        out = sampler_fn(model, x, sigmas, *args, **kwargs)
        if after is not None:
            with node_errors(node):
                after(sigmas, out)
        return out
    return guarded


def guard_model(model: Any, key: str, node: str, check: ScheduleCheck,
                after: Optional[Callable[[torch.Tensor], Any]] = None) -> Any:
    """Make every sampler of `model` (a clone) run `check(sigmas, x, None)` before sampling (x the sampler node's
    latent_image in sampler space) and `after(result)` on the LATENT samples it returns (check_result); their errors
    name `node`."""
    from ..core import host
    from ._errors import node_errors

    def run_check(sig, latent, noise):
        with node_errors(node):
            check(sig, host.process_in(model, latent), None)

    def run_after(out):
        with node_errors(node):
            after(out)
    return host.patch_sampling_check(model, key, run_check, run_after if after is not None else None)


# ---------------------------------------------------------------------------------------------- results
# How far a method may spread the latent before its result counts as blown out (docs/limits.md, "Widget extremes"):
# the RMS of the edited latent over the input image's. Measured on the demo model (bench/saturation.py and the
# decoded pictures): ordinary settings stay within 0.95-1.3x, pictures that are still right reach 1.7x (LEDITS
# momentum 0.99, DragonDiffusion cfg 30); DragDiffusion learning_rate 0.3 gives 2.0x (colour noise), 1.0 gives 7.6x;
# DragonDiffusion energy_scale 200 gives 2.0x (colour blobs), 1000 gives 9.9x.
SATURATION_RATIO = 2.0
# The highest ordinary value of each knob that pushes an edit (the references' values and the examples', with a
# margin; by input name, a trailing _1.._3 dropped). A blown-out result with a knob above these is the user's
# extreme and is refused; at ordinary values it is the model's own behaviour (e.g. a random-weight test model at
# cfg 4 gives 10-19x) and is logged as a warning.
ORDINARY = {"learning_rate": 0.05, "energy_scale": 30.0, "cfg": 10.0, "target_cfg": 10.0, "scale": 30.0,
            "momentum_scale": 0.5}
log = logging.getLogger("dragedit")


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


def _beyond_ordinary(name: str, value: Any) -> bool:
    limit = ORDINARY.get(name.rstrip("0123456789").rstrip("_"))
    return limit is not None and isinstance(value, (int, float)) and float(value) > limit


def check_result(out: torch.Tensor, ref: torch.Tensor, knobs: dict[str, Any], *, node: str,
                 what: str = "the result", fix: str = "", ref_name: str = "the input image's") -> None:
    """The one "blown-out result" rule, run on a method's output before it is returned. A non-finite latent is
    refused naming the first of `knobs` (input name -> value: the widgets that push the edit). A latent whose RMS is
    more than SATURATION_RATIO times the input image's (`ref`, same space and scale) is refused naming the knobs set
    beyond their ordinary value (ORDINARY); when none is, it is logged as a warning naming `node`. Widget ranges stay
    wide (saved workflows keep validating, and where a knob saturates depends on the model); what is refused is a
    blown-out picture made with an extreme value. `fix` replaces "Lower <knobs>" (a knob of another node)."""
    def listed(names) -> str:
        return fix or "Lower " + ", ".join(f"{k} {knobs[k]:g}" if isinstance(knobs[k], (int, float))
                                           else f"{k} {knobs[k]}" for k in names)
    first = next(iter(knobs))
    require(bool(torch.isfinite(out).all()), first,
            f"{what} is not finite (NaN or infinity): the edit diverged. {listed(knobs)}.")
    ratio = _rms(out) / max(_rms(ref), 1e-6)
    if ratio <= SATURATION_RATIO:
        return
    text = (f"{what} is blown out: its latent is {ratio:.1f}x as strong (RMS) as {ref_name}, more than "
            f"{SATURATION_RATIO:g}x, so the picture would come out saturated or as noise.")
    extreme = [k for k, v in knobs.items() if _beyond_ordinary(k, v)]
    if extreme:
        raise NodeInputError(extreme[0], f"{text} {listed(extreme)}.")
    log.warning("[%s] %s %s.", node, text, listed(knobs))


# ---------------------------------------------------------------------------------------------- K/V memory
def kv_budget(input_name: str, estimate: int, limit_gb: float = 0.0, what: str = "",
              fix: str = "lower steps or strength, or use a smaller image") -> int:
    """The RAM guard of recorded K/V (host.kv.check_budget: the user's limit limit_gb > 0, else a share of the RAM
    available now), refused as an error naming `input_name`. Returns the budget in bytes for the store's hard
    stop."""
    from ..core import host
    try:
        return host.kv.check_budget(estimate, limit_gb, what, fix, label=f"({input_name})")
    except host.KVBudgetError as e:
        raise NodeInputError(input_name, str(e)) from None
