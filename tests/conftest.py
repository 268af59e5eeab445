"""Fixtures of every level: torch threads, the real ComfyUI server (a subprocess) and headless Chromium. Nothing
here imports ComfyUI in-process: tests/{host,parity,server,browser}/conftest.py do (tools/support/comfy_fixtures.py),
tests/unit/ never does.

Levels: unit/ (pure math, schema, geometry, files), host/ (in-process ComfyUI: node calls, host, demo model),
parity/ (against official-code ports and diffusers), server/ (real server, executor, example workflows),
browser/ (the frontend in Chromium). `make test-fast` runs unit + parity + host without the slow ones."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("DRAGEDIT_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """The real ComfyUI server with this pack and tests/test_nodes loaded, on a free loopback port."""
    from tools.support.comfy_server import ComfyServer
    srv = ComfyServer(base=tmp_path_factory.mktemp("comfy-base")).start()
    yield srv
    srv.cleanup()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through Playwright (skips with the reason when it is missing)."""
    from tools.support import browser_util as bu
    why = bu.chromium_missing_reason()
    if why:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = bu.launch(pw)
        yield b
        b.close()
