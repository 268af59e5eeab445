"""The ComfyUI import rule of the pack, checked on the source (no ComfyUI needed):

core/host/ is the only importer of ComfyUI's model, sampler and patcher internals. Elsewhere:
- nodes/_ui.py may import comfy.utils (progress bar), comfy.model_management (Cancel) and folder_paths (the temp
  folder of the editor's preview PNG), and nothing else of ComfyUI;
- the pack entry __init__.py imports comfy.model_patcher only to refuse loading outside ComfyUI;
- demo/shapes/model.py and vae.py (the bundled demo model) define its ComfyUI latent format and pixel-space VAE.
Every other module of core/ and nodes/ imports no ComfyUI module at all."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMFY_TOP = {"comfy", "comfy_extras", "comfy_api", "comfy_execution", "folder_paths", "server", "execution",
             "latent_preview", "node_helpers", "nodes"}
ALLOWED = {
    "__init__.py": {"comfy.model_patcher"},
    "nodes/_ui.py": {"comfy.utils", "comfy.model_management", "folder_paths"},
    # the demo model is a ComfyUI model definition of its own: its latent format and its pixel-space VAE
    "demo/shapes/model.py": {"comfy.latent_formats"},
    "demo/shapes/vae.py": {"comfy.sd", "comfy.model_management", "comfy.model_patcher"},
}
EXEMPT = ("core/host/",)


def comfy_imports(path: Path) -> set[str]:
    """Absolute imports of ComfyUI modules in a file (relative imports are the pack's own)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in COMFY_TOP)
    return found


def test_only_core_host_imports_comfy():
    files = ([ROOT / "__init__.py"] + sorted((ROOT / "core").rglob("*.py")) + sorted((ROOT / "nodes").rglob("*.py"))
             + sorted((ROOT / "demo" / "shapes").glob("*.py")))
    bad = {}
    checked = 0
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        if rel.startswith(EXEMPT):
            continue
        checked += 1
        extra = comfy_imports(f) - ALLOWED.get(rel, set())
        if extra:
            bad[rel] = sorted(extra)
    assert checked >= 20
    assert not bad, f"ComfyUI imported outside core/host (see this test's docstring for the rule): {bad}"


def test_the_scan_sees_imports():
    """The scanner itself: absolute comfy imports (also inside functions) count, the pack's relative ones do not."""
    assert comfy_imports(ROOT / "nodes" / "_ui.py") == {"comfy.utils", "comfy.model_management", "folder_paths"}
    assert comfy_imports(ROOT / "__init__.py") == {"comfy.model_patcher"}


def test_no_node_calls_another_node_class():
    """Nodes share core functions and nodes/_inputs.py rules, never each other's classes: no node module
    instantiates a node class (a class with a FUNCTION)."""
    trees = {p.name: ast.parse(p.read_text(encoding="utf-8")) for p in sorted((ROOT / "nodes").glob("*.py"))}
    node_classes = {c.name for t in trees.values() for c in ast.walk(t) if isinstance(c, ast.ClassDef)
                    and any(isinstance(s, ast.Assign) and any(getattr(x, "id", "") == "FUNCTION" for x in s.targets)
                            for s in c.body)}
    assert len(node_classes) >= 15
    calls = [(name, n.func.id) for name, t in trees.items() for n in ast.walk(t)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in node_classes]
    assert calls == []
