"""RegionDrag on the demo DiT against the UNet v1, from ShapesBench runs: medians with the interquartile range per
case kind (centroid error, PSNR outside the edit, ghost), and the ablation of key re-encoding and the block set
with the K/V bytes each records (core.regiondrag_dit.kv_bytes on the demo DiT, 20 steps at strength 0.5).

    python -m bench.shapesbench --model dit  --methods regiondrag --kinds point_drag,region_drag,move,resize --name cmp_dit
    python -m bench.shapesbench --model unet --methods regiondrag --kinds point_drag,region_drag,move,resize --name cmp_unet
    python -m bench.shapesbench --model dit --methods regiondrag --kinds region_drag,move --sheet 0 \\
        --set regiondrag.dit_layers=vital --name abl_vital        # likewise abl_single, abl_double, abl_noreenc
                                                                  # (regiondrag.reencode_keys=false)
    python -m bench.regiondrag_dit                                # the tables (out/bench/regiondrag_dit.json)
"""
from __future__ import annotations

import json
import statistics
import sys
from typing import Optional, Sequence

from bench import _util

KINDS = ("point_drag", "region_drag", "move", "resize")
RUNS = {"UNet v1": "cmp_unet", "DiT": "cmp_dit"}
ABLATION = {"all blocks, keys re-encoded": ("cmp_dit", "all"), "all blocks, keys not re-encoded": ("abl_noreenc", "all"),
            "double blocks": ("abl_double", "double"), "single blocks": ("abl_single", "single"),
            "vital blocks": ("abl_vital", "vital")}
ABLATION_KINDS = ("region_drag", "move")


def _q(xs: Sequence[float]) -> Optional[tuple[float, float, float]]:
    """(median, lower quartile, upper quartile) or None."""
    xs = sorted(float(x) for x in xs if x is not None)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q[0], q[2]


def _fmt(t: Optional[tuple[float, float, float]], nd: int = 2) -> str:
    return "-" if t is None else f"{t[0]:.{nd}f} ({t[1]:.{nd}f}-{t[2]:.{nd}f})"


def _records(name: str) -> Optional[list[dict]]:
    p = _util.OUT / f"{name}.json"
    if not p.exists():
        return None
    return [r for r in json.loads(p.read_text())["case_records"] if r["method"] == "regiondrag"]


def row(recs: list[dict], kinds: Sequence[str]) -> dict:
    """n, failures and the quartiles of centroid error, PSNR outside and ghost over the cases of `kinds`."""
    rs = [r for r in recs if r["kind"] in kinds]
    ok = [r for r in rs if r["status"] == "ok"]
    return {"n": len(rs), "fail": len(rs) - len(ok), "centroid": _q([r.get("centroid_err") for r in ok]),
            "psnr_out": _q([min(r["psnr_out"], 99.0) for r in ok]), "ghost": _q([r.get("ghost") for r in ok]),
            "seconds": _q([r["seconds"] for r in ok])}


def kv_bytes_table() -> dict:
    """K/V bytes a RegionDrag run on the demo DiT records per block set (20 steps, strength 0.5, float16)."""
    import torch
    _util.setup()
    from dragedit.core import regiondrag_dit as rdd
    from dragedit.nodes.shapes_demo import ShapesDemoModel
    model = ShapesDemoModel().load("dit")[0]
    return {s: rdd.kv_bytes(model, (16, 16), 10, torch.float16, s) for s in rdd.LAYER_SETS}


def main(argv: Optional[Sequence[str]] = None) -> int:
    out: dict = {"compare": {}, "ablation": {}}
    print("| model | kind | n | centroid err px | PSNR outside dB | ghost | s/edit |\n|---|---|---|---|---|---|---|")
    for label, name in RUNS.items():
        recs = _records(name)
        if recs is None:
            print(f"| {label} | (no out/bench/{name}.json) |")
            continue
        for k in KINDS:
            r = row(recs, [k])
            out["compare"][f"{label}/{k}"] = r
            print(f"| {label} | {k} | {r['n']} | {_fmt(r['centroid'])} | {_fmt(r['psnr_out'], 1)} | "
                  f"{_fmt(r['ghost'], 3)} | {_fmt(r['seconds'], 1)} |")
    kvb = kv_bytes_table()
    out["kv_bytes"] = kvb
    print(f"\nAblation on the DiT ({' + '.join(ABLATION_KINDS)}):\n"
          "| variant | n | centroid err px | PSNR outside dB | ghost | K/V bytes |\n|---|---|---|---|---|---|")
    for label, (name, layers) in ABLATION.items():
        recs = _records(name)
        if recs is None:
            print(f"| {label} | (no out/bench/{name}.json) |")
            continue
        r = row(recs, ABLATION_KINDS)
        out["ablation"][label] = {**r, "kv_bytes": kvb[layers]}
        print(f"| {label} | {r['n']} | {_fmt(r['centroid'])} | {_fmt(r['psnr_out'], 1)} | {_fmt(r['ghost'], 3)} | "
              f"{kvb[layers] / 1024:.0f} KiB |")
    (_util.OUT / "regiondrag_dit.json").write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
