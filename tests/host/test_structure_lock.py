"""LEDITS-flow's structure lock (core/host/dit_qk.py, LEDITS Edit's keep_structure) on a real tiny FLUX, a tiny SD3
and the shapes demo DiT: each edit call runs first on the inversion's own state of its step, and in the
single-stream blocks only the image tokens' queries and keys of the positive prompt's rows there replace those of
every row; scale 0 still gives the input back; nothing is installed on a DiT without single blocks; on the demo DiT
a recolour that loses the shape without the lock keeps it with the lock."""
import pytest
import torch

from tools.support import tiny_models
from tools.support.flow_calls import psnr
from tools.support.node_calls import run_node
from dragedit.core import flow_inversion as fi
from dragedit.core import host, ledits
from dragedit.core.host import dit_qk
from dragedit.nodes.sega import LEDITSEdit, SEGAGuidance

STEPS, SKIP = 6, 1


def _edit(model, scale, keep_structure, concept=5, seed_latent=3):
    """LEDITS Edit's run (core.ledits.run, what the node calls) with one SEGA concept from SEGA Guidance: (input
    LATENT, edited latent samples)."""
    lat = tiny_models.dit_latent(seed=seed_latent, size=8)
    m, = run_node(SEGAGuidance, model=model, concept=tiny_models.dit_conditioning(concept), scale=scale, mode="SEGA",
                  direction="add", threshold=0.5, warmup=0, cooldown=0, weight=1.0, momentum_scale=0.1,
                  momentum_beta=0.4)
    with torch.no_grad():
        out = ledits.run(model, lat["samples"], tiny_models.dit_conditioning(0), tiny_models.dit_conditioning(9),
                         ledits.sega_patch_of(m), mode="SEGA", steps=STEPS, skip=SKIP, source_cfg=1.0,
                         target_cfg=1.0, seed=0, keep_structure=keep_structure)
    return lat, out


class Spy:
    """An attention override under the lock's (its `prev`): what the kernel gets, per call, with the lock's mode."""

    def __init__(self):
        self.lock, self.calls = None, []

    def __call__(self, func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        key = (to.get("block_type"), to.get("block_index"))
        n_txt, n_img = to.get("dragedit_txt_tokens"), to.get("dragedit_img_tokens")
        if key[0] is not None and n_txt is not None:
            q, k = args[0], args[1]
            img = slice(n_txt, n_txt + n_img)
            self.calls.append(dict(mode=self.lock.mode, key=key, cu=list(to.get("cond_or_uncond") or []),
                                   q=q[:, :, img].clone(), k=k[:, :, img].clone(), q_txt=q[:, :, :n_txt].clone()))
        return func(*args, **kwargs)


class XSpy:
    """An APPLY_MODEL wrapper inside the lock's: the latent and sigma of every model call."""

    def __init__(self):
        self.xs = []

    def __call__(self, executor, x, *args, **kwargs):
        self.xs.append((float(args[0].reshape(-1)[0]), x.clone()))
        return executor(x, *args, **kwargs)


def test_lock_injects_the_positive_rows_source_maps_into_single_blocks_only(flux, monkeypatch):
    import comfy.patcher_extension as pe
    spy, xspy, locks = Spy(), XSpy(), []
    real = dit_qk.patch_source_attention

    def spied(model, source_at, *a, **kw):
        to = dict(model.model_options.get("transformer_options") or {})
        to["optimized_attention_override"] = spy              # the lock chains onto it: spy sees the kernel's q / k
        model.model_options["transformer_options"] = to
        o = real(model, source_at, *a, **kw)
        model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test_x_spy", xspy)   # added last: innermost
        spy.lock = o
        locks.append(o)
        return o

    monkeypatch.setattr(dit_qk, "patch_source_attention", spied)
    lat, out = _edit(flux, 8.0, True)
    o = locks[0]
    n_single = len(host.dit.select_blocks(flux, kinds=("single",)))
    assert o.injected > 0 and o.injected % n_single == 0 and o.mode == "off" and o.bank == {}

    # the source pass runs on the inversion's own state of the step (the reference inversion, built here)
    sig = host.scheduler_sigmas(flux, STEPS)[SKIP:]
    inv = fi.run_edit_friendly(flux, lat["samples"], tiny_models.dit_conditioning(0), tiny_models.dit_conditioning(9),
                               1.0, sig, eta=1.0, seed=0)
    pairs = list(zip(xspy.xs[0::2], xspy.xs[1::2]))
    assert len(pairs) == STEPS - SKIP == o.injected // n_single
    for k, ((s_src, x_src), (s_edit, x_edit)) in enumerate(pairs):
        assert s_src == s_edit == pytest.approx(float(sig[k]))
        want = inv.xts[k].to(x_src.dtype).repeat(x_src.shape[0] // inv.xts[k].shape[0], 1, 1, 1)
        torch.testing.assert_close(x_src, want, rtol=0, atol=1e-6)
        if k > 0:
            assert (x_edit - x_src).abs().max() > 1e-4                  # the edit has left the source path

    rec = [c for c in spy.calls if c["mode"] == "record"]
    inj = [c for c in spy.calls if c["mode"] == "inject"]
    assert len(rec) == len(inj) == len(spy.calls) // 2
    per_call = len(host.dit.blocks(flux))
    for j, (r, i) in enumerate(zip(rec, inj)):
        assert r["key"] == i["key"]
        rows = i["q"].shape[0]
        pos = r["cu"].index(0) * (rows // len(r["cu"]))                   # the positive prompt's rows
        n = rows // len(r["cu"])
        if r["key"][0] == "single":                                        # every row: the positive's source maps
            for t in ("q", "k"):
                torch.testing.assert_close(i[t], r[t][pos:pos + n].repeat(len(r["cu"]), 1, 1, 1), rtol=0, atol=0)
            assert j < per_call or not torch.equal(i["q_txt"], r["q_txt"])   # text tokens: the call's own
        elif j >= per_call:           # double blocks: untouched (the first step's edit is at the source state)
            assert not torch.equal(i["q"], r["q"])


def test_lock_with_scale_zero_gives_the_input_back_and_edits_otherwise(flux):
    lat, out = _edit(flux, 0.0, True)
    assert psnr(out, lat["samples"]) >= 60.0
    _lat, locked = _edit(flux, 8.0, True)
    _lat, free = _edit(flux, 8.0, False)
    assert psnr(locked, lat["samples"]) < 50.0 and not torch.equal(locked, free)


def test_lock_is_not_installed_where_there_are_no_single_blocks(sd3, monkeypatch):
    assert dit_qk.structure_blocks(sd3) == []
    calls = []
    monkeypatch.setattr(dit_qk, "patch_source_attention", lambda *a, **k: calls.append(a))
    _lat, on = _edit(sd3, 8.0, True)
    _lat, off = _edit(sd3, 8.0, False)
    assert calls == [] and torch.equal(on, off)


def test_lock_keeps_the_triangle_on_the_shapes_dit():
    """ShapesBench seed 101, case 2 (purple → yellow triangle, the object's box as the mask): without the lock the
    demo DiT draws a yellow blob there, with it a yellow triangle."""
    from bench import shapes_cases as sc
    from bench import shapes_scoring as S
    from dragedit.demo.shapes import dit
    model, clip, vae = dit.load(dit.WEIGHTS)
    case = [c for c in sc.build_cases(seed=101) if c.kind == "concept_recolour"][1]
    assert tuple(case.concepts) == (("yellow triangle", "add"), ("purple triangle", "remove"))
    cond = lambda t: dit.conditioning(clip.encoder, [t])                   # noqa: E731
    base = dict(model=model, vae=vae, source=cond(case.prompt), negative=cond(""), steps=20, skip=2, source_cfg=1.0,
                target_cfg=1.0, mode="SEGA", seed=0, threshold=0.8, warmup=1, image=sc.input_image(case)
                .permute(1, 2, 0)[None], mask=case.handle_mask().float()[None])
    for i, (words, direction) in enumerate(case.concepts[:3], 1):
        base.update({f"concept_{i}": cond(words), f"direction_{i}": direction, f"scale_{i}": 14.0})
    got = {}
    for lock in (False, True):
        img, _ = run_node(LEDITSEdit, keep_structure=lock, **base)
        got[lock] = S.case_metrics(case, img[0].permute(2, 0, 1).clamp(0, 1))
    assert got[True]["success"] and not got[False]["success"]
    assert got[True]["psnr_out"] > 35.0                 # what changes outside the object lies inside its box
