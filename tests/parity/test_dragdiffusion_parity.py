"""Numerical parity of the pack's DragDiffusion latent optimisation with the official code.

The reference is a port, written for this test from Yujun-Shi/DragDiffusion at ebe659a (utils/drag_utils.py:
point_tracking, check_handle_reach_target, interpolate_feature_patch, drag_diffusion_update; drag_pipeline.py:
forward_unet_features, step; utils/ui_utils.py: run_drag's point / mask / sup_res conversion). It works as the
official code does: (row, col) points on the supervision map, a diffusers UNet2DConditionModel whose up-block
outputs are read as the official modified forward returns them ([mid, up_blocks[0], up_blocks[1], ...]), the DDIM
constants of diffusers' DDIMScheduler, Adam on the VP latent z_t. The pack runs its own code on the ComfyUI model
that holds the same weights (tools/support/diffusers_bridge.py). Compared step by step: the loss of each Adam step, the
gradient of z_t, the tracked handles, and the updated latent.

Differences kept on purpose (documented in core/motion.py and below, not exercised by the parity cases):
- Bilinear sampling of a shifted patch that pokes past the map edge: the reference slices past the border (Python's
  negative indices wrap or the slice shortens and the sum fails to broadcast); the pack reads the edge cell
  (grid_sample border padding). Interior patches are identical (test_bilinear_patch_matches_reference).
- fp16 autocast + GradScaler (CUDA only in the reference): the pack autocasts only with half_precision on and scales
  the loss only for fp16 features; this test runs fp32 as the reference's CPU path would.
- Image px -> supervision cell: the reference rounds x * sup / W; the pack takes the cell that contains the
  continuous point (floor), so odd pixel clicks can land one supervision cell (a quarter latent cell) apart; the
  parity cases feed both sides the same cells.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tools.support import tiny_models
from dragedit.core import dragdiffusion as dd
from dragedit.core import host
from dragedit.core import motion
from dragedit.core.inversion import start_index
from dragedit.core.schedule import alpha_bar

diffusers = pytest.importorskip("diffusers")

STEPS, STRENGTH = 50, 0.7
IMAGE = 128                      # tiny SD1.5 twin: latent 16x16 (VAE factor 8) -> supervision map 64x64


# ================================================================================== reference port (test only)
class RefArgs:
    """The fields of the official `args` namespace the update reads."""

    def __init__(self, r_m=1, r_p=3, lam=0.1, lr=0.01, n_pix_step=80, unet_feature_idx=(1,), sup_res=IMAGE // 2):
        self.r_m, self.r_p, self.lam, self.lr, self.n_pix_step = r_m, r_p, lam, lr, n_pix_step
        self.unet_feature_idx = list(unet_feature_idx)
        self.sup_res_h = self.sup_res_w = sup_res


def ref_forward_unet_features(unet, z, t, emb, layer_idx, h, w):
    """Official forward_unet_features: UNet output and the chosen intermediate maps ([mid, up_0, up_1, ...]) each
    bilinearly resized (align_corners False) to (h, w) and concatenated on channels."""
    feats = []
    hooks = [unet.mid_block.register_forward_hook(lambda m, i, o: feats.append(o))]
    hooks += [b.register_forward_hook(lambda m, i, o: feats.append(o)) for b in unet.up_blocks]
    try:
        out = unet(z, t, encoder_hidden_states=emb).sample
    finally:
        for hk in hooks:
            hk.remove()
    sel = [F.interpolate(feats[k], (h, w), mode="bilinear") for k in layer_idx]
    return out, torch.cat(sel, dim=1)


def ref_step(eps, t, x, acp, steps=STEPS):
    """Official DragPipeline.step: deterministic DDIM to t - T // steps (final ᾱ = ᾱ_0 past the start)."""
    prev = t - 1000 // steps
    a_t = acp[t]
    a_prev = acp[prev] if prev > 0 else acp[0]
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def ref_point_tracking(F0, F1, handles, handles_init, r_p):
    """Official point_tracking: nearest neighbour (L1 over channels) of F0 at the initial handle inside the
    (2r_p+1)^2 window (clipped) around the current handle, points as (row, col)."""
    with torch.no_grad():
        _, _, H, W = F0.shape
        for i in range(len(handles)):
            p0, p = handles_init[i], handles[i]
            ref = F0[:, :, int(p0[0]), int(p0[1])]
            r1, r2 = max(0, int(p[0]) - r_p), min(H, int(p[0]) + r_p + 1)
            c1, c2 = max(0, int(p[1]) - r_p), min(W, int(p[1]) + r_p + 1)
            d = (ref[:, :, None, None] - F1[:, :, r1:r2, c1:c2]).abs().sum(dim=1)[0]
            row, col = divmod(d.argmin().item(), d.shape[-1])
            handles[i][0] = r1 + row
            handles[i][1] = c1 + col
        return handles


def ref_reached(handles, targets):
    """Official check_handle_reach_target: every handle closer than 2.0 (L2) to its target."""
    return bool((torch.tensor([(p - q).norm() for p, q in zip(handles, targets)]) < 2.0).all())


def ref_patch(feat, y1, y2, x1, x2):
    """Official interpolate_feature_patch: four shifted integer slices blended with the fractional weights."""
    xf, yf = torch.floor(x1).long(), torch.floor(y1).long()
    xc, yc = xf + 1, yf + 1
    nx = torch.floor(x2).long() - xf
    ny = torch.floor(y2).long() - yf
    wa = (xc.float() - x1) * (yc.float() - y1)
    wb = (xc.float() - x1) * (y1 - yf.float())
    wc = (x1 - xf.float()) * (yc.float() - y1)
    wd = (x1 - xf.float()) * (y1 - yf.float())
    ia = feat[:, :, yf:yf + ny, xf:xf + nx]
    ib = feat[:, :, yc:yc + ny, xf:xf + nx]
    ic = feat[:, :, yf:yf + ny, xc:xc + nx]
    id_ = feat[:, :, yc:yc + ny, xc:xc + nx]
    return ia * wa + ib * wb + ic * wc + id_ * wd


def ref_motion_loss(F1, handles, targets, r_m):
    """The motion-supervision part of the official drag_diffusion_update loop body."""
    loss = 0.0
    _, _, H, W = F1.shape
    for p, g in zip(handles, targets):
        if (g - p).norm() < 2.0:
            continue
        d = (g - p) / (g - p).norm()
        r1, r2 = max(0, int(p[0]) - r_m), min(H, int(p[0]) + r_m + 1)
        c1, c2 = max(0, int(p[1]) - r_m), min(W, int(p[1]) + r_m + 1)
        still = F1[:, :, r1:r2, c1:c2].detach()
        moved = ref_patch(F1, r1 + d[0], r2 + d[0], c1 + d[1], c2 + d[1])
        loss = loss + ((2 * r_m + 1) ** 2) * F.l1_loss(still, moved)
    return loss


def ref_drag_update(unet, init_code, emb, t, handles, targets, mask, args, acp):
    """Official drag_diffusion_update (fp32, no autocast / GradScaler) with a record of every step:
    (z_t, [(handles used, loss, grad of z_t)], stopped early)."""
    with torch.no_grad():
        out, F0 = ref_forward_unet_features(unet, init_code, t, emb, args.unet_feature_idx, args.sup_res_h,
                                            args.sup_res_w)
        x_prev_0 = ref_step(out, t, init_code, acp)
    init_code = init_code.clone().requires_grad_(True)
    opt = torch.optim.Adam([init_code], lr=args.lr)
    handles_init = copy.deepcopy(handles)
    interp_mask = F.interpolate(mask, (init_code.shape[2], init_code.shape[3]), mode="nearest")
    using_mask = interp_mask.sum() != 0.0
    record, stopped = [], False
    for step in range(args.n_pix_step):
        out, F1 = ref_forward_unet_features(unet, init_code, t, emb, args.unet_feature_idx, args.sup_res_h,
                                            args.sup_res_w)
        x_prev = ref_step(out, t, init_code, acp)
        if step != 0:
            handles = ref_point_tracking(F0, F1, handles, handles_init, args.r_p)
        if ref_reached(handles, targets):
            stopped = True
            break
        loss = ref_motion_loss(F1, handles, targets, args.r_m)
        if using_mask:
            loss = loss + args.lam * ((x_prev - x_prev_0) * (1.0 - interp_mask)).abs().sum()
        loss.backward()
        record.append(([p.clone() for p in handles], float(loss.detach()), init_code.grad.detach().clone()))
        opt.step()
        opt.zero_grad()
    return init_code.detach(), record, stopped


def ref_points(points_px, full, sup):
    """run_drag's conversion: (x, y) image px -> rounded (row, col) on the sup x sup map."""
    return [torch.round(torch.tensor([y / full * sup, x / full * sup])) for x, y in points_px]


# ================================================================================== helpers
class RecordingAdam(torch.optim.Adam):
    """Adam that keeps a copy of each parameter's gradient at every step (to compare the pack's gradients)."""
    grads: list = []

    def step(self, closure=None):
        RecordingAdam.grads.append(self.param_groups[0]["params"][0].grad.detach().clone())
        return super().step(closure)


def _setup(seed=0):
    """The tiny SD1.5 ComfyUI model, its diffusers twin, a conditioning, the DDIM start sigma / timestep and a
    z_t with a planted structure (so the features have something to track)."""
    from diffusers import DDIMScheduler
    from tools.support.diffusers_bridge import sd15_unet_twin

    model = tiny_models.sd15(seed)
    unet = sd15_unet_twin(model)
    cond = tiny_models.conditioning(seed)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(STEPS)
    t = int(sched.timesteps[STEPS - round(STRENGTH * STEPS)])
    sigmas = host.ddim_sigmas(model, STEPS)[start_index(STEPS, STRENGTH):]
    acp = sched.alphas_cumprod.double()
    # the same DDIM constants and timestep on both sides
    comfy_acp = 1.0 / (1.0 + host.model_sampling(model).sigmas.double() ** 2)
    assert torch.allclose(acp, comfy_acp, rtol=1e-5, atol=1e-7)
    assert round(host.timestep_of(model, sigmas[0])) == t == 681
    assert round(host.timestep_of(model, sigmas[1])) == t - 1000 // STEPS
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(1, 4, 16, 16, generator=g)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    z = z * 0.5 + 2.0 * torch.exp(-((xs - 5) ** 2 + (ys - 8) ** 2) / 4.5) * torch.tensor([1., -1., 1., -1.])[:, None, None]
    return model, unet, cond, t, sigmas, acp.float(), z


def _pack(model, cond, z, sigmas, handles_px, targets_px, settings, mask=None, monkeypatch=None):
    """The pack's dd.optimize on z_t (VP) with Adam recorded; returns (z_t after, DragResult, grads)."""
    s = float(sigmas[0])
    samples = host.process_out(model, z / float(alpha_bar(s).sqrt()))
    grid = dd.feature_grid((16, 16), (IMAGE, IMAGE))
    h, tg = dd.points_on_grid(torch.tensor(handles_px, dtype=torch.float64),
                              torch.tensor(targets_px, dtype=torch.float64), grid)
    RecordingAdam.grads = []
    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    with torch.inference_mode():
        out = dd.optimize(model, cond, samples, sigmas, h, tg, grid, settings, mask=mask)
    monkeypatch.undo()
    z_after = host.process_in(model, out.samples.float()) * float(alpha_bar(s).sqrt())
    return z_after, out.result, list(RecordingAdam.grads), grid


def _as_xy(rc_list):
    """Reference (row, col) tensors -> pack (x, y) [N, 2]."""
    return torch.stack([torch.tensor([float(p[1]), float(p[0])]) for p in rc_list])


def _compare(ref_record, ref_z, res, grads, z_after, atol_z=2e-5):
    assert len(ref_record) == res.iterations == len(grads) > 0
    for k, ((hs, loss, g_ref), loss_pack, g_pack) in enumerate(zip(ref_record, res.losses, grads)):
        assert torch.equal(_as_xy(hs), res.history[k]), f"tracked handles differ at step {k}"
        assert loss_pack == pytest.approx(loss, rel=1e-5, abs=1e-6), f"loss differs at step {k}"
        rel = float((g_pack - g_ref).norm() / g_ref.norm())
        assert rel < 1e-4, f"gradient of z_t differs at step {k}: relative error {rel:.2e}"
    assert torch.allclose(z_after, ref_z, atol=atol_z, rtol=0), float((z_after - ref_z).abs().max())


# ================================================================================== tests
def test_bilinear_patch_matches_reference():
    """motion_supervision_loss (grid_sample, border padding) equals the official interpolate_feature_patch loss and
    its gradient w.r.t. F1 for interior patches, fractional unit directions, several handles and radii."""
    g = torch.Generator().manual_seed(3)
    for r_m in (0, 1, 2):
        f = torch.randn(1, 7, 20, 24, generator=g, requires_grad=True)
        hs = [(5.0, 6.0), (12.0, 9.0), (16.0, 14.0)]                       # (row, col), interior
        ts = [(9.0, 13.0), (4.0, 3.0), (16.0, 5.0)]
        ref_h = [torch.tensor(p) for p in hs]
        ref_t = [torch.tensor(p) for p in ts]
        l_ref = ref_motion_loss(f, ref_h, ref_t, r_m)
        (g_ref,) = torch.autograd.grad(l_ref, f)
        l_pack = motion.motion_supervision_loss(f, _as_xy(ref_h), _as_xy(ref_t), r_m=r_m)
        (g_pack,) = torch.autograd.grad(l_pack, f)
        assert float(l_pack.detach()) == pytest.approx(float(l_ref.detach()), rel=1e-6)
        assert torch.allclose(g_pack, g_ref, atol=1e-6)


def test_point_tracking_matches_reference():
    """track_points = official point_tracking (against F0 at the initial handle, clipped window), incl. borders."""
    g = torch.Generator().manual_seed(4)
    f0 = torch.randn(1, 5, 18, 18, generator=g)
    f1 = torch.roll(f0, shifts=(1, 2), dims=(2, 3)) + 0.05 * torch.randn(1, 5, 18, 18, generator=g)
    init = [torch.tensor([4.0, 4.0]), torch.tensor([0.0, 17.0]), torch.tensor([9.0, 1.0])]
    cur = [torch.tensor([5.0, 5.0]), torch.tensor([1.0, 16.0]), torch.tensor([8.0, 0.0])]
    for r_p in (0, 1, 3):
        ref = ref_point_tracking(f0, f1, copy.deepcopy(cur), init, r_p)
        pack = motion.track_points(f0, f1, _as_xy(init), _as_xy(cur), r_p=r_p)
        assert torch.equal(pack, _as_xy(ref))


@pytest.mark.parametrize("masked,r_p,lr", [(False, 3, 0.05), (True, 3, 0.05), (False, 1, 0.2)],
                         ids=["no_mask", "mask", "window_r_p1"])
def test_optimisation_matches_reference_step_by_step(masked, r_p, lr, monkeypatch):
    """The whole latent optimisation on the tiny SD1.5 UNet (ComfyUI, the pack) and its diffusers twin (the
    reference port): per Adam step the tracked handles, the loss (motion supervision + λ mask term) and the gradient
    of z_t, and the final z_t, agree to float tolerance. Two handles, one diagonal (fractional direction); lr 0.05 so
    the tracking moves within the few steps run here."""
    model, unet, cond, t, sigmas, acp, z = _setup()
    handles_px, targets_px = [(20.0, 32.0), (80.0, 90.0)], [(56.0, 32.0), (104.0, 70.0)]
    mask_img = None
    if masked:
        mask_img = torch.zeros(1, IMAGE, IMAGE)
        mask_img[:, 16:48, 8:64] = 1.0
        mask_img[:, 64:104, 72:112] = 1.0
    iters = 6
    settings = dd.DragSettings(iterations=iters, lr=lr, r_p=r_p, truncate=not masked)
    z_pack, res, grads, grid = _pack(model, cond, z, sigmas, handles_px, targets_px, settings, mask_img, monkeypatch)
    assert grid.hw == (64, 64)                                     # = the reference's sup_res (IMAGE / 2)

    args = RefArgs(lr=lr, r_p=r_p, n_pix_step=iters)
    emb = cond[0][0]
    ref_mask = torch.zeros(1, 1, IMAGE, IMAGE) if mask_img is None else mask_img[None]
    ref_mask = F.interpolate(ref_mask, (args.sup_res_h, args.sup_res_w), mode="nearest")
    h_ref = ref_points(handles_px, IMAGE, args.sup_res_h)
    t_ref = ref_points(targets_px, IMAGE, args.sup_res_h)
    assert torch.equal(_as_xy(h_ref), res.history[0])            # same cells (even px: round == floor here)
    with torch.enable_grad():
        z_ref, record, stopped = ref_drag_update(unet, z.clone(), emb, t, h_ref, t_ref, ref_mask, args, acp)
    assert not stopped and not res.reached
    _compare(record, z_ref, res, grads, z_pack)
    moved = any(not torch.equal(res.history[k], res.history[0]) for k in range(1, len(res.history)))
    assert moved, "tracking never moved a handle: the comparison would not cover it"
    if masked:      # the mask term is in the loss from step 1 on (x_{t-1} has moved away from x_{t-1}^0)
        assert res.losses[1] > 0 and any(l > 0 for l in res.losses)


def test_early_stop_matches_reference(monkeypatch):
    """A drag shorter than the 2-cell threshold: both stop before the first Adam step, latent unchanged."""
    model, unet, cond, t, sigmas, acp, z = _setup()
    handles_px, targets_px = [(40.0, 40.0)], [(42.0, 40.0)]       # 1 supervision cell apart
    settings = dd.DragSettings(iterations=3)
    z_pack, res, grads, _ = _pack(model, cond, z, sigmas, handles_px, targets_px, settings, None, monkeypatch)
    args = RefArgs(n_pix_step=3)
    h_ref, t_ref = ref_points(handles_px, IMAGE, 64), ref_points(targets_px, IMAGE, 64)
    with torch.enable_grad():
        z_ref, record, stopped = ref_drag_update(unet, z.clone(), cond[0][0], t, h_ref, t_ref,
                                                 torch.zeros(1, 1, 64, 64), args, acp)
    assert stopped and res.reached and record == [] and res.iterations == 0 and grads == []
    assert torch.allclose(z_pack, z_ref, atol=1e-5)


def test_drag_of_exactly_the_threshold_runs_like_reference(monkeypatch):
    """A handle exactly 2 supervision cells from its target: the official stop test is strict (2.0 < 2.0 is false),
    so both sides run every Adam step, with the same losses, gradients and latent."""
    model, unet, cond, t, sigmas, acp, z = _setup()
    handles_px, targets_px = [(40.0, 40.0)], [(44.0, 40.0)]       # 2 supervision cells apart
    iters = 2
    settings = dd.DragSettings(iterations=iters, lr=0.01)
    z_pack, res, grads, _ = _pack(model, cond, z, sigmas, handles_px, targets_px, settings, None, monkeypatch)
    args = RefArgs(n_pix_step=iters)
    h_ref, t_ref = ref_points(handles_px, IMAGE, 64), ref_points(targets_px, IMAGE, 64)
    assert float((h_ref[0] - t_ref[0]).norm()) == 2.0
    with torch.enable_grad():
        z_ref, record, stopped = ref_drag_update(unet, z.clone(), cond[0][0], t, h_ref, t_ref,
                                                 torch.zeros(1, 1, 64, 64), args, acp)
    assert not stopped and len(record) == res.iterations == iters and res.history[0].tolist() == [[20.0, 20.0]]
    _compare(record, z_ref, res, grads, z_pack)
