"""Write .ci/constraints.txt, the pinned host environment, from the venv (`make constraints`).

.ci/setup.sh installs every package with `pip -c .ci/constraints.txt`, so set-up on a fresh machine and in CI
resolves exactly these versions. The file changes only on purpose: install the new version into .venv, run the
tests, run `make constraints`, commit the file.
    .venv/bin/python -m tools.constraints            # rewrite .ci/constraints.txt from `.venv/bin/pip freeze --all`
    .venv/bin/python -m tools.constraints --check    # exit 1 and list the differences when the venv drifted
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
PACK = "comfyui-dragedit"            # this pack (never pinned: it is the checkout itself)
HEADER = """\
# The pinned host environment: .ci/setup.sh installs every package with `pip -c` this file, on a fresh machine
# and in CI alike. Written by `make constraints` (python -m tools.constraints) from `.venv/bin/pip freeze --all`.
# Update on purpose: install the new version into .venv, run the tests, `make constraints`, commit this file.
"""


def normalise(name: str) -> str:
    """PEP 503 normalised project name (how pip compares names)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> dict[str, str]:
    """name -> version of the `name==version` lines of a freeze or constraints text (comments, blanks skipped)."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalise(name)] = version.strip()
    return pins


def render(freeze: str) -> str:
    """The constraints file for a `pip freeze --all` text: header, then sorted `name==version` lines without the
    pack and without editable or URL installs (which pip freeze writes without `==`)."""
    lines = [ln.strip() for ln in freeze.splitlines() if "==" in ln and not ln.startswith(("#", "-e"))]
    lines = [ln for ln in lines if normalise(ln.split("==", 1)[0]) != PACK]
    return HEADER + "".join(ln + "\n" for ln in sorted(lines, key=lambda ln: normalise(ln.split("==", 1)[0])))


def venv_freeze(python: str = str(ROOT / ".venv" / "bin" / "python")) -> str:
    """`pip freeze --all` of the venv whose interpreter is `python`."""
    return subprocess.run([python, "-m", "pip", "freeze", "--all"], check=True, capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare the venv with the file instead of writing it")
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"), help="the venv's interpreter")
    args = ap.parse_args(argv)
    text = render(venv_freeze(args.python))
    if args.check:
        want, have = parse(CONSTRAINTS.read_text()), parse(text)
        diff = sorted(f"{n}: pinned {want.get(n)}, venv {have.get(n)}" for n in want.keys() | have.keys()
                      if want.get(n) != have.get(n))
        print("\n".join(diff) or f"venv matches {CONSTRAINTS.relative_to(ROOT)}")
        return 1 if diff else 0
    CONSTRAINTS.write_text(text)
    print(f"wrote {CONSTRAINTS.relative_to(ROOT)}: {len(parse(text))} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
