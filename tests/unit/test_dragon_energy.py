"""DragonDiffusion energies and the gradient mask split, on hand-made features that are a function of a latent."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core import dragon_energy as de

torch.set_num_threads(1)
DT = torch.float64
LAT = 16  # latent side; feature maps 8x8 and 16x16, energy grid 32x32 (2x the largest)


def _weights():
    """Fixed random 3x3 convs for the two 'decoder scales' (spatial mixing, so gradients spread across masks)."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(8, 4, 3, 3, generator=g, dtype=DT) * 0.4,
            torch.randn(6, 4, 3, 3, generator=g, dtype=DT) * 0.4)


W1, W2 = _weights()


def features(z: torch.Tensor) -> list[torch.Tensor]:
    """Two scales of differentiable features of z, on the energy grid; +1 keeps raw cosines positive."""
    f1 = torch.tanh(F.conv2d(F.avg_pool2d(z, 2), W1, padding=1)) + 1.0  # coarse, 8x8 ("up_blocks[1]")
    f2 = torch.tanh(F.conv2d(z, W2, padding=1)) + 1.0                   # fine, 16x16 ("up_blocks[2]")
    return de.to_energy_grid([f1, f2], de.energy_grid_size([f1, f2]))


def source_latent(seed: int = 1) -> torch.Tensor:
    """A latent with background noise and a distinct square 'object' at latent cells [5, 10)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 4, LAT, LAT, generator=g, dtype=DT) * 0.5
    z[:, :, 5:10, 5:10] += torch.tensor([2.0, -2.0, 2.0, -1.0], dtype=DT)[None, :, None, None]
    return z


def grid_box(y0: int, y1: int, x0: int, x1: int, size: int = 2 * LAT) -> torch.Tensor:
    """Bool [size, size] mask with a True box [y0:y1, x0:x1]."""
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


OBJ = grid_box(10, 20, 10, 20)  # the object on the 32x32 grid


def perturbed(z_src: torch.Tensor, seed: int = 2, amount: float = 0.3) -> torch.Tensor:
    """A current latent near the source, as a leaf that requires grad."""
    g = torch.Generator().manual_seed(seed)
    return (z_src + amount * torch.randn(z_src.shape, generator=g, dtype=DT)).requires_grad_(True)


# Each case: name -> fn(z_cur, z_src) returning (E_edit, E_content, edit_mask on the grid)
def _drag(z, z_src):
    m = grid_box(6, 26, 6, 26)
    e = de.drag_energy(features(z), [f.detach() for f in features(z_src)], [(12, 12), (16, 18)],
                       [(17, 12), (20, 14)], m)
    return (*e, m)


def _move(z, z_src, dx=5, dy=3, scale=1.0):
    geom = de.move_geometry(OBJ, dx=dx, dy=dy, resize_scale=scale)
    e = de.move_energy(features(z), [f.detach() for f in features(z_src)], geom)
    return (*e, geom.cur)


def _appearance(z, z_src):
    z_ref = source_latent(seed=7)
    ref_mask = grid_box(4, 12, 18, 28)
    e = de.appearance_energy(features(z), [f.detach() for f in features(z_src)],
                             [f.detach() for f in features(z_ref)], OBJ, ref_mask)
    return (*e, OBJ)


def _paste(z, z_src):
    z_ref = source_latent(seed=7)
    ref_mask = grid_box(2, 12, 18, 28)  # OBJ translated
    e = de.paste_energy(features(z), [f.detach() for f in features(z_src)],
                        [f.detach() for f in features(z_ref)], OBJ, ref_mask)
    return (*e, OBJ)


CASES = {"drag": _drag, "move": _move, "move_resize": lambda z, s: _move(z, s, scale=1.3),
         "appearance": _appearance, "paste": _paste}


def test_energy_grid_is_twice_the_largest_map():
    z = source_latent()
    f1, f2 = torch.zeros(1, 8, 8, 8), torch.zeros(1, 6, 16, 16)
    assert de.energy_grid_size([f1, f2]) == (32, 32)
    assert [tuple(f.shape) for f in features(z)] == [(1, 8, 32, 32), (1, 6, 32, 32)]


@pytest.mark.parametrize("name", list(CASES))
def test_each_energy_decreases_along_its_own_negative_gradient(name):
    z_src = source_latent()
    z = perturbed(z_src)
    e_edit, e_con, _ = CASES[name](z, z_src)
    for which, energy in (("edit", 0), ("content", 1)):
        val = (e_edit, e_con)[energy]
        assert val.requires_grad, f"{name}: {which} energy does not depend on z"
        (g,) = torch.autograd.grad(val, z, retain_graph=True)
        assert g.norm() > 1e-8, f"{name}: {which} gradient vanished"
        step = 1e-3 * g / g.norm()
        with torch.no_grad():
            new = CASES[name](z - step, z_src)[energy]
        assert new < val.detach(), f"{name}: {which} energy did not decrease ({float(new)} vs {float(val)})"


@pytest.mark.parametrize("name", list(CASES))
def test_masked_guidance_lowers_each_energy(name):
    """-g with only the edit (content) part active is a descent direction for E_edit (E_content)."""
    z_src = source_latent()
    for part in ("edit", "content"):
        z = perturbed(z_src)
        e_edit, e_con, mask = CASES[name](z, z_src)
        se, sc = (1.0, 0.0) if part == "edit" else (0.0, 1.0)
        g = de.guidance_gradient(e_edit, e_con, z, mask, se, sc)
        assert g.norm() > 0
        before = (e_edit if part == "edit" else e_con).detach()
        with torch.no_grad():
            after = CASES[name](z - 1e-3 * g / g.norm(), z_src)[0 if part == "edit" else 1]
        assert after < before


def test_drag_zero_displacement_gives_zero_edit_gradient():
    z_src = source_latent()
    z = z_src.clone().requires_grad_(True)
    pts = [(12, 12), (16, 18)]
    m = grid_box(6, 26, 6, 26)
    f_gud = [f.detach() for f in features(z_src)]
    e_edit, _ = de.drag_energy(features(z), f_gud, pts, pts, m)
    (g,) = torch.autograd.grad(e_edit, z)
    assert g.abs().max() < 1e-7
    # and a real displacement does move things
    z2 = z_src.clone().requires_grad_(True)
    e_edit, _ = de.drag_energy(features(z2), f_gud, pts, [(20, 12), (16, 24)], m)
    (g,) = torch.autograd.grad(e_edit, z2)
    assert g.abs().max() > 1e-4


def test_move_zero_displacement_gives_zero_edit_gradient():
    z_src = source_latent()
    z = z_src.clone().requires_grad_(True)
    e_edit, _, _ = _move(z, z_src, dx=0, dy=0)
    (g,) = torch.autograd.grad(e_edit, z)
    assert g.abs().max() < 1e-7
    z2 = z_src.clone().requires_grad_(True)
    e_edit, _, _ = _move(z2, z_src, dx=6, dy=0)
    (g,) = torch.autograd.grad(e_edit, z2)
    assert g.abs().max() > 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_mask_split_edit_inside_content_outside(name):
    z_src = source_latent()
    z = perturbed(z_src)
    e_edit, e_con, mask = CASES[name](z, z_src)
    m = de.mask_to_latent(mask, z.shape[-2:]).to(DT)
    assert 0 < m.sum() < m.numel()
    (raw_e,) = torch.autograd.grad(e_edit, z, retain_graph=True)
    (raw_c,) = torch.autograd.grad(e_con, z, retain_graph=True)
    # the raw gradients spill across the mask border (the features mix space), so the split is doing work
    assert (raw_e * (1 - m)).abs().max() > 1e-6 and (raw_c * m).abs().max() > 1e-6

    def split(se, sc):  # a fresh graph per call
        ee, ec, mk = CASES[name](z, z_src)
        return de.guidance_gradient(ee, ec, z, mk, se, sc)

    g_edit_only, g_con_only = split(3.0, 0.0), split(0.0, 2.0)
    assert (g_edit_only * (1 - m)).abs().max() == 0          # edit term's gradient gone outside the mask
    assert (g_con_only * m).abs().max() == 0                 # content term's gradient gone inside the mask
    g = de.guidance_gradient(e_edit, e_con, z, mask, 3.0, 2.0)
    torch.testing.assert_close(g, 3.0 * raw_e * m + 2.0 * raw_c * (1 - m))
    assert not g.requires_grad


def test_batched_gradient_matches_two_backward_passes():
    z_src = source_latent()
    z = perturbed(z_src)
    e_edit, e_con, mask = _move(z, z_src)
    g_batched = de.guidance_gradient(e_edit, e_con, z, mask, 40.0, 40.0, batched=True)
    e_edit, e_con, mask = _move(z, z_src)
    g_two = de.guidance_gradient(e_edit, e_con, z, mask, 40.0, 40.0)
    torch.testing.assert_close(g_batched, g_two)


def test_gradient_of_constant_energy_is_zero():
    z = source_latent().requires_grad_(True)
    g = de.guidance_gradient(torch.tensor(0.0, dtype=DT), torch.tensor(0.0, dtype=DT), z, OBJ, 1.0, 1.0)
    assert torch.equal(g, torch.zeros_like(z))


def test_move_geometry_translation_and_resize_about_object_centre():
    geom = de.move_geometry(OBJ, dx=4, dy=-3)
    assert torch.equal(geom.cur, torch.roll(OBJ, (-3, 4), (0, 1)))
    assert torch.equal(geom.vacated, OBJ & ~geom.cur)
    assert torch.equal(geom.other, ~(OBJ | geom.cur))
    assert geom.tar_idx.numel() == geom.cur_idx.numel() == int(OBJ.sum())

    big = de.move_geometry(OBJ, dx=0, dy=0, resize_scale=1.5)
    ys, xs = big.cur.nonzero(as_tuple=True)
    assert abs(float(ys.min() + ys.max()) / 2 - 14.5) <= 0.5 and abs(float(xs.min() + xs.max()) / 2 - 14.5) <= 0.5
    assert int(big.cur.sum()) == 15 * 15 and big.resized == (48, 48)


def test_resize_or_move_leaving_the_grid_raises():
    near_edge = grid_box(1, 9, 2, 10)
    with pytest.raises(ValueError, match="leaves the image"):
        de.move_geometry(near_edge, dx=0, dy=0, resize_scale=2.0)
    with pytest.raises(ValueError, match="leaves the image"):
        de.move_geometry(OBJ, dx=20, dy=0)
    with pytest.raises(ValueError, match="empty"):
        de.move_geometry(torch.zeros(32, 32, dtype=torch.bool), dx=1, dy=1)


def test_appearance_and_paste_input_errors():
    z = source_latent()
    f = [t.detach() for t in features(z)]
    with pytest.raises(ValueError, match="ref_mask"):
        de.appearance_energy(f, f, f, OBJ, torch.ones(16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="base_mask"):
        de.appearance_energy(f, f, f, torch.ones(64, 64), OBJ)
    with pytest.raises(ValueError, match="reference"):
        de.appearance_energy(f, f, None, OBJ, OBJ)
    with pytest.raises(ValueError, match="ref_mask.*empty"):
        de.appearance_energy(f, f, f, OBJ, torch.zeros(32, 32))
    with pytest.raises(ValueError, match="same size"):
        de.paste_energy(f, f, f, OBJ, grid_box(0, 4, 0, 4))
    with pytest.raises(ValueError, match="f_ref"):
        de.appearance_energy(f, f, f[:1], OBJ, OBJ)


def test_drag_input_errors():
    f = [t.detach() for t in features(source_latent())]
    m = grid_box(6, 26, 6, 26)
    with pytest.raises(ValueError, match="outside"):
        de.drag_energy(f, f, [(40, 3)], [(5, 5)], m)
    with pytest.raises(ValueError, match="2 handle points but 1"):
        de.drag_energy(f, f, [(4, 3), (5, 5)], [(5, 5)], m)
    with pytest.raises(ValueError, match="user_mask.*empty"):
        de.drag_energy(f, f, [(4, 3)], [(5, 5)], torch.zeros(32, 32))
    with pytest.raises(ValueError, match="layer_weights"):
        de.drag_energy(f, f, [(4, 3)], [(5, 5)], m, layer_weights=(1.0,))


def test_point_patch_is_3x3_and_clipped_inside():
    p = de.point_patch((0.4, 31.9), (32, 32))
    ys, xs = p.nonzero(as_tuple=True)
    assert int(p.sum()) == 9 and int(ys.max()) == 31 and int(xs.min()) == 0


def test_mode_defaults_table_and_windows():
    mv = de.mode_defaults("move")
    assert (mv.cfg, mv.energy_scale, mv.w_edit, mv.w_content, mv.w_contrast, mv.w_inpaint, mv.sde_strength) == \
        (4.0, 0.5, 4.0, 6.0, 0.2, 0.8, 0.4)
    assert mv.gradient_scale == pytest.approx(0.08 * 0.5e3) and mv.kv_mode == "replace"
    dr = de.mode_defaults("drag")
    assert (dr.energy_scale, dr.w_edit, dr.w_content, dr.w_inpaint, dr.guidance_factor, dr.kv_mode) == \
        (2.0, 4.0, 6.0, 0.2, 0.04, "concat")
    ap, pa = de.mode_defaults("appearance"), de.mode_defaults("paste")
    assert (ap.cfg, ap.energy_scale, ap.w_edit, ap.w_content) == (5.0, 2.0, 3.5, 5.0)
    assert (pa.energy_scale, pa.w_edit, pa.w_content, pa.kv_mode) == (1.5, 4.0, 6.0, "mix")
    with pytest.raises(ValueError, match="unknown DragonDiffusion mode"):
        de.mode_defaults("landmark")

    assert sum(de.guidance_active(i, 50, mv) for i in range(50)) == 30
    assert sum(de.guidance_active(i, 50, mv, sparsify=True) for i in range(50)) == 20
    assert not de.kv_inject_active(4, 50, mv) and de.kv_inject_active(5, 50, mv)
    assert de.kv_inject_active(35, 50, ap) and not de.kv_inject_active(36, 50, ap)
    assert sum(de.guidance_active(i, 25, dr) for i in range(25)) == 15


def test_half_precision_features_give_finite_fp32_energies():
    z_src = source_latent()
    z = perturbed(z_src)
    f_cur = [f.half() for f in features(z)]
    f_gud = [f.detach().half() for f in features(z_src)]
    geom = de.move_geometry(OBJ, dx=3, dy=2)
    e_edit, e_con = de.move_energy(f_cur, f_gud, geom)
    assert e_edit.dtype == torch.float32 and torch.isfinite(e_edit) and torch.isfinite(e_con)
    g = de.guidance_gradient(e_edit, e_con, z, geom.cur, 40.0, 40.0)
    assert torch.isfinite(g).all() and g.abs().max() > 0


def test_centred_features_separate_a_shared_component():
    """center_features removes each image's mean feature: a component shared by every cell no longer makes object
    and background look alike, and a spec with center=True computes its energies on the centred maps."""
    from core import dragondiffusion as dd
    g = torch.Generator().manual_seed(0)
    obj, bg = torch.randn(8, generator=g), torch.randn(8, generator=g)
    shared = 20 * torch.randn(8, generator=g)
    f = torch.zeros(1, 8, 32, 32)
    f[0, :, :, :] = (bg + shared)[:, None, None]
    f[0, :, 8:16, 8:16] = (obj + shared)[:, None, None]
    raw = float(de.cos_sim(f[..., 10, 10], f[..., 0, 0]))
    (fc,) = de.center_features([f])
    cen = float(de.cos_sim(fc[..., 10, 10], fc[..., 0, 0]))
    assert raw > 0.9 and cen < 0.0
    torch.testing.assert_close(fc.mean(dim=(-2, -1)), torch.zeros(1, 8), atol=1e-5, rtol=0)
    z_src = source_latent()
    z = perturbed(z_src)
    f_cur, f_gud = features(z), [t.detach() for t in features(z_src)]
    spec = dd.make_spec("move", (32, 32), mask=OBJ, offset=(3, 2), center=True)
    plain = dd.make_spec("move", (32, 32), mask=OBJ, offset=(3, 2))
    got = dd.energies(spec, f_cur, f_gud)
    want = dd.energies(plain, de.center_features(f_cur), de.center_features(f_gud))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(got[0], dd.energies(plain, f_cur, f_gud)[0])
