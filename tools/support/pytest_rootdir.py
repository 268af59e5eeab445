"""pytest plugin (pytest.ini: -p tools.support.pytest_rootdir): collect the repository root as a plain directory, not a package.
The root holds the pack's __init__.py (ComfyUI loads the folder as a package); pytest >= 8 would import it as the
test package's __init__ under the folder's name, which fails when that name is not a Python identifier (e.g. a
checkout in /tmp/tmp.XXXX). Tests load the pack as `dragedit` through tools/support/comfy_env.py instead."""
from __future__ import annotations

import pytest


def pytest_collect_directory(path, parent):
    if path == parent.config.rootpath and (path / "__init__.py").exists():
        return pytest.Dir.from_parent(parent, path=path)
    return None
