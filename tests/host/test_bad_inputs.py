"""Bad input and resource limits, in-process: the shared rules behind the executor cases of
tests/server/test_bad_inputs_server.py."""
from __future__ import annotations

import json

import pytest
import torch

from tools.support import tiny_models
from tools.support.node_calls import run_node

from dragedit.core import host, schedule
from dragedit.core.drag_schema import MAX_NESTING, DragInstructions, DragSchemaError, rle_encode, rle_resample
from dragedit.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from dragedit.nodes import _inputs
from dragedit.nodes._errors import NodeInputError, float_input_names, node_errors


# ============================================================================================== in-process rules
def test_ddim_grid_strictly_descending_for_every_step_count():
    """Item 1: every step count the widgets allow (1..1000) gives a strictly descending grid ending in 0 with
    steps + 1 values: the diffusers 'leading' grid (timesteps 1 + k·(1000//steps)) wherever it fits in 0..999, and
    0..999 at steps = 1000. RegionDrag's and the DDPM inversion's checks accept the edge grids."""
    from dragedit.core import regiondrag as rd
    from dragedit.core.ddpm_inversion import check_sigmas
    m = tiny_models.sd15()
    for steps in range(1, 1001):
        s = host.ddim_sigmas(m, steps)
        assert s.numel() == steps + 1 and float(s[-1]) == 0.0, steps
        assert bool((s[1:] < s[:-1]).all()), steps
    for steps in (1, 3, 7, 999, 1000):   # 1000 % steps != 0 for 3, 7 and 999
        ratio = 1000 // steps
        ts = [round(host.timestep_of(m, float(x))) for x in host.ddim_sigmas(m, steps)[:-1]][::-1]
        assert ts == [(1 if steps < 1000 else 0) + k * ratio for k in range(steps)], steps
        check_sigmas(rd.grid_sigmas(m, steps, 1.0))


def test_strictly_descending_error_is_short():
    from dragedit.core.ddpm_inversion import check_sigmas
    s = torch.linspace(14.6, 0.0, 1001)
    s[1] = s[0]
    with pytest.raises(ValueError, match=r"sigma 1 \(14\.6\) is not below sigma 0") as e:
        check_sigmas(s)
    assert len(str(e.value)) < 300


def test_every_float_input_of_every_node_is_checked_finite():
    """Item 2: one rule (nodes/_errors.node_entry on every node's FUNCTION) covers every FLOAT input."""
    floats = 0
    for key, cls in NODE_CLASS_MAPPINGS.items():
        names = float_input_names(cls)
        floats += len(names)
        if names:
            assert getattr(getattr(cls, cls.FUNCTION), "_dragedit_floats_checked", False), key
    assert floats >= 30
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(NodeInputError, match=r"\[Feature Guidance\] input 'w_edit': must be a finite number"):
            run_node(NODE_CLASS_MAPPINGS["DragEditFeatureGuidance"], model=None, inversion=None, mode="drag",
                     energy_scale=1.0, start_percent=0.0, end_percent=0.6, resize_scale=1.0, w_edit=bad)
    assert NODE_DISPLAY_NAME_MAPPINGS["DragEditFeatureGuidance"] == "Feature Guidance"


def test_match_run_rule():
    grid = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    assert schedule.match_run(grid, grid) == 0
    assert schedule.match_run(grid[2:], grid, contiguous=True) == 2          # a SplitSigmas part
    assert schedule.match_run(grid[[0, 2, 4]], grid) == 0                     # every sigma one of the grid's
    assert schedule.match_run(grid[[0, 2, 4]], grid, contiguous=True) is None
    assert schedule.match_run(torch.tensor([3.0, 1.9, 0.0]), grid) is None
    assert schedule.match_run(torch.tensor([1.0, 2.0]), grid) is None        # not in the grid's order


def test_one_mask_rule():
    """Item 4: image size, or the latent's size (returned at image size), one mask, all black = no mask."""
    img, lat = (32, 24), (12, 16)
    m = _inputs.check_mask(torch.ones(1, 24, 32), "mask", image_size=img, latent_hw=lat)
    assert m.shape == (24, 32)
    m = _inputs.check_mask(torch.ones(12, 16), "mask", image_size=img, latent_hw=lat)
    assert m.shape == (24, 32) and bool((m == 1).all())
    with pytest.raises(NodeInputError, match=r"\[N\] input 'mask': is 64x48 but the image is 32x24"), node_errors("N"):
        _inputs.check_mask(torch.ones(48, 64), "mask", image_size=img, latent_hw=lat)
    with pytest.raises(NodeInputError, match=r"a batch of 2 masks"):
        _inputs.check_mask(torch.ones(2, 24, 32), "mask", image_size=img)
    assert _inputs.check_mask(torch.zeros(64, 64), "mask", image_size=img).shape == (64, 64)   # no mask
    assert _inputs.check_mask(torch.ones(96, 128), "mask", latent_hw=lat).shape == (96, 128)   # factor 8
    with pytest.raises(NodeInputError, match=r"does not fit the 16x12 latent"):
        _inputs.check_mask(torch.ones(40, 40), "mask", latent_hw=lat)


def test_nesting_limit():
    """Item 6: deep JSON is refused before json.loads recurses; normal and 'ui'-carrying JSON still parse."""
    for deep in ("[" * 60000 + "]" * 60000, '{"ui": ' + '{"a": ' * 40 + "1" + "}" * 41):
        with pytest.raises(DragSchemaError, match=f"nested more than {MAX_NESTING} levels"):
            DragInstructions.from_json(deep)
    ok = '{"version": 1, "points": [[1, 2, 3, 4]], "ui": {"a": [[{"b": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]]}}'
    assert DragInstructions.from_json(ok, image_size=(8, 8)).points == (((1.0, 2.0), (3.0, 4.0)),)


def test_rescaled_mask_never_decoded_at_the_declared_size(monkeypatch):
    """Item 8: a 200-byte JSON declaring a 16384x16384 mask is rescaled straight from its runs."""
    import dragedit.core.drag_schema as ds
    big = json.dumps({"version": 1, "image_size": [16384, 16384], "points": [[100, 100, 9000, 9000]],
                      "mask": {"size": [16384, 16384], "counts": [16384 * 4096, 16384 * 8192, 16384 * 4096]}})
    assert len(big) < 200
    real = ds.rle_decode
    monkeypatch.setattr(ds, "rle_decode", lambda c, size: (_ for _ in ()).throw(AssertionError(size))
                        if size[0] * size[1] > 1 << 20 else real(c, size))
    d = DragInstructions.from_json(big, image_size=(32, 32))
    m = d.mask_tensor()
    assert d.image_size == (32, 32) and m.shape == (32, 32)
    assert bool((m[8:24] == 1).all()) and float(m[:8].sum()) == 0 and float(m[24:].sum()) == 0
    # the resampling equals torch's nearest-exact interpolation of the decoded mask
    g = torch.Generator().manual_seed(0)
    for W, H, nW, nH in [(40, 30, 80, 60), (64, 64, 16, 16), (33, 17, 100, 51)]:
        c = rle_encode((torch.rand(H, W, generator=g) > 0.6).float(), (W, H))
        ref = torch.nn.functional.interpolate(real(c, (W, H)).float()[None, None], size=(nH, nW),
                                              mode="nearest-exact")[0, 0] > 0.5
        assert torch.equal(rle_resample(c, (W, H), (nW, nH)), ref)


def test_kv_store_budget_and_ram_guard(monkeypatch):
    """Item 9: the store's hard stop, and the automatic guard (half the available RAM) that refuses before a run."""
    store = host.KVStore(budget_bytes=3 * 2 * 100 * 2)   # three puts of K,V [1, 100] in fp16
    for i in range(3):
        store.put(1.0 + i, ("output", 0, 0), 0, torch.ones(1, 100), torch.ones(1, 100))
    store.put(1.0, ("output", 0, 0), 0, torch.ones(1, 100), torch.ones(1, 100))    # a replacement costs nothing
    with pytest.raises(host.KVBudgetError, match="memory limit"):
        store.put(9.0, ("output", 0, 0), 0, torch.ones(1, 100), torch.ones(1, 100))
    assert store.nbytes() == 1200
    store.clear()
    store.put(9.0, ("output", 0, 0), 0, torch.ones(1, 100), torch.ones(1, 100))
    monkeypatch.setattr(host.kv, "available_memory", lambda: 4 << 30)
    assert _inputs.kv_budget("record_kv", 1 << 30) == 2 << 30
    with pytest.raises(NodeInputError, match=r"\[N\] input 'record_kv': .*about 3\.00 GB .*limit of 2\.00 GB \(half"), \
            node_errors("N"):
        _inputs.kv_budget("record_kv", 3 << 30)
    with pytest.raises(NodeInputError, match=r"limit of 0\.50 GB \(kv_max_gb = 0\.5\)"):
        _inputs.kv_budget("record_kv", 1 << 30, limit_gb=0.5)


def test_kv_estimate_figures():
    """Item 9 figures: SD1.5 at 512x512 and SDXL at 1024x1024 (fp16, cond half only), from the real layer maps."""
    from dragedit.core.regiondrag import kv_cache_bytes
    sd15 = [host.AttnLayer("x", 0, 0, 0, lv, ch) for lv, ch, n in ((1, 320, 5), (2, 640, 5), (4, 1280, 5), (8, 1280, 1))
            for _ in range(n)]
    assert round(kv_cache_bytes(sd15, (64, 64), 1) / 1e6) == 46
    sdxl = [host.AttnLayer("x", 0, 0, 0, lv, ch) for lv, ch, n in ((2, 640, 10), (4, 1280, 60)) for _ in range(n)]
    assert round(kv_cache_bytes(sdxl, (128, 128), 1) / 1e6) == 419


