"""In-process ComfyUI for the tests that need it. Importing this module starts ComfyUI (--cpu, see comfy_env) and
loads this pack as `dragedit`; tests/{host,parity,server,browser}/conftest.py import it (so it happens before their
test modules, which import `dragedit` at the top, are collected), tests/unit/ does not. The fixtures give tiny
deterministic SD-shaped models (real model_base + ModelPatcher, fresh per test) and their conditioning."""
from __future__ import annotations

import pytest

from .comfy_env import load_pack, setup_comfy

setup_comfy()
load_pack()

from . import tiny_models  # noqa: E402


@pytest.fixture()
def sd15_model():
    """Tiny SD1.5-shaped eps model (fresh per test)."""
    return tiny_models.sd15()


@pytest.fixture()
def sdxl_model():
    """Tiny SDXL-shaped model."""
    return tiny_models.sdxl()


@pytest.fixture()
def vpred_model():
    """Tiny v-prediction model."""
    return tiny_models.vpred()


@pytest.fixture()
def cond():
    """Positive / negative CONDITIONING for the SD1.5-shaped models."""
    return tiny_models.conditioning(1), tiny_models.conditioning(2)


@pytest.fixture()
def cond_xl():
    """Positive / negative CONDITIONING (with pooled output) for the SDXL-shaped model."""
    return tiny_models.conditioning(1, pooled=True), tiny_models.conditioning(2, pooled=True)


@pytest.fixture(scope="module")
def flux():
    """Tiny FLUX built from config (ComfyUI's Flux class, hidden 128, 2 + 2 blocks), one per test module."""
    return tiny_models.flux()


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    """Tiny SD3 (depth 2) written in the real single-file layout and loaded by ComfyUI's loader, one per module."""
    return tiny_models.sd3(tmp_path_factory.mktemp("sd3") / "tiny_sd3.safetensors")
