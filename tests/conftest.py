"""Test fixtures: the real ComfyUI host in-process (--cpu), tiny SD-shaped models, and a real server."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("DRAGEDIT_TEST_THREADS", "1")))

from support.comfy_env import load_pack, setup_comfy  # noqa: E402

setup_comfy()
load_pack()

from support import tiny_models  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slower tests (still run in CI)")
    config.addinivalue_line("markers", "browser: headless Chromium against the real server")


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


def run_node(cls, **inputs):
    """Call a node's FUNCTION the way ComfyUI's executor does (inside torch.inference_mode)."""
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """The real ComfyUI server with this pack and tests/test_nodes loaded, on a free loopback port."""
    from support.comfy_server import ComfyServer
    srv = ComfyServer(base=tmp_path_factory.mktemp("comfy-base")).start()
    yield srv
    srv.cleanup()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through Playwright (skips with the reason when it is missing)."""
    from support import browser_util as bu
    why = bu.chromium_missing_reason()
    if why:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = bu.launch(pw)
        yield b
        b.close()
