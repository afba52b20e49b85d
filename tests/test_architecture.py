"""The shape of harness/ (docs/architecture.md): no import cycle, imports only downward through the
layers, small modules, MLflow and the engine's internals reached only through their owners."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "methods")
LONGEST = 300  # lines, every module of harness/ (the Trainer is in parts: harness/training/)
EXEMPT: set[str] = set()

# Each part of the harness has a layer; a module imports only from its own layer or lower ones:
# the CLI -> commands -> API -> ... -> training -> methods/models -> spec (docs/architecture.md).
LAYERS = {
    "harness": 0,  # the facade, as a target: provenance reads its __version__ (it is no importer, see import_graph)
    "harness.errors": 0,
    "harness.spec": 1,
    "harness.data": 2,
    "harness.models": 3,
    "methods": 4,
    "harness.training": 5,
    "harness.tracking": 6,
    "harness.running": 7,
    "harness.results": 8,
    "harness.tuning": 9,
    "harness.performance": 10,
    "harness.api": 11,
    "harness.commands": 12,
    "harness.cli": 13,
    "harness.__main__": 13,
}


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


def layer_of(module: str, layers: dict[str, int], exact: tuple[str, ...] = ("harness",)) -> int:
    """The layer of the longest entry of `layers` that is `module` or a package above it; an entry
    in `exact` names only itself (the facade's layer is not that of every module under harness/)."""
    owners = [name for name in layers if module == name or (name not in exact and module.startswith(name + "."))]
    if not owners:
        raise KeyError(f"{module} has no layer: give its package one in LAYERS")
    return layers[max(owners, key=len)]


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Every import of a module from a higher layer, as 'importer (layer) -> imported (layer)'."""
    return [f"{name} ({layer_of(name, layers)}) -> {dep} ({layer_of(dep, layers)})"
            for name in sorted(graph) for dep in sorted(graph[name])
            if layer_of(dep, layers) > layer_of(name, layers)]


def test_the_direction_checker_finds_an_upward_import():
    layers = {"app": 0, "app.low": 1, "app.high": 2, "app.high.top": 3}
    graph = {"app.high.top": {"app.high.mid", "app.low.base"}, "app.high.mid": {"app.low.base"},
             "app.low.base": {"app.high.mid", "app.low.util"}, "app.low.util": set()}
    assert upward_imports(graph, layers) == ["app.low.base (1) -> app.high.mid (2)"]
    assert upward_imports({"app.high.mid": {"app.low.base"}}, layers) == []
    assert layer_of("harness.spec.cells", LAYERS) == LAYERS["harness.spec"]
    with pytest.raises(KeyError, match="harness.newfolder.module has no layer"):
        layer_of("harness.newfolder.module", LAYERS)  # not the facade's layer 0


def test_every_module_has_a_layer():
    missing = []
    for name in import_graph():
        try:
            layer_of(name, LAYERS)
        except KeyError:
            missing.append(name)
    assert not missing, f"modules without a layer (add their package to LAYERS): {missing}"


def test_imports_go_only_downward():
    """CLI -> commands -> API -> performance -> tuning -> results -> running -> tracking -> training
    -> methods -> models -> data -> spec -> errors: no module imports from a layer above its own."""
    upward = upward_imports(import_graph(), LAYERS)
    assert not upward, "imports from a higher layer (importer (layer) -> imported (layer)):\n  " + "\n  ".join(upward)


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
    # MLflow: the tracking package (the store, its queries, the ledger transfer); the engine's internals:
    # the parts of the Trainer (harness/training/)
    owners = {str(p.relative_to(ROOT)) for folder in ("tracking", "training")
              for p in (ROOT / "harness" / folder).glob("*.py")}
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "harness").rglob("*.py"))
                 if str(p.relative_to(ROOT)) not in owners
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
