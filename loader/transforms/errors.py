"""The errors of user transforms: a recipe's bug, never a bad sample (docs/architecture.md,
"Transforms").

An exception inside a per-sample transform, or outputs that cannot be stacked into one batch,
raise ``TransformError`` under every bad-sample policy: skipping would silently train on a
recipe that fails for some inputs. The batch builder knows only the sample's id, so it raises
``UnplacedTransformError``; the worker's stream, which knows the shard and member, turns it
into a ``TransformError`` naming them (``UnplacedTransformError.at``). The DataLoader re-raises
it in the main process with the worker's traceback, the original exception included.
"""

from __future__ import annotations

__all__ = ["TransformError", "UnplacedTransformError"]


class TransformError(RuntimeError):
    """A per-sample or batch transform that raised or returned something unusable; the message
    names the sample (shard, member, id) or batch, and the original exception or both shapes."""


class UnplacedTransformError(Exception):
    """A ``TransformError`` whose sample is known only by its id (raised inside the builder)."""

    def __init__(self, problem: str, gid: int) -> None:
        super().__init__(f"{problem} (sample id {gid})")
        self.problem = problem
        self.gid = gid

    def at(self, where: str) -> TransformError:
        """The ``TransformError`` for the sample at ``where`` (shard, member, position, id)."""
        return TransformError(f"{self.problem} in {where}")
