"""Set-up scripts (.ci/) and the pinned host environment, checked without rebuilding the venv: every pip install of
.ci/setup.sh is pinned by .ci/constraints.txt, an existing venv is re-synced only when the pins change, chromium is
a step of `make test` only (tried once, DRAGEDIT_NO_CHROMIUM=1 opts out), and the scripts are valid bash (and pass
shellcheck where it is installed). The scripts run for real, in a copy of the tree, with a recording `pip`."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tools import constraints as cons

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / ".ci"
SCRIPTS = [CI / "setup.sh", CI / "chromium.sh", CI / "frontend.sh", CI / "run"]


def _make_rule(target: str) -> tuple[list[str], list[str]]:
    """(prerequisites, recipe lines) of a Makefile target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{target}:"):
            recipe = []
            for nxt in lines[i + 1:]:
                if not nxt.startswith("\t"):
                    break
                recipe.append(nxt.strip())
            return line.split(":", 1)[1].split(), recipe
    raise AssertionError(f"no Makefile target {target}")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "-S", "warning", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


def test_every_pip_install_in_setup_is_pinned_by_the_constraints_file():
    text = (CI / "setup.sh").read_text()
    installs = [ln for ln in text.splitlines() if re.search(r'pip"?\s+install\b', ln)]
    assert installs, "setup.sh installs nothing?"
    for ln in installs:
        assert '-c "$constraints"' in ln, f"unpinned pip install in setup.sh: {ln.strip()}"
    assert 'constraints=$root/.ci/constraints.txt' in text


def test_constraints_pin_the_torch_family_and_every_named_requirement():
    pins = cons.parse((CI / "constraints.txt").read_text())
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["torchaudio"] == "2.11.1"
    named = []
    for req in (ROOT / "requirements.txt", ROOT / "tests" / "requirements.txt"):
        for ln in req.read_text().splitlines():
            ln = ln.split("#", 1)[0].strip()
            if ln:
                named.append(cons.normalise(re.split(r"[<>=!~\[; ]", ln, 1)[0]))
    assert [n for n in named if n not in pins] == []
    assert cons.PACK not in pins
    body = [ln for ln in (CI / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", ln) for ln in body), body


def test_constraints_render_drops_the_pack_and_editables_and_sorts():
    freeze = "zipp==4.1.2\n-e git+https://x/y#egg=comfyui_dragedit\nComfyUI_DragEdit==0.1.0\nAiohttp==3.14.5\n"
    out = cons.render(freeze)
    assert out.startswith(cons.HEADER)
    assert out[len(cons.HEADER):] == "Aiohttp==3.14.5\nzipp==4.1.2\n"


def test_make_demo_installs_no_browser_and_make_test_does():
    assert "apt-get" not in (CI / "setup.sh").read_text()
    assert "apt-get" in (CI / "chromium.sh").read_text()
    demo_pre, _ = _make_rule("demo")
    test_pre, _ = _make_rule("test")
    assert "chromium" not in demo_pre and "setup" in demo_pre
    assert "chromium" in test_pre and "setup" in test_pre
    constraints_pre, recipe = _make_rule("constraints")
    assert "setup" not in constraints_pre and any("tools.constraints" in r for r in recipe)


def _copy_ci(tmp_path: Path, *names: str) -> Path:
    (tmp_path / ".ci").mkdir()
    for n in names:
        shutil.copy2(CI / n, tmp_path / ".ci" / n)
    return tmp_path


def _bin(tmp_path: Path, *tools: str) -> Path:
    """A PATH folder with only these tools (links to the real ones)."""
    b = tmp_path / "bin"
    b.mkdir(exist_ok=True)
    for t in tools:
        (b / t).symlink_to(shutil.which(t))
    return b


def _chromium(root: Path, path: Path, **env) -> subprocess.CompletedProcess:
    e = {"PATH": str(path), "DRAGEDIT_CHROMIUM": str(root / "no-such-browser"), **env}
    return subprocess.run(["/bin/bash", str(root / ".ci" / "chromium.sh")], env=e, capture_output=True, text=True)


def test_chromium_step_is_tried_once_then_remembered(tmp_path):
    root = _copy_ci(tmp_path, "chromium.sh")
    path = _bin(tmp_path, "date", "mkdir", "dirname")       # no apt-get on this PATH
    first = _chromium(root, path)
    assert first.returncode == 0, first.stderr
    assert "no apt-get" in first.stdout
    assert (root / ".host" / "chromium-unavailable").is_file()
    second = _chromium(root, path)
    assert second.returncode == 0 and "tried before" in second.stdout and "no apt-get" not in second.stdout


def test_chromium_opt_out_and_present_browser(tmp_path):
    root = _copy_ci(tmp_path, "chromium.sh")
    path = _bin(tmp_path, "date", "mkdir", "dirname")
    out = _chromium(root, path, DRAGEDIT_NO_CHROMIUM="1")
    assert out.returncode == 0 and "DRAGEDIT_NO_CHROMIUM=1" in out.stdout
    assert not (root / ".host" / "chromium-unavailable").exists()
    present = _chromium(root, path, DRAGEDIT_CHROMIUM="/bin/sh")
    assert present.returncode == 0 and present.stdout == ""


RECORDING_PIP = """#!/bin/bash
echo "$*" >> "$(dirname "$0")/../pip.calls"
"""


def _built_tree(tmp_path: Path) -> Path:
    """A copy of the set-up inputs with a venv that is already built (its stamp) and a `pip` that records calls."""
    root = _copy_ci(tmp_path, "setup.sh", "constraints.txt")
    shutil.copy2(ROOT / "requirements.txt", root / "requirements.txt")
    (root / "tests").mkdir()
    shutil.copy2(ROOT / "tests" / "requirements.txt", root / "tests" / "requirements.txt")
    comfy = root / ".host" / "comfyui"
    comfy.mkdir(parents=True)
    (comfy / "requirements.txt").write_text("torch\ntorchvision\ntorchaudio\nnumpy>=1.25.0\n# comment\n\neinops\n")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "pip").write_text(RECORDING_PIP)
    (venv_bin / "pip").chmod(0o755)
    (root / ".venv" / ".dragedit-setup-v1").touch()
    return root


def _setup(root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON",)}
    return subprocess.run(["bash", str(root / ".ci" / "setup.sh")], env=env, capture_output=True, text=True)


def _calls(root: Path) -> list[str]:
    f = root / ".venv" / "pip.calls"
    return f.read_text().splitlines() if f.exists() else []


def test_setup_resyncs_an_existing_venv_only_when_the_pins_change(tmp_path):
    root = _built_tree(tmp_path)
    first = _setup(root)
    assert first.returncode == 0, first.stderr
    calls = _calls(root)
    assert len(calls) == 1, calls
    c = calls[0].split()
    assert c[:3] == ["install", "-q", "-c"] and c[3] == str(root / ".ci" / "constraints.txt")
    assert {"torch", "torchvision", "torchaudio"} <= set(c)
    host_reqs = (root / ".host" / "requirements-host.txt").read_text().split()
    assert host_reqs == ["numpy>=1.25.0", "einops"]          # the torch family is named by setup.sh itself
    assert (root / ".host" / "base" / "custom_nodes" / "ComfyUI-DragEdit").resolve() == root.resolve()

    again = _setup(root)
    assert again.returncode == 0 and len(_calls(root)) == 1    # nothing changed: no pip call
    with open(root / ".ci" / "constraints.txt", "a") as f:
        f.write("einops==0.8.2\n")
    third = _setup(root)
    assert third.returncode == 0 and len(_calls(root)) == 2 and "syncing" in third.stdout
