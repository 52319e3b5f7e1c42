"""Builds clearing, compiling its hot modules with mypyc when it can (clearing/native.py).

Without a C compiler, or with ``CLEARING_PURE_PYTHON`` set, the same package is installed from
source only and runs the same, slower. Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "clearing"


def _native() -> Any:
    spec = spec_from_file_location("clearing_native_build", PACKAGE / "native.py")
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


native = _native()


def _say(text: str) -> None:
    sys.stderr.write(f"clearing: {text}\n")


def _extensions() -> list[Any]:
    (PACKAGE / native.MANIFEST).unlink(missing_ok=True)  # written again once the build succeeds
    if os.environ.get(native.PURE_ENV):
        _say(f"{native.PURE_ENV} is set: clearing is installed from source only")
        return []
    try:
        from mypyc.build import mypycify

        sources = [f"{native.PACKAGE}/{native.source_name(module)}" for module in native.COMPILED]
        return mypycify(sources, opt_level="3")
    except (Exception, SystemExit) as error:  # mypyc missing, or its type check failed
        _say(f"clearing is installed from source only: mypyc could not compile it ({error})")
        return []


class OptionalBuildExt(build_ext):
    """A failed compile (no C compiler, say) leaves the package as it is, from source."""

    def run(self) -> None:
        if not self.extensions:
            return
        # The package folder the extensions go to: ``clearing/domain/fold.so`` is two levels below.
        first = native.COMPILED[0]
        target = Path(self.get_ext_fullpath(first)).parents[first.count(".") - 1]
        (target / native.MANIFEST).unlink(missing_ok=True)
        try:
            super().run()
        except Exception as error:
            _say(f"clearing is installed from source only: compiling it failed ({error})")
            return
        native.write_manifest(target, PACKAGE)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
