"""``shardfeed train``: a small CNN trained on the shard stream, single process or under torchrun.

The loop is what a user's loop looks like: ``make_loader`` → ``DevicePrefetcher`` → model
(with ``decode="device"`` the workers ship compressed bytes and the prefetcher decodes them).
Augmentation on the device is vectorised over the batch (a random flip chosen by a batched
mask; normalisation by the prefetcher's broadcast ``[1, 3, 1, 1]`` mean and std). Under
torchrun each rank reads its own part (``ShardDataset`` takes rank and world size from
``torch.distributed``); the ``pad`` policy gives every rank the same number of steps, so DDP's
gradient all-reduce never waits on a rank that has run out of data.

Checkpoints (``checkpoint_dir``, every ``checkpoint_every`` steps, the newest
``keep_checkpoints`` kept) hold the model, the optimiser, the loader's gathered state and the
epoch's delivery counts over all ranks, written by rank 0 (``loader.train.checkpoint``).
``resume`` starts from the newest one, with any number of ranks: the loader delivers the rest
of the epoch exactly once and the epoch's report counts both sides of the stop
(docs/architecture.md, section "Resume"). The epoch's duplicate and missing counts are over
all ranks (``DuplicateTracker.end_epoch``). With ``val`` each epoch ends with a validation pass
whose top-1 is exact over ranks (``loader.train.validate``), logged, in the report and sent to
the service.

``mixup``/``cutmix`` (alphas; 0: off) mix batches on the device with ``loader.transforms``'
``MixupCutmix`` (timm's recipe: label smoothing 0.1, half the batches each when both are on),
seeded per batch; the loss then takes soft targets and accuracy counts the dominant class.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from loader.dataloader import make_loader
from loader.device.prefetcher import DevicePrefetcher, resolve_device
from loader.jsonsafe import dumps
from loader.plan.ranks import rank_and_world
from loader.reporter import queue_depth
from loader.tracker import DuplicateTracker
from loader.train.checkpoint import (
    CheckpointSteps,
    latest_checkpoint,
    load_checkpoint,
)
from loader.train.model import SmallCNN, random_flip
from loader.train.options import EpochReport, TrainOptions, format_loss
from loader.train.validate import ValResult, evaluate, val_loader
from loader.transforms.mix import MixupCutmix

if TYPE_CHECKING:
    from loader.reporter import StatsReporter

__all__ = ["MAX_HEAD_CLASSES", "num_classes", "train"]

log = logging.getLogger("shardfeed.train")

MAX_HEAD_CLASSES = 100_000


def train(options: TrainOptions) -> list[EpochReport]:
    """Train for ``options.epochs`` epochs; returns this rank's per-epoch reports.

    Initialises (and tears down) the process group when ``WORLD_SIZE`` > 1 and none exists:
    gloo on the CPU, nccl on CUDA. With ``resume`` and a checkpoint in ``checkpoint_dir`` the
    run goes on from it (epochs before its epoch are not run again).
    """
    if options.epochs < 1:
        raise ValueError(f"expected --epochs >= 1, got --epochs={options.epochs}")
    if options.checkpoint_every < 0:
        raise ValueError(
            f"expected --checkpoint-every >= 0, got --checkpoint-every={options.checkpoint_every}"
        )
    if (options.resume or options.checkpoint_every) and not options.checkpoint_dir:
        raise ValueError("expected --checkpoint-dir with --resume or --checkpoint-every")
    if options.keep_checkpoints < 0:
        raise ValueError(
            f"expected --keep-checkpoints >= 0, got --keep-checkpoints={options.keep_checkpoints}"
        )
    checkpoint = _resume_from(options)
    device = resolve_device(options.device)
    own_group = _init_distributed(device)
    rank, world = rank_and_world()
    torch.manual_seed(options.seed)
    loader = make_loader(
        options.shards,
        batch_size=options.batch_size,
        num_workers=options.workers,
        image_size=options.image_size,
        train=False,
        seed=options.seed,
        even="pad",
        decode=options.decode,
        cache_dir=options.cache_dir,
    )
    validation = None
    if options.val:
        validation = val_loader(
            options.val,
            batch_size=options.batch_size,
            num_workers=options.workers,
            image_size=options.image_size,
            decode=options.decode,
            seed=options.seed,
            cache_dir=options.cache_dir,
        )
    dataset: Any = loader.dataset
    classes = num_classes(dataset)
    model: nn.Module = SmallCNN(classes).to(device)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    tracker = DuplicateTracker(dataset.num_samples)
    steps = CheckpointSteps(
        directory=options.checkpoint_dir,
        every=options.checkpoint_every,
        keep=options.keep_checkpoints,
        log_json=options.log_json,
        rank=rank,
        world=world,
        loader=loader,
        tracker=tracker,
    )
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    raw_model = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=options.lr, momentum=0.9, weight_decay=5e-4)
    first_epoch = 0
    if checkpoint is not None:
        opt.load_state_dict(checkpoint["optimizer"])
        first_epoch = steps.restore(checkpoint)
    steps.model, steps.opt = raw_model, opt
    reporter = _reporter(options, rank, dataset.num_samples)
    if reporter is not None and checkpoint is not None:
        reporter.resume_epoch(tracker)
    mix = None
    if options.mixup > 0 or options.cutmix > 0:
        mix = MixupCutmix(classes, mixup_alpha=options.mixup, cutmix_alpha=options.cutmix)
    prefetcher = DevicePrefetcher(loader, device, batch_transform=mix)
    reports: list[EpochReport] = []
    all_ids: list[np.ndarray] = []
    try:
        for epoch in range(first_epoch, options.epochs):
            if checkpoint is None or epoch != first_epoch:
                tracker.start_epoch(epoch)
            dataset.set_epoch(epoch)
            report, ids = _run_epoch(model, opt, prefetcher, tracker, reporter, epoch, steps)
            report.rank, report.world_size = rank, world
            if checkpoint is not None and epoch == first_epoch:
                report.resumed_from_step = int(checkpoint["step"])
            if validation is not None:
                _validate(raw_model, validation, device, epoch, report, reporter, world)
            reports.append(report)
            all_ids.append(ids)
            log.info(
                "epoch %d rank %d/%d: %d steps, %.0f samples/s, blocked %.0f%%, host wait "
                "%.1f ms/step, loss %s, acc %.3f, duplicates %d, missing %d, padded %d, "
                "decoded %s",
                epoch, rank, world, report.steps, report.samples_per_s,
                100 * report.blocked_fraction, report.host_wait_ms_per_step,
                format_loss(report.loss), report.accuracy, report.duplicates, report.missing,
                report.padded, report.decode_counts,
            )  # fmt: skip
    finally:
        steps.close()
        if reporter is not None:
            reporter.close()
        if own_group:
            dist.destroy_process_group()
    if options.log_json:
        _write_log(options.log_json, rank, reports, all_ids)
    return reports


def _resume_from(options: TrainOptions) -> dict[str, Any] | None:
    if not options.resume or not options.checkpoint_dir:
        return None
    path = latest_checkpoint(options.checkpoint_dir)
    if path is None:
        log.info("no checkpoint in %s: starting from the beginning", options.checkpoint_dir)
        return None
    checkpoint = load_checkpoint(path)
    log.info("resuming from %s (step %d)", path, checkpoint["step"])
    return checkpoint


def _run_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    prefetcher: DevicePrefetcher,
    tracker: DuplicateTracker,
    reporter: Any,
    epoch: int,
    steps: CheckpointSteps,
) -> tuple[EpochReport, np.ndarray]:
    model.train()
    losses: list[float] = []
    correct = counted = samples = 0
    blocked = 0.0
    ids: list[np.ndarray] = []
    start = time.perf_counter()
    loader: Any = prefetcher.loader
    batches = iter(prefetcher)
    while True:
        wait = time.perf_counter()
        batch = next(batches, None)
        waited = time.perf_counter() - wait
        blocked += waited
        if batch is None:
            break
        images = random_flip(batch.images)
        logits = model(images)
        loss = F.cross_entropy(logits, batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        real = ~batch.padded
        classes = batch.labels.argmax(1) if batch.labels.dim() == 2 else batch.labels
        correct += int((logits.argmax(1) == classes)[real].sum())
        counted += int(real.sum())
        samples += len(batch.ids)
        losses.append(float(loss.detach()))
        padded = batch.padded.cpu()
        tracker.update(batch.ids, padded)
        ids.append(batch.ids[~padded].numpy())
        steps.after_step(epoch, ids[-1])
        if reporter is not None:
            reporter.record(
                samples=len(batch.ids),
                bytes=int(batch.nbytes.sum()),
                blocked_s=waited,
                epoch=epoch,
                tracker_counts=_rank_counts(tracker, loader.dataset.net.totals()["retries"]),
                resumed_at_step=steps.resumed_at,
                queue_depth=queue_depth(loader),
                ids=batch.ids,
                padded=padded,
                decode_counts=prefetcher.decode_counts,
            )
    elapsed = time.perf_counter() - start
    counts = tracker.end_epoch()
    if reporter is not None and counts.ranks > 1:
        # the service sums the ranks' counts: rank 0 sends the merged ones, the others none
        mine = dist.get_rank() == 0
        reporter.record(tracker_counts={k: v if mine else 0 for k, v in counts.to_dict().items()})
    report = EpochReport(
        epoch=epoch,
        rank=0,
        world_size=1,
        steps=len(losses),
        samples=samples,
        samples_per_s=samples / elapsed if elapsed else 0.0,
        blocked_fraction=blocked / elapsed if elapsed else 0.0,
        loss=float(np.mean(losses)) if losses else None,
        accuracy=correct / counted if counted else 0.0,
        duplicates=counts.duplicates,
        missing=counts.missing,
        padded=counts.padded,
        step_losses=losses,
        host_wait_ms_per_step=round(1000 * blocked / len(losses), 3) if losses else 0.0,
        decode_counts=prefetcher.decode_counts,
    )
    return report, np.concatenate(ids) if ids else np.zeros(0, np.int64)


def _rank_counts(tracker: DuplicateTracker, retries: int) -> dict[str, int]:
    """What a step reports: this rank's counts so far; with several ranks without ``missing``,
    which only the merge at the epoch's end knows (a rank alone misses the others' share)."""
    counts = {**tracker.counts().to_dict(), "retries": retries}
    if _world_size() > 1:
        del counts["missing"]
    return counts


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _validate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    epoch: int,
    report: EpochReport,
    reporter: StatsReporter | None,
    world: int,
) -> ValResult:
    """Evaluate after ``epoch`` (every rank): the model's buffers (batch-norm statistics,
    which each rank updated on its own batches) are first made rank 0's, so every rank scores
    with the same model."""
    if world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    result = evaluate(model, loader, device, epoch)
    report.val_top1, report.val_samples = result.top1, result.samples
    log.info(
        "epoch %d validation: top-1 %.4f (%d of %d samples, every one once over %d rank(s))",
        epoch, result.top1, result.correct, result.samples, world,
    )  # fmt: skip
    if reporter is not None:
        reporter.record_eval(result.to_dict())
    return result


def _init_distributed(device: torch.device) -> bool:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def num_classes(dataset: Any) -> int:
    """Outputs of the training head: the manifest's class count; labels beyond it are bad
    samples (the dataset skips them). Foreign shards name no classes: then one more than the
    largest label of any shard, refused above ``MAX_HEAD_CLASSES``."""
    if dataset.classes:
        return len(dataset.classes)
    from loader.reader import ShardReader

    largest = 0
    for shard in dataset.source.shards:
        with ShardReader(shard) as reader:
            labels = reader.index()["label"]
        top = int(labels.max()) if len(labels) else 0
        if top >= MAX_HEAD_CLASSES:
            raise ValueError(
                f"expected labels below {MAX_HEAD_CLASSES} in shards without class names, got "
                f"label {top} in shard {shard.url}; list the classes in the manifest"
            )
        largest = max(largest, top)
    return largest + 1


def _reporter(options: TrainOptions, rank: int, num_samples: int) -> StatsReporter | None:
    """The job's reporter; it sends this rank's ids so the service merges them across ranks."""
    if not options.report_url:
        return None
    from loader.reporter import StatsReporter

    return StatsReporter(
        options.report_url, options.job, options.token, rank=rank, num_samples=num_samples
    )


def _write_log(path: str, rank: int, reports: list[EpochReport], ids: list[np.ndarray]) -> None:
    out = Path(f"{path}.rank{rank}.json")
    doc = {"epochs": [asdict(r) for r in reports], "ids": [a.tolist() for a in ids]}
    out.write_text(dumps(doc), encoding="utf-8")
