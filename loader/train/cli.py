"""``shardfeed train``: argument parsing for ``loader.train.loop``."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict

__all__ = ["COMMAND", "register"]

COMMAND = "train"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``shardfeed`` subcommands."""
    p = sub.add_parser(
        "train",
        help="train a small CNN on the shard stream (works under torchrun)",
        description="Train a small CNN on the shards, streamed exactly once per epoch. Under "
        "torchrun every rank reads its own part; DDP uses gloo on the CPU, nccl on CUDA.",
    )
    p.add_argument("--shards", required=True, help="shard folder, manifest path or URL")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument(
        "--decode",
        choices=("opencv", "device"),
        default="opencv",
        help="opencv: decode in the workers; device: workers ship bytes, the device decodes",
    )
    p.add_argument(
        "--mixup",
        type=float,
        default=0.0,
        metavar="A",
        help="mixup alpha on the device (timm recipe: 0.8; 0: off)",
    )
    p.add_argument(
        "--cutmix",
        type=float,
        default=0.0,
        metavar="A",
        help="cutmix alpha on the device (timm recipe: 1.0; with --mixup: half the batches each)",
    )
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", metavar="URL", help="service to report live stats to")
    p.add_argument("--job", default="train", help="job name shown by the service")
    p.add_argument(
        "--token",
        default=os.environ.get("SHARDFEED_TOKEN") or None,
        help="bearer token for the service (default: $SHARDFEED_TOKEN)",
    )
    p.add_argument("--log-json", metavar="PREFIX", help="write PREFIX.rankN.json per rank")
    p.add_argument("--json", action="store_true", help="print this rank's epochs as JSON")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="where checkpoints are written")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="save model, optimiser and loader state every STEPS steps (0: never)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on from the newest checkpoint in --checkpoint-dir (any number of ranks)",
    )
    p.add_argument(
        "--keep-checkpoints",
        type=int,
        default=3,
        metavar="N",
        help="keep the newest N checkpoints, delete older ones (0: keep all; default 3)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="node-local cache for remote shards (train and --val), filled on first read",
    )
    p.add_argument(
        "--val",
        metavar="SHARDS",
        help="validation shards: top-1 after each epoch, exact over ranks (every sample once)",
    )
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from loader.jsonsafe import dumps
    from loader.train.loop import train
    from loader.train.options import TrainOptions, format_loss

    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"expected {flag} >= 1, got {flag}={getattr(args, name)}")
    for name in ("workers", "keep_checkpoints"):
        if getattr(args, name) < 0:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"expected {flag} >= 0, got {flag}={getattr(args, name)}")
    for name in ("mixup", "cutmix"):
        if not getattr(args, name) >= 0:
            raise ValueError(f"expected --{name} >= 0, got --{name}={getattr(args, name)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available; use --device auto")
    reports = train(
        TrainOptions(
            shards=args.shards,
            epochs=args.epochs,
            device=args.device,
            batch_size=args.batch_size,
            workers=args.workers,
            image_size=args.image_size,
            decode=args.decode,
            mixup=args.mixup,
            cutmix=args.cutmix,
            lr=args.lr,
            seed=args.seed,
            report_url=args.report,
            job=args.job,
            token=args.token,
            log_json=args.log_json,
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            keep_checkpoints=args.keep_checkpoints,
            cache_dir=args.cache_dir,
            val=args.val,
        )
    )
    for r in reports:
        doc = {k: v for k, v in asdict(r).items() if k != "step_losses"}
        if args.json:
            sys.stdout.write(dumps(doc) + "\n")
        else:
            sys.stdout.write(
                f"epoch {r.epoch} rank {r.rank}/{r.world_size}: {r.steps} steps, "
                f"{r.samples_per_s:.0f} samples/s, blocked {100 * r.blocked_fraction:.0f}%, "
                f"host wait {r.host_wait_ms_per_step:.1f} ms/step, "
                f"loss {format_loss(r.loss)}, acc {r.accuracy:.3f}, duplicates {r.duplicates}, "
                f"missing {r.missing}, padded {r.padded}"
                + (f", resumed from step {r.resumed_from_step}" if r.resumed_from_step else "")
                + (f", decoded {r.decode_counts}" if any(r.decode_counts.values()) else "")
                + (f", val top-1 {r.val_top1:.4f}" if r.val_top1 is not None else "")
                + "\n"
            )
    return 0
