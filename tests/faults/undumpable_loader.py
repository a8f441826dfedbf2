"""Run as ``python -m tests.faults.undumpable_loader DIR``: one epoch over tiny shards whose
DataLoader workers make themselves non-dumpable, so that a main process without
CAP_SYS_PTRACE cannot open their ``/proc/<pid>/fd``. Prints ``delivered N unique M``."""

from __future__ import annotations

import ctypes
import logging
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

from loader.dataloader import make_loader
from tests.loader.helpers import write_test_shards

PR_SET_DUMPABLE = 4


def undumpable(worker_id: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")


def jpeg(gid: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((24, 24, 3), gid % 256, np.uint8))
    assert ok
    return data.tobytes()


def main(folder: Path) -> None:
    manifest = write_test_shards(folder, [20, 20], image_bytes=jpeg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = make_loader(
            manifest,
            batch_size=4,
            image_size=16,
            num_workers=2,
            prefetch_factor=1,
            worker_init_fn=undumpable,
        )
        ids = [int(i) for batch in loader for i in batch.ids]
    logging.getLogger(__name__).info("epoch done")
    sys.stdout.write(f"delivered {len(ids)} unique {len(set(ids))}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
