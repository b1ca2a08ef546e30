"""The package's modules import each other without a cycle, counting the imports made inside functions too: a cycle
works only as long as every lazy import in it stays lazy, and makes the modules impossible to read one at a time."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "optimum_multipruner"


def module_files(package: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's `__init__.py`)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def imported_modules(name: str, is_package: bool, node: ast.stmt, known: set[str]) -> set[str]:
    """The package modules an `import` / `from ... import` statement of module `name` imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & known
    here = name.split(".") if is_package else name.split(".")[:-1]
    parts = here[: len(here) - node.level + 1] if node.level else []
    base = ".".join(parts + ([node.module] if node.module else []))
    return ({base} | {f"{base}.{alias.name}" for alias in node.names}) & known


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source. Imports of a module's own parent packages
    are left out: Python imports those before the module itself, so they cannot close a cycle."""
    modules = module_files(package)
    graph = {}
    for name, (path, is_package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets |= imported_modules(name, is_package, node, set(modules))
        graph[name] = {target for target in targets if target != name and not name.startswith(target + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle `[a, b, ..., a]`, or `[]`."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once explored
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = "done"
        return []

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return []


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE))
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_a_lazy_import_that_closes_a_cycle_is_found(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text("from .sub import helper\nA = 1\n")
    (package / "sub" / "__init__.py").write_text("from .helper import run\n")
    (package / "sub" / "helper.py").write_text("from .. import a  # parent package: no edge\n\n"
                                               "def run():\n    from ..a import A\n    return A\n")
    assert find_cycle(import_graph(package)) == ["pkg.a", "pkg.sub", "pkg.sub.helper", "pkg.a"]
    (package / "sub" / "helper.py").write_text("def run():\n    return 1\n")
    assert find_cycle(import_graph(package)) == []
