"""The dependency rules of DESIGN §13 / STYLE, read from the source (module-level and
function-level imports alike; ``if TYPE_CHECKING:`` blocks excluded): no import cycles;
``workers.unlearning`` imports nothing of the project; ``service`` imports no ``workers`` but the
torch-free method configs; ``workers.execution`` issues no SQL of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "workers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (a ``from pkg import mod`` names the module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.add(sub if sub in known else mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in out if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(path, name, set(mods)) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_graph_sees_function_level_imports_but_not_type_checking_ones(graph):
    # the old run <-> publish cycle hid behind an import inside a function
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import service.core.db\ndef f():\n    from service.models import Job\n"
    assert _imports_from_source(src, "service.x", set(graph)) == {"service.models"}


def _imports_from_source(src: str, name: str, known: set[str]) -> set[str]:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    try:
        return _imports(Path(f.name), name, known)
    finally:
        Path(f.name).unlink()


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_cycle_detection_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_workers_unlearning_imports_nothing_of_the_project(graph):
    bad = {m: sorted(d for d in deps if not d.startswith("workers.unlearning")) for m, deps in graph.items() if m.startswith("workers.unlearning")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_service_imports_only_the_torch_free_method_configs_of_workers(graph):
    def allowed(dep: str) -> bool:
        return dep == "workers.unlearning.methods" or (dep.startswith("workers.unlearning.methods.") and dep.endswith(".config"))

    bad = {m: sorted(d for d in deps if d.startswith("workers") and not allowed(d)) for m, deps in graph.items() if m.startswith("service")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_runner_names_no_method(graph):
    """The runner dispatches on the registry: it imports no method's module nor its model class."""
    deps = graph["workers.execution.run"]
    assert not any(d.startswith("workers.unlearning.methods.mixed_linear") or d == "workers.unlearning.linearized" for d in deps)
    assert "MixedLinear" not in (ROOT / "workers/execution/run.py").read_text()


def test_execution_writes_no_rows_of_its_own(graph):
    """``workers.execution`` computes and calls the domains' services; it builds no SQL itself."""
    for path in (ROOT / "workers" / "execution").glob("*.py"):
        tree = ast.parse(path.read_text())
        sql = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("sqlalchemy")]
        assert sql == [], f"{path.name} imports sqlalchemy"


# Modules of service.core still allowed to import the models: none (tokens moved to service.client).
CORE_PENDING: set[str] = set()


def test_service_core_imports_nothing_of_the_models(graph):
    assert any(m.startswith("service.core") for m in graph)  # the rule looks at real modules
    bad = {m: sorted(d for d in deps if d.startswith("service.models"))
           for m, deps in graph.items() if m.startswith("service.core") and m not in CORE_PENDING}
    assert {m: d for m, d in bad.items() if d} == {}


def test_the_models_import_nothing_of_core(graph):
    bad = {m: sorted(d for d in deps if d.startswith("service.core")) for m, deps in graph.items() if m.startswith("service.models")}
    assert {m: d for m, d in bad.items() if d} == {}
