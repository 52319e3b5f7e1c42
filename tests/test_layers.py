"""The layering of STYLE.md, read from the sources (``ast``, every import statement, those inside
functions and under ``TYPE_CHECKING`` too): the arrows point one way.

- ``clearing.domain`` imports nothing of ours outside ``clearing.domain``;
- the layers above it import only what is below them: ``clearing.store`` not the engine or the
  audit, ``clearing.engine`` not the audit (the process's support modules, ``clearing.settings``,
  ``clearing.runtime``, ``clearing.embedded``, are no layer: the engine and the audit may read
  them);
- the adapters (``consumers``, ``clearing.api``, ``clearing.cli``, and ``clearing.demo``, the
  cli's demo that drives the consumers) are imported by none of the layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("clearing", "consumers")
ADAPTERS = ("consumers", "clearing.api", "clearing.cli", "clearing.demo")
# What each layer must not import of ours.
MAY_NOT_IMPORT = {
    "clearing.store": ("clearing.engine", "clearing.audit", *ADAPTERS),
    "clearing.engine": ("clearing.audit", *ADAPTERS),
    "clearing.audit": ADAPTERS,
}
LAYERS = ("clearing.domain", *MAY_NOT_IMPORT)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, *, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in ``source`` (the text of ``module``); ``from X
    import name`` gives ``X.name`` (a submodule or a name of ``X``: either is an import of ``X``'s
    layer), relative imports resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def our_imports() -> Iterator[tuple[str, int, str]]:
    """(importing module, line, imported module) for every import of ours in clearing and consumers."""
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            for line, imported in imports_of(path.read_text("utf-8"), module, is_package=path.name == "__init__.py"):
                if imported.split(".")[0] in OURS:
                    yield module, line, imported


def test_the_import_reader_sees_imports_in_functions_and_relative_ones() -> None:
    source = "import os\nfrom . import sibling\ndef f():\n    from clearing.api import routes\n"
    assert list(imports_of(source, "clearing.domain.fold")) == [
        (1, "os"),
        (2, "clearing.domain.sibling"),
        (4, "clearing.api.routes"),
    ]


def test_each_layer_imports_only_the_layers_below_it() -> None:
    crossings = []
    for module, line, imported in our_imports():
        for layer, forbidden in MAY_NOT_IMPORT.items():
            if _within(module, layer) and any(_within(imported, target) for target in forbidden):
                crossings.append(f"{module}:{line} imports {imported}")
    assert crossings == []
    assert any(_within(m, "clearing.engine") and _within(i, "clearing.store") for m, _, i in our_imports())


def test_the_adapters_are_imported_by_no_layer() -> None:
    found = [
        f"{module}:{line} imports {imported}"
        for module, line, imported in our_imports()
        if any(_within(module, layer) for layer in LAYERS)
        and any(_within(imported, adapter) for adapter in ADAPTERS)
    ]
    assert found == []
    # The adapters do import the layers: the reader sees them.
    assert any(_within(m, "consumers") and _within(i, "clearing.engine") for m, _, i in our_imports())


def test_the_domain_is_a_package_of_its_own() -> None:
    outside = [
        f"{module}:{line} imports {imported}"
        for module, line, imported in our_imports()
        if _within(module, "clearing.domain") and not _within(imported, "clearing.domain")
    ]
    assert outside == []
