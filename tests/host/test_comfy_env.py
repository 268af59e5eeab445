"""tools/support/comfy_env.py sets ComfyUI's command-line flags on comfy.cli_args.args without touching sys.argv: the
result must be what ComfyUI itself parses from the same command line (each side in a fresh process)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tools.support.comfy_env import ROOT, comfyui_path

FLAGS = ["--cpu", "--use-pytorch-cross-attention", "--fast", "--force-fp16", "--disable-auto-launch",
         "--preview-method", "latent2rgb"]

COMFYUI_PARSES = """
import json, sys
sys.path.insert(0, {path!r})
sys.argv = ["main.py", *{flags!r}]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.cli_args
print(json.dumps(vars(comfy.cli_args.args), default=lambda v: sorted(map(str, v)) if isinstance(v, set) else str(v)))
"""

WE_SET = """
import json, sys
from tools.support.comfy_env import apply_cli_flags, comfyui_path
sys.path.insert(0, str(comfyui_path()))
apply_cli_flags({flags!r})
import comfy.cli_args
print(json.dumps(vars(comfy.cli_args.args), default=lambda v: sorted(map(str, v)) if isinstance(v, set) else str(v)))
"""


def _args(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flags", [["--cpu"], FLAGS])
def test_flags_set_without_argv_equal_comfyui_parsing_its_command_line(flags):
    theirs = _args(COMFYUI_PARSES.format(path=str(comfyui_path()), flags=flags))
    ours = _args(WE_SET.format(flags=flags))
    diff = {k: (ours.get(k), theirs.get(k)) for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)}
    assert not diff, (f"apply_cli_flags({flags}) differs from ComfyUI's own parsing (ours, ComfyUI's): {diff}; "
                      "comfy/cli_args.py changed its post-parse rules: update tools/support/comfy_env.apply_cli_flags")


def test_in_process_comfyui_runs_on_the_cpu_and_argv_is_untouched():
    import comfy.cli_args
    import comfy.model_management as mm
    assert comfy.cli_args.args.cpu and mm.get_torch_device().type == "cpu"
    assert "--cpu" not in sys.argv
