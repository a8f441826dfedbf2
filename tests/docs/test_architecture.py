"""The layout docs/architecture.md draws is the layout on disk, and it keeps its rules.

- "Rooms" lists every module of ``shards``, ``loader`` and ``server`` once, under its package;
- no module (the dashboard's scripts included) passes 400 lines, and ``loader/`` keeps at
  most 18 modules at its top level;
- every subpackage has an ``__all__``;
- no import cycle among project modules, counting imports under ``TYPE_CHECKING`` too (a
  cycle of types is a cycle of concepts).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shards", "loader", "server")
MAX_LINES = 400
MAX_LOADER_TOP = 18


def _modules() -> list[Path]:
    return sorted(
        p.relative_to(ROOT)
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if "static" not in p.parts
    )


def _listed() -> list[str]:
    """``package/module.py`` for every module line of the Rooms code block."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rooms = text[text.index("## Rooms") :]
    block = rooms[rooms.index("```\n") + 4 : rooms.index("\n```", rooms.index("```\n") + 4)]
    listed: list[str] = []
    package = ""
    for line in block.splitlines():
        header = re.match(r"^(\S+/)\s", line)
        entry = re.match(r"^\s{2}(\S+\.py)\s", line)
        if header:
            package = header.group(1)
        elif entry:
            listed.append(package + entry.group(1))
    return listed


def test_rooms_lists_every_module_once_under_its_package() -> None:
    listed = _listed()
    twice = sorted({m for m in listed if listed.count(m) > 1})
    assert not twice, f"listed more than once in docs/architecture.md: {twice}"
    actual = {str(p) for p in _modules() if p.name != "__init__.py"}
    assert not sorted(actual - set(listed)), (
        f"modules docs/architecture.md does not list: {sorted(actual - set(listed))}"
    )
    assert not sorted(set(listed) - actual), (
        f"docs/architecture.md lists modules that do not exist: {sorted(set(listed) - actual)}"
    )


def test_no_module_passes_400_lines() -> None:
    scripts = sorted(p.relative_to(ROOT) for p in (ROOT / "server" / "static").glob("*.js"))
    long = {
        str(p): n
        for p in [*_modules(), *scripts]
        if (n := len((ROOT / p).read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


def test_loader_top_level_holds_the_core_only() -> None:
    top = sorted(p.name for p in (ROOT / "loader").glob("*.py"))
    assert len(top) <= MAX_LOADER_TOP, (
        f"expected at most {MAX_LOADER_TOP} modules at loader/'s top level, got {len(top)}: "
        f"{top}; give the new concern a subpackage"
    )


def test_every_package_declares_its_public_api() -> None:
    missing = [
        str(p)
        for p in _modules()
        if p.name == "__init__.py"
        and "__all__" not in (ROOT / p).read_text()
        and "routes" not in p.parts
    ]
    assert not missing, f"packages without __all__: {missing}"


def _name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports, anywhere in it."""
    tree = ast.parse((ROOT / path).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in known:
                    found.add(full)
                elif node.module in known:
                    found.add(node.module)
    return found


def test_no_import_cycle_among_project_modules() -> None:
    modules = {_name(p): p for p in _modules()}
    known = set(modules)
    graph = {
        name: {m for m in _imports(path, known) if not name.startswith(m + ".")}
        for name, path in modules.items()
    }
    # a package's __init__ re-exporting its own modules is not a cycle with them
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_benchmark_table_shows_every_mode() -> None:
    from loader.bench.modes import MODES

    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Benchmark") :]
    rows = dict(re.findall(r"^\| `([\w-]+)` \| (yes|no) \|", section, flags=re.M))
    table = {mode.name: "yes" if mode.default else "no" for mode in MODES}
    assert rows == table, f"docs/architecture.md's bench table {rows} != MODES {table}"


def test_code_cites_only_what_the_repository_ships() -> None:
    pattern = re.compile(r"\bissue \d+|\bdesign section|\bsection \d+\b|design\.md", re.I)
    roots = [*PACKAGES, "tools", "tests"]
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for root in roots
        for path in sorted((ROOT / root).rglob("*"))
        if path.suffix in {".py", ".sh", ".js", ".html"} and path != Path(__file__)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "cite docs/architecture.md sections instead:\n" + "\n".join(found)
