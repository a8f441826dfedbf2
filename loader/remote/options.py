"""``RemoteOptions``: how readers reach remote shards (retry, counters, cache, read-ahead).

One object per dataset, pickled into every worker; the cache it names is shared by every
process of the node through the file system (docs/architecture.md, "Remote reads").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loader.remote.retry import RetryPolicy

if TYPE_CHECKING:
    from loader.remote.cache import ShardCache
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
