"""Remote reads: ranged and streamed requests over fsspec, retried within a budget, a
node-local shard cache, and the counters every worker shares (docs/architecture.md,
"Remote reads")."""

from loader.remote.cache import ShardCache
from loader.remote.errors import RemoteReadError
from loader.remote.netstats import NetCounters
from loader.remote.options import RemoteOptions
from loader.remote.retry import RetryPolicy

__all__ = ["NetCounters", "RemoteOptions", "RemoteReadError", "RetryPolicy", "ShardCache"]
