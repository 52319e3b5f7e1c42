"""Which modules of clearing are compiled with mypyc, and when the compiled build may be used.

``setup.py`` compiles the modules in ``COMPILED`` (the fold, everything it calls per event, and
the hot code of other layers that a replay or the ledger runs per event) with mypyc when it can:
the same source, about 1.5 times faster in a replay. It records the SHA-256 of each source in
``compiled.json`` in the package folder once every extension is built. ``clearing/__init__.py``
(which runs before any module of the package is imported) uses the compiled modules only while
that record matches every source; otherwise (a source edited since the build, a failed or skipped
build, ``CLEARING_PURE_PYTHON`` set) all of them are imported from source (``use_compiled``). All
or none: compiled modules call one another directly, so one of them from source would not see a
change made to another.

Standard library only: ``setup.py`` loads this file by path, before anything is installed, and
``python3 clearing/native.py`` prints the sources (``scripts/install`` hashes them).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

PACKAGE = "clearing"
COMPILED = (
    "clearing.domain.numbers",
    "clearing.domain.inputs",
    "clearing.domain.state",
    "clearing.domain.events",
    "clearing.domain.marginmodel",
    "clearing.domain.margin",
    "clearing.domain.models",
    "clearing.domain.triggers",
    "clearing.domain.booking",
    "clearing.domain.lifecycle",
    "clearing.domain.fold",
    "clearing.store.jsontext",
    "clearing.engine.statecodec",
    "clearing.audit.logreplay",
)
MANIFEST = "compiled.json"
PURE_ENV = "CLEARING_PURE_PYTHON"


def source_name(module: str) -> str:
    """The source of ``module`` relative to the package folder: ``domain/fold.py``."""
    return "/".join(module.split(".")[1:]) + ".py"


def source_digests(package: Path) -> dict[str, str]:
    """SHA-256 of each compiled module's source under the package folder ``package``."""
    return {
        source_name(module): hashlib.sha256((package / source_name(module)).read_bytes()).hexdigest()
        for module in COMPILED
    }


def write_manifest(folder: Path, sources: Path) -> None:
    """Record the sources (package folder ``sources``) the extensions in ``folder`` were built from."""
    (folder / MANIFEST).write_text(json.dumps(source_digests(sources), indent=1, sort_keys=True) + "\n")


def why_not_compiled(package: Path) -> str | None:
    """None when the compiled modules in the package folder ``package`` may be used; otherwise why not."""
    if os.environ.get(PURE_ENV):
        return f"{PURE_ENV} is set"
    try:
        recorded = json.loads((package / MANIFEST).read_text())
    except FileNotFoundError:
        return "there is no compiled build"
    except ValueError:
        return f"{MANIFEST} is unreadable"
    current = source_digests(package)
    if recorded != current:
        changed = sorted(name for name, digest in current.items() if recorded.get(name) != digest)
        return f"{', '.join(changed)} changed since the compiled build"
    return None


def extensions_present(package: Path) -> bool:
    """Whether any compiled module is built in the package folder ``package``."""
    return any(
        (package / source_name(module)).with_suffix(suffix).exists()
        for module in COMPILED
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


class FromSource(MetaPathFinder):
    """Imports the compiled modules from their sources (placed first on ``sys.meta_path``)."""

    def __init__(self, package: Path) -> None:
        self.package = package
        self.modules = frozenset(COMPILED)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.modules:
            return spec_from_file_location(fullname, self.package / source_name(fullname))
        return None


def use_compiled(package: Path) -> str | None:
    """Decide, before any compiled module is imported, whether the build in the package folder
    ``package`` is used: None when it is, else why not (then the sources are imported, with a
    warning when a build is there but out of date)."""
    present = extensions_present(package)
    reason = why_not_compiled(package) if present else "there is no compiled build"
    if reason is not None and present:
        sys.meta_path.insert(0, FromSource(package))
        if not reason.startswith(PURE_ENV):
            warnings.warn(
                f"clearing runs from source: {reason}; `pip install -e .` compiles it again",
                RuntimeWarning,
                stacklevel=3,
            )
    return reason


if __name__ == "__main__":
    sys.stdout.write("".join(f"{PACKAGE}/{source_name(module)}\n" for module in COMPILED))
