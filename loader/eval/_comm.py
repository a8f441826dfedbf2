"""The collectives of an evaluation pass, over ``torch.distributed`` when it is initialised and
trivial in one process. Every rank must make the same calls in the same order.

Tensors travel on the CPU with gloo and on the current CUDA device with nccl; what a call
returns is on the CPU.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["Comm"]


class Comm:
    """This process's rank and world size, and the three collectives an evaluation uses."""

    def __init__(self) -> None:
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.device = torch.device("cpu")
        if self.distributed and dist.get_backend() == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())

    def gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D ``row`` (the same length everywhere), stacked ``[world, len]``."""
        if not self.distributed:
            return row.unsqueeze(0).cpu()
        sent = row.to(self.device)
        out = [torch.empty_like(sent) for _ in range(self.world)]
        dist.all_gather(out, sent)
        return torch.stack(out).cpu()

    def gather_varlen(self, local: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Every rank's ``local`` (``counts[r]`` rows on rank ``r``, the same trailing shape
        and dtype everywhere), concatenated in rank order."""
        if not self.distributed:
            return local.cpu()
        most = max(counts)
        bool_ = local.dtype == torch.bool
        sent = local.to(self.device, torch.uint8 if bool_ else local.dtype)
        if len(sent) < most:
            fill = sent.new_zeros((most - len(sent), *sent.shape[1:]))
            sent = torch.cat([sent, fill])
        out = [torch.empty_like(sent) for _ in range(self.world)]
        dist.all_gather(out, sent.contiguous())
        joined = torch.cat([part[:n] for part, n in zip(out, counts, strict=True)]).cpu()
        return joined.bool() if bool_ else joined

    def sum_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """``counts`` summed over the ranks (an all-reduce)."""
        if not self.distributed:
            return counts.cpu()
        sent = counts.to(self.device)
        dist.all_reduce(sent)
        return sent.cpu()
