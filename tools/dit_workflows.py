"""Write the real-image example workflows for flow-matching DiTs (FLUX.1-dev, SD3.5) to example_workflows/, with
their thumbnails:
    .venv/bin/python -m tools.dit_workflows [--object-info FILE] [--sizes FILE]
They use ComfyUI's stock loaders (Load Diffusion Model + DualCLIPLoader + Load VAE for FLUX.1-dev, as ComfyUI's own
FLUX examples; Load Checkpoint for Comfy-Org's all-in-one SD3.5 file) and the pack's existing nodes, which take flow
models through the same node ids and inputs as SD ones. Every loader lists its file for the frontend's missing-model
panel (node properties "models": name, url, directory). Widget values are laid out from /object_info like
tools/sd_workflows.py (its Graph), so a change to a node's inputs is picked up by running this again.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from tools import sd_workflows as sdw
from tools.sd_workflows import IMAGE, MASK_NOTE, PROMPT, Graph, _drag, _save
from tools.support import examples
from tools.support.dit_checkpoints import FLUX_DEV_NAME, SD35_NAME

ROOT = Path(__file__).resolve().parents[1]

KEEP_STRUCTURE_NOTE = (" To recolour or retexture that object on FLUX, turn keep_structure on as well: the edit "
                       "then keeps the source image's attention maps in the single-stream blocks, so the object's "
                       "shape stays while its colour changes (about twice the sampling time; leave it off to add or "
                       "remove things).")

OUT = ROOT / "example_workflows"

CLIP_L, T5 = "clip_l.safetensors", "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"
# name -> (download url, models/ folder). FLUX.1-dev is gated on Hugging Face: the download needs its licence
# accepted and a token; the text encoders and the VAE (the same for dev and schnell) are not gated.
FILES = {
    FLUX_DEV_NAME: ("https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
                    "diffusion_models"),
    CLIP_L: ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
             "text_encoders"),
    T5: ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
         "text_encoders"),
    FLUX_VAE: ("https://huggingface.co/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors", "vae"),
    SD35_NAME: ("https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/"
                "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors", "checkpoints"),
}
# Load Checkpoint's metadata comes from sd_workflows.Graph.add's table: the SD3.5 file joins it.
sdw.MODEL_URLS.setdefault(SD35_NAME, FILES[SD35_NAME][0] + "?download=true")

SIZE = 1024
FLUX_STEPS, FLUX_INVERT_GUIDANCE = 28, 1.5
SD35_STEPS = 28


def _models(node: dict, *names: str) -> dict:
    """Attach download metadata for `names` (the file widgets of `node`)."""
    node["properties"]["models"] = [{"name": n, "url": FILES[n][0] + "?download=true", "directory": FILES[n][1]}
                                    for n in names]
    return node


def _flux_loaders(g: Graph) -> tuple[dict, dict, dict]:
    unet = _models(g.add("UNETLoader", {"unet_name": FLUX_DEV_NAME, "weight_dtype": "default"},
                         title="Load Diffusion Model (FLUX.1-dev)"), FLUX_DEV_NAME)
    clip = _models(g.add("DualCLIPLoader", {"clip_name1": CLIP_L, "clip_name2": T5, "type": "flux"},
                         title="DualCLIPLoader (CLIP-L + T5-XXL)"), CLIP_L, T5)
    vae = _models(g.add("VAELoader", {"vae_name": FLUX_VAE}, title="Load VAE (FLUX ae)"), FLUX_VAE)
    return unet, clip, vae


def _image(g: Graph) -> tuple[dict, dict]:
    img = g.add("LoadImage", {"image": IMAGE}, title="Load Image (your photo)", height=320)
    sc = g.add("ImageScale", {"upscale_method": "lanczos", "width": SIZE, "height": SIZE, "crop": "center"},
               title=f"Resize to {SIZE} x {SIZE}")
    g.link(img, "IMAGE", sc, "image")
    return img, sc


def _text(g: Graph, clip: dict, text: str, title: str, out: str = "CLIP") -> dict:
    t = g.add("CLIPTextEncode", {"text": text}, title=title, height=150)
    g.link(clip, out, t, "clip")
    return t


def _regiondrag_graph(g: Graph, model: tuple[dict, str], cond: dict, vae: tuple[dict, str], sc: dict,
                      steps: int) -> tuple[dict, dict]:
    di = g.add("DragInstructions", {"drag_data": _drag(SIZE, "regions")}, width=460, height=560)
    g.link(sc, "IMAGE", di, "image")
    rd = g.add("DragEditRegionDrag", {"steps": steps, "strength": 0.5, "noise_scale": 1.0, "seed": 42}, width=340)
    g.link(model[0], model[1], rd, "model")
    g.link(cond, "CONDITIONING", rd, "positive")
    g.link(di, "DRAG", rd, "drag")
    g.link(di, "MASK", rd, "mask")
    g.link(sc, "IMAGE", rd, "image")
    g.link(vae[0], vae[1], rd, "vae")
    return di, rd


def flux_regiondrag(info: dict, sizes: dict) -> dict:
    g = Graph(info, sizes)
    unet, clip, vae = _flux_loaders(g)
    img, sc = _image(g)
    pos = _text(g, clip, PROMPT, "Prompt (describe the image)")
    fg = g.add("FluxGuidance", {"guidance": FLUX_INVERT_GUIDANCE}, title="FluxGuidance (1.5: inverts best)")
    g.link(pos, "CONDITIONING", fg, "conditioning")
    di, rd = _regiondrag_graph(g, (unet, "MODEL"), fg, (vae, "VAE"), sc, FLUX_STEPS)
    (dec,), save, prev = _save(g, vae, rd, None, "regiondrag_flux1dev", sc)
    note = g.note(_note_flux_regiondrag(), width=440, height=700)
    x = g.column(0, 0, [note])
    g.column(x, 60, [unet, clip, vae])
    x = g.column(x, 580, [img, sc])
    x = g.column(x, 60, [pos, fg, prev])
    x = g.column(x, 60, [di])
    g.column(x, 60, [rd, dec, save])
    g.group("1. Models", [unet, clip, vae])
    g.group("2. Image", [img, sc])
    g.group("3. Prompt", [pos, fg])
    g.group("4. Drag (draw here)", [di])
    g.group("5. Edit and result", [rd, dec, save], color="#a1309b")
    return g.workflow()


def flux_ledits(info: dict, sizes: dict) -> dict:
    g = Graph(info, sizes)
    unet, clip, vae = _flux_loaders(g)
    img, sc = _image(g)
    src = _text(g, clip, PROMPT, "Source prompt (describe the image)")
    neg = _text(g, clip, "", "Negative (empty)")
    con = _text(g, clip, "snow", "Concept 1 to add")
    le = g.add("DragEditLEDITSEdit", {"steps": FLUX_STEPS, "skip": 8, "source_cfg": 1.0, "target_cfg": 1.0,
                                      "mode": "SEGA", "seed": 0, "direction_1": "add", "scale_1": 5.0,
                                      "threshold": 0.9, "warmup": 2, "momentum_scale": 0.1, "momentum_beta": 0.4},
               width=360)
    g.link(unet, "MODEL", le, "model")
    g.link(vae, "VAE", le, "vae")
    g.link(src, "CONDITIONING", le, "source")
    g.link(neg, "CONDITIONING", le, "negative")
    g.link(sc, "IMAGE", le, "image")
    g.link(con, "CONDITIONING", le, "concept_1")
    _, save, prev = _save(g, vae, None, le, "ledits_flux1dev", sc)
    note = g.note(_note_flux_ledits(), width=440, height=700)
    x = g.column(0, 0, [note])
    g.column(x, 60, [unet, clip, vae])
    x = g.column(x, 580, [img, sc])
    x = g.column(x, 60, [src, neg, con])
    x = g.column(x, 60, [le])
    g.column(x, 60, [save, prev])
    g.group("1. Models", [unet, clip, vae])
    g.group("2. Image", [img, sc])
    g.group("3. Prompts and concepts", [src, neg, con])
    g.group("4. Edit", [le], color="#a1309b")
    g.group("5. Result", [save, prev], color="#3f8f4f")
    return g.workflow()


FLOWEDIT = "DragEditFlowEdit"
TARGET_PROMPT = PROMPT.replace("a red ball", "a blue ball")
FLOWEDIT_N_MAX = 24              # FlowEdit's FLUX setting: edit the last 24 of 28 steps


def flux_flowedit(info: dict, sizes: dict) -> dict:
    """FlowEdit (inversion-free) on FLUX.1-dev: the FlowEdit GUIDER with stock SamplerCustomAdvanced."""
    g = Graph(info, sizes)
    unet, clip, vae = _flux_loaders(g)
    img, sc = _image(g)
    enc = g.add("VAEEncode")
    g.link(sc, "IMAGE", enc, "pixels")
    g.link(vae, "VAE", enc, "vae")
    src = _text(g, clip, PROMPT, "Source prompt (describe the image)")
    fgs = g.add("FluxGuidance", {"guidance": 1.5}, title="FluxGuidance (source 1.5)")
    g.link(src, "CONDITIONING", fgs, "conditioning")
    tgt = _text(g, clip, TARGET_PROMPT, "Target prompt (the edited image)")
    fgt = g.add("FluxGuidance", {"guidance": 5.5}, title="FluxGuidance (target 5.5)")
    g.link(tgt, "CONDITIONING", fgt, "conditioning")
    fe = g.add(FLOWEDIT, {"source_cfg": 1.0, "target_cfg": 1.0, "n_avg": 1, "seed": 0}, width=320)
    g.link(unet, "MODEL", fe, "model")
    g.link(fgs, "CONDITIONING", fe, "source")
    g.link(fgt, "CONDITIONING", fe, "target")
    bs = g.add("BasicScheduler", {"scheduler": "simple", "steps": FLUX_STEPS, "denoise": 1.0})
    g.link(unet, "MODEL", bs, "model")
    sp = g.add("SplitSigmas", {"step": FLUX_STEPS - FLOWEDIT_N_MAX},
               title=f"SplitSigmas (keep the last {FLOWEDIT_N_MAX})")
    g.link(bs, "SIGMAS", sp, "sigmas")
    ks = g.add("KSamplerSelect", {"sampler_name": "euler"})
    rn = g.add("RandomNoise", {"noise_seed": 0}, title="RandomNoise (unused by FlowEdit)")
    sca = g.add("SamplerCustomAdvanced", width=320)
    g.link(rn, "NOISE", sca, "noise")
    g.link(fe, "GUIDER", sca, "guider")
    g.link(ks, "SAMPLER", sca, "sampler")
    g.link(sp, "low_sigmas", sca, "sigmas")
    g.link(enc, "LATENT", sca, "latent_image")
    dec = g.add("VAEDecode")
    g.link(sca, "output", dec, "samples")
    g.link(vae, "VAE", dec, "vae")
    _, save, prev = _save(g, vae, None, dec, "flowedit_flux1dev", sc)
    note = g.note(_note_flux_flowedit(), width=380, height=700)
    x = g.column(0, 0, [note])
    g.column(x, 60, [unet, clip, vae])
    x = g.column(x, 580, [img, sc])
    x = g.column(x, 60, [enc, src, fgs, tgt, fgt])
    x = g.column(x, 60, [fe, bs, sp, ks, rn])
    g.column(x, 60, [sca, dec, save, prev])
    g.group("1. Models", [unet, clip, vae])
    g.group("2. Image", [img, sc])
    g.group("3. Source and target prompts", [enc, src, fgs, tgt, fgt])
    g.group("4. FlowEdit", [fe, bs, sp, ks, rn], color="#a1309b")
    g.group("5. Result", [sca, dec, prev, save], color="#3f8f4f")
    return g.workflow()


def sd35_regiondrag(info: dict, sizes: dict) -> dict:
    g = Graph(info, sizes)
    ck = g.add("CheckpointLoaderSimple", {"ckpt_name": SD35_NAME}, title="Load Checkpoint (SD3.5 Medium)")
    img, sc = _image(g)
    pos = _text(g, ck, PROMPT, "Prompt (describe the image)")
    di, rd = _regiondrag_graph(g, (ck, "MODEL"), pos, (ck, "VAE"), sc, SD35_STEPS)
    (dec,), save, prev = _save(g, ck, rd, None, "regiondrag_sd35", sc)
    note = g.note(_note_sd35_regiondrag(), width=440, height=700)
    x = g.column(0, 0, [note])
    x = g.column(x, 60, [ck, img, sc])
    x = g.column(x, 60, [pos, prev])
    x = g.column(x, 60, [di])
    g.column(x, 60, [rd, dec, save])
    g.group("1. Model and image", [ck, img, sc])
    g.group("2. Prompt", [pos])
    g.group("3. Drag (draw here)", [di])
    g.group("4. Edit and result", [rd, dec, save], color="#a1309b")
    return g.workflow()


# --------------------------------------------------------------------------------------------------------------
# notes
# --------------------------------------------------------------------------------------------------------------

def _flux_files() -> str:
    return (f"**Made for FLUX.1-dev** (Black Forest Labs, 12 B, guidance-distilled), ComfyUI's usual FLUX files:\n"
            f"- `{FLUX_DEV_NAME}` in `models/diffusion_models` (*Load Diffusion Model*; gated on Hugging Face: "
            f"accept the licence first; weight_dtype fp8_e4m3fn halves its 24 GB for GPUs under 24 GB),\n"
            f"- `{CLIP_L}` + `{T5}` in `models/text_encoders` (*DualCLIPLoader*, type flux; "
            f"`t5xxl_fp8_e4m3fn.safetensors` also works),\n"
            f"- `{FLUX_VAE}` in `models/vae` (*Load VAE*).\n"
            "If one is missing, the frontend's missing-model panel offers its download. FLUX.1-schnell, Chroma and "
            "Kontext load the same way.\n\n"
            f"**Image:** *Resize to {SIZE} x {SIZE}* scales and centre-crops your photo to FLUX's native 1 Mpx. The "
            f"example picture `{IMAGE}` (a red ball on a hill) comes with the pack.\n\n")


def _note_flux_regiondrag() -> str:
    return ("## RegionDrag on FLUX.1-dev (1024 px)\n\n" + _flux_files() +
            "**Run it once**, then draw in *Drag Instructions*: a rectangle or polygon on what to move (handle) and "
            "one where it should go (target); paint a mask to limit what may change. The example moves the red ball "
            "to the right.\n\n"
            f"**Settings:** steps {FLUX_STEPS}, strength 0.5 (half of the flow is inverted and re-integrated), "
            "noise_scale 1.0 (refills the vacated area), seed 42. *FluxGuidance* 1.5 on the prompt: FLUX-dev's "
            "distilled guidance of 1-2 inverts most faithfully (the default 3.5 changes more of the picture). "
            "RegionDrag on a DiT pastes the region in the latent and replaces the image tokens' attention keys and "
            "values with the inversion's, moved with the region (keys re-encoded at their new RoPE position); no CFG, "
            "so one model call per step.\n\n"
            "**Memory:** FLUX-dev in bf16 needs a 24 GB GPU (fp8 weights: 16 GB); the recorded K/V of a "
            "1024 px edit is kept for the chosen blocks only (see the pack's docs).")


def _note_flux_ledits() -> str:
    return ("## LEDITS on FLUX.1-dev (1024 px)\n\n" + _flux_files() +
            "**Prompts:** the source prompt describes the image (the inversion's prompt); the negative stays empty "
            "(FLUX-dev runs without true CFG, so it is unused at cfg 1); *Concept 1* is what to add (direction add) or "
            "remove (remove). Connect concept_2 / concept_3 for more.\n\n"
            f"**Settings:** {FLUX_STEPS} steps, skip 8 (keeps the layout; more skip keeps more of the image), "
            "source_cfg and target_cfg 1 (FLUX-dev is guidance-distilled: its guidance is the prompt's FluxGuidance, "
            "3.5 by default), SEGA mode with concept scale 5, threshold 0.9 (the concept changes the top 10 % of "
            "positions), warm-up 2 steps, momentum 0.1 / 0.4. The edit-friendly flow inversion reproduces the image "
            "exactly at scale 0, so what changes is the concept's doing. One inversion and one sampling pass with "
            "one extra model call per concept and step." + MASK_NOTE + KEEP_STRUCTURE_NOTE)


def _note_flux_flowedit() -> str:
    return ("## FlowEdit on FLUX.1-dev (1024 px)\n\n" + _flux_files() +
            "**Prompts:** the source prompt describes the image; the target prompt is the same sentence with the "
            "edit (here the red ball becomes blue). FlowEdit needs no inversion: it moves the image along the "
            "difference of the target's and the source's velocities.\n\n"
            f"**Settings (FlowEdit's FLUX ones):** {FLUX_STEPS} steps of the simple schedule, of which the last "
            f"{FLOWEDIT_N_MAX} are edited (*SplitSigmas* step {FLUX_STEPS - FLOWEDIT_N_MAX}: FlowEdit's n_max; keep "
            "more for bigger changes), *FluxGuidance* 1.5 on the source and 5.5 on the target, cfg 1 (FLUX-dev's "
            "guidance is in the conditioning), n_avg 1, *KSamplerSelect* euler (FlowEdit's steps are Euler steps). "
            "The NOISE input is not used. Two model calls per step (source and target).")


def _note_sd35_regiondrag() -> str:
    return ("## RegionDrag on SD3.5 Medium (1024 px)\n\n"
            f"**Made for:** `{SD35_NAME}` in `models/checkpoints` (*Load Checkpoint*): Comfy-Org's single file of "
            "Stable Diffusion 3.5 Medium (2.5 B MMDiT) with its text encoders (CLIP-L, CLIP-G, T5-XXL in fp8) and "
            "VAE. If it is missing, the frontend's missing-model panel offers its download. SD3.5 Large "
            "(`sd3.5_large_fp8_scaled.safetensors`, same folder) works the same.\n\n"
            f"**Image:** *Resize to {SIZE} x {SIZE}* scales and centre-crops your photo to SD3.5's native 1 Mpx. The "
            f"example picture `{IMAGE}` comes with the pack.\n\n"
            "**Run it once**, then draw in *Drag Instructions*: a rectangle or polygon on what to move and one where "
            "it should go; paint a mask to limit what may change. The example moves the red ball to the right.\n\n"
            f"**Settings:** steps {SD35_STEPS}, strength 0.5, noise_scale 1.0, seed 42. SD3 has no rotary position "
            "encoding (an absolute position embedding is added at its input), so moved attention keys cannot be "
            "re-encoded at their new position: the latent paste carries most of the move. RegionDrag runs without "
            "classifier-free guidance (cfg 1; SD3.5's usual guidance of 4-5 is for text-to-image), so one model call "
            "per step; the checkpoint's own sampling shift (3.0) is used.")


# --------------------------------------------------------------------------------------------------------------
# thumbnails
# --------------------------------------------------------------------------------------------------------------

CARDS = {
    "flux_regiondrag": ("RegionDrag", "FLUX.1-dev · 1024 px", FLUX_DEV_NAME),
    "flux_ledits": ("LEDITS: + \"snow\"", "FLUX.1-dev · 1024 px", FLUX_DEV_NAME),
    "sd35_regiondrag": ("RegionDrag", "SD3.5 Medium · 1024 px", "sd3.5_medium (all-in-one)"),
    "flux_flowedit": ("FlowEdit: red → blue ball", "FLUX.1-dev · 1024 px", FLUX_DEV_NAME),
}


def thumbnail(name: str, wf: dict):
    """An illustration card like tools/thumbnails.py's real-image ones: the example picture with the drag."""
    from PIL import Image
    from tools import thumbnails as th
    from tools.example_image import DEST
    src = Image.open(DEST).convert("RGB").resize((512, 512), Image.LANCZOS)
    drag = th._drag_of(wf)
    img = th._draw_drag(src, drag) if drag else src
    title, sub, model = CARDS[name]
    return th._card(title, f"real image · {sub}", [(img, "illustration: input + edit, not a result")],
                    f"for {model}")


def build(info: dict, sizes: dict) -> dict[str, dict]:
    """The workflows whose nodes the server knows (the FlowEdit one once its node is there)."""
    out = {"flux_regiondrag": flux_regiondrag(info, sizes), "flux_ledits": flux_ledits(info, sizes),
           "sd35_regiondrag": sd35_regiondrag(info, sizes)}
    if FLOWEDIT in info:
        out["flux_flowedit"] = flux_flowedit(info, sizes)
    return out


def freeze_new(name: str, info: dict) -> bool:
    """Give a workflow that has no frozen copy yet its saved-workflow copies (tools/saved_workflows.py: UI copy and
    its API conversion, kept from then on); True when written."""
    import shutil
    from tools import saved_workflows as sw
    from tools.support.workflow_api import ui_to_api
    if (sw.UI / f"{name}.json").exists():
        return False
    shutil.copyfile(examples.path(name, folder=OUT), sw.UI / f"{name}.json")
    api = ui_to_api(sw.load(sw.UI, name), info)
    (sw.API / f"{name}.json").write_text(json.dumps(api, indent=1, sort_keys=True) + "\n")
    return True


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--object-info", type=Path, help="a saved /object_info (default: start a server and ask it)")
    ap.add_argument("--sizes", type=Path, help="measured node sizes {type: [w, h]}")
    ap.add_argument("--out", type=Path, default=OUT, help="folder to write to (default example_workflows/; another "
                                                          "folder writes no frozen copies)")
    a = ap.parse_args(argv)
    from tools.support.comfy_server import object_info
    info = object_info(a.object_info)
    sizes = json.loads(a.sizes.read_text()) if a.sizes else {}
    a.out.mkdir(parents=True, exist_ok=True)
    for name, wf in build(info, sizes).items():      # files named by tools/support/examples.py (template titles)
        path = examples.path(name, folder=a.out)
        path.write_text(json.dumps(wf, indent=2) + "\n")
        thumbnail(name, wf).save(examples.path(name, ".jpg", folder=a.out), quality=88, optimize=True)
        frozen = a.out.resolve() == OUT.resolve() and freeze_new(name, info)
        print(f"wrote {path} ({len(wf['nodes'])} nodes) and its thumbnail{' and frozen copies' if frozen else ''}")


if __name__ == "__main__":
    main()
