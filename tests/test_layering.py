"""The package's import graph: every module-level import goes to the same or a lower floor, and there is no cycle,
counting the imports inside functions too (a function-local import back is a circle all the same)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mta_moe"
# floors, lowest first: a module may import its own floor and those below at import time
FLOORS = [
    {"config", "metrics", "logs", "collectives", "files", "names", "deepspeed_keys", "hub_format", "config_files", "typed_config"},
    {"modeling", "data"},
    {"evaluation", "merging", "auto_registration"},
    {"training"},
    {"experiments"},
    {"cli", "__main__"},
]
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, inside_functions: bool = False) -> set[str]:
    """mta_moe modules imported by ``path`` when it is imported, or (``inside_functions``) anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in _runtime_nodes(tree) if inside_functions else tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mta_moe"):
                found.add(target)
                if not node.module:  # "from . import x": the module x
                    found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mta_moe"))
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _graph(inside_functions: bool = False) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, inside_functions) for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_a_higher_floor():
    units = {_unit(m) for m in _graph()} - {None}
    assert units <= set(FLOOR), f"place these in FLOORS: {sorted(units - set(FLOOR))}"
    upward = [(m, t) for m, targets in _graph().items() for t in targets if _unit(m) and _unit(t) and FLOOR[_unit(t)] > FLOOR[_unit(m)]]
    assert upward == []


def test_no_import_cycle_between_modules():
    graph = _graph(inside_functions=True)
    modules = set(graph)

    def resolve(target: str) -> str | None:  # "mta_moe.modeling.layer" or a name imported from a package
        while target and target not in modules:
            target = target.rsplit(".", 1)[0] if "." in target else ""
        return target or None

    edges = {m: {r for t in targets if (r := resolve(t)) and r != m and not m.startswith(r + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if nxt not in state and visit(nxt, path + [node]):
                return True
        state[node] = 2
        return False

    assert not any(visit(m, []) for m in sorted(modules) if m not in state), cycle


def test_the_check_sees_imports():
    """Guard against a vacuous pass: the graph has the edges we know of."""
    graph = _graph()
    assert "mta_moe.config" in graph["mta_moe.modeling.layer"]
    assert any(t.startswith("mta_moe.modeling") for t in graph["mta_moe.training.setup"])
    local = _graph(inside_functions=True)  # an import inside a function only
    assert "mta_moe.modeling" not in graph["mta_moe.auto_registration"]
    assert "mta_moe.modeling" in local["mta_moe.auto_registration"]


def test_the_run_is_built_then_trained_top_to_bottom():
    """setup.py builds a plain Run and trainer.py trains it: no class in either (no base class whose methods live
    in a subclass), setup imports nothing of the loop, and the whole training step is in trainer.py."""
    setup_tree = ast.parse((PACKAGE / "training" / "setup.py").read_text(encoding="utf-8"))
    trainer_tree = ast.parse((PACKAGE / "training" / "trainer.py").read_text(encoding="utf-8"))
    classes = {n.name for tree in (setup_tree, trainer_tree) for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes <= {"_Parts", "StepTensors", "DivergedError"}, classes  # plain records and an error only
    assert not any(isinstance(n, ast.ClassDef) and n.bases for n in setup_tree.body)
    assert "mta_moe.training.trainer" not in _imports(PACKAGE / "training" / "setup.py", inside_functions=True)
    steps = {n.name for n in trainer_tree.body if isinstance(n, ast.FunctionDef)}
    assert {"train", "train_step", "validate"} <= steps
