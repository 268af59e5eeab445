"""DragonDiffusion on real ComfyUI code: the truncated estimator pass, guidance through the real UNet, the memory
bank against the DDIM reconstruction, the three nodes (any sampler, all modes, SD1.5 / SDXL), input errors."""
from __future__ import annotations


import pytest
import torch

from tools.support import tiny_models
from tools.support.node_calls import run_node
from dragedit.core import dragon_energy as de
from dragedit.core import dragondiffusion as dd
from dragedit.core import host
from dragedit.core import inversion as inv_mod
from dragedit.core.drag_schema import DragInstructions
from dragedit.nodes._errors import NodeInputError
from dragedit.nodes.dragondiffusion import DragonDiffusion, FeatureGuidance, MemoryBankKV
from dragedit.nodes.inversion import DDIMInversion

SIZE = 128  # image px of the 16x16 test latents (SD factor 8); energy grid 32x32 (4 px per cell)
DRAG = DragInstructions.from_obj({"version": 1, "image_size": [SIZE, SIZE],
                                  "points": [{"handle": [44, 52], "target": [76, 60]}]})


def box(y0, y1, x0, x1, size=SIZE):
    """MASK [1, size, size] with a white box."""
    m = torch.zeros(1, size, size)
    m[:, y0:y1, x0:x1] = 1.0
    return m


OBJ = box(32, 72, 32, 72)


def invert(model, pos, seed=0, steps=10, kv=True, strength=1.0):
    """(LATENT, INVERSION) of a test latent through the DDIM Inversion node, K/V in float32."""
    out, inv, _ = run_node(DDIMInversion, model=model, latent=tiny_models.latent(seed), positive=pos, steps=steps,
                           strength=strength, record_kv=kv, kv_dtype="float32")
    return out, inv


def ddim_reconstruction(model, pos, out, inv):
    """Plain DDIM sampling (cfg 1, no patches) from the inverted start along the inversion's sigmas."""
    def loop(den, x, _s):
        return inv_mod.sample(den, inv.start.to(x), inv.sigmas.to(x))
    with torch.inference_mode():
        return host.session(host.clone(model), pos, None, 1.0, out["samples"], inv.sigmas, loop)


def probe(model, pos, inv, fn, sigma_index=2, cfg=1.0, neg=None):
    """Run one denoiser call at the inversion's latent for sigmas[sigma_index] on a clone with a post-CFG probe
    fn(GuidanceCall) installed (features of the feature blocks); returns what fn stored."""
    got = {}
    m = host.clone(model)
    blocks = dd.feature_blocks(model)
    host.patch_post_cfg_guidance(m, lambda call: fn(call, got), blocks)
    s = float(inv.sigmas[sigma_index])

    def loop(den, x, _s):
        got["x0"] = den.x0(inv.latents[sigma_index].to(x), s)
        return x

    with torch.inference_mode():
        host.session(m, pos, neg, cfg, host.process_out(model, inv.start.clone()), inv.sigmas, loop)
    return got, m


# ---------------------------------------------------------------- the estimator pass

def test_feature_blocks_and_energy_grid(sd15_model, sdxl_model):
    assert dd.feature_blocks(sd15_model) == [1, 3]           # tiny 2-level UNet: the upsampling block + the last
    assert dd.energy_grid(sd15_model, (16, 16)) == (32, 32)
    # tiny SDXL layout (3 levels, 2 blocks each): up_blocks[0], [1] outputs, at 1/2 and full latent resolution
    assert dd.feature_blocks(sdxl_model) == [1, 3]
    assert [b.level for b in host.decoder_blocks(sdxl_model) if b.index in (1, 3)] == [2, 1]
    assert dd.energy_grid(sdxl_model, (16, 16)) == (32, 32)


def test_truncated_pass_equals_full_pass_and_ignores_kv_bank(sd15_model, cond):
    """call.features(x) = the features of a normal full UNet pass (cond only) even when the sampled model carries a
    K/V bank of another image, whose injection does change the sampler's own x̂0."""
    pos, _ = cond
    _, inv = invert(sd15_model, pos)
    _, other = invert(sd15_model, pos, seed=5)
    blocks = dd.feature_blocks(sd15_model)

    def fn(call, got):
        with call.differentiable(), torch.no_grad():
            got["f"] = [f.clone() for f in call.features(call.x)]
        got["calls"] = call.feature_calls
        return None

    plain, _ = probe(sd15_model, pos, inv, fn)
    banked_model = host.clone(sd15_model)
    dd.patch_memory_bank(banked_model, other, "move")
    banked, _ = probe(banked_model, pos, inv, fn)
    assert banked["calls"] == 1
    # a full, uncut pass with plain feature capture
    fs = host.FeatureStore()
    full = host.patch_feature_capture(host.clone(sd15_model), fs, blocks)
    s = float(inv.sigmas[2])

    def loop(den, x, _s):
        den.x0(inv.latents[2].to(x), s)
        return x

    with torch.inference_mode():
        host.session(full, pos, None, 1.0, host.process_out(sd15_model, inv.start.clone()), inv.sigmas, loop)
    for b, f_plain, f_bank in zip(blocks, plain["f"], banked["f"]):
        torch.testing.assert_close(f_plain, fs.half(b, 0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(f_bank, f_plain, rtol=0, atol=0)
    assert (banked["x0"] - plain["x0"]).abs().max() > 1e-3   # the bank does act on the sampled pass


@pytest.mark.parametrize("mode", ["drag", "move"])
def test_guidance_gradient_through_real_unet_descends_energy(sd15_model, cond, mode):
    """g from the truncated pass is a descent direction of the mode's energy at that σ (edit and content parts)."""
    pos, _ = cond
    _, inv = invert(sd15_model, pos)
    grid = dd.energy_grid(sd15_model, (16, 16))
    spec = (dd.make_spec("drag", grid, handles=[(11, 13)], targets=[(19, 15)]) if mode == "drag" else
            dd.make_spec("move", grid, mask=OBJ[0, ::4, ::4] > 0, offset=(4, 2)))
    noise = torch.randn(inv.start.shape, generator=torch.Generator().manual_seed(3))

    def fn(call, got):
        x_gud = dd.guidance_latent(inv, call.sigma).to(call.x)
        with call.differentiable():
            with torch.no_grad():
                f_gud = de.to_energy_grid(call.features(x_gud), grid)
            x = host.grad_input(call.x + 0.3 * noise.to(call.x))
            energy = lambda z: dd.energies(spec, de.to_energy_grid(call.features(z), grid), f_gud)  # noqa: E731
            for part, (se, sc) in (("edit", (1.0, 0.0)), ("content", (0.0, 1.0))):
                e_edit, e_con = energy(x)
                g = de.guidance_gradient(e_edit, e_con, x, spec.edit_mask, se, sc)
                with torch.no_grad():
                    after = energy(x - 1e-2 * g / g.norm())
                got[part] = (float((e_edit, e_con)[part == "content"].detach()), float(after[part == "content"]))
        return None

    got, _ = probe(sd15_model, pos, inv, fn)
    for part in ("edit", "content"):
        before, after = got[part]
        assert after < before, (part, before, after)


# ---------------------------------------------------------------- memory bank vs DDIM reconstruction

@pytest.mark.parametrize("mode", ["drag", "move"])
def test_memory_bank_at_guidance_scale_0_reproduces_ddim_reconstruction(sd15_model, cond, mode):
    """With the source's own K/V (recorded by the inversion, float32) and energy scale 0, the all-in-one equals
    plain DDIM reconstruction up to the inversion's own z_i-vs-z_{i+1} K/V offset; another image's bank does not."""
    pos, neg = cond
    out, inv = invert(sd15_model, pos, steps=20, strength=0.5)
    _, other = invert(sd15_model, pos, seed=5, steps=20, strength=0.5)
    plain = ddim_reconstruction(sd15_model, pos, out, inv)
    kw = dict(model=sd15_model, positive=pos, negative=neg, mode=mode, cfg=1.0, energy_scale=0.0,
              resize_scale=1.0, drag=DRAG, mask=OBJ if mode == "move" else None, init_paste=False)
    (own,) = run_node(DragonDiffusion, inversion=inv, **kw)
    err = float((own["samples"] - plain).abs().max())
    assert err <= 2e-4 * float(plain.abs().max()), err
    # control: the same run with another image's bank (start latent and schedule ours) drifts far more
    foreign = inv_mod.DDIMInversion(sigmas=inv.sigmas, latents=inv.latents, kv=other.kv, steps=inv.steps,
                                    model_id=inv.model_id)
    (wrong,) = run_node(DragonDiffusion, inversion=foreign, **kw)
    assert float((wrong["samples"] - plain).abs().max()) > 5 * max(err, 1e-7)


# ---------------------------------------------------------------- the nodes

def _stock_sample(model, pos, neg, cfg, samples, sigmas, sampler="euler"):
    """A stock ComfyUI sampler (what SamplerCustom does), add_noise off."""
    import comfy.sample
    import comfy.samplers
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, torch.zeros_like(samples), cfg, comfy.samplers.sampler_object(sampler),
                                          sigmas, pos, neg, samples, disable_pbar=True, seed=0)


def _guidance_of(model) -> dd.FeatureGuidance:
    return next(f.fn for f in model.model_options["sampler_post_cfg_function"] if hasattr(f, "fn"))


def _runs_of(model) -> list:
    import comfy.patcher_extension as pe
    return [w for ws in model.wrappers.get(pe.WrappersMP.OUTER_SAMPLE, {}).values() for w in ws if hasattr(w, "state")]


def test_feature_guidance_and_memory_bank_nodes_with_stock_samplers(sd15_model, cond):
    pos, neg = cond
    out, inv = invert(sd15_model, pos)
    (banked,) = run_node(MemoryBankKV, model=sd15_model, inversion=inv, mode="drag", start_percent=0.1,
                         end_percent=1.0)
    (guided,) = run_node(FeatureGuidance, model=banked, inversion=inv, mode="drag", energy_scale=1.0,
                         start_percent=0.0, end_percent=0.6, resize_scale=1.0, drag=DRAG)
    assert not sd15_model.model_options.get("sampler_post_cfg_function")   # the input MODEL is untouched
    g = _guidance_of(guided)
    plain = _stock_sample(banked, pos, neg, 3.0, out["samples"], inv.sigmas)
    edited = _stock_sample(guided, pos, neg, 3.0, out["samples"], inv.sigmas)
    n_window = sum(de.guidance_active(i, 10, de.mode_defaults("drag")) for i in range(10))
    assert g.stats.guided == n_window == 6 and g.stats.calls == 10
    assert g.stats.feature_passes_grad == 6 and g.stats.feature_passes_nograd == 6 and g.stats.backward_passes == 12
    assert torch.isfinite(edited).all() and (edited - plain).abs().max() > 1e-3
    assert all(r.state is None for r in _runs_of(guided))               # the run's feature cache is gone
    # a schedule off the inversion grid (karras, 2nd-order sampler): z_t^gud is interpolated along the DDIM path
    from comfy.k_diffusion.sampling import get_sigmas_karras
    ms = host.model_sampling(sd15_model)
    karras = get_sigmas_karras(6, float(ms.sigma_min), float(inv.sigmas[0])).float()
    (fg_only,) = run_node(FeatureGuidance, model=sd15_model, inversion=inv, mode="drag", energy_scale=1.0,
                          start_percent=0.0, end_percent=0.6, resize_scale=1.0, drag=DRAG)
    g2 = _guidance_of(fg_only)
    other = _stock_sample(fg_only, pos, neg, 3.0, out["samples"], karras, sampler="heun")
    assert g2.stats.guided > 0 and torch.isfinite(other).all()
    # the memory bank's K/V exist only at the inversion's steps: that schedule is refused, naming the node (issue 14)
    with pytest.raises(NodeInputError, match=r"\[Memory Bank K/V\] input 'inversion': the sampler node runs sigmas"):
        _stock_sample(guided, pos, neg, 3.0, out["samples"], karras, sampler="heun")


def test_guidance_latent_is_the_piecewise_linear_ddim_path(sd15_model, cond):
    _, inv = invert(sd15_model, cond[0])
    s = inv.sigmas
    assert torch.equal(dd.guidance_latent(inv, float(s[3])), inv.latents[3])
    mid = dd.guidance_latent(inv, 0.25 * float(s[3]) + 0.75 * float(s[4]))
    torch.testing.assert_close(mid, 0.25 * inv.latents[3] + 0.75 * inv.latents[4])
    assert dd.guidance_latent(inv, float(s[0]) * 1.5) is None


def test_percent_windows_match_reference_steps(sd15_model):
    sig = host.ddim_sigmas(sd15_model, 50)
    guide = dd.sigma_percent_window(sd15_model, 0.0, 0.6)
    bank = dd.sigma_percent_window(sd15_model, 0.1, 1.0)
    assert [i for i in range(50) if guide(float(sig[i]))] == list(range(30))
    assert [i for i in range(50) if bank(float(sig[i]))] == list(range(5, 50))


MODE_INPUTS = {
    "drag": dict(drag=DRAG),
    "move": dict(drag=DRAG, mask=OBJ, resize_scale=1.2),
    "appearance": dict(mask=OBJ, ref_mask=box(8, 40, 72, 120)),
    "paste": dict(mask=OBJ, ref_mask=box(64, 104, 80, 120)),
}


@pytest.mark.parametrize("mode", list(MODE_INPUTS))
def test_all_in_one_modes_sd15(sd15_model, cond, mode):
    pos, neg = cond
    _, inv = invert(sd15_model, pos, steps=8)
    kw = dict(MODE_INPUTS[mode])
    if mode in ("appearance", "paste"):
        _, kw["reference"] = invert(sd15_model, pos, seed=4, steps=8)
    kw.setdefault("resize_scale", 1.0)
    args = dict(model=sd15_model, positive=pos, negative=neg, inversion=inv, mode=mode, cfg=4.0, **kw)
    (edited,) = run_node(DragonDiffusion, energy_scale=1.0, **args)
    (unguided,) = run_node(DragonDiffusion, energy_scale=0.0, **args)
    assert edited["samples"].shape == (1, 4, 16, 16) and torch.isfinite(edited["samples"]).all()
    assert (edited["samples"] - unguided["samples"]).abs().max() > 1e-3


def test_all_in_one_sdxl_shaped(sdxl_model, cond_xl):
    pos, neg = cond_xl
    _, inv = invert(sdxl_model, pos, steps=6)
    (edited,) = run_node(DragonDiffusion, model=sdxl_model, positive=pos, negative=neg, inversion=inv, mode="drag",
                         cfg=4.0, energy_scale=1.0, resize_scale=1.0, drag=DRAG)
    assert torch.isfinite(edited["samples"]).all() and edited["samples"].shape == (1, 4, 16, 16)


@pytest.mark.slow
def test_diffeditor_options_run_and_count(sd15_model, cond):
    """Time travel adds the repeats (a forward and an inversion call each); regional SDE is seeded."""
    from dragedit.core.dragondiffusion import run as run_edit
    from dragedit.nodes.dragondiffusion import build_spec
    pos, neg = cond
    _, inv = invert(sd15_model, pos, steps=50, strength=0.7)   # steps 15..49 of 50: SDE 15-19, travel 22-28
    spec, blocks = build_spec(sd15_model, inv, "drag", drag=DRAG, energy_scale=1.0)
    d = de.mode_defaults("drag")
    counts = {}
    outs = {}
    for name, opts in (("base", dd.EditOptions()), ("tt", dd.EditOptions(time_travel=True)),
                       ("sde", dd.EditOptions(regional_sde=True, seed=1)),
                       ("sde2", dd.EditOptions(regional_sde=True, seed=1))):
        st = {}
        with torch.inference_mode():
            outs[name] = run_edit(sd15_model, pos, neg, 4.0, inv, spec, blocks, d, opts, stats=st)
        counts[name] = st["denoiser_calls"]
    assert counts["base"] == 35 and counts["tt"] == 35 + 4 * 2 * 2     # 4 steps x 2 extra repeats x (fwd + back)
    assert torch.equal(outs["sde"], outs["sde2"]) and (outs["sde"] - outs["base"]).abs().max() > 1e-4
    assert (outs["tt"] - outs["base"]).abs().max() > 1e-5


@pytest.mark.slow
def test_d_plus_sparsified_guidance_steps(sd15_model, cond):
    """D+ (the reference's default alg): guidance on every step before step 10 of 50, then on even steps only, up to
    step 30; with sparsify off on every step of the window. Strength 0.7 runs steps 15..49."""
    from dragedit.core.dragondiffusion import run as run_edit
    from dragedit.nodes.dragondiffusion import build_spec
    pos, neg = cond
    _, inv = invert(sd15_model, pos, steps=50, strength=0.7)
    spec, blocks = build_spec(sd15_model, inv, "drag", drag=DRAG, energy_scale=1.0)
    d = de.mode_defaults("drag")
    guided = {}
    for sparsify in (True, False):
        st: dict = {}
        with torch.inference_mode():
            run_edit(sd15_model, pos, neg, 4.0, inv, spec, blocks, d, dd.EditOptions(sparsify=sparsify), stats=st)
        guided[sparsify] = st["guided"]
    assert dd.EditOptions().sparsify is True
    assert guided[True] == len(range(16, 30, 2)) == 7 and guided[False] == 15
    assert [i for i in range(50) if de.guidance_active(i, 50, d, True)] == list(range(10)) + list(range(10, 30, 2))


def test_time_travel_inverts_with_the_plain_cond_unet(sd15_model, cond):
    """Denoiser.cond_x0 (time travel's re-inversion pass) = the positive conditioning alone through the bare model:
    no CFG, no K/V bank, no post-CFG guidance, even inside a session that has all three."""
    pos, neg = cond
    _, inv = invert(sd15_model, pos)
    m = host.clone(sd15_model)
    dd.patch_memory_bank(m, inv, "drag")
    guided = FeatureGuidance().patch(m, inv, "drag", 1.0, 0.0, 1.0, 1.0, drag=DRAG)[0]
    s = float(inv.sigmas[3])
    x = inv.latents[3]
    got = {}

    def loop(den, xx, _s):
        got["cond"] = den.cond_x0(x.to(xx), s)
        got["cfg"] = den.x0(x.to(xx), s)
        return xx

    def plain_loop(den, xx, _s):
        got["plain"] = den.x0(x.to(xx), s)
        return xx

    with torch.inference_mode():
        host.session(guided, pos, neg, 4.0, host.process_out(sd15_model, inv.start.clone()), inv.sigmas, loop)
        host.session(host.clone(sd15_model), pos, None, 1.0, host.process_out(sd15_model, inv.start.clone()),
                     inv.sigmas, plain_loop)
    torch.testing.assert_close(got["cond"], got["plain"], rtol=1e-5, atol=1e-5)
    assert (got["cfg"] - got["plain"]).abs().max() > 1e-3


def test_vacated_cells_and_vacate_noise(sd15_model, cond):
    """vacated_cells: the object's source cells its new place does not cover (move), the handle cells no target
    covers (drag); vacate_noise re-noises exactly those cells of the pasted start latent."""
    from dragedit.core.dragondiffusion import run as run_edit
    from dragedit.nodes.dragondiffusion import build_spec
    spec = dd.make_spec("move", (32, 32), mask=OBJ[0, ::4, ::4] > 0, offset=(8, 0))   # object cells 8..17 -> +4 cols
    vac = dd.vacated_cells(spec, (16, 16))
    assert vac[4:9, 4:8].all() and int(vac.sum()) == 5 * 4
    spec = dd.make_spec("drag", (32, 32), handles=[(11, 13)], targets=[(19, 15)])
    vac = dd.vacated_cells(spec, (16, 16))
    assert vac[5:8, 4:7].all() and int(vac.sum()) == 9
    pos, neg = cond
    _, inv = invert(sd15_model, pos, steps=6)
    spec, blocks = build_spec(sd15_model, inv, "move", drag=DRAG, mask=OBJ, energy_scale=0.0)
    outs = {}
    for a in (0.0, 1.0):
        with torch.inference_mode():
            outs[a] = run_edit(sd15_model, pos, neg, 1.0, inv, spec, blocks, de.mode_defaults("move"),
                               dd.EditOptions(init_paste=True, vacate_noise=a), memory_bank=False)
    assert (outs[1.0] - outs[0.0]).abs().max() > 1e-3


def test_init_paste_moves_start_latent_cells():
    """DiffEditor's start-latent init: move pastes the object's latent cells at the new place, drag copies the 3x3
    cells around the handle to the target; everything else stays."""
    x = torch.arange(4 * 16 * 16, dtype=torch.float32).reshape(1, 4, 16, 16)
    spec = dd.make_spec("move", (32, 32), mask=OBJ[0, ::4, ::4] > 0, offset=(4, 2))   # object cells 8..17, +2 rows +4 cols
    out = dd.init_latent(x, spec)
    torch.testing.assert_close(out[..., 5:10, 6:11], x[..., 4:9, 4:9])          # latent shift (1 row, 2 cols)
    changed = (out != x).any(1)[0]
    assert not changed[:5].any() and not changed[:, :6].any() and not changed[10:].any()
    spec = dd.make_spec("drag", (32, 32), handles=[(11, 13)], targets=[(19, 15)])
    out = dd.init_latent(x, spec)
    torch.testing.assert_close(out[..., 6:9, 8:11], x[..., 5:8, 4:7])
    assert int((out != x).any(1).sum()) <= 9
    spec = dd.make_spec("appearance", (32, 32), mask=OBJ[0, ::4, ::4] > 0, ref_mask=OBJ[0, ::4, ::4] > 0)
    assert torch.equal(dd.init_latent(x, spec), x)


# ---------------------------------------------------------------- input errors

@pytest.fixture()
def inverted(sd15_model, cond):
    return invert(sd15_model, cond[0], steps=4)[1]


@pytest.mark.parametrize("mode, change, match", [
    ("appearance", dict(mask=OBJ, ref_mask=OBJ), r"input 'reference'.*second image"),
    ("paste", dict(mask=OBJ, ref_mask=OBJ), r"input 'reference'"),
    ("appearance", dict(mask=box(0, 40, 0, 40, size=100), ref_mask=OBJ, reference="inv"), r"input 'mask'.*100x100"),
    ("appearance", dict(mask=OBJ, ref_mask=torch.ones(1, 48, 64), reference="inv"), r"input 'ref_mask'.*64x48"),
    ("drag", dict(drag=DRAG, mask=box(0, 40, 0, 40, size=64)), r"input 'mask'.*64x64.*128x128"),
    ("move", dict(drag=DRAG, mask=OBJ, resize_scale=3.0), r"input 'resize_scale'.*leaves the image"),
    ("move", dict(drag=DRAG), r"input 'mask'.*object mask"),
    ("move", dict(mask=OBJ), r"input 'drag'.*one point pair"),
    ("drag", dict(), r"input 'drag'.*point pairs"),
    ("drag", dict(drag=[[44, 52, 76, 60]]), r"input 'drag'.*no image size"),
    ("paste", dict(mask=OBJ, ref_mask=box(0, 8, 0, 8), reference="inv"), r"input 'ref_mask'.*same size"),
    ("appearance", dict(mask=OBJ, ref_mask=torch.zeros(1, SIZE, SIZE), reference="inv"), r"input 'ref_mask'.*empty"),
])
def test_dragondiffusion_input_errors(sd15_model, cond, inverted, mode, change, match):
    pos, neg = cond
    kw = dict(model=sd15_model, positive=pos, negative=neg, inversion=inverted, mode=mode, cfg=4.0,
              energy_scale=1.0, resize_scale=1.0)
    kw.update(change)
    if kw.get("reference") == "inv":
        kw["reference"] = inverted
    with pytest.raises(NodeInputError, match=r"^\[DragonDiffusion\] " + match):
        run_node(DragonDiffusion, **kw)


def test_node_errors_for_inversion_inputs(sd15_model, cond):
    pos, neg = cond
    _, no_kv = invert(sd15_model, pos, steps=4, kv=False)
    _, kv = invert(sd15_model, pos, steps=4)
    with pytest.raises(NodeInputError, match=r"^\[Memory Bank K/V\] input 'inversion'.*record_kv"):
        run_node(MemoryBankKV, model=sd15_model, inversion=no_kv, mode="drag", start_percent=0.1, end_percent=1.0)
    with pytest.raises(NodeInputError, match=r"^\[Feature Guidance\] input 'inversion'.*another model"):
        run_node(FeatureGuidance, model=tiny_models.sd15(seed=3), inversion=no_kv, mode="drag", energy_scale=1.0,
                 start_percent=0.0, end_percent=0.6, resize_scale=1.0, drag=DRAG)
    with pytest.raises(NodeInputError, match=r"^\[Feature Guidance\] input 'end_percent'"):
        run_node(FeatureGuidance, model=sd15_model, inversion=no_kv, mode="drag", energy_scale=1.0,
                 start_percent=0.6, end_percent=0.2, resize_scale=1.0, drag=DRAG)
    with pytest.raises(NodeInputError, match=r"^\[Memory Bank K/V\] input 'reference'"):
        run_node(MemoryBankKV, model=sd15_model, inversion=kv, mode="paste", start_percent=0.0, end_percent=1.0,
                 mask=OBJ, ref_mask=OBJ)
    with pytest.raises(NodeInputError, match=r"^\[DragonDiffusion\] input 'negative'"):
        run_node(DragonDiffusion, model=sd15_model, positive=pos, negative=tiny_models.conditioning(2, width=64),
                 inversion=kv, mode="drag", cfg=4.0, energy_scale=1.0, resize_scale=1.0, drag=DRAG)


# ---------------------------------------------------------------- the real server


