#!/bin/bash
# The GPU checks that cannot run on CPU-only machines, as one script for a lent GPU machine
# (docs/architecture.md, section "Device decode"). It fits 15 minutes of device time: about
# 11 minutes of steps at most (each under its own timeout), plus the machine's start.
#
#   1. env      what is there (GPU, torch/CUDA, TorchCodec, torchvision, OpenCV); installs the
#               wheels carried in .whl/ (the machine reaches no index: see below)
#   2. tests    the CUDA tests: DevicePrefetcher, the nvJPEG decoder and byte batches, the batch
#               transfer; they skip, with a reason, without CUDA; then a torchvision.transforms.v2
#               pipeline through loader.transforms (the one place torchvision imports)
#   3. data     ImageNet-sized sample images, sharded with all cores
#   4. train    a CUDA training run per decode (workers vs device): blocked % = the share of
#               time the training step waits on data
#   5. bench    samples/s with decode in the workers against decode on the GPU, the same
#               shards, all cores as workers (loader.bench.decodecompare)
#
# Preparing .whl/ on a machine with an index (the GPU machine has torch with CUDA, torchvision,
# OpenCV and NumPy already; python3 there is 3.12):
#   P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl"
#   python3 -m pip download $P webdataset braceexpand
#   python3 -m pip download $P --index-url https://download.pytorch.org/whl/cu130 \
#       torchcodec==VERSION   # the TorchCodec built for the torch there (0.16 for torch 2.11)
# Without TorchCodec the GPU decode uses torchvision.io.decode_jpeg (nvJPEG as well); the
# summary says which one ran. Results go under $OUT (default build/device-out), at most 8
# files: summary.txt, env.txt, pytest.txt, train_opencv.txt, train_device.txt,
# decode_compare.json, decode_compare.log.
#
# A dry run on a CPU machine checks the script itself (small data, no CUDA tests):
#   CHECK_DEVICE=cpu IMAGES=300 SIZE=small TESTS=0 IMAGE_SIZE=64 tools/device_check.sh
set -euo pipefail
OUT=${OUT:-build/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
D=${SHARDFEED_DEVICE_DIR:-/tmp/shardfeed-device}
DEV=${CHECK_DEVICE:-cuda}
IMAGES=${IMAGES:-6000}
SIZE=${SIZE:-imagenet}
IMAGE_SIZE=${IMAGE_SIZE:-224}
CORES=${CORES:-$(nproc)}
SUMMARY=$OUT/summary.txt
t0=$(date +%s)
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo $(($(date +%s) - t0)); }

# step NAME SECONDS LOG COMMAND...: run COMMAND under a timeout, output appended to LOG; the
# exit status goes to the summary and never stops the script.
step() {
    local name=$1 limit=$2 log=$3 rc=0
    shift 3
    echo "== $name ($(elapsed)s): $*" >> "$log"
    timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1 || rc=$?
    note "step $name rc=$rc ($(elapsed)s)"
    return 0
}

{
    nvidia-smi -L || true
    echo "cores $CORES"
    if ls .whl/*.whl > /dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl && echo "installed: $(ls .whl)" || echo "install failed"
    else
        echo "no .whl/ carried: using what is installed"
    fi
} > "$OUT/env.txt" 2>&1
if [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site:$PWD; fi
step env 60 "$OUT/env.txt" $PY - << 'EOF'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
for name in ("torchcodec", "torchvision", "cv2", "numpy", "webdataset"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "missing:", exc)
from loader.device._jpegbackends import jpeg_backend
backend = jpeg_backend(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
print("device decode backend:", backend.name)
EOF
grep -E "^(torch|gpu|device decode backend)" "$OUT/env.txt" | tee -a "$SUMMARY" || true

if [ "${TESTS:-1}" = 1 ]; then
    step tests 240 "$OUT/pytest.txt" $PY -m pytest -q -p no:cacheprovider --timeout 120 -rs \
        tests/loader/test_device.py tests/loader/test_devicedecode.py tests/loader/test_batch.py \
        tests/loader/test_recycle.py tests/loader/bench/test_decodecompare.py
    tail -n 3 "$OUT/pytest.txt" | tee -a "$SUMMARY" || true
fi

# --- transforms (loader.transforms; docs/architecture.md, "Transforms") ----------------------
# torchvision imports only here: one transforms.v2 pipeline in the workers, v2.CutMix as a batch
# transform on the GPU: one short test module under its own 60 s limit, appended to pytest.txt.
if [ "${TESTS:-1}" = 1 ]; then
    step transforms-v2 60 "$OUT/pytest.txt" $PY -m pytest -q -p no:cacheprovider --timeout 50 \
        -rs tests/loader/transforms/test_torchvision_v2.py
    tail -n 1 "$OUT/pytest.txt" | sed "s/^/transforms-v2: /" | tee -a "$SUMMARY" || true
fi
# --- end transforms ------------------------------------------------------------------------

if [ ! -f "$D/shards/manifest.json" ]; then
    step sample 150 "$OUT/env.txt" $PY -m server.cli sample "$D/src" --images "$IMAGES" \
        --classes 10 --size "$SIZE" --workers "$CORES"
    step shard 90 "$OUT/env.txt" $PY -m server.cli shard "$D/src" "$D/shards" --num-shards 32 \
        --workers "$CORES"
fi

for decode in opencv device; do
    step "train-$decode" 100 "$OUT/train_$decode.txt" $PY -m torch.distributed.run --standalone \
        --nproc_per_node 1 -m server.cli train --shards "$D/shards" --device "$DEV" --epochs 2 \
        --batch-size 256 --workers "$CORES" --image-size "$IMAGE_SIZE" --decode "$decode"
    grep "epoch" "$OUT/train_$decode.txt" | grep -v "^==" | tail -n 2 | sed "s/^/$decode: /" \
        | tee -a "$SUMMARY" || true
done

step bench 200 "$OUT/decode_compare.log" sh -c "$PY -m loader.bench.decodecompare \
    --shards '$D/shards' --device $DEV --workers $CORES --batch-size 256 \
    --image-size $IMAGE_SIZE --epochs 3 > '$OUT/decode_compare.json'"
cat "$OUT/decode_compare.json" >> "$SUMMARY" 2> /dev/null || true
note "end $(elapsed)s"
