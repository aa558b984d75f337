"""The package's structure (DESIGN.md section 1, house style): every module of ``awb_dagster`` is
parsed with ``ast``, function-local and ``TYPE_CHECKING`` imports included, and

- no two modules import each other, directly or through others (no import cycle);
- no layer imports a layer above it: registry < plates < instruments < provenance < atlas <
  engine < resources < assets < definitions < runner/cli/demo (a module may import its own
  layer and every layer before it); the base modules (:data:`BASE`) are importable by all and
  import no layer;
- the Dagster-free layers and the base modules never import ``dagster`` (or ``dagster_*``);
- no module is over :data:`MAX_LINES` lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "awb_dagster"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 400

# Importable by every layer; they import nothing of the project but each other.
BASE = frozenset(f"{PACKAGE}.{name}" for name in ("constants", "paths", "atomic", "hashing", "locking")) | {PACKAGE}

# Lowest first: a module may import its own layer and the layers before it.
LAYERS = (
    "registry", "plates", "instruments", "provenance", "atlas", "engine",
    "resources", "assets", "definitions", "top",
)  # fmt: skip
DAGSTER_FREE = frozenset({"registry", "plates", "instruments", "provenance", "atlas", "engine"})

# Module (or package) name -> layer; the longest matching prefix wins.
LAYER_OF = {
    f"{PACKAGE}.registry": "registry",
    f"{PACKAGE}.plates": "plates",
    f"{PACKAGE}.instruments": "instruments",
    f"{PACKAGE}.provenance": "provenance",
    f"{PACKAGE}.atlas": "atlas",
    f"{PACKAGE}.engine": "engine",
    f"{PACKAGE}.producers": "engine",  # what each family supplies to the engine
    f"{PACKAGE}.resources": "resources",
    # The Dagster instance of a home (its storage classes and embedded PostgreSQL server): set-up
    # beside the resources, used by the commands that open a home.
    f"{PACKAGE}.instance": "resources",
    f"{PACKAGE}.instance_server": "resources",
    f"{PACKAGE}.instance_storage": "resources",
    f"{PACKAGE}.run_workers": "resources",  # which process executes a run, and is it alive
    f"{PACKAGE}.run_launcher": "resources",  # the instances' run launcher (worker health)
    f"{PACKAGE}.partitions": "assets",  # the assets' partition definitions and key helpers
    f"{PACKAGE}.assets": "assets",
    f"{PACKAGE}.definitions": "definitions",
    f"{PACKAGE}.runner": "top",
    f"{PACKAGE}.cli": "top",
    f"{PACKAGE}.ui_process": "top",  # `awb ui`'s dagster dev process group
    f"{PACKAGE}.commands": "top",
    f"{PACKAGE}.demo": "top",
}


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    imported: str  # module name (a package's __init__ goes by the package name)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_of(name: str, path: Path) -> Iterator[Import]:
    """Every import statement of the module, wherever it is (module level, function, class,
    ``if TYPE_CHECKING``), as module names; ``from package import submodule`` names the
    submodule too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield Import(name, target, node.lineno)
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    yield Import(name, f"{target}.{alias.name}", node.lineno)


IMPORTS = [found for name, path in MODULES.items() for found in imports_of(name, path)]
PROJECT_IMPORTS = [found for found in IMPORTS if found.imported in MODULES and found.imported != found.importer]


def layer_of(name: str) -> str | None:
    if name in BASE:
        return "base"
    matches = [prefix for prefix in LAYER_OF if name == prefix or name.startswith(prefix + ".")]
    return LAYER_OF[max(matches, key=len)] if matches else None


def where(found: Import) -> str:
    return f"{MODULES[found.importer].relative_to(PACKAGE_DIR.parent)}:{found.line}"


def test_every_module_has_a_layer():
    missing = sorted(name for name in MODULES if layer_of(name) is None)
    assert not missing, f"modules without a layer: {missing}; add them to LAYER_OF in {__file__}"


def test_no_layer_imports_a_layer_above_it():
    broken = []
    for found in PROJECT_IMPORTS:
        importer, imported = layer_of(found.importer), layer_of(found.imported)
        if imported == "base" or importer is None or imported is None:
            continue
        if importer == "base" or LAYERS.index(imported) > LAYERS.index(importer):
            broken.append(f"{where(found)}: {found.importer} ({importer}) imports {found.imported} ({imported})")
    assert not broken, "imports up the layers (DESIGN.md section 1):\n" + "\n".join(broken)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative, so depth is unbounded)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def test_no_import_cycles():
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for found in PROJECT_IMPORTS:
        graph[found.importer].add(found.imported)
    cycles = [
        sorted(component)
        for component in strongly_connected(graph)
        if len(component) > 1
    ]
    lines = {(f.importer, f.imported): where(f) for f in PROJECT_IMPORTS}
    described = [
        ", ".join(f"{a} -> {b} ({lines[a, b]})" for a in cycle for b in cycle if (a, b) in lines) for cycle in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_dagster_free_layers_never_import_dagster():
    broken = [
        f"{where(found)}: {found.importer} imports {found.imported}"
        for found in IMPORTS
        if (layer_of(found.importer) in DAGSTER_FREE or layer_of(found.importer) == "base")
        and found.imported.split(".")[0].split("_")[0] == "dagster"
    ]
    assert not broken, "Dagster in a Dagster-free layer:\n" + "\n".join(broken)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    path = MODULES[name]
    relative = path.relative_to(PACKAGE_DIR).as_posix()
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{relative} has {lines} lines; split it by concern (at most {MAX_LINES})"


def test_the_checker_sees_function_local_imports(tmp_path):
    """The parser reports imports inside functions and TYPE_CHECKING blocks, resolved relative
    imports included (the hidden ones are the ones this test exists for)."""
    package = tmp_path / PACKAGE / "instruments"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    module = package / "probe.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from awb_dagster.assets import x\n"
        "def f():\n    from ..provenance import records\n    import dagster\n"
    )
    found = {(i.imported, i.line) for i in imports_of(f"{PACKAGE}.instruments.probe", module)}
    assert {("awb_dagster.assets", 3), ("awb_dagster.provenance", 5), ("dagster", 6)} <= found
