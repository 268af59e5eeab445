"""The README is true where a test can see it: every `make` target it names exists, every repository file or folder
it names exists, every example workflow it names ships, its install line clones the repository pyproject.toml names
(no placeholder), and the section other branches edit keeps its heading."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
MAKE_TARGETS = set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))
# Paths that exist only after a run or on the user's machine.
NOT_IN_REPO = (".host/", ".venv/", "out/", "ComfyUI/", "custom_nodes/", "drag_utils.py")


def test_every_make_command_is_a_target():
    named = set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", README))
    assert {"demo", "test", "test-fast", "constraints", "server"} <= named
    assert sorted(named - MAKE_TARGETS) == []


def test_every_repository_path_named_exists():
    paths = set()
    inline = re.sub(r"```.*?```", "", README, flags=re.S)
    for code in re.findall(r"`([^`\n]+)`", inline):
        wf = re.fullmatch(r"(?:custom_nodes/[^/]+/)?(example_workflows/.+\.json)", code)
        if wf:                                  # example workflow file names hold spaces (they are the titles)
            paths.add(wf.group(1))
            continue
        for tok in code.split():
            if re.fullmatch(r"\.?[\w.-]+/[\w./*<>-]*|[\w-]+\.(md|py|txt|json)", tok) and not tok.startswith(NOT_IN_REPO):
                paths.add(tok)
    assert "docs/history.md" in paths and ".ci/constraints.txt" in paths
    missing = []
    for p in sorted(paths):
        if "<" in p:
            continue
        if "*" in p:
            if not list(ROOT.glob(p)):
                missing.append(p)
        elif not (ROOT / p).exists():
            missing.append(p)
    assert missing == []


def test_every_workflow_named_ships():
    """Workflows are named by their template-browser titles (= file names): each one named ships, and the walkthrough's
    SD1.5 ones are named."""
    names = set(re.findall(r"\b((?:Demo|SD1\.5|SDXL) - [A-Za-z0-9 +]*[A-Za-z0-9])", README))
    shipped = {p.stem for p in (ROOT / "example_workflows").glob("*.json")}
    assert {"SD1.5 - RegionDrag", "SD1.5 - DragDiffusion + LoRA", "SD1.5 - LEDITS add snow"} <= names
    assert sorted(names - shipped) == []


def test_install_clones_the_repository_of_pyproject():
    repo = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert f"git clone {repo}\n" in README
    assert "<this repository>" not in README
    assert "comfyui-dragedit" in README                       # the Comfy Registry id


def test_readme_leads_with_install_walkthrough_and_node_map():
    heads = re.findall(r"^## (.+)$", README, re.M)
    assert heads[:3] == ["Install", "Edit your own photo, step by step (SD1.5, RegionDrag)", "Nodes"]
    assert "What each method does on the bundled demo model" in heads
    first_picture = re.search(r"!\[[^\]]*\]\(([^)]+)\)", README).group(1)
    assert (ROOT / first_picture).is_file() and README.index(first_picture) < README.index("## Install")
