"""No import cycles: among the Python modules of `pearl_pipelines` and `review_app`, and among the front-end's
`review_app/frontend/src/*.ts` files.

A cycle is how a "small" module ends up needing the whole app: it forces deferred imports to dodge it and makes
every module of the cycle load (and test) together. The graphs are read from the sources, nothing is imported:
Python imports anywhere in a file count (module level and inside functions), except under `if TYPE_CHECKING:`;
TypeScript `import ... from "./x"`, `export ... from "./x"` and `import("./x")` count, `import type` does not.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pearl_pipelines", "review_app")
FRONTEND_SRC = ROOT / "review_app" / "frontend" / "src"

Graph = Mapping[str, set[str]]


# -- cycle search -------------------------------------------------------------------------------------------------
def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle per strongly connected component of more than one node (Tarjan), as a closed path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth = longest import chain: a few dozen here
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """A shortest closed path from the component's first node back to itself, inside the component (BFS)."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, set()) & component):
                if nxt == start:  # walk back from `node` to the start
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle in {component}")  # a strongly connected component of 2+ nodes always has one


def describe(cycles: Iterable[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in cycles)


# -- Python -------------------------------------------------------------------------------------------------------
def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement of the tree, skipping the bodies of `if TYPE_CHECKING:` (their `else:` still runs)."""
    if isinstance(tree, ast.If) and _is_type_checking(tree.test):
        for child in tree.orelse:
            yield from _imports(child)
        return
    if isinstance(tree, ast.Import | ast.ImportFrom):
        yield tree
    for child in ast.iter_child_nodes(tree):
        yield from _imports(child)


def _known(name: str, modules: set[str]) -> str | None:
    """`name` if it is one of ours, else its nearest enclosing module or package that is."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def python_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    files = {module_name(p, root): p for package in packages for p in (root / package).rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(t for alias in node.names if (t := _known(alias.name, modules)))
                continue
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pkg import mod` imports pkg.mod; `from mod import name` imports mod
                full = f"{base}.{alias.name}"
                if (target := full if full in modules else _known(base, modules)) is not None:
                    targets.add(target)
        graph[name] = targets - {name}
    return graph


# -- TypeScript ---------------------------------------------------------------------------------------------------
_TS_STATIC = re.compile(
    r"^\s*(?:import|export)\s+(?!type\b)(?:[^;]*?\s+from\s+)?[\"'](\.{1,2}/[^\"']+)[\"']", re.M | re.S
)
# import("./x") as a value (awaited, or `.then`); `import("./x").Type` is a type position and is erased.
_TS_DYNAMIC = re.compile(r"\bimport\(\s*[\"'](\.{1,2}/[^\"']+)[\"']\s*\)(?!\s*\.\s*(?!then\b)[A-Za-z_$])")


def typescript_graph(src: Path = FRONTEND_SRC) -> dict[str, set[str]]:
    files = {p.stem: p for p in src.glob("*.ts") if not p.name.endswith(".d.ts")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        text = path.read_text()
        specs = _TS_STATIC.findall(text) + _TS_DYNAMIC.findall(text)
        targets = {Path(spec).stem for spec in specs if spec.startswith("./") and "/" not in spec[2:]}
        graph[name] = (targets & set(files)) - {name}
    return graph


# -- the checker checks -------------------------------------------------------------------------------------------
def test_cycle_search_finds_a_cycle_and_prints_it() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(find_cycles(graph)) == "a -> b -> c -> a"
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_python_imports_are_read_as_the_interpreter_runs_them(tmp_path: Path) -> None:
    sources = {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nfrom pkg import b\nif TYPE_CHECKING:\n    from pkg.c import X\n",
        "pkg/b.py": "def f():\n    from .c import X\n",  # inside a function, relative
        "pkg/c.py": "import pkg.sub.d\n",
        "pkg/sub/__init__.py": "from .d import Y\n",
        "pkg/sub/d.py": "import os\nfrom ..a import Z\n",
    }
    for name, text in sources.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = python_graph(tmp_path, ["pkg"])
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},  # the TYPE_CHECKING import of pkg.c does not count
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg.sub.d"},
        "pkg.sub": {"pkg.sub.d"},
        "pkg.sub.d": {"pkg.a"},
    }
    assert describe(find_cycles(graph)) == "pkg.a -> pkg.b -> pkg.c -> pkg.sub.d -> pkg.a"


def test_typescript_imports_are_read(tmp_path: Path) -> None:
    (tmp_path / "a.ts").write_text(
        'import { x, type Y } from "./b";\nimport type { Z } from "./c";\nimport "./d";\n'
        'export { w } from "./e";\nconst m = await import("./f");\nlet t: import("./c").Z;\n'
    )
    for name in "bcdef":
        (tmp_path / f"{name}.ts").write_text("")
    assert typescript_graph(tmp_path)["a"] == {"b", "d", "e", "f"}


# -- the project ----------------------------------------------------------------------------------------------------
def test_no_python_import_cycles() -> None:
    cycles = find_cycles(python_graph())
    assert not cycles, f"import cycles among {', '.join(PACKAGES)}:\n{describe(cycles)}"


def test_no_frontend_import_cycles() -> None:
    graph = typescript_graph()
    assert {"main", "map", "actions"} <= set(graph)  # the sources were found
    cycles = find_cycles(graph)
    assert not cycles, f"import cycles among review_app/frontend/src/*.ts:\n{describe(cycles)}"
