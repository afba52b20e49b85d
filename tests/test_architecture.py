"""The shape of harness/ (docs/architecture.md): no import cycle, small modules, MLflow and the
engine's internals reached only through their owners."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "methods")
LONGEST = 300  # lines, every module of harness/ (the Trainer is in parts: harness/training/)
EXEMPT: set[str] = set()


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def imported(path: Path, modules: dict) -> set[str]:
    """The project modules `path` imports, at module level or inside functions; not what it names
    only for type checkers (`if TYPE_CHECKING:`)."""
    found = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                self.generic_visit(node)

        def visit_Import(self, node):
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
            found.update(submodules or {node.module})

    Visitor().visit(ast.parse(path.read_text()))
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    # harness/__init__.py is the public facade: it loads harness.api lazily, on attribute access, for
    # users; no module of the package imports the facade for that, so it is left out as an importer.
    return {name: imported(path, modules) - {name} for name, path in modules.items() if name != "harness"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_methods_do_not_reach_into_the_harness_beyond_spec_and_errors():
    """A method knows its contract (methods/base.py), not the engine or the runner."""
    allowed = {"harness.errors", "harness.spec.spec", "harness.spec.cells", "harness.spec.schema"}
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("methods"):
            assert {d for d in deps if d.startswith("harness")} <= allowed, name


def test_modules_stay_small():
    too_long = {str(p.relative_to(ROOT)): n for p in (ROOT / "harness").rglob("*.py")
                if (n := len(p.read_text().splitlines())) > LONGEST and str(p.relative_to(ROOT)) not in EXEMPT}
    assert not too_long, too_long


def test_mlflow_and_the_engine_internals_have_one_owner():
    pattern = re.compile(r"tracker\.client|_autocast|_train_step|import mlflow|from mlflow")
    # MLflow: the tracking module; the engine's internals: the parts of the Trainer (harness/training/)
    owners = {"harness/tracking/tracking.py"} | {str(p.relative_to(ROOT))
                                                 for p in (ROOT / "harness" / "training").glob("*.py")}
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "harness").rglob("*.py"))
                 if str(p.relative_to(ROOT)) not in owners
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
