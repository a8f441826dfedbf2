"""``RemoteOptions``: how readers reach remote shards (retry, counters, cache, read-ahead).

One object per dataset, pickled into every worker; the cache it names is shared by every
process of the node through the file system (docs/architecture.md, "Remote reads").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loader._errors import MissingShardError
from loader.remote.files import RemoteFile, checked_size, pinned
from loader.remote.retry import RetryPolicy

if TYPE_CHECKING:
    from loader.remote.cache import CachedFile, ShardCache
    from loader.remote.netstats import NetCounters

__all__ = ["RemoteOptions"]


@dataclass(frozen=True)
class RemoteOptions:
    """How a reader reaches remote shards: the retry policy of every request, the shared
    counters they are counted in, the node-local ``cache`` (``None``: ranged reads straight
    from the source), and whether the next chunk of a ranged read is fetched in the
    background while the current one is consumed (``readahead``)."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    counters: NetCounters | None = None
    cache: ShardCache | None = None
    readahead: bool = True

    @classmethod
    def build(
        cls,
        *,
        retry: RetryPolicy | None,
        cache_dir: str | os.PathLike[str] | None,
        cache_limit: int | None,
        counters: NetCounters | None,
        readahead: bool = True,
    ) -> RemoteOptions:
        """The options ``ShardDataset``'s arguments describe (``ValueError`` for bad ones)."""
        from loader.remote.cache import ShardCache

        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValueError(f"expected a RetryPolicy or None, got retry={retry!r}")
        if cache_limit is not None and cache_dir is None:
            raise ValueError(f"expected cache_dir with cache_limit, got cache_limit={cache_limit}")
        cache = None
        if cache_dir is not None:
            cache = ShardCache(os.fspath(cache_dir), limit=cache_limit)
        return cls(retry or RetryPolicy(), counters, cache, readahead)

    def remote_file(self, url: str, latency_s: float = 0.0) -> RemoteFile:
        """``url`` reached with these options' retry policy and counters."""
        return RemoteFile(url, latency_s=latency_s, retry=self.retry, counters=self.counters)

    def cached(
        self,
        url: str,
        latency_s: float,
        size: int | None,
        sha256: str | None,
        validator: str | None,
        *,
        own: bool = True,
    ) -> CachedFile:
        """The cached copy of ``url``, trusted only under ``size``, ``sha256`` and
        ``validator`` (``loader.remote.cache``). When ``validator`` is ``url``'s own (``own``;
        an index is cached under its shard's) and the server's, a download is checked against
        the server afterwards: a file rewritten meanwhile is refused. A file of its own with
        neither ``sha256`` nor ``validator`` (a manifest entry without checksum) is first asked
        for its validator (one HEAD). ``MissingShardError`` when it does not exist."""
        cache = self.cache
        if cache is None:
            raise ValueError(f"expected a cache_dir to cache {url} in, got none")
        if own and sha256 is None and validator is None:
            probe = self.remote_file(url, latency_s)
            checked_size(probe, size)
            validator = probe.validator

        def verify(remote: RemoteFile) -> None:
            checked_size(remote, size, validator)

        try:
            return cache.open(
                self.remote_file(url, latency_s),
                size=size,
                sha256=sha256,
                validator=validator,
                verify=verify if own and pinned(validator) else None,
                counters=self.counters,
            )
        except FileNotFoundError:
            raise MissingShardError(f"shard file {url} not found") from None
