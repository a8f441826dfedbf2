"""Inside a DataLoader worker: the epoch's batch stream, the readers kept open across epochs
and the shared-memory buffers batches are built in (docs/architecture.md, "Data flow").

``loader.worker.stream`` is imported on its own (it needs ``loader.batch``, which needs the
pools): this package's import stays light."""

from loader.worker.pools import ImagePool
from loader.worker.reuse import Reuse

__all__ = ["ImagePool", "Reuse"]
