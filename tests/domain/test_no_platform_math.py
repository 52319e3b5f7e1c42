"""The domain computes in exact decimals only (DESIGN.md): no ``float(`` anywhere in
``clearing/domain``, and no platform math library (``math``, ``cmath``, numpy, scipy), whose
digits may differ from machine to machine, in anything that can reach a decision. A reading of
the sources' syntax trees, so a comment or a string that names them does not count."""

from __future__ import annotations

import ast
from pathlib import Path

import clearing.domain

DOMAIN = Path(clearing.domain.__file__).parent
PLATFORM_MATH = {"math", "cmath", "numpy", "scipy", "statistics"}


def offences(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float":
            found.append(f"line {node.lineno}: float(...)")
        elif isinstance(node, ast.Import):
            named = [alias.name for alias in node.names if alias.name.split(".")[0] in PLATFORM_MATH]
            found += [f"line {node.lineno}: import {name}" for name in named]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PLATFORM_MATH:
            found.append(f"line {node.lineno}: from {node.module} import ...")
    return found


def test_the_rule_reader_sees_what_it_forbids() -> None:
    assert offences("import math\nfrom numpy import exp\nx = float('1')\n") == [
        "line 1: import math",
        "line 2: from numpy import ...",
        "line 3: float(...)",
    ]
    assert offences("# float(x) and import math in a comment\ny = 'float(1)'\n") == []


def test_the_domain_uses_no_float_and_no_platform_math() -> None:
    sources = sorted(DOMAIN.glob("*.py"))
    assert {path.name for path in sources} >= {"black76.py", "decimalmath.py", "optionmargin.py", "margin.py"}
    found = {path.name: offences(path.read_text(encoding="utf-8")) for path in sources}
    assert {name: lines for name, lines in found.items() if lines} == {}
