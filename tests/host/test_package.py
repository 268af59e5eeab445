"""The pack as a package: import guard outside ComfyUI, mappings, tooltips, registry metadata."""
import subprocess
import sys
import tomllib
from pathlib import Path

import dragedit

ROOT = Path(__file__).resolve().parents[2]


def test_import_outside_comfyui_fails_clearly(tmp_path):
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('pack', r'{ROOT / '__init__.py'}', "
            f"submodule_search_locations=[r'{ROOT}'])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ComfyUI-DragEdit is a ComfyUI custom node pack"), r.stderr


def test_exports():
    assert dragedit.WEB_DIRECTORY == "./web"
    assert set(dragedit.NODE_CLASS_MAPPINGS) == set(dragedit.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in dragedit.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY.startswith("DragEdit"), name
        assert callable(getattr(cls, cls.FUNCTION)), name
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for inp, entry in spec.get(section, {}).items():
                assert len(entry) > 1 and entry[1].get("tooltip"), f"{name}.{inp} has no tooltip"


def test_registry_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] and meta["project"]["version"]
    assert meta["tool"]["comfy"]["PublisherId"] and meta["tool"]["comfy"]["DisplayName"]
    reqs = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert not any(r.split("=")[0].split(">")[0].strip().lower() in {"torch", "torchvision", "comfyui"} for r in reqs)
