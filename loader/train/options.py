"""What a training run is asked (``TrainOptions``, the flags of ``shardfeed train``) and what
it reports per epoch (``EpochReport``: figures, exact delivery counts, validation top-1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from loader.train.checkpoint import KEEP_CHECKPOINTS

__all__ = ["EpochReport", "TrainOptions", "format_loss"]


@dataclass(frozen=True)
class TrainOptions:
    shards: str
    epochs: int = 1
    device: str = "auto"
    batch_size: int = 64
    workers: int = 2
    image_size: int = 64
    decode: str = "opencv"
    mixup: float = 0.0
    cutmix: float = 0.0
    lr: float = 0.05
    seed: int = 0
    report_url: str | None = None
    job: str = "train"
    token: str | None = None
    log_json: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    keep_checkpoints: int = KEEP_CHECKPOINTS
    cache_dir: str | None = None
    val: str | None = None


@dataclass
class EpochReport:
    epoch: int
    rank: int
    world_size: int
    steps: int
    samples: int
    samples_per_s: float
    blocked_fraction: float
    loss: float | None
    """Mean step loss; None for an epoch without steps (never NaN)."""
    accuracy: float
    duplicates: int
    missing: int
    padded: int
    step_losses: list[float] = field(default_factory=list)
    resumed_from_step: int | None = None
    host_wait_ms_per_step: float = 0.0
    decode_counts: dict[str, int] = field(default_factory=dict)
    val_top1: float | None = None
    val_samples: int | None = None


def format_loss(loss: float | None) -> str:
    """A loss for the log and the terminal: three decimals, ``-`` for an epoch without steps."""
    return "-" if loss is None else f"{loss:.3f}"
