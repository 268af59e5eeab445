"""RF-Inversion (nodes/rf_inversion.py inside stock ComfyUI sampling) against a port of the diffusers community
pipeline's loops (tests/parity/rf_inversion_reference.py) on the tiny ComfyUI FLUX and its diffusers twin, step by
step. The pack follows the paper where the pipeline deviates from it; the one difference fed to the port is the
label of the forward steps (the paper's t_i = σ_i, floored at 1e-3 since ComfyUI's x̂0 at σ = 0 is x itself,
instead of the pipeline's i / (steps + 1)); the last test measures what the pipeline's choices change."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from tools.support import tiny_models  # noqa: E402
from tools.support.diffusers_bridge import flux_ids, flux_twin, pack, unpack  # noqa: E402
from tools.support.flow_calls import psnr, scheduler_sigmas  # noqa: E402
from tools.support.node_calls import run_node  # noqa: E402
from dragedit.core import host  # noqa: E402
from dragedit.core import rf_inversion as rf  # noqa: E402
from dragedit.nodes.rf_inversion import RFInversion, RFInversionSampler  # noqa: E402

import rf_inversion_reference as ref  # noqa: E402

SIZE, STEPS, TOL = 8, 8, 1e-4


@pytest.fixture(scope="module")
def flux():
    return tiny_models.flux()


@pytest.fixture(scope="module")
def twin(flux):
    return flux_twin(flux)


def _embeds(cond):
    c, extra = cond[0]
    _img_ids, txt_ids = flux_ids(SIZE, SIZE, c.shape[1])
    return c.float(), extra["pooled_output"].float(), txt_ids


def _labels(sigmas):
    """The pack's forward-step labels: the ascending grid's step starts, at least SIGMA_FLOOR."""
    asc = torch.flip(sigmas.double(), [0]).tolist()
    return [max(s, rf.SIGMA_FLOOR) for s in asc[:-1]]


def _pack_run(flux, lat, src, tar, sigmas, gamma, seed, eta, start, stop, power):
    """The pack: the RF-Inversion node, then its NOISE and an RF-Inversion Sampler in ComfyUI's sampling with the
    target prompt; every state of both loops (model space)."""
    import comfy.sample
    _noise, _s, inv = run_node(RFInversion, model=flux, latent=lat, positive=src, sigmas=sigmas, gamma=gamma,
                               seed=seed, cfg=1.0)
    (sampler,) = run_node(RFInversionSampler, inversion=inv, eta=eta, start=start, stop=stop, decay_power=power)
    states = []
    with torch.inference_mode():
        noise = _noise.generate_noise(lat)
        out = comfy.sample.sample_custom(flux, noise, 1.0, sampler, sigmas, tar, [], lat["samples"],
                                         callback=lambda i, x0, x, n: states.append(x.clone()), disable_pbar=True,
                                         seed=0)
    states.append(host.process_in(flux, out))
    return inv, states


CASES = {
    "pipeline_example": dict(gamma=0.5, eta=0.9, start=0.0, stop=0.25, power=0.0),
    "late_window_decay": dict(gamma=0.7, eta=0.6, start=0.25, stop=0.75, power=1.0),
    "full_pull": dict(gamma=0.3, eta=1.0, start=0.0, stop=1.0, power=0.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rf_inversion_matches_the_community_pipeline_step_by_step(flux, twin, case):
    c = CASES[case]
    seed = 4
    lat = tiny_models.dit_latent(seed=2, size=SIZE)
    src, tar = tiny_models.dit_conditioning(0), tiny_models.dit_conditioning(7)
    sigmas = torch.linspace(1.0, 0.0, STEPS + 1)            # uniform: the pipeline's step order is then the paper's
    inv, ours = _pack_run(flux, lat, src, tar, sigmas, c["gamma"], seed, c["eta"], c["start"], c["stop"], c["power"])

    z0 = host.process_in(flux, lat["samples"]).float()
    y1 = rf.draw_target_noise(z0, seed)
    img_ids, _ = flux_ids(SIZE, SIZE, 8)
    fwd = [pack(z0)]
    y_t = ref.invert(twin, pack(z0), sigmas.tolist(), _embeds(src), img_ids, c["gamma"], pack(y1),
                     labels=_labels(sigmas), on_step=lambda i, x: fwd.append(x))
    for i, (a, b) in enumerate(zip(inv.latents[::-1], fwd)):
        b = unpack(b, SIZE, SIZE)
        assert torch.allclose(a, b, atol=TOL, rtol=TOL), ("forward", i, float((a - b).abs().max()))

    theirs = [unpack(y_t, SIZE, SIZE)]
    ref.edit(twin, y_t, pack(z0), sigmas.tolist(), _embeds(tar), img_ids, eta=c["eta"], start_timestep=c["start"],
             stop_timestep=c["stop"], decay_eta=c["power"] > 0, eta_decay_power=c["power"] or 1.0,
             on_step=lambda i, x: theirs.append(unpack(x, SIZE, SIZE)))
    assert len(ours) == len(theirs) == STEPS + 1
    assert (ours[-1] - z0).abs().max() > 1e-2 or c["eta"] == 1.0     # the edit moved the latent
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert torch.allclose(a, b, atol=TOL, rtol=TOL), ("reverse", i, float((a - b).abs().max()))


def test_pipeline_schedule_choices_measured(flux, twin):
    """What the pipeline's forward-loop choices change, measured with the port alone: (a) its labels t_i = i/(N)
    instead of the grid's σ_i on the uniform grid, (b) on the model's shifted grid, its step sizes taken from the
    top of the grid first while the labels climb from 0. Printed: max |Δ| of the inverted state (relative to its
    std) and the PSNR (dB) against the image of the pipeline-example edit (η 0.9, first quarter) with the source
    prompt from each inverted state."""
    gamma, seed = 0.5, 4
    lat = tiny_models.dit_latent(seed=2, size=SIZE)
    src = tiny_models.dit_conditioning(0)
    z0 = host.process_in(flux, lat["samples"]).float()
    y1 = pack(rf.draw_target_noise(z0, seed))
    img_ids, _ = flux_ids(SIZE, SIZE, 8)
    emb = _embeds(src)

    def recon(y_t, sig):
        out = ref.edit(twin, y_t, pack(z0), sig, emb, img_ids, eta=0.9, start_timestep=0.0, stop_timestep=0.25)
        return psnr(unpack(out, SIZE, SIZE), z0)

    uniform = torch.linspace(1.0, 0.0, STEPS + 1).tolist()
    shifted = scheduler_sigmas(flux, STEPS)
    paper_uni = ref.invert(twin, pack(z0), uniform, emb, img_ids, gamma, y1, labels=_labels(torch.tensor(uniform)))
    pipe_uni = ref.invert(twin, pack(z0), uniform, emb, img_ids, gamma, y1)
    asc = torch.flip(shifted.double(), [0]).tolist()
    # the paper's order on the shifted grid: the port fed the ascending steps as the differences of a descending list
    desc_steps = [1.0 - a for a in asc]
    paper_sh = ref.invert(twin, pack(z0), desc_steps, emb, img_ids, gamma, y1, labels=_labels(shifted))
    pipe_sh = ref.invert(twin, pack(z0), shifted.tolist(), emb, img_ids, gamma, y1)
    rows = {}
    for name, a, b, sig in (("labels i/N (uniform grid)", paper_uni, pipe_uni, uniform),
                            ("step order + labels (shifted grid)", paper_sh, pipe_sh, shifted.tolist())):
        rel = float((a - b).abs().max() / a.std())
        rows[name] = (rel, recon(a, sig), recon(b, sig))
        print(f"{name}: max|d| / std = {rel:.3f}; edit PSNR paper {rows[name][1]:.2f} dB, pipeline "
              f"{rows[name][2]:.2f} dB")
    assert all(r[0] > 0 for r in rows.values())
