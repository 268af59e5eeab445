"""core.motion: DragDiffusion motion supervision, point tracking, mask term and the latent optimisation loop.

Hand-made differentiable feature maps only (no UNet): a latent with a Gaussian blob seen through a fixed
random conv + tanh, or exact linear ramps where bilinear sampling has a closed form.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.motion import (all_reached, mask_loss, motion_supervision_loss, optimize_latent, resize_mask,
                                  track_points)


# ---------------------------------------------------------------- fixtures / helpers

def blob_scene(seed: int = 0, h: int = 32, w: int = 32, cx: float = 10, cy: float = 16, sigma: float = 3.0,
               noise: float = 0.02):
    """Latent [1, 4, h, w] with a Gaussian blob in channel 0 at (cx, cy), and F(z) = tanh(conv3x3(z)) (16 ch)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    z = noise * torch.randn(1, 4, h, w, generator=g)
    z[0, 0] += torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
    weight = torch.randn(16, 4, 3, 3, generator=g) / 6

    def features_fn(zz):
        return torch.tanh(F.conv2d(zz, weight, padding=1)), None

    return z, features_fn


def centre_of_mass(z: torch.Tensor) -> tuple[float, float]:
    """(x, y) centre of mass of the positive part of channel 0 (squared, to favour the blob over noise)."""
    m = z[0, 0].clamp(min=0) ** 2
    ys, xs = torch.meshgrid(torch.arange(m.shape[0]).float(), torch.arange(m.shape[1]).float(), indexing="ij")
    return float((m * xs).sum() / m.sum()), float((m * ys).sum() / m.sum())


def ramp(h: int = 10, w: int = 10, a: float = 1.0, b: float = 2.0) -> torch.Tensor:
    """Two-channel map: ch0 = a*x + b*y (bilinear sampling of it is exact), ch1 = 0."""
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.stack([a * xs + b * ys, torch.zeros(h, w)])[None]


# ---------------------------------------------------------------- motion supervision

def test_fractional_shift_is_bilinear_with_unit_direction():
    f1 = ramp(a=1.0, b=2.0).requires_grad_(True)
    # d = (3, 4)/5: shifted - still = a*0.6 + b*0.8 = 2.2 on ch0, 0 on ch1; loss = 9 * mean = 9 * 2.2 / 2
    loss = motion_supervision_loss(f1, [[5, 5]], [[8, 9]], r_m=1)
    assert loss.item() == pytest.approx(9 * 2.2 / 2, abs=1e-4)
    # direction is normalised: a far target in the same direction gives the same loss
    loss_far = motion_supervision_loss(f1, [[5, 5]], [[5 + 0.6 * 40, 5 + 0.8 * 40]], r_m=1)
    assert loss_far.item() == pytest.approx(loss.item(), abs=1e-4)
    # (2r_m+1)^2 scaling of a mean: r_m = 2 -> 25 * 2.2 / 2
    assert motion_supervision_loss(f1, [[5, 5]], [[8, 9]], r_m=2).item() == pytest.approx(25 * 1.1, abs=1e-4)


def test_stop_gradient_only_shifted_patch_carries_grad():
    torch.manual_seed(0)
    c = 5
    f1 = torch.randn(1, c, 9, 9, requires_grad=True)
    # handle (4, 4), target (8, 4): d = (1, 0), Omega = x 3..5, y 3..5, shifted samples at x 4..6 exactly
    loss = motion_supervision_loss(f1, [[4, 4]], [[8, 4]], r_m=1)
    (grad,) = torch.autograd.grad(loss, f1)

    with torch.no_grad():
        still = f1[:, :, 3:6, 3:6]
        ahead = f1[:, :, 3:6, 4:7]
        expected = torch.zeros_like(f1)
        expected[:, :, 3:6, 4:7] = torch.sign(ahead - still) * (9 / (c * 9))
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=0)
    # the left column of Omega is read only through sg(.): no gradient at all
    assert grad[:, :, 3:6, 3].abs().max() < 1e-5

    # control: without the detach, that column would get gradient (so the check above can fail)
    loss_nosg = 9 * (f1[:, :, 3:6, 3:6] - f1[:, :, 3:6, 4:7]).abs().mean()
    (grad_nosg,) = torch.autograd.grad(loss_nosg, f1)
    assert grad_nosg[:, :, 3:6, 3].abs().min() > 0.1


def test_handle_at_target_gives_no_loss():
    f1 = torch.randn(1, 3, 12, 12, requires_grad=True)
    for target in ([[6, 6]], [[7, 7]], [[7.5, 6]]):      # distance 0, 1.41, 1.5 < 2
        loss = motion_supervision_loss(f1, [[6, 6]], target)
        assert loss.item() == 0.0 and not loss.requires_grad
    # exactly the threshold counts as "not reached" (reference: skip only when ||g - p|| < 2)
    assert motion_supervision_loss(f1, [[6, 6]], [[8, 6]]).requires_grad
    # a custom threshold of 0 still never divides by zero
    assert motion_supervision_loss(f1, [[6, 6]], [[6, 6]], threshold=0.0).item() == 0.0


def test_border_clipping_of_omega_and_shift():
    f1 = ramp(a=1.0, b=2.0).requires_grad_(True)
    # corner handle: Omega clipped to 2x2; d = (1, 1)/sqrt2 stays inside the map -> exact bilinear
    d = 1 / math.sqrt(2)
    loss = motion_supervision_loss(f1, [[0, 0]], [[5, 5]], r_m=1)
    assert loss.item() == pytest.approx(9 * (d + 2 * d) / 2, abs=1e-4)
    # Omega touches the right edge and the shift pokes past it: samples clamp to the edge column (border)
    dx, dy = 1 / math.sqrt(65), 8 / math.sqrt(65)
    loss = motion_supervision_loss(f1, [[8, 1]], [[9, 9]], r_m=1)
    inside, clamped = abs(dx + 2 * dy), abs(2 * dy)        # columns x=7,8 vs x=9
    assert loss.item() == pytest.approx(9 * (6 * inside + 3 * clamped) / (2 * 9), abs=1e-4)
    loss.backward()
    assert torch.isfinite(f1.grad).all()


def test_half_precision_features_give_fp32_loss():
    f1 = ramp().half()
    loss = motion_supervision_loss(f1, [[5, 5]], [[8, 9]])
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(9.9, abs=1e-2)


def test_motion_supervision_several_handles_add_up():
    f1 = ramp(h=20, w=20)
    one = motion_supervision_loss(f1, [[5, 5]], [[8, 9]]).item()
    two = motion_supervision_loss(f1, [[5, 5], [12, 12], [3, 15]], [[8, 9], [15, 16], [3, 16]]).item()
    assert two == pytest.approx(2 * one, abs=1e-4)      # third handle is within the threshold


# ---------------------------------------------------------------- point tracking

def test_tracking_follows_shift_against_initial_features():
    torch.manual_seed(1)
    f0 = torch.randn(1, 8, 20, 20)
    f1 = torch.roll(f0, shifts=(1, 2), dims=(2, 3))      # content moved by (dx, dy) = (2, 1)
    out = track_points(f0, f1, [[8, 8]], [[8, 8]], r_p=3)
    assert out.tolist() == [[10.0, 9.0]]
    # the search is centred on the current handle but compares with F0 at the *initial* one
    out = track_points(f0, f1, [[8, 8]], [[9, 9]], r_p=3)
    assert out.tolist() == [[10.0, 9.0]]
    # several handles at once
    out = track_points(f0, f1, [[8, 8], [3, 12]], [[8, 8], [4, 12]], r_p=3)
    assert out.tolist() == [[10.0, 9.0], [5.0, 13.0]]


def test_tracking_window_is_limited_and_clipped():
    torch.manual_seed(2)
    f0 = torch.randn(1, 8, 16, 16)
    far = torch.roll(f0, shifts=(0, 6), dims=(2, 3))     # out of reach for r_p = 3
    out = track_points(f0, far, [[5, 5]], [[5, 5]], r_p=3)
    assert 2 <= out[0, 0] <= 8 and 2 <= out[0, 1] <= 8
    # handles at the corners: window clipped, result inside the map
    assert track_points(f0, f0, [[0, 0]], [[0, 0]], r_p=3).tolist() == [[0.0, 0.0]]
    assert track_points(f0, f0, [[15, 15]], [[15, 15]], r_p=3).tolist() == [[15.0, 15.0]]
    up_left = torch.roll(f0, shifts=(-1, -1), dims=(2, 3))
    assert track_points(f0, up_left, [[1, 1]], [[1, 1]], r_p=3).tolist() == [[0.0, 0.0]]
    # r_p = 0: the handle cannot move
    assert track_points(f0, far, [[5, 5]], [[5, 5]], r_p=0).tolist() == [[5.0, 5.0]]


def test_all_reached_threshold():
    assert all_reached([[0, 0]], [[1.9, 0]])
    assert not all_reached([[0, 0]], [[2.0, 0]])
    assert not all_reached([[0, 0], [5, 5]], [[0, 0], [5, 8]])
    assert all_reached([[0, 0]], [[3, 0]], threshold=4.0)


# ---------------------------------------------------------------- mask term

def test_mask_loss_is_lambda_l1_sum_outside_mask():
    torch.manual_seed(3)
    x_ref = torch.randn(1, 4, 8, 8)
    x = x_ref + torch.randn(1, 4, 8, 8)
    mask = torch.zeros(16, 16)
    mask[:8, :] = 0.3                                     # any value > 0 counts as editable
    keep = torch.ones(8, 8)
    keep[:4, :] = 0
    expected = 0.1 * ((x - x_ref).abs() * keep).sum()
    assert mask_loss(x, x_ref, mask, lam=0.1).item() == pytest.approx(expected.item(), rel=1e-5)
    assert mask_loss(x, x_ref, torch.ones(1, 1, 8, 8), lam=0.1).item() == 0.0
    assert resize_mask(mask[None], (8, 8)).shape == (1, 1, 8, 8)


def test_mask_term_keeps_unmasked_latent_nearly_unchanged():
    z, feats = blob_scene(seed=1)

    def features_fn(zz):                                  # x_{t-1}: a stand-in one-step prediction
        return feats(zz)[0], 0.9 * zz

    editable = torch.zeros(32, 32)
    editable[15:18, :] = 1                                # a band 3 rows tall: Omega's neighbours fall outside
    mask = F.interpolate(editable[None, None], size=(64, 64), mode="nearest")[0, 0]   # image-size mask
    change = {}
    for lam in (0.0, 0.1):
        res = optimize_latent(z, features_fn, [[10, 16]], [[16, 16]], iterations=30, lr=0.05, mask=mask, lam=lam)
        change[lam] = (res.latent - z)[0].abs()[:, editable == 0].mean().item()
    assert change[0.0] > 0.003                            # motion supervision alone does leak outside
    assert change[0.1] < 0.25 * change[0.0]
    assert change[0.1] < 0.002


# ---------------------------------------------------------------- optimisation loop

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drag_moves_blob_and_tracking_follows(seed):
    z, features_fn = blob_scene(seed=seed)
    z_before = z.clone()
    res = optimize_latent(z, features_fn, [[10, 16]], [[16, 16]], iterations=100, lr=0.05)
    assert res.reached and res.iterations < 100
    assert torch.equal(z, z_before)                       # the input latent is not modified
    assert math.dist(res.handles[0].tolist(), (16, 16)) < 2.0
    assert res.history[0].tolist() == [[10.0, 16.0]] and res.history[-1][0, 0] >= 14
    (x0, y0), (x1, y1) = centre_of_mass(z), centre_of_mass(res.latent)
    assert x1 - x0 > 0.8 and abs(y1 - y0) < 0.5           # the blob moved toward the target
    assert int(res.latent[0, 0].argmax()) % 32 >= 12      # its peak too (was at x = 10)
    assert len(res.losses) == res.iterations and all(math.isfinite(v) for v in res.losses)


def test_adam_updates_the_latent_only():
    torch.manual_seed(4)
    z, _ = blob_scene(seed=0)
    conv = torch.nn.Conv2d(4, 16, 3, padding=1)           # weights require grad, as a careless caller's would
    w_before = conv.weight.detach().clone()
    res = optimize_latent(z, lambda zz: (torch.tanh(conv(zz)), None), [[10, 16]], [[16, 16]], iterations=5, lr=0.05)
    assert res.iterations == 5
    assert torch.equal(conv.weight, w_before) and conv.weight.grad is None
    assert not torch.equal(res.latent, z)


def test_early_stop_when_all_handles_within_threshold():
    z, feats = blob_scene(seed=0)
    calls = []

    def features_fn(zz):
        calls.append(zz.requires_grad)
        return feats(zz)

    res = optimize_latent(z, features_fn, [[10, 16], [20, 20]], [[11, 16], [20, 21.5]], iterations=50)
    assert res.reached and res.iterations == 0 and torch.equal(res.latent, z)
    assert calls == [False, True]                         # F0 (no grad) + iteration 0, then stop
    # iterations = 0: nothing is run beyond F0, the latent comes back unchanged
    res = optimize_latent(z, feats, [[10, 16]], [[16, 16]], iterations=0)
    assert res.iterations == 0 and not res.reached and torch.equal(res.latent, z)


def test_tracking_is_skipped_at_iteration_zero():
    z, feats = blob_scene(seed=0)
    f0 = torch.roll(feats(z)[0], shifts=(0, -3), dims=(2, 3))   # tracking at k=0 would jump 3 cells
    res = optimize_latent(z, feats, [[10, 16]], [[18, 16]], iterations=2, lr=0.01, f0=f0, track_final=False)
    assert res.history[0].tolist() == [[10.0, 16.0]]
    assert res.history[1].tolist() != [[10.0, 16.0]]


def test_callback_per_iteration_and_cancel():
    z, feats = blob_scene(seed=0)
    seen = []
    optimize_latent(z, feats, [[10, 16]], [[20, 16]], iterations=3, lr=0.01,
                    on_iteration=lambda k, p, loss: seen.append((k, tuple(p.shape), loss > 0)))
    assert seen == [(0, (1, 2), True), (1, (1, 2), True), (2, (1, 2), True)]

    class Cancelled(Exception):
        pass

    def cancel(k, p, loss):
        if k == 1:
            raise Cancelled()

    z_before = z.clone()
    with pytest.raises(Cancelled):
        optimize_latent(z, feats, [[10, 16]], [[20, 16]], iterations=10, on_iteration=cancel)
    assert torch.equal(z, z_before)


def test_bad_inputs_give_clear_errors():
    z, feats = blob_scene(seed=0)
    with pytest.raises(ValueError, match=r"handles\[0\].*outside the 32x32"):
        optimize_latent(z, feats, [[40, 3]], [[10, 3]])
    with pytest.raises(ValueError, match=r"targets\[1\].*outside"):
        optimize_latent(z, feats, [[1, 1], [2, 2]], [[3, 3], [-1, 2]])
    with pytest.raises(ValueError, match="one target per handle"):
        optimize_latent(z, feats, [[1, 1], [2, 2]], [[3, 3]])
    with pytest.raises(ValueError, match="no x_prev"):
        optimize_latent(z, feats, [[1, 1]], [[9, 9]], mask=torch.ones(32, 32))
    with pytest.raises(ValueError, match=r"one latent \[1, C, H, W\]"):
        optimize_latent(z.repeat(2, 1, 1, 1), feats, [[1, 1]], [[9, 9]])
    with pytest.raises(ValueError, match="iterations"):
        optimize_latent(z, feats, [[1, 1]], [[9, 9]], iterations=-1)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        optimize_latent(z, feats, [[1, 1, 1]], [[9, 9, 9]])
    with pytest.raises(ValueError, match="feature map"):
        motion_supervision_loss(torch.zeros(2, 3, 8, 8), [[1, 1]], [[5, 5]])



def test_fp16_features_use_a_loss_scale_that_backs_off_on_overflow():
    z, _ = blob_scene(seed=0)
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(16, 4, 3, 3, generator=g) / 6).half()

    def features_fn(zz):                                  # an fp16 "UNet": small gradients underflow without a scale
        return torch.tanh(F.conv2d(zz.half(), weight, padding=1)), None

    res = optimize_latent(z, features_fn, [[10, 16]], [[16, 16]], iterations=60, lr=0.05, grad_scale=2.0 ** 40)
    assert res.skipped > 0                                # 2^40 overflows fp16: steps skipped, scale halved
    assert torch.isfinite(res.latent).all() and res.latent.dtype == z.dtype
    assert res.handles[0, 0] > 12                          # and the drag still works once the scale fits
    auto = optimize_latent(z, features_fn, [[10, 16]], [[16, 16]], iterations=3, lr=0.05)
    assert auto.skipped == 0 and not torch.equal(auto.latent, z)
