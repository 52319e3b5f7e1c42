"""The domain: messages, events, the state, the fold, the margin model and its lifecycle.

Some of these modules may be compiled (see ``native.py``). When they may not be used, a finder
placed first on ``sys.meta_path`` imports them from source, and a warning says why if compiled
modules are there but out of date.
"""

from __future__ import annotations

import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

from clearing.domain.native import COMPILED, PURE_ENV, why_not_compiled

_HERE = Path(__file__).resolve().parent


class _FromSource(MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in COMPILED:
            return spec_from_file_location(fullname, _HERE / f"{name}.py")
        return None


def _extensions_present() -> bool:
    return any(
        (_HERE / f"{name}{suffix}").exists() for name in COMPILED for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


_PRESENT = _extensions_present()
NOT_COMPILED_BECAUSE = why_not_compiled(_HERE) if _PRESENT else "there is no compiled build"
COMPILED_IN_USE = NOT_COMPILED_BECAUSE is None
if NOT_COMPILED_BECAUSE is not None and _PRESENT:
    sys.meta_path.insert(0, _FromSource())
    if not NOT_COMPILED_BECAUSE.startswith(PURE_ENV):
        warnings.warn(
            f"clearing.domain runs from source: {NOT_COMPILED_BECAUSE}; `pip install -e .` compiles it again",
            RuntimeWarning,
            stacklevel=2,
        )


def build_status() -> str:
    """How the domain runs, for figures that depend on it (the benchmarks print it)."""
    return "compiled (mypyc)" if COMPILED_IN_USE else f"from source: {NOT_COMPILED_BECAUSE}"
