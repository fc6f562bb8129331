"""The package imports one way: each layer of docs/architecture.md imports only from its own
layer and the layers below it, and no two modules import each other, however indirectly.

Read from the source (every import statement, function-level and TYPE_CHECKING ones included),
so nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"
LAYERS = (
    ("core",),
    ("telemetry",),
    ("engine",),
    ("features", "quality", "model", "monitoring", "report", "datasets", "registry"),
    ("stages",),
    ("predict",),
    ("commands", "__main__"),
)
"""Bottom to top: the config and the data's vocabulary; OpenTelemetry; the engine (stage
contract, DAG, runner, artifact store, code versions, Ray helpers); what the stages are built
from (the window kernel, validation rules, the model, drift, the report, the synthetic tables,
the registry); the stages; batch prediction; the commands users type."""


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    base = _module(path).split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parent = base[:len(base) - node.level + 1] if node.level else []
            found.add(".".join([*parent, *(node.module.split(".") if node.module else [])]))
    return {name for name in found if name.split(".")[0] == "pipeline"}


def _graph() -> dict[str, set[str]]:
    modules = {_module(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported not in modules and "." in imported:  # `from a.b import name`
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    for index, names in enumerate(LAYERS):
        if part in names:
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: give it one (docs/architecture.md)")


def test_every_module_has_a_layer_and_imports_only_downwards():
    upward = [f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
              for module, targets in _graph().items() if module != "pipeline"
              for target in targets if target != "pipeline" and _layer(target) > _layer(module)]
    assert not upward, "imports that run up a layer:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_through_others():
    graph = _graph()
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
