"""The domain's modules import one another without a circle: booking (which books) sits below the
lifecycle (which decides), and neither imports the fold that calls them both."""

from __future__ import annotations

import ast
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "clearing" / "domain"


def domain_imports(source: Path) -> set[str]:
    """Modules of clearing.domain that ``source`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "clearing.domain":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("clearing.domain."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("clearing.domain."))
    return {name for name in found if (DOMAIN / f"{name}.py").exists()} - {source.stem}


def test_the_domain_has_no_import_circle() -> None:
    graph = {path.stem: domain_imports(path) for path in DOMAIN.glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError(f"import circle: {' -> '.join((*path[path.index(module):], module))}")
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_deciding_and_booking_are_apart() -> None:
    assert "fold" not in domain_imports(DOMAIN / "lifecycle.py")
    assert not {"fold", "lifecycle"} & domain_imports(DOMAIN / "booking.py")
