"""Builds clearing, compiling the domain fold with mypyc when it can (clearing/domain/native.py).

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
DOMAIN = HERE / "clearing" / "domain"


def _native() -> Any:
    spec = spec_from_file_location("clearing_native_build", DOMAIN / "native.py")
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


native = _native()


def _say(text: str) -> None:
    sys.stderr.write(f"clearing: {text}\n")


def _extensions() -> list[Any]:
    (DOMAIN / native.MANIFEST).unlink(missing_ok=True)  # written again once the build succeeds
    if os.environ.get(native.PURE_ENV):
        _say(f"{native.PURE_ENV} is set: the domain is installed from source only")
        return []
    try:
        from mypyc.build import mypycify

        return mypycify([f"clearing/domain/{name}.py" for name in native.COMPILED], opt_level="3")
    except (Exception, SystemExit) as error:  # mypyc missing, or its type check failed
        _say(f"the domain is installed from source only: mypyc could not compile it ({error})")
        return []


class OptionalBuildExt(build_ext):
    """A failed compile (no C compiler, say) leaves the package as it is, from source."""

    def run(self) -> None:
        if not self.extensions:
            return
        target = Path(self.get_ext_fullpath("clearing.domain.fold")).parent
        (target / native.MANIFEST).unlink(missing_ok=True)
        try:
            super().run()
        except Exception as error:
            _say(f"the domain is installed from source only: compiling it failed ({error})")
            return
        native.write_manifest(target, DOMAIN)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
