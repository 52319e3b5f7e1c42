"""The compiled modules (clearing/native.py): used where they were built and are up to date, and
otherwise the same modules from source, all of them."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import clearing
from clearing.audit import logreplay
from clearing.domain import fold
from clearing.native import COMPILED, MANIFEST, PURE_ENV, source_name, why_not_compiled, write_manifest

PACKAGE = Path(clearing.__file__).resolve().parent
BUILT = any((PACKAGE / "domain" / f"fold{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def test_the_manifest_names_each_source_changed_since_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PURE_ENV, raising=False)
    for module in COMPILED:
        source = tmp_path / source_name(module)
        source.parent.mkdir(exist_ok=True)
        source.write_text(f"# {module}\n")
    assert why_not_compiled(tmp_path) == "there is no compiled build"
    write_manifest(tmp_path, tmp_path)
    assert why_not_compiled(tmp_path) is None
    (tmp_path / "domain" / "margin.py").write_text("# margin, edited\n")
    (tmp_path / "domain" / "fold.py").write_text("# fold, edited\n")
    (tmp_path / "audit" / "logreplay.py").write_text("# the replay, edited\n")
    assert why_not_compiled(tmp_path) == (
        "audit/logreplay.py, domain/fold.py, domain/margin.py changed since the compiled build"
    )
    (tmp_path / MANIFEST).write_text("{not json")
    assert why_not_compiled(tmp_path) == f"{MANIFEST} is unreadable"
    monkeypatch.setenv(PURE_ENV, "1")
    assert why_not_compiled(tmp_path) == f"{PURE_ENV} is set"


@pytest.mark.skipif(
    bool(os.environ.get(PURE_ENV)) or not (shutil.which("cc") or shutil.which("gcc")),
    reason="built from source only (CLEARING_PURE_PYTHON, or no C compiler)",
)
def test_the_installed_modules_are_compiled_and_in_use() -> None:
    # A build that fell back to source silently would pass every other test, slower.
    assert clearing.COMPILED_IN_USE, clearing.NOT_COMPILED_BECAUSE
    assert clearing.build_status() == "compiled (mypyc)"
    assert Path(fold.__file__ or "").suffix == ".so"
    assert Path(logreplay.__file__ or "").suffix == ".so"  # compiled outside the domain too


def _import_in(root: Path, env: dict[str, str]) -> list[str]:
    """The files the compiled modules are imported from, and the warnings, in a fresh process."""
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "import importlib\n"
        f"for name in {COMPILED!r}:\n"
        "    print(importlib.import_module(name).__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.splitlines() + [line for line in done.stderr.splitlines() if "Warning" in line]


@pytest.mark.skipif(not BUILT, reason="no compiled build here")
def test_an_edited_source_is_imported_from_source_with_all_the_others(tmp_path: Path) -> None:
    # A copy of the package with its compiled build (and mypyc's shared library beside it).
    shutil.copytree(PACKAGE, tmp_path / "clearing", ignore=shutil.ignore_patterns("__pycache__"))
    for shared in PACKAGE.parent.glob("*__mypyc*"):
        shutil.copy(shared, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV}
    lines = _import_in(tmp_path, env)
    assert all(line.endswith(".so") for line in lines[: len(COMPILED)]), lines

    with (tmp_path / "clearing" / "domain" / "lifecycle.py").open("a") as source:
        source.write("\n# edited after the build\n")
    lines = _import_in(tmp_path, env)
    sources = [f"clearing/{source_name(module)}" for module in COMPILED]
    assert [line[-len(source) :] for line, source in zip(lines, sources, strict=False)] == sources
    assert any("domain/lifecycle.py changed since the compiled build" in line for line in lines[len(COMPILED) :]), lines

    lines = _import_in(tmp_path, {**env, PURE_ENV: "1"})
    assert len(lines) == len(sources)  # no warning
    assert [line[-len(source) :] for line, source in zip(lines, sources, strict=True)] == sources
