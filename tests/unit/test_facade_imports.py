"""From outside a package, code imports its public facade, never one of its private modules.

``from broker.protocol import seal`` is the contract between roles; ``from broker.protocol._sealing
import seal`` ties a caller to one file's layout. Read with ``ast`` (lazy imports inside functions
count too), so the rule holds without importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("broker", "adapters", "agencies")


def package_of(path: Path) -> str:
    """The dotted package a source file belongs to (``broker.hub`` for broker/hub/_bus.py)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1])


def private_owner(module: str) -> str | None:
    """``broker.protocol`` for ``broker.protocol._envelope``: the package whose private part is named."""
    parts = module.split(".")
    for index, part in enumerate(parts[1:], start=1):
        if part.startswith("_"):
            return ".".join(parts[:index])
    return None


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every absolute module an ``import`` or ``from ... import`` names, with its line."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def crossings(package: str, source: str, name: str = "<source>") -> list[str]:
    """The imports in ``source`` (a file of ``package``) that reach into another package's privates."""
    problems = []
    for line, module in imported_modules(ast.parse(source, name)):
        owner = private_owner(module)
        if owner is None or package == owner or package.startswith(owner + "."):
            continue
        problems.append(f"{name}:{line}: {module} (use `from {owner} import ...`)")
    return problems


def source_files() -> list[Path]:
    return sorted(p for root in SOURCES for p in (ROOT / root).rglob("*.py"))


def test_the_walk_sees_the_product_code() -> None:
    files = source_files()
    assert ROOT / "broker" / "protocol" / "__init__.py" in files
    assert ROOT / "adapters" / "_runtime.py" in files


@pytest.mark.parametrize(
    ("file", "statement", "crosses"),
    [
        ("broker/hub/_bus.py", "from broker.protocol._envelope import sign_event", True),
        ("adapters/_runtime.py", "import broker.protocol._sealing", True),
        ("broker/cli/_keys.py", "def f():\n    from broker.hub._sla_policy import parse_duration", True),
        ("agencies/police/_store.py", "from agencies.police._model import Case", False),
        ("agencies/bank/_service.py", "from agencies._common._journal import Journal", False),
        ("broker/protocol/_nats.py", "from ._subjects import stream_specs", False),
        ("broker/hub/_bus.py", "from broker.protocol import sign_event", False),
    ],
)
def test_the_rule_tells_a_crossing_from_an_inside_import(file: str, statement: str, crosses: bool) -> None:
    found = crossings(package_of(ROOT / file), statement + "\n", file)
    assert bool(found) is crosses, found


def test_no_product_code_imports_another_packages_private_modules() -> None:
    problems = [
        problem
        for path in source_files()
        for problem in crossings(
            package_of(path), path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))
        )
    ]
    assert problems == []
