"""The main job (`make demo`): run the example workflows through the real ComfyUI executor (server + POST
/prompt) on the bundled shapes model, and write before / after images with the drag arrows drawn and a caption
of what the picture shows (measured by demo/measure.py) to out/demo/, then the sheet docs/demo_results.png
(tools/demo_sheet.py) when every demo ran."""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]

from demo import measure  # noqa: E402
from tools.support import examples  # noqa: E402
from tools.support.comfy_server import ComfyServer  # noqa: E402
from tools.support.workflow_api import ui_to_api  # noqa: E402

DEMOS = ["regiondrag", "dragdiffusion", "dragdiffusion_lora", "dragondiffusion_move", "dragondiffusion_drag", "ledits",
         "shapes_dit_regiondrag", "shapes_dit_ledits"]
SCALE = 8
TITLES = {"regiondrag": "RegionDrag", "dragdiffusion": "DragDiffusion", "dragdiffusion_lora": "DragDiffusion + LoRA",
          "dragondiffusion_move": "DragonDiffusion move", "dragondiffusion_drag": "DragonDiffusion drag",
          "ledits": "LEDITS", "shapes_dit_regiondrag": "RegionDrag on the demo DiT",
          "shapes_dit_ledits": "LEDITS on the demo DiT"}
# Workflows run in a server of their own: ComfyUI's Train LoRA draws its training timesteps from the process's global
# torch RNG (its seed input seeds only the LoRA init and the noise), which ComfyUI's own samplers reseed (the
# DragDiffusion workflow's SamplerCustom branch), so the LoRA picture is reproducible only from a fresh server. The
# pack's nodes leave the global RNG as they found it (tests/server/test_rng_state_server.py).
FRESH_SERVER = ("dragdiffusion_lora",)
# The plain statement a caption prints when a method cannot keep the rest (>= 30 dB outside the edit) on the demo model.
LIMITS: dict[str, str] = {
    "dragdiffusion": "DragDiffusion cannot move objects the full way on the demo model: the latent optimisation "
                     "moves features, the decoded object follows only part of the drag (README).",
    "dragdiffusion_lora": "DragDiffusion cannot move objects the full way on the demo model, with or without the "
                          "identity LoRA (the model already reconstructs the scene; README).",
    "dragondiffusion_move": "DragonDiffusion move cannot keep the background at 30 dB on the demo model: its "
                            "guidance leaves a noise texture and shifts the background colour (README).",
    "dragondiffusion_drag": "DragonDiffusion drag mode cannot move a whole object on the demo model: it pulls part of "
                            "it toward the target (use move mode with a mask for objects; README).",
    "ledits": "LEDITS did not recolour cleanly here: with a box mask over the object it succeeds on 67-100 % of "
              "ShapesBench recolours, the other cases fade or take a neighbouring hue (README).",
    "shapes_dit_ledits": "LEDITS did not recolour cleanly here: on the demo DiT with keep_structure it succeeds on "
                         "92-100 % of ShapesBench recolours, the other cases take a neighbouring hue (docs/flow.md).",
}


def _arrows(drag: dict) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """(handle, target) pairs in image pixels: point pairs, and region centres for region pairs."""
    out = [(tuple(p["handle"]), tuple(p["target"])) for p in drag.get("points", [])]
    for r in drag.get("regions", []):
        h = r.get("handle") or []
        if r.get("target"):
            c = lambda pts: (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))
            out.append((c(h), c(r["target"])))
        for p in r.get("points", []):
            out.append((tuple(p["handle"]), tuple(p["target"])))
    return out


def _image(path: Path):
    """A PNG as a float [3, H, W] tensor in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def _draw(before: Path, after: Path, arrows, dest: Path, lines: list[str] = ()) -> None:
    """Side-by-side before | after, upscaled, arrows on the before image, caption lines below."""
    from PIL import Image, ImageDraw, ImageFont
    a, b = Image.open(before).convert("RGB"), Image.open(after).convert("RGB")
    w, h = a.size
    a = a.resize((w * SCALE, h * SCALE), Image.NEAREST)
    b = b.resize((w * SCALE, h * SCALE), Image.NEAREST)
    d = ImageDraw.Draw(a)
    for (hx, hy), (tx, ty) in arrows:
        p0, p1 = (hx * SCALE, hy * SCALE), (tx * SCALE, ty * SCALE)
        d.line([p0, p1], fill=(255, 255, 0), width=3)
        d.ellipse([p0[0] - 5, p0[1] - 5, p0[0] + 5, p0[1] + 5], outline=(255, 0, 0), width=3)
        vx, vy = p1[0] - p0[0], p1[1] - p0[1]
        n = max((vx * vx + vy * vy) ** 0.5, 1e-6)
        ux, uy = vx / n, vy / n
        d.polygon([p1, (p1[0] - 12 * ux + 6 * uy, p1[1] - 12 * uy - 6 * ux),
                   (p1[0] - 12 * ux - 6 * uy, p1[1] - 12 * uy + 6 * ux)], fill=(255, 255, 0))
    import textwrap
    font = ImageFont.load_default(size=15)
    line_h = 20
    lines = [part for line in lines for part in textwrap.wrap(line, 64)]
    canvas = Image.new("RGB", (a.width * 2 + 8, a.height + 8 + line_h * len(lines)), (30, 30, 30))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + 8, 0))
    d = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        d.text((6, a.height + 6 + i * line_h), line, fill=(235, 235, 235), font=font)
    canvas.save(dest)


def run_demo(server: ComfyServer, name: str, out: Path, info: dict) -> dict:
    """Run the example workflow `name` (its file: tools/support/examples.py), save the scene (before) and the
    result (after), draw the comparison."""
    wf = json.loads(examples.path(name).read_text())
    prompt = ui_to_api(wf, info)
    scene = next((k for k, v in prompt.items() if v["class_type"] == "DragEditShapesScene"), None)
    drag = next((v for v in prompt.values() if v["class_type"] == "DragInstructions"), None)
    saves = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    for k in saves:
        prompt[k]["inputs"]["filename_prefix"] = f"demo_{name}_after"
    if scene is not None:
        prompt["before"] = {"class_type": "SaveImage", "inputs": {"images": [scene, 0], "filename_prefix": f"demo_{name}_before"}}
    t0 = time.time()
    entry = server.run_prompt(prompt, timeout=3600)   # a loaded CPU: LoRA training alone can take half an hour
    secs = time.time() - t0
    files = server.output_images(entry)
    before = next((f for f in files if f.name.startswith(f"demo_{name}_before")), None)
    afters = [f for f in files if f.name.startswith(f"demo_{name}_after")]
    res = {"workflow": name, "seconds": round(secs, 1), "files": []}
    for i, f in enumerate(([before] if before else []) + afters):
        tag = "before" if f is before else ("after" if f is afters[-1] else f"after{i}")
        dst = out / f"{name}_{tag}.png"
        shutil.copy(f, dst)
        res["files"].append(_shown(dst))
    if before and afters:
        res["measured"] = compare(name, prompt, before, afters[-1], out)
        res["files"].append(_shown(out / f"{name}_before_after.png"))
    return res


def _shown(path: Path) -> str:
    """A written file's path as printed: relative to the repository when inside it (--out may point elsewhere)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def compare(name: str, prompt: dict, before: Path, after: Path, out: Path) -> Optional[dict]:
    """Measure one demo (demo/measure.py) and draw out/<name>_before_after.png with the arrows and the caption."""
    drag = next((v for v in prompt.values() if v["class_type"] == "DragInstructions"), None)
    drag_json = None
    if drag is not None:
        text = drag["inputs"].get("drag_data") or "{}"
        try:
            drag_json = json.loads(text) if text.strip().startswith("{") else None
        except ValueError:
            drag_json = None
    m = measure.measure(prompt, _image(before), _image(after), drag_json)
    _draw(before, after, _arrows(drag_json) if drag_json else [], out / f"{name}_before_after.png",
          measure.caption(TITLES.get(name, name), m, LIMITS.get(name, "")))
    return m


def redraw(names: list[str], out: Path) -> list[dict]:
    """Re-measure and redraw saved pictures (out/<name>_before.png, _after.png) without running ComfyUI."""
    results = []
    for name in names:
        before, after = out / f"{name}_before.png", out / f"{name}_after.png"
        if not (before.exists() and after.exists()):
            print(f"[demo] {name}: no saved pictures in {out}, skipped")
            continue
        wf = json.loads(examples.path(name).read_text())
        m = compare(name, measure.prompt_of_ui(wf), before, after, out)
        results.append({"workflow": name, "measured": m})
        print(f"[demo] {name}: {m}")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("workflows", nargs="*", default=DEMOS)
    ap.add_argument("--out", default=None, help="folder for the pictures (default out/demo; another folder gets its "
                                                "own server base, so two runs can be compared)")
    ap.add_argument("--redraw", action="store_true", help="only re-measure and redraw the saved pictures")
    a = ap.parse_args()
    out = Path(a.out).resolve() if a.out else ROOT / "out" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    if a.redraw:
        results = redraw(a.workflows, out)
        (out / "demo.json").write_text(json.dumps(results, indent=2))
        if a.out is None and set(DEMOS) <= set(a.workflows):
            from tools import demo_sheet
            demo_sheet.main([])
        return
    base = ROOT / ".host" / "demo-base" if a.out is None else out / "comfy-base"
    names = [n for n in a.workflows if n in examples.EXAMPLES and examples.path(n).exists()]
    for n in sorted(set(a.workflows) - set(names)):
        print(f"[demo] {n}: no such workflow, skipped")
    # each FRESH_SERVER workflow gets a server of its own: its result must not depend on what ran before it
    groups = [[n] for n in names if n in FRESH_SERVER] + [[n for n in names if n not in FRESH_SERVER]]
    results = []
    for group in (g for g in groups if g):
        server = ComfyServer(base=base / group[0] if group[0] in FRESH_SERVER else base,
                             extra_nodes=False).start(timeout=600)
        try:
            info = server.get("/object_info")
            for name in group:
                r = run_demo(server, name, out, info)
                results.append(r)
                print(f"[demo] {name}: {r['seconds']} s -> {', '.join(r['files'])}")
        finally:
            server.stop()
    results.sort(key=lambda r: names.index(r["workflow"]))
    (out / "demo.json").write_text(json.dumps(results, indent=2))
    print(f"[demo] done: images in {out}")
    if a.out is None and set(DEMOS) <= set(a.workflows):
        from tools import demo_sheet
        demo_sheet.main([])


if __name__ == "__main__":
    main()
