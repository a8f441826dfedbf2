"""The ``shardfeed`` console script: one parser, subcommands registered by the part owning them.

Each part's ``cli.register(subparsers)`` adds its subcommands with ``set_defaults(func=...)``;
a handler takes the parsed ``argparse.Namespace`` and returns the exit code. Errors a user can
fix (``ValueError`` and any ``OSError``: a missing file, a permission error, a full disk)
become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from server import doctor

__all__ = ["build_parser", "main"]

log = logging.getLogger("shardfeed")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; for a command of the shard builder or the loader, only the parts it needs
    are loaded.

    ``shardfeed shard`` then starts without importing torch or the web stack (faster start,
    about 300 MB less memory in a build), ``shardfeed doctor`` without any part (it imports what
    it checks inside its probes, so a broken install cannot stop it), ``shardfeed train`` and
    ``bench`` without the web stack (a training node needs no FastAPI); any other command, or
    none, loads every part.
    """
    parser = argparse.ArgumentParser(
        prog="shardfeed",
        description="Build tar shards from an image folder and stream them, exactly once.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doctor.register(sub)
    if command == doctor.COMMAND:
        return parser
    from shards import cli as shards_cli

    shards_cli.register(sub)
    if command in shards_cli.COMMANDS:
        return parser
    from loader.bench import cli as bench_cli
    from loader.train import cli as train_cli

    bench_cli.register(sub)
    train_cli.register(sub)
    if command not in (bench_cli.COMMAND, train_cli.COMMAND):
        from server import _serve_cli, demo

        _serve_cli.register(sub)
        demo.register_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Redact())
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write("shardfeed: interrupted\n")
        return 130
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"shardfeed {args.command}: error: {_redact(str(exc))}\n")
        return 2
    return code


def _redact(text: str) -> str:
    """``loader.remote.redact.redact``, imported only for a text holding a URL (a command that
    never meets one, such as ``shard``, does not load the loader)."""
    if "://" not in text:
        return text
    from loader.remote.redact import redact

    return redact(text)


class _Redact(logging.Filter):
    """Every log line of the CLI's handlers, its URLs' secrets hidden (``_redact``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = _redact(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


if __name__ == "__main__":
    sys.exit(main())
