"""core/host/dit_kv.py on a real tiny FLUX (and SD3): image-token K/V record / inject through the chained attention
override, block identity from dit replaces, RoPE key re-encoding, no-op injections, Kontext reference tokens."""
import pytest
import torch

from tools.support import tiny_models
from dragedit.core import host
from dragedit.core.host import dit, dit_kv


def _call(model, lat, sigma=0.6, cond=None):
    """One model call at sigma through ComfyUI's sampling (one euler step from sigma), returns x̂0-step output."""
    import comfy.sample
    import comfy.samplers
    cond = cond or tiny_models.dit_conditioning()
    noise = torch.zeros_like(lat)
    with torch.inference_mode():
        return comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.ksampler("euler"),
                                          torch.tensor([sigma, 0.0]), cond, [], lat, disable_pbar=True)


def test_rope_reencoding_identity(flux):
    """R(p_t)·k = R(p_t − p_s)·R(p_s)·k: a key recorded at its source position is re-encoded exactly."""
    from comfy.ldm.flux.math import apply_rope1
    dm = dit.diffusion_model(flux)
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 4, 64, 32, generator=g)
    src = dit.image_ids(flux, (16, 16))
    tgt = src[:, torch.randperm(64, generator=g)] + torch.tensor([0.0, 3.0, -2.0])
    recorded = apply_rope1(k, dm.pe_embedder(src))
    direct = apply_rope1(k, dm.pe_embedder(tgt))
    moved = dit.reencode_keys(recorded, dit.relative_pe(flux, src, tgt))
    assert (moved - direct).abs().max() < 2e-6


def test_record_blocks_tokens_and_layouts(flux):
    run = host.clone(flux)
    store = host.KVStore(dtype=torch.float32)
    dit_kv.patch_dit_kv_record(run, store)
    _call(run, tiny_models.dit_latent(size=16)["samples"])
    keys = sorted({k[1] for k in store._data})
    assert keys == [("double", 0), ("double", 1), ("single", 0), ("single", 1)]
    k, v = store.get(0.6, ("single", 1), 0)
    assert k.shape == (1, 4, 64, 32) and v.shape == (1, 4, 64, 32)      # image tokens only, [B, H, N, D]
    assert dit_kv.attention_override(flux) is None                      # only the clone was patched


def test_override_chains_and_noop_injection_is_bit_identical(flux):
    lat = tiny_models.dit_latent(size=16)["samples"]
    base = _call(flux, lat)
    seen = []

    def other(func, *args, **kwargs):       # an override another node set before
        seen.append(args[1].shape)
        return func(*args, **kwargs)

    run = host.clone(flux)
    run.model_options["transformer_options"] = dict(run.model_options.get("transformer_options", {}),
                                                    optimized_attention_override=other)
    store = host.KVStore(dtype=torch.float32)
    rec = host.clone(flux)
    dit_kv.patch_dit_kv_record(rec, store)
    _call(rec, lat)
    # mask all False: nothing swapped
    none = dit_kv.DitKVInjection(store, mask=torch.zeros(64, dtype=torch.bool))
    dit_kv.patch_dit_kv_inject(run, none)
    assert torch.equal(_call(run, lat), base) and len(seen) == 4 and none.hits == 4
    # the same image's own K/V, identity index with zero-shift key re-encoding: still bit-identical
    run2 = host.clone(flux)
    same = dit_kv.DitKVInjection(store, index=torch.arange(64),
                                 rope=dit_kv.moved_rope(flux, (16, 16), torch.arange(64)))
    dit_kv.patch_dit_kv_inject(run2, same)
    assert torch.equal(_call(run2, lat), base) and same.hits == 4


def test_injection_of_another_images_kv_in_a_mask_changes_the_output(flux):
    lat_a = tiny_models.dit_latent(0, size=16)["samples"]
    lat_b = tiny_models.dit_latent(5, size=16)["samples"]
    store = host.KVStore(dtype=torch.float32)
    rec = host.clone(flux)
    dit_kv.patch_dit_kv_record(rec, store)
    _call(rec, lat_a)
    base_b = _call(flux, lat_b)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True
    run = host.clone(flux)
    dit_kv.patch_dit_kv_inject(run, dit_kv.DitKVInjection(store, mask=mask.flatten()),
                               dit.select_blocks(flux, kinds=["double"]))
    out = _call(run, lat_b)
    assert not torch.equal(out, base_b)


def _probe_call(layout_tokens_dim, kwargs, n_txt=3, n_img=4, n_ref=2, heads=2, d=5):
    """Call the override directly on synthetic [txt; img; ref] tensors and return (k_in, v_in, k_out, v_out)."""
    g = torch.Generator().manual_seed(1)
    n = n_txt + n_img + n_ref
    shape = (1, heads, n, d) if layout_tokens_dim == 2 else (1, n, heads * d)
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    store = host.KVStore(dtype=torch.float32)
    bank_k = torch.randn(shape, generator=g).narrow(layout_tokens_dim, n_txt, n_img)
    store.put(0.5, ("double", 0), 0, bank_k, bank_k * 2)
    o = dit_kv.DitAttnOverride()
    o.injections.append((dit_kv.DitKVInjection(store), None))
    to = {"block_type": "double", "block_index": 0, dit_kv.TXT_TOKENS: n_txt, dit_kv.IMG_TOKENS: n_img,
          "sigmas": torch.tensor([0.5]), "cond_or_uncond": [0]}
    k2, v2 = o(lambda q, k, v, heads, **kw: (k, v), q, k, v, heads, transformer_options=to, **kwargs)
    return k, v, k2, v2, bank_k


@pytest.mark.parametrize("td,kwargs", [(2, {"skip_reshape": True}), (1, {})])
def test_layouts_and_reference_tokens_untouched(td, kwargs):
    k, v, k2, v2, bank = _probe_call(td, kwargs)
    assert torch.equal(k2.narrow(td, 0, 3), k.narrow(td, 0, 3))             # text
    assert torch.equal(k2.narrow(td, 7, 2), k.narrow(td, 7, 2))             # Kontext / edit reference tokens
    assert torch.equal(v2.narrow(td, 7, 2), v.narrow(td, 7, 2))
    assert torch.equal(k2.narrow(td, 3, 4), bank) and torch.equal(v2.narrow(td, 3, 4), bank * 2)


def test_kontext_reference_tokens_in_a_real_call(flux):
    """With a reference latent (Kontext) the joint sequence is [txt; img; ref]: only the image tokens are recorded."""
    lat = tiny_models.dit_latent(size=16)["samples"]
    ref = tiny_models.dit_latent(3, size=8)["samples"]
    cond = tiny_models.dit_conditioning()
    cond = [[cond[0][0], dict(cond[0][1], reference_latents=[ref])]]
    lens = []

    def probe(func, *args, **kwargs):
        lens.append(args[1].shape[2])
        return func(*args, **kwargs)

    run = host.clone(flux)
    run.model_options["transformer_options"] = dict(optimized_attention_override=probe)
    store = host.KVStore(dtype=torch.float32)
    dit_kv.patch_dit_kv_record(run, store)
    _call(run, lat, cond=cond)
    assert set(lens) == {8 + 64 + 16}
    assert store.get(0.6, ("double", 0), 0)[0].shape[2] == 64


def test_sd3_joint_attention_record(tmp_path):
    sd3 = tiny_models.sd3(tmp_path / "sd3.safetensors")
    run = host.clone(sd3)
    store = host.KVStore(dtype=torch.float32)
    dit_kv.patch_dit_kv_record(run, store)
    _call(run, tiny_models.dit_latent(size=8)["samples"])
    k, _ = store.get(0.6, ("double", 1), 0)
    assert k.shape[1] == 16               # tokens on dim 1: an 8 x 8 latent in 2 x 2 patches
    with pytest.raises(host.HostError, match="no rotary"):
        dit_kv.moved_rope(sd3, (8, 8), torch.arange(16))


def test_qwen_image_record_and_noop_injection():
    """Qwen-Image (built from config): its joint attention is recorded per double block; on 0.3.75 it passes
    [B, H, N, D], on 0.3.64 [B, N, H·D] (the override handles both); a no-op injection is bit-identical."""
    q = tiny_models.qwen_image()
    assert dit.kind_of(q) == dit.QWEN and host.check_supported(q) == "flow"
    lat = tiny_models.dit_latent(size=8)["samples"].unsqueeze(2)        # Wan 2.1 latent format: [B, C, T, H, W]
    cond = [[torch.randn(1, 8, tiny_models.DIT_CONTEXT, generator=torch.Generator().manual_seed(0)), {}]]
    base = _call(q, lat, cond=cond)
    store = host.KVStore(dtype=torch.float32)
    rec = host.clone(q)
    dit_kv.patch_dit_kv_record(rec, store)
    assert torch.equal(_call(rec, lat, cond=cond), base)
    k, _ = store.get(0.6, ("double", 1), 0)
    assert k.numel() == 16 * 4 * 32                                       # 16 image tokens, 4 heads of 32
    run = host.clone(q)
    inj = dit_kv.DitKVInjection(store)
    dit_kv.patch_dit_kv_inject(run, inj)
    assert torch.equal(_call(run, lat, cond=cond), base) and inj.hits == 2


def test_qwen_image_rope_reencoding_identity():
    from comfy.ldm.flux.math import apply_rope1
    q = tiny_models.qwen_image()
    dm = dit.diffusion_model(q)
    g = torch.Generator().manual_seed(0)
    src = dit.image_ids(q, (8, 8))
    assert src.shape == (1, 16, 3)
    tgt = src[:, torch.randperm(16, generator=g)] + torch.tensor([0.0, 1.0, 2.0])
    k = torch.randn(1, 4, 16, 32, generator=g)
    moved = dit.reencode_keys(apply_rope1(k, dm.pe_embedder(src)), dit.relative_pe(q, src, tgt))
    assert (moved - apply_rope1(k, dm.pe_embedder(tgt))).abs().max() < 2e-6
