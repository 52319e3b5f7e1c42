"""``scripts/install`` compiles once per state of the sources: a second extra on unchanged sources
installs that extra's packages only; a changed domain source, or a changed compiled module outside
the domain, builds again. (On 05ad1d6 the stamp depended on the extras: ``scripts/test`` after
``scripts/demo`` compiled the domain again.)

pip is the one thing replaced here: ``.venv/bin/python`` is a stand-in that records how it was
called (and runs the real Python for the script's own small programs); the script under test is
the real one."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from clearing import native

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 60
STAND_IN = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../../calls.log"
if [ "$1" = "-" ]; then exec python3 "$@"; fi
exit 0
"""


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "clearing"
    (root / "scripts").mkdir(parents=True)
    (root / "clearing" / "domain").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "install", root / "scripts" / "install")
    shutil.copy(ROOT / "setup.py", root / "setup.py")
    pyproject = (ROOT / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(pyproject.replace("[project.optional-dependencies]\n",
                                                           '[project.optional-dependencies]\ndocs = ["mkdocs"]\n'))
    # What the build stamp hashes: the list of compiled modules, the domain, and every compiled
    # module (some live outside clearing/domain).
    shutil.copy(ROOT / "clearing" / "native.py", root / "clearing" / "native.py")
    for source in (ROOT / "clearing" / "domain").glob("*.py"):
        shutil.copy(source, root / "clearing" / "domain" / source.name)
    for module in native.COMPILED:
        name = native.source_name(module)
        (root / "clearing" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "clearing" / name, root / "clearing" / name)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STAND_IN)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return root


def install(root: Path, extras: str = "") -> list[str]:
    log = root / "calls.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "CLEARING_PURE_PYTHON"}
    done = subprocess.run(["bash", "scripts/install", *([extras] if extras else [])], cwd=root, env=env,
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines() if log.exists() else []


def builds(calls: list[str]) -> int:
    return sum(1 for call in calls if " -e " in f" {call} ")


def test_the_domain_is_compiled_once_per_source_state(tmp_path: Path) -> None:
    root = tree(tmp_path)
    assert builds(install(root)) == 1  # the demo's install
    assert install(root) == []  # nothing changed
    test = install(root, "[test]")  # the tests' install after the demo's: packages, no build
    assert builds(test) == 0 and any("pytest>=" in call for call in test)
    assert install(root, "[test]") == [] and install(root) == []
    docs = install(root, "[docs]")
    assert builds(docs) == 0 and any("mkdocs" in call for call in docs)
    (root / "clearing" / "domain" / "fold.py").write_text((root / "clearing" / "domain" / "fold.py").read_text() + "\n")
    assert builds(install(root, "[test]")) == 1  # a changed source builds again
    assert install(root) == []  # and the plain install is contained in it


def test_an_edit_to_a_compiled_module_outside_the_domain_builds_again(tmp_path: Path) -> None:
    root = tree(tmp_path)
    outside = [native.source_name(module) for module in native.COMPILED if not module.startswith("clearing.domain.")]
    assert outside  # else this test proves nothing
    assert builds(install(root, "[test]")) == 1
    assert install(root, "[test]") == []
    for name in outside:
        source = root / "clearing" / name
        source.write_text(source.read_text() + "\n")
        assert builds(install(root, "[test]")) == 1, f"an edit to {name} did not build again"
        assert install(root, "[test]") == [] and install(root) == []
