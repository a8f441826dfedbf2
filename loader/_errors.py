"""The errors of reading shards, local or remote: the reader (``loader.reader``) and the remote
layer (``loader.remote``, whose own ``RemoteReadError`` subclasses ``ShardReadError``) raise
these types."""

from __future__ import annotations

__all__ = ["MissingShardError", "ShardReadError"]


class ShardReadError(ValueError):
    """A shard that cannot be read as its source promises; the message names the shard URL
    (and the member or byte offset where known), its secrets redacted
    (``loader.remote.redact``)."""

    def __init__(self, *args: object) -> None:
        from loader.remote.redact import redact  # loader.remote imports this module

        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class MissingShardError(ShardReadError, FileNotFoundError):
    """The shard file does not exist."""
