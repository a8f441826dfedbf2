"""README.md and docs/*.md name only things that exist.

Every backticked dotted name of ours (``loader.x.y``, ``shards.x``, ``server.x``), every
module or file path (``loader/x.py``, ``tools/x.sh``) and every ``--flag`` of a ``shardfeed``
command, in inline code and in code blocks, must resolve: a renamed function, a moved module or
a dropped flag fails here, naming the document, the line and the name.
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from server.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("loader", "shards", "server")
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_DOTTED = re.compile(r"\b((?:loader|shards|server)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_PATH = re.compile(r"(?<![\w./-])((?:loader|shards|server|tools|tests|docs)/[\w./-]*\w)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_MEMBER = re.compile(r"(?<![\w.])([A-Z]\w*)\.([a-z_]\w*)")
_CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\(")
# Calls of other libraries that the docs name bare: LitData's optimize, numpy's generators,
# math.ceil, torch's get_worker_info, webdataset's shard writer, the ``http`` fsspec protocol.
_FOREIGN_CALLS = {"PCG64", "SeedSequence", "ceil", "get_worker_info", "http", "optimize", "shard"}
# Names the docs give the user's own code (``fn(image)``, the transform a user passes) and the
# functions of their formulas (``floor(x / L)``, ``bound(parent)``).
_PLACEHOLDER_CALLS = {"bound", "floor", "fn", "round_half_up"}


def _snippets(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, in a code block) for each inline code span and code-block line."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            yield number, line, True
        else:
            for match in _INLINE.finditer(line):
                yield number, match.group(1), False


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` is a module of ours, or an attribute path from one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                # dataclass and NamedTuple fields are class annotations, not attributes
                fields = getattr(obj, "__annotations__", {})
                if name not in fields:
                    return False
                obj = object()
                continue
            obj = getattr(obj, name)
        return True
    return False


@cache
def _symbols() -> tuple[dict[str, type], set[str]]:
    """Our classes by name, and every name our modules define (module level and members)."""
    classes: dict[str, type] = {}
    names: set[str] = set()
    for package in PACKAGES:
        root = importlib.import_module(package)
        found = pkgutil.walk_packages(root.__path__, f"{package}.")
        for info in [None, *found]:
            name = package if info is None else info.name
            try:
                module = importlib.import_module(name)
            except ImportError:  # an optional extra (Ray, a peer) is not installed
                continue
            for attr, value in vars(module).items():
                names.add(attr)
                if inspect.isclass(value) and value.__module__.split(".")[0] in PACKAGES:
                    classes.setdefault(attr, value)
                    names.update(dir(value))
    return classes, names


def _member_exists(cls: type, attr: str) -> bool:
    """A class attribute, a field, or an attribute its methods set on ``self``."""
    if hasattr(cls, attr) or attr in getattr(cls, "__annotations__", {}):
        return True
    try:
        return re.search(rf"\bself\.{re.escape(attr)}\b", inspect.getsource(cls)) is not None
    except (OSError, TypeError):
        return False


@cache
def _commands() -> dict[str, set[str]]:
    """Every ``shardfeed`` subcommand's option strings."""
    parser = build_parser()
    flags: dict[str, set[str]] = {}
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                flags[name] = {o for a in sub._actions for o in a.option_strings}
    top = {o for a in parser._actions for o in a.option_strings}
    return {name: opts | top for name, opts in flags.items()}


def _shardfeed_flags(text: str) -> Iterator[tuple[str | None, str]]:
    """(command or None, flag) for the flags of ``shardfeed`` commands in ``text``: the flags
    after ``shardfeed CMD`` up to the end of that command (a pipe, ``&&``, ``;``), or a lone
    ``--flag`` (command unknown)."""
    for segment in re.split(r"\|\||&&|[|;]", text):
        words = segment.split()
        if "shardfeed" in words:
            at = words.index("shardfeed")
            rest = words[at + 1 :]
            command = next((w for w in rest if not w.startswith("-")), None)
            for word in rest:
                for flag in _FLAG.findall(word.split("=", 1)[0]):
                    yield command, flag
        elif len(words) == 1 and _FLAG.fullmatch(words[0].split("=", 1)[0]):
            yield None, words[0].split("=", 1)[0]


def _problems(path: Path, root: Path = ROOT) -> list[str]:
    commands = _commands()
    every_flag = set().union(*commands.values())
    found: list[str] = []
    for number, text, fenced in _snippets(path):
        where = f"{path.relative_to(root)}:{number}"
        for dotted in _DOTTED.findall(text):
            if fenced and not re.search(rf"(import|from)\s+{re.escape(dotted)}", text):
                continue  # inside code, only imports name our modules for sure
            if not resolves(dotted):
                found.append(f"{where}: `{dotted}` does not resolve")
        if not fenced:
            classes, names = _symbols()
            for owner, attr in _MEMBER.findall(text):
                if owner in classes and not _member_exists(classes[owner], attr):
                    found.append(f"{where}: `{owner}.{attr}` does not exist")
            for call in _CALL.findall(text):
                known = (
                    call in names
                    or hasattr(builtins, call)
                    or call in _FOREIGN_CALLS | _PLACEHOLDER_CALLS
                )
                if not known:
                    found.append(f"{where}: `{call}()` is not defined anywhere")
            for rel in _PATH.findall(text):
                if not (ROOT / rel.rstrip("/")).exists():
                    found.append(f"{where}: `{rel}` does not exist")
        for command, flag in _shardfeed_flags(text):
            known = commands.get(command or "", every_flag) if command else every_flag
            if command is not None and command not in commands:
                found.append(f"{where}: `shardfeed {command}` is not a command")
            elif flag not in known:
                found.append(f"{where}: `{flag}` is not a flag of shardfeed {command or ''}")
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_name_in_the_docs_exists(path: Path) -> None:
    problems = _problems(path)
    assert not problems, "\n".join(problems)


def test_a_stale_name_is_caught(tmp_path: Path) -> None:
    doc = tmp_path / "stale.md"
    doc.write_text(
        "Use `loader.plan.partition.plan_rank` and `loader.dataset.no_such_function`,\n"
        "`ShardDataset.set_epoch`, `ShardDataset._shuffled`, `finite()`, `make_loader(x)`,\n"
        "see `loader/plan/partition.py` and `loader/gone.py`.\n"
        "```\nshardfeed bench --workers 2 --no-such-flag\n```\n"
        "and `shardfeed shard --num-shards 4`, `--not-a-flag`, `shardfeed nocommand --x`.\n"
    )
    problems = [p.split(": ", 1)[1] for p in _problems(doc, root=tmp_path)]
    assert problems == [
        "`loader.dataset.no_such_function` does not resolve",
        "`ShardDataset._shuffled` does not exist",
        "`finite()` is not defined anywhere",
        "`loader/gone.py` does not exist",
        "`--no-such-flag` is not a flag of shardfeed bench",
        "`--not-a-flag` is not a flag of shardfeed ",
        "`shardfeed nocommand` is not a command",
    ]
