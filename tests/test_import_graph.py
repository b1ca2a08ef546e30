"""The package's modules import each other without a cycle, counting the imports made inside functions too: a cycle
works only as long as every lazy import in it stays lazy, and makes the modules impossible to read one at a time.

The scripts of benchmarks/ and examples/ (each folder's modules import one another by bare name) share code in one
direction only: benchmarks may import the shared modules of examples/, examples import nothing of benchmarks/, and
no cycle runs through them."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "optimum_multipruner"
SCRIPT_FOLDERS = ("benchmarks", "examples")


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


def script_graph(root: Path, folders: tuple[str, ...] = SCRIPT_FOLDERS) -> dict[str, set[str]]:
    """`folder/module` -> the modules of `folders` it imports anywhere in its source, by bare name (a script finds its
    own folder's modules, and those of another folder put on `sys.path`)."""
    owners = {path.stem: f"{folder}/{path.stem}" for folder in folders for path in sorted((root / folder).glob("*.py"))}
    graph = {}
    for name in owners.values():
        targets = set()
        for node in ast.walk(ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {owners[alias.name] for alias in node.names if alias.name in owners}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module in owners:
                targets.add(owners[node.module])
        graph[name] = targets - {name}
    return graph


def test_benchmarks_and_examples_share_code_one_way_without_a_cycle():
    graph = script_graph(ROOT)
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)
    upward = sorted(f"{module} -> {target}" for module, targets in graph.items() if module.startswith("examples/")
                    for target in targets if target.startswith("benchmarks/"))
    assert not upward, f"examples import benchmarks (share code through examples/ instead): {upward}"
    assert any(target.startswith("examples/") for module, targets in graph.items() if module.startswith("benchmarks/")
               for target in targets)  # the graph sees the benchmarks' imports of examples/


def test_a_script_importing_the_other_folder_is_found(tmp_path):
    for folder, text in (("benchmarks", "import helper\n"), ("examples", "def run():\n    import speed\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / ("speed.py" if folder == "benchmarks" else "helper.py")).write_text(text)
    assert script_graph(tmp_path) == {"benchmarks/speed": {"examples/helper"}, "examples/helper": {"benchmarks/speed"}}
    assert find_cycle(script_graph(tmp_path)) == ["benchmarks/speed", "examples/helper", "benchmarks/speed"]
