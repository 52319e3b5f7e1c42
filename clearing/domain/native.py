"""Which domain modules are compiled with mypyc, and when the compiled build may be used.

``setup.py`` compiles the modules in ``COMPILED`` (the fold and everything it calls per event)
with mypyc when it can: the same source, about 1.5 times faster in a replay. It records the
SHA-256 of each source in ``compiled.json`` beside them once every extension is built. The
package's ``__init__`` uses the compiled modules only while that record matches every source;
otherwise (a source edited since the build, a failed or skipped build, ``CLEARING_PURE_PYTHON``
set) all of them are imported from source. All or none: compiled modules call one another
directly, so one of them from source would not see a change made to another.

Standard library only: ``setup.py`` loads this file by path, before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

COMPILED = (
    "numbers",
    "inputs",
    "state",
    "events",
    "marginmodel",
    "margin",
    "models",
    "triggers",
    "booking",
    "lifecycle",
    "fold",
    "jsontext",
    "logreplay",
    "statecodec",
)
MANIFEST = "compiled.json"
PURE_ENV = "CLEARING_PURE_PYTHON"


def source_digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / f"{name}.py").read_bytes()).hexdigest() for name in COMPILED}


def write_manifest(folder: Path, sources: Path) -> None:
    """Record the sources the extensions in ``folder`` were built from."""
    (folder / MANIFEST).write_text(json.dumps(source_digests(sources), indent=1, sort_keys=True) + "\n")


def why_not_compiled(folder: Path) -> str | None:
    """None when the compiled modules in ``folder`` may be used; otherwise why not."""
    if os.environ.get(PURE_ENV):
        return f"{PURE_ENV} is set"
    try:
        recorded = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "there is no compiled build"
    except ValueError:
        return f"{MANIFEST} is unreadable"
    current = source_digests(folder)
    if recorded != current:
        changed = sorted(name for name, digest in current.items() if recorded.get(name) != digest)
        return f"{', '.join(f'{name}.py' for name in changed)} changed since the compiled build"
    return None
