"""The package's shape, as docs/architecture.md draws it: floors import only downwards (or within
their floor), no module imports itself back through others, the model is generated from in one
module and run forward in one helper. Every import counts, lazy ones inside functions and
type-checking ones included: they are dependencies all the same."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import steerwatch

ROOT = Path(steerwatch.__file__).parent

# lowest first; a module may import its own floor and the floors below it
FLOORS = [
    ("ground", ["steerwatch", "errors", "types", "extras", "layers", "io", "chat", "hub", "models"]),
    ("core", ["batch", "record", "vector", "steer"]),
    ("data", ["data"]),
    ("watch", ["watch"]),
    ("runtime", ["runtime"]),
    ("extract", ["extract", "interop"]),
    ("evals", ["evals", "lab", "quickstart"]),
    ("policy", ["policy"]),
    ("serve", ["serve"]),
    ("cli", ["cli"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            found |= {t for t in targets if t in mods and t != name}
        graph[name] = found
    return graph


def _floor(module: str) -> int:
    first = module.split(".")[1] if "." in module else module
    for i, (_, members) in enumerate(FLOORS):
        if first in members:
            return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS and to docs/architecture.md")


def test_floors_import_only_downwards():
    mods = _modules()
    upward = [f"{a} ({FLOORS[_floor(a)][0]}) -> {b} ({FLOORS[_floor(b)][0]})"
              for a, targets in _imports(mods).items() for b in sorted(targets) if _floor(b) > _floor(a)]
    assert upward == []


def test_no_import_cycles():
    graph = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_commands_do_not_import_each_other():
    graph = _imports(_modules())
    shared = {"steerwatch.cli", "steerwatch.cli.app", "steerwatch.cli.common", "steerwatch.cli.options"}
    bad = [f"{a} -> {b}" for a, targets in graph.items() if a.startswith("steerwatch.cli.") and a not in shared
           and a != "steerwatch.cli.main" for b in targets if b.startswith("steerwatch.cli.") and b not in shared]
    assert bad == []


def _calls(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return sorted({str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                   for line in p.read_text(encoding="utf-8").split("\n")
                   if rx.search(line) and not line.lstrip().startswith(("#", '"', "``"))})


def test_one_generate_call_and_one_forward_helper():
    assert _calls(r"\.model\.generate\(") == ["runtime/session.py"]
    assert _calls(r"\b(lm|loaded|self\.loaded)\.model\(") == ["batch.py"]
