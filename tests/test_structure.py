"""The layout stays as designed: no jat module imports another module's private names, the
modules import each other without cycles, and the edge-vector formula is written once
(:meth:`jat.graph.Graph.edge_vectors`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# r_j - r_i written out: positions[senders] - positions[receivers]
FORMULA = re.compile(r"\[\s*[\w.]*send\w*\s*\]\s*-\s*[\w.]+\[\s*[\w.]*rec\w*\s*\]")


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "jat").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """(imported module, imported name or None, line) of every jat import in a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    yield full, None, node.lineno
                elif base in modules:
                    yield base, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, None, node.lineno


def test_no_private_names_imported_across_modules():
    modules = _modules()
    found = [
        f"{path.relative_to(ROOT)}:{line}: {imported}.{what}"
        for name, path in modules.items()
        for imported, what, line in _imports(name, path, modules)
        if what and what.startswith("_") and not what.startswith("__") and imported != name
    ]
    assert not found, "private names imported from other modules:\n" + "\n".join(found)


def test_no_import_cycles():
    modules = _modules()
    graph = {
        name: {imported for imported, _, _ in _imports(name, path, modules) if imported != name}
        for name, path in modules.items()
    }

    def related(a: str, b: str) -> bool:  # a package and its own modules
        return a.startswith(b + ".") or b.startswith(a + ".")

    cycles = set()

    def visit(node: str, stack: list[str], seen: set[str]) -> None:
        for nxt in graph[node]:
            if related(node, nxt):
                continue
            if nxt in stack:
                cycles.add(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, [*stack, nxt], seen)

    for name in graph:
        visit(name, [name], {name})
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_edge_vector_formula_written_once():
    places = [
        f"{path.relative_to(ROOT)}:{k}"
        for folder in ("jat", "benchmarks", "examples")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for k, line in enumerate(path.read_text().splitlines(), 1)
        if FORMULA.search(line)
    ]
    assert len(places) == 1 and places[0].startswith("jat/graph/graph.py:"), places
