"""The official DragonDiffusion code ported for tests/parity/test_dragondiffusion_parity.py (written for the test, not
copied; github MC-E/DragonDiffusion: src/models/Sampler.py `edit`, `guidance_*`; src/unet/attention_processor.py
`AttnProcessor`; src/utils/inversion.py) on a diffusers UNet twin. Test code only, never part of the pack."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

STEPS = 50          # the reference's NUM_DDIM_STEPS: its step windows (5, 10, 20, 30, 36) apply unscaled
UP_FT = (0, 1)      # diffusers up_blocks whose outputs are the features (the pack's feature_blocks [1, 3])
UP_SCALE = 2
SCALE_FACTOR = 0.18215
GRID = (32, 32)     # energy grid of a 16x16 latent


# ====================================================================================== the reference, ported
def ref_scheduler():
    from diffusers import DDIMScheduler
    sch = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                        set_alpha_to_one=True, clip_sample=False)
    sch.set_timesteps(STEPS)
    return sch


class BankAttn:
    """Port of the reference's AttnProcessor for the decoder self-attention (attn1 of up_blocks): records K, V per
    step index when ctl['save'], else injects the bank's K, V by mode (move: replace from step 5; drag: concat own
    and bank tokens from step 5; appearance/paste: steps 0-35, base-bank tokens outside the base mask + reference
    tokens inside the reference mask). Attention itself: softmax(QKᵀ·scale)V per head."""

    def __init__(self, ctl: dict, name: str):
        self.ctl, self.name = ctl, name
        self.bank: dict = {}

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        ctl = self.ctl
        h = hidden_states
        q = attn.to_q(h)
        k, v = attn.to_k(h), attn.to_v(h)
        it, mode = ctl["iter"], ctl["mode"]
        if ctl["save"]:
            self.bank[it] = (k.detach().clone(), v.detach().clone())
        elif mode in ("move", "drag") and it >= 5:
            kb, vb = (t.expand(h.shape[0], -1, -1) for t in self.bank[it])
            if mode == "move":
                k, v = kb, vb
            else:
                k, v = torch.cat([k, kb], 1), torch.cat([v, vb], 1)
        elif mode in ("appearance", "paste") and 0 <= it <= 35:
            (kb, vb), (kr, vr) = self.bank[it], ctl["ref_bank"][self.name][it]
            n = q.shape[1]
            scale = math.sqrt(GRID[0] * GRID[1] / n)           # masks given on the energy grid
            tok = (int(GRID[0] / scale), int(GRID[1] / scale))
            assert tok[0] * tok[1] == n, (tok, n)
            fg = F.interpolate(ctl["mask_replace"].float()[None, None], tok)[0, 0].reshape(-1) > 0.5
            bg = F.interpolate(ctl["mask_base"].float()[None, None], tok)[0, 0].reshape(-1) < 0.5
            b = h.shape[0]
            k = torch.cat([kb[:, bg].expand(b, -1, -1), kr[:, fg].expand(b, -1, -1)], 1)
            v = torch.cat([vb[:, bg].expand(b, -1, -1), vr[:, fg].expand(b, -1, -1)], 1)
        qh, kh, vh = attn.head_to_batch_dim(q), attn.head_to_batch_dim(k), attn.head_to_batch_dim(v)
        w = torch.softmax(qh @ kh.transpose(1, 2) * attn.scale, dim=-1)
        out = attn.batch_to_head_dim(w @ vh)
        return attn.to_out[1](attn.to_out[0](out))


class Reference:
    """The reference pipeline on a diffusers twin: `unet` with the bank processors, `estimator` a plain copy."""

    def __init__(self, twin):
        self.estimator = copy.deepcopy(twin)
        self.unet = twin
        self.ctl = {"save": False, "iter": -1, "mode": "move"}
        procs = {}
        self.banks: dict = {}
        for name, proc in twin.attn_processors.items():
            if name.startswith("up_blocks") and ".attn1." in name:
                procs[name] = BankAttn(self.ctl, name)
                self.banks[name] = procs[name]
            else:
                procs[name] = proc
        twin.set_attn_processor(procs)
        self.sch = ref_scheduler()
        self.acp = self.sch.alphas_cumprod.double()

    def a(self, t: int) -> float:
        return float(self.acp[t]) if t >= 0 else float(self.sch.final_alpha_cumprod)

    # --- src/utils/inversion.py: cond-only DDIM inversion, every latent kept, K/V saved under index 49-i
    @torch.no_grad()
    def invert(self, z0, emb):
        ts = self.sch.timesteps
        out, z = [z0], z0.clone()
        self.ctl["save"] = True
        for i in range(STEPS):
            t = int(ts[len(ts) - i - 1])
            self.ctl["iter"] = len(ts) - i - 1
            eps = self.unet(z, t, encoder_hidden_states=emb).sample
            a_lo, a_hi = self.a(min(t - 1000 // STEPS, 999)), self.a(t)
            x0 = (z - (1 - a_lo) ** 0.5 * eps) / a_lo ** 0.5
            z = a_hi ** 0.5 * x0 + (1 - a_hi) ** 0.5 * eps
            out.append(z)
        self.ctl["save"] = False
        return out

    def take_bank(self) -> dict:
        """The recorded K/V of every layer (and a fresh empty bank for the next inversion)."""
        got = {n: p.bank for n, p in self.banks.items()}
        for p in self.banks.values():
            p.bank = {}
        return got

    def put_bank(self, bank: dict) -> None:
        for n, p in self.banks.items():
            p.bank = bank[n]

    # --- the estimator: up-block outputs, each nearest-resized to up_scale x the last map
    def up_ft(self, z, t, emb):
        feats = {}
        hooks = [self.estimator.up_blocks[i].register_forward_hook(
            lambda _m, _a, o, i=i: feats.__setitem__(i, o)) for i in UP_FT]
        try:
            self.estimator(z, t, encoder_hidden_states=emb)
        finally:
            for hk in hooks:
                hk.remove()
        return [feats[i] for i in UP_FT]


def _grid(fs, size=None):
    h, w = fs[-1].shape[-2:]
    size = size or (h * UP_SCALE, w * UP_SCALE)
    return [F.interpolate(f, size) for f in fs]


def _vec(f, m):
    """[N, C] feature vectors of batch item 0 at the True cells of a [H, W] mask (row-major)."""
    return f[0][:, m].T


def _cos(a, b):
    return F.cosine_similarity(a, b, dim=1)


def _to_latent(m, like):
    return (F.interpolate(m.float()[None, None], like.shape[-2:]) > 0).to(like.dtype)


def ref_guidance_move(R, z, z_ref, t, emb, k, es, w_edit=4.0, w_content=6.0, w_contrast=0.2, w_inpaint=0.8):
    """guidance_move: raw-cos edit / content terms, S̃ contrast, global inpaint term, 8e-2 factors, split on
    mask_cur. k: mask_x0, mask_tar, mask_cur, mask_other, mask_non_overlap (grid, resize_scale 1)."""
    lam = [0.5, 0.5]
    with torch.no_grad():
        tar = _grid(R.up_ft(z_ref, t, emb))
    z = z.detach().requires_grad_(True)
    cur = _grid(R.up_ft(z, t, emb))
    e_edit = 0
    for l in range(len(cur)):
        e_edit = e_edit + w_edit / (1 + 4 * _cos(_vec(cur[l], k["mask_cur"]), _vec(tar[l], k["mask_tar"])).mean()) * lam[l]
    e_con = 0
    for l in range(len(cur)):
        e_con = e_con + w_content / (1 + 4 * _cos(tar[l], cur[l])[0][k["mask_other"]].mean()) * lam[l]
    for l in range(len(cur)):
        no = k["mask_non_overlap"]
        s = (_cos(_vec(cur[l], no), _vec(tar[l], no)) + 1) / 2
        e_con = e_con + w_contrast * s.mean() * lam[l]
        s = (_cos(_vec(cur[l], no).mean(0, keepdim=True), _vec(tar[l], k["mask_other"]).mean(0, keepdim=True)) + 1) / 2
        e_con = e_con + w_inpaint / (1 + 4 * s.mean())
    g_e = torch.autograd.grad(e_edit * es, z, retain_graph=True)[0]
    g_c = torch.autograd.grad(e_con * es, z)[0]
    m = _to_latent(k["mask_cur"], z)
    return (g_e * 8e-2 * m + g_c * 8e-2 * (1 - m)).detach(), float(e_edit.detach()), float(e_con.detach())


def ref_guidance_drag(R, z, z_ref, t, emb, k, es, w_edit=4.0, w_content=6.0, w_inpaint=0.2):
    """guidance_drag: per pair S̃ attract at target vs handle + S̃ inpaint on handle∖target, S̃ content outside the
    user mask, /#layers/#points, 4e-2 factors, split on the user mask. k: mask_x0, mask_tar (handles), mask_cur
    (targets), mask_other."""
    with torch.no_grad():
        tar = _grid(R.up_ft(z_ref, t, emb))
    z = z.detach().requires_grad_(True)
    cur = _grid(R.up_ft(z, t, emb))
    e_edit = 0
    for l in range(len(cur)):
        for mc, mt in zip(k["mask_cur"], k["mask_tar"]):
            s = (_cos(_vec(cur[l], mc), _vec(tar[l], mt)) + 1) / 2
            e_edit = e_edit + w_edit / (1 + 4 * s.mean())
            no = mt & ~(mc & mt)
            s = (_cos(_vec(cur[l], no), _vec(tar[l], no)) + 1) / 2
            e_edit = e_edit + w_inpaint * s.mean()
    e_con = 0
    for l in range(len(cur)):
        s = (_cos(tar[l], cur[l])[0][k["mask_other"]] + 1) / 2
        e_con = e_con + w_content / (1 + 4 * s.mean())
    e_edit = e_edit / len(cur) / len(k["mask_cur"])
    e_con = e_con / len(cur)
    g_e = torch.autograd.grad(e_edit * es, z, retain_graph=True)[0]
    g_c = torch.autograd.grad(e_con * es, z)[0]
    m = _to_latent(k["mask_x0"], z)
    return (g_e * 4e-2 * m + g_c * 4e-2 * (1 - m)).detach(), float(e_edit.detach()), float(e_con.detach())


def ref_guidance_two_image(R, z, z_base, z_repl, t, emb, k, es, mode, w_edit, w_content):
    """guidance_appearance (mean-pooled edit term) / guidance_paste (pointwise): S̃ content outside the base mask,
    4e-2 factors, split on the base mask. k: mask_base_cur, mask_replace_cur."""
    with torch.no_grad():
        base = _grid(R.up_ft(z_base, t, emb))
        repl = _grid(R.up_ft(z_repl, t, emb))
    z = z.detach().requires_grad_(True)
    cur = _grid(R.up_ft(z, t, emb))
    mb, mr = k["mask_base_cur"], k["mask_replace_cur"]
    e_con = 0
    for l in range(len(cur)):
        s = (_cos(_vec(cur[l], ~mb), _vec(base[l], ~mb)) + 1) / 2
        e_con = e_con + w_content / (1 + 4 * s.mean())
    e_edit = 0
    for l in range(len(cur)):
        a, b = _vec(cur[l], mb), _vec(repl[l], mr)
        if mode == "appearance":
            a, b = a.mean(0, keepdim=True), b.mean(0, keepdim=True)
        e_edit = e_edit + w_edit / (1 + 4 * ((_cos(a, b) + 1) / 2).mean())
    g_c = torch.autograd.grad(e_con * es, z, retain_graph=True)[0]
    g_e = torch.autograd.grad(e_edit * es, z)[0]
    m = _to_latent(mb, z)
    return (g_c * (1 - m) * 4e-2 + g_e * m * 4e-2).detach(), float(e_edit.detach()), float(e_con.detach())


def ref_edit(R, z_T, emb_c, emb_u, mode, cfg, es, guidance, sde_mask, noise, sde_strength=0.4, record=None):
    """Sampler.edit with alg='D+': CFG on [uncond, cond] with the memory bank at iteration i; guidance on ε for
    i < 30 when i < 10 or i even; x̂0 from the guided ε, the direction from the unguided one; regional SDE
    (η 0.4 inside, 0 outside) for 10 < i < 20; time travel for 20 < i < 30, i even: 3 passes, z_{t-1} inverted back
    with the plain cond UNet at t-1 between them."""
    latent = z_T
    ctx = torch.cat([emb_u, emb_c])
    for i, t in enumerate(R.sch.timesteps):
        t = int(t)
        nxt = max(min(t - 1000 // STEPS, 999), 0)
        repeat = 3 if (es != 0 and 20 < i < 30 and i % 2 == 0) else 1
        for _ in range(repeat):
            R.ctl["iter"] = i
            with torch.no_grad():
                e_u, e_c = R.unet(torch.cat([latent] * 2), t, encoder_hidden_states=ctx).sample.chunk(2)
            eps = e_u + cfg * (e_c - e_u)
            eps_org, g = None, None
            if es != 0 and i < 30 and (i % 2 == 0 or i < 10):
                eps_org = eps
                g = guidance(latent, i, t)
                eps = eps + g
            if record is not None:
                record.append(("step", i, t, latent.clone(), None if g is None else g.clone()))
            prev_t = t - 1000 // STEPS
            a_t, a_p = R.a(t), R.a(prev_t)
            x0 = (latent - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
            eta, eta_rd = (0.0, sde_strength) if 10 < i < 20 else (0.0, 0.0)
            var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
            std, std_rd = eta * var ** 0.5, eta_rd * var ** 0.5
            d = eps_org if eps_org is not None else eps
            prev = a_p ** 0.5 * x0 + (1 - a_p - std ** 2) ** 0.5 * d
            prev_rd = a_p ** 0.5 * x0 + (1 - a_p - std_rd ** 2) ** 0.5 * d
            if eta_rd > 0 or eta > 0:
                n = noise(prev.shape)
                m = _to_latent(sde_mask, prev)
                prev = (prev + std * n) * (1 - m) + (prev_rd + std_rd * n) * m
            if repeat > 1:
                R.ctl["iter"] = -2
                with torch.no_grad():
                    e = R.unet(prev, nxt, encoder_hidden_states=emb_c).sample
                a_lo, a_hi = R.a(nxt), R.a(t)
                x0n = (prev - (1 - a_lo) ** 0.5 * e) / a_lo ** 0.5
                latent = a_hi ** 0.5 * x0n + (1 - a_hi) ** 0.5 * e
        latent = prev
    return latent
