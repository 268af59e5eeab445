"""core/host/kv.py: the K/V store's life cycle (estimate, budget, placement, build, release) on real tiny models,
and the model-family seam of core/host/families.py."""
import pytest
import torch

from tools.support import tiny_models
from dragedit.core import host
from dragedit.core.host import facts, families, kv, unet


def _record(model, store, steps=3):
    run = host.clone(model)
    host.patch_kv_record(run, store)
    sig = host.ddim_sigmas(model, steps)
    pos = tiny_models.conditioning(1)

    def loop(den, x, s):
        for i in range(steps):
            den.x0(x, s[i])
        return x

    with torch.inference_mode():
        host.session(run, pos, None, 1.0, tiny_models.latent(0)["samples"], sig, loop)


def test_estimate_matches_a_recorded_store(sd15_model):
    est = kv.estimate_model_bytes(sd15_model, (16, 16), 3)
    assert est == kv.estimate_bytes(host.attention_layers(sd15_model), (16, 16), 3, torch.float16)
    store = kv.build_store(sd15_model, est)
    _record(sd15_model, store)
    assert store.nbytes() == est
    store.release()
    assert len(store) == 0 and store.nbytes() == 0


def test_check_budget_limits(monkeypatch):
    monkeypatch.setattr(kv, "available_memory", lambda: 4 << 30)
    assert kv.check_budget(1 << 30) == 2 << 30
    with pytest.raises(host.KVBudgetError, match=r"about 3\.00 GB in RAM \(4 steps\), above the limit of 2\.00 GB "
                                                 r"\(half of the 4\.0 GB of RAM available now\): fewer steps\."):
        kv.check_budget(3 << 30, what="4 steps", fix="fewer steps")
    with pytest.raises(host.KVBudgetError, match=r"limit of 0\.50 GB \(kv_max_gb = 0\.5\)"):
        kv.check_budget(1 << 30, limit_gb=0.5)
    monkeypatch.setattr(kv, "available_memory", lambda: None)
    assert kv.check_budget(1 << 40) == 0   # unknown RAM: no automatic limit, no hard stop


def test_placement_and_build_on_a_cpu_model(sd15_model):
    cpu = torch.device("cpu")
    assert kv.placement(sd15_model, 10 ** 9, scoped=True) == (cpu, False)
    assert kv.placement(sd15_model, 10 ** 9, scoped=False) == (cpu, False)
    store = kv.build_store(sd15_model, 1000, dtype=torch.float32, scoped=False, budget_bytes=1234)
    assert store.device == cpu and not store.pinned and store.dtype == torch.float32 and store.budget_bytes == 1234
    kv.free_store(store)
    kv.free_store(None)


def test_store_hard_stop_during_a_run(sd15_model):
    est = kv.estimate_model_bytes(sd15_model, (16, 16), 3)
    store = kv.build_store(sd15_model, est, budget_bytes=est // 2)
    with pytest.raises(host.KVBudgetError, match="memory limit"):
        _record(sd15_model, store)


def test_model_family_seam(sd15_model):
    import comfy.model_base
    assert families.family_of(sd15_model) is unet and families.check_supported(sd15_model) == "eps"
    flow = host.clone(sd15_model)
    flow.add_object_patch("model_sampling", comfy.model_base.model_sampling(sd15_model.model.model_config,
                                                                            comfy.model_base.ModelType.FLOW))
    with pytest.raises(host.HostError, match="unsupported sampling"):
        families.check_supported(flow)

    class NotAUnet:
        model = type("BM", (), {"diffusion_model": torch.nn.Linear(1, 1)})()

    with pytest.raises(host.HostError, match=r"unsupported model family \(Linear\)"):
        families.check_supported(NotAUnet())
