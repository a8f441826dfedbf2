#!/bin/bash
# The GPU checks that cannot run on CPU-only machines, as one script for a lent GPU machine:
# the CUDA tests (DevicePrefetcher, pinned batches), a CUDA training run under torchrun, and a
# 16-core bench. Needs torch with CUDA, OpenCV and NumPy there; webdataset and braceexpand come
# as wheels in .whl/ (pip download them here). Writes its results under $OUT
# (default build/device-out).
set -u
OUT=${OUT:-build/device-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
SF="python3 -m server.cli"
D=/tmp/shardfeed-device
t0=$(date +%s)
{ nvidia-smi -L; nproc; python3 -c "import torch, cv2, numpy; print('torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0), \
'cv2', cv2.__version__, 'numpy', numpy.__version__)"; } 2>&1 | tee "$OUT/env.txt"
echo "== tests $(($(date +%s) - t0))s"
timeout 240 python3 -m pytest -q -p no:cacheprovider --timeout 120 tests/loader/test_device.py \
    tests/loader/test_dataloader.py tests/loader/test_recycle.py tests/loader/test_batch.py \
    tests/loader/test_train.py 2>&1 | tee "$OUT/pytest.txt" | tail -25
echo "== data $(($(date +%s) - t0))s"
$SF sample $D/src --images 4000 --classes 10 --workers 16 > "$OUT/sample.txt" 2>&1
$SF shard $D/src $D/shards --num-shards 16 --workers 16 > "$OUT/shard.txt" 2>&1
echo "== train $(($(date +%s) - t0))s"
timeout 150 python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m server.cli train \
    --shards $D/shards --device cuda --epochs 3 --batch-size 256 --workers 8 --image-size 128 \
    > "$OUT/train.txt" 2>&1
echo "train rc=$?"
grep "shardfeed.train" "$OUT/train.txt" | tail -3
echo "== bench $(($(date +%s) - t0))s"
timeout 200 $SF bench --folder $D/src --shards $D/shards --workers 8 --batch-size 64 \
    --modes map,tar-naive,tar-aware,webdataset --repeat 2 --json \
    > "$OUT/bench_decode.json" 2> "$OUT/bench_decode.err"
echo "bench rc=$?"
timeout 90 $SF bench --shards $D/shards --workers 8 --batch-size 64 --modes tar-aware,webdataset \
    --decode none --repeat 3 --epochs 5 --json > "$OUT/bench_none.json" 2> "$OUT/bench_none.err"
echo "bench none rc=$?"
echo "== end $(($(date +%s) - t0))s"
