"""Comfy Registry metadata: the icon (a file in this repository, addressed by its raw URL), requires-comfyui, the
display name the README tells users to search for, and a .comfyignore that keeps tests / benches / tools / CI out of the
package while leaving everything ComfyUI loads."""
from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
META = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMFY = META["tool"]["comfy"]


def test_icon_is_a_small_square_image_in_this_repository():
    url = COMFY["Icon"]
    repo = META["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    m = re.fullmatch(rf"https://raw\.githubusercontent\.com/{re.escape(repo)}/[^/]+/(.+)", url)
    assert m, f"Icon {url!r} is not a raw URL of a file in {repo}"
    path = ROOT / m.group(1)
    assert path.is_file(), f"Icon points at {m.group(1)}, which this repository lacks"
    with Image.open(path) as im:
        assert im.width == im.height and 64 <= im.width <= 400, im.size


def test_requires_comfyui_is_the_oldest_checked_version():
    assert COMFY["requires-comfyui"] == ">=0.3.64"


def test_readme_names_the_display_name():
    """Users search the Registry / ComfyUI-Manager for the name the README gives: the DisplayName."""
    assert f'"{COMFY["DisplayName"]}"' in (ROOT / "README.md").read_text()


def _ignored(path: str, patterns: list[str]) -> bool:
    """gitwildmatch, as far as this .comfyignore uses it: "dir/" drops a folder, other patterns match a path
    or its file name."""
    for p in patterns:
        if p.endswith("/"):
            if path.startswith(p) or f"/{p}" in f"/{path}":
                return True
        elif fnmatch.fnmatch(path, p.lstrip("/")) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], p):
            return True
    return False


def test_comfyignore_keeps_tests_out_and_the_pack_in():
    patterns = [l.strip() for l in (ROOT / ".comfyignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    kept = [f for f in files if not _ignored(f, patterns)]
    for folder in ("tests/", "bench/", "tools/", ".ci/"):
        assert not [f for f in kept if f.startswith(folder)], folder
    candidate = "demo/shapes/weights/shapes_v2-"          # Shapes v2 training candidates: in git, not in the package
    needed = [f for f in files if (f == "__init__.py" or f.split("/")[0] in ("nodes", "core", "demo", "web", "example_workflows"))
              and not f.startswith(candidate)]
    assert needed and all(f in kept for f in needed), [f for f in needed if f not in kept]
    assert "demo/shapes/weights/shapes_v1.safetensors" in kept
    assert not [f for f in kept if f.startswith(candidate)]
    for f in ("LICENSE", "README.md", "pyproject.toml", "requirements.txt"):
        assert f in kept, f
