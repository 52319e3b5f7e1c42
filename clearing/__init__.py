"""clearing: an event-sourced clearinghouse ledger and margin engine.

Some modules may be compiled (``native.py`` lists them). This runs before any of them is
imported, and decides whether the compiled build is used or every one of them comes from source.
"""

from __future__ import annotations

from pathlib import Path

from clearing.native import use_compiled

NOT_COMPILED_BECAUSE = use_compiled(Path(__file__).resolve().parent)
COMPILED_IN_USE = NOT_COMPILED_BECAUSE is None


def build_status() -> str:
    """How the compiled modules run, for figures that depend on it (the benchmarks print it)."""
    return "compiled (mypyc)" if COMPILED_IN_USE else f"from source: {NOT_COMPILED_BECAUSE}"
