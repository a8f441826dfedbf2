#!/bin/bash
# The GPU checks that cannot run on CPU-only machines, as one script for a lent GPU machine
# (docs/architecture.md, section "Device decode").
#
# Budget: the whole script finishes within BUDGET seconds by its own arithmetic: every step
# runs under `timeout T_<STEP>` plus KILL seconds of grace, and GLUE covers the untimed lines
# between steps (greps, the summary). The sum is checked before anything runs (exit 2 if over);
# `BUDGET_ONLY=1 tools/device_check.sh` prints it and exits. tests/tools/test_device_check.py
# parses this file and checks the same sum.
#
#   1. doctor   `shardfeed doctor`: torch, CUDA, devices, decode backends, shared memory
#   2. install  TorchCodec from the package index with --no-deps (never a second torch; the
#               torch version is checked before and after), plus whatever of the repository's
#               pure-Python dependencies is missing, into /tmp/shardfeed-site; then the doctor
#               again, as JSON
#   3. data     ImageNet-sized sample images, sharded with all cores
#   4. bench    GPU decode against all-core CPU decode on the same shards
#               (loader.bench.decodecompare): samples/s, the ratio, rows decoded on the device,
#               host wait per step. FAILS the script when the device path decoded no row on
#               the device
#   5. tests    the CUDA-only tests (pytest -k cuda): stream order, repeated decodes under
#               load, the prefetcher, nvJPEG against OpenCV
#   6. v2       torchvision.transforms.v2 (it imports only here): a v2 pipeline in the workers
#               and v2.CutMix as a batch transform on the GPU, through loader.transforms
#   7. train    a CUDA training run per decode (opencv in the workers, device): samples/s,
#               blocked %, host wait per step, where the rows were decoded
#
# What a run must carry: nothing beyond the repository's tracked files. Optional: a `.whl/`
# folder of wheels to install offline (git-ignored, so it travels only when carried:
# run(carry=[".whl"])). The machine is expected to have Python 3.12, a CUDA torch and
# torchvision; everything else comes from the package index here.
#
# Output: figures are printed as they come and appended to $OUT/summary.txt (default
# build/device-out); each step's full log is $OUT/<step>.txt; the bench's JSON is
# $OUT/decode_compare.json, the doctor's $OUT/doctor.json. Exit status: 0 when every step passed
# and the device decoded rows on the device; 1 otherwise; 2 when the budget does not add up.
#
# A dry run on a CPU machine checks the script itself (small data, CPU stand-in decoder):
#   CHECK_DEVICE=cpu IMAGES=200 SIZE=small IMAGE_SIZE=64 TESTS=0 INSTALL=0 tools/device_check.sh
set -uo pipefail

BUDGET=480
KILL=5
GLUE=15
T_DOCTOR=20
T_INSTALL=60
T_DATA=60
T_BENCH=95
T_TESTS=75
T_V2=30
T_TRAIN_OPENCV=40
T_TRAIN_DEVICE=40
STEPS=8

total=$((T_DOCTOR + T_INSTALL + T_DATA + T_BENCH + T_TESTS + T_V2 + T_TRAIN_OPENCV \
    + T_TRAIN_DEVICE + STEPS * KILL + GLUE))
echo "budget ${BUDGET} s: steps $((total - STEPS * KILL - GLUE)) + kill ${STEPS}x${KILL} + glue ${GLUE} = ${total} s"
if [ "$total" -gt "$BUDGET" ]; then
    echo "expected the steps to fit the budget of ${BUDGET} s, got ${total} s: lower a T_ value" >&2
    exit 2
fi
[ "${BUDGET_ONLY:-0}" = 1 ] && exit 0

OUT=${OUT:-build/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
SITE=/tmp/shardfeed-site
D=${SHARDFEED_DEVICE_DIR:-/tmp/shardfeed-device}
DEV=${CHECK_DEVICE:-cuda}
IMAGES=${IMAGES:-2000}
SIZE=${SIZE:-imagenet}
IMAGE_SIZE=${IMAGE_SIZE:-224}
CORES=${CORES:-$(nproc)}
SUMMARY=$OUT/summary.txt
FAIL=0
t0=$(date +%s)
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo $(($(date +%s) - t0)); }

# step NAME SECONDS COMMAND...: run COMMAND under a timeout, its output shown and kept in
# $OUT/NAME.txt; a failure is noted in the summary and in the exit status, never stops the script.
step() {
    local name=$1 limit=$2 rc
    shift 2
    echo "== $name (at $(elapsed) s, limit $limit s): $*" | tee -a "$OUT/$name.txt"
    timeout --kill-after="$KILL" "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || FAIL=1
    note "step $name rc=$rc ($(elapsed) s)"
}

note "device check on $(hostname): $DEV, $CORES cores, $IMAGES $SIZE images"
step doctor "$T_DOCTOR" $PY -m server.cli doctor

# install: what is missing, with --no-deps into $SITE, and the torch version must not change.
install_missing() {
    local before after missing
    before=$($PY -c 'import torch; print(torch.__version__)') || return 1
    missing=$($PY -c "$NEEDED")
    echo "torch $before; installing with --no-deps: ${missing:-nothing}"
    if [ -n "$missing" ]; then
        # shellcheck disable=SC2086  # one word per requirement
        $PY -m pip install -q --no-deps --no-compile --target "$SITE" $missing || return 1
    fi
    if ls .whl/*.whl > /dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl \
            || return 1
    fi
    after=$(PYTHONPATH=$SITE:$PWD $PY -c 'import torch; print(torch.__version__)')
    [ "$before" = "$after" ] || { echo "torch changed: $before -> $after"; return 1; }
    PYTHONPATH=$SITE:$PWD $PY -m server.cli doctor --json > "$OUT/doctor.json"
}
NEEDED="
import importlib.util
need = {
    'cv2': 'opencv-python-headless', 'fsspec': 'fsspec', 'requests': 'requests',
    'urllib3': 'urllib3', 'idna': 'idna', 'certifi': 'certifi',
    'charset_normalizer': 'charset-normalizer', 'tqdm': 'tqdm', 'yaml': 'pyyaml',
    'braceexpand': 'braceexpand', 'webdataset': 'webdataset', 'psutil': 'psutil',
    'pytest': 'pytest', 'pluggy': 'pluggy', 'iniconfig': 'iniconfig', 'packaging': 'packaging',
    'pytest_timeout': 'pytest-timeout', 'hypothesis': 'hypothesis', 'attr': 'attrs',
    'sortedcontainers': 'sortedcontainers', 'torchcodec': 'torchcodec==0.16.*',
}
print(' '.join(d for m, d in need.items() if importlib.util.find_spec(m) is None))
"
export PY SITE OUT KILL NEEDED
export -f install_missing
if [ "${INSTALL:-1}" = 1 ]; then
    step install "$T_INSTALL" bash -c install_missing
else
    $PY -m server.cli doctor --json > "$OUT/doctor.json" 2> /dev/null
fi
if [ -d "$SITE" ]; then export PYTHONPATH=$SITE:$PWD; fi
$PY -c "import json; d = json.load(open('$OUT/doctor.json')); \
print('backends:', d['backends']); print('decode=device here:', d['device_decode'])" \
    2> /dev/null | tee -a "$SUMMARY"

if [ -f "$D/shards/manifest.json" ]; then
    note "reusing the shards in $D/shards (delete $D for new data)"
else
    step data "$T_DATA" sh -c "rm -rf '$D' && $PY -m server.cli sample '$D/src' \
        --images $IMAGES --classes 10 --size $SIZE --workers $CORES && $PY -m server.cli shard \
        '$D/src' '$D/shards' --num-shards 32 --workers $CORES"
fi

step bench "$T_BENCH" sh -c "$PY -m loader.bench.decodecompare --shards '$D/shards' \
    --device $DEV --workers $CORES --batch-size 256 --image-size $IMAGE_SIZE --epochs 2 \
    > '$OUT/decode_compare.json'"
if ! $PY - "$OUT/decode_compare.json" << 'EOF' | tee -a "$SUMMARY"; then FAIL=1; fi
import json
import sys

doc = json.load(open(sys.argv[1]))
for run in doc["runs"]:
    print(f"{run['decode']}: {run['samples_per_s']} samples/s, host wait "
          f"{run['host_wait_ms_per_step']} ms/step, rows {run.get('decode_counts')}")
print(f"device/opencv: {doc.get('device_over_opencv')} (goal >= 3 on a GPU)")
device = next(r for r in doc["runs"] if r["decode"] == "device")
if not device["decode_counts"]["device"]:
    sys.exit("FAIL: the device path decoded no row on the device")
EOF

if [ "${TESTS:-1}" = 1 ]; then
    step tests "$T_TESTS" $PY -m pytest -q -p no:cacheprovider --timeout 60 -rs -k cuda \
        tests/loader/device tests/loader/test_device.py tests/loader/test_devicedecode.py \
        tests/loader/test_batch.py tests/loader/test_recycle.py
fi

# ---- v2 (T_V2 seconds, in the budget): torchvision imports only here. One transforms.v2
# pipeline in the workers and v2.CutMix as a batch transform on the GPU, through the loader's
# transform adapters (loader.transforms; docs/architecture.md, "Transforms").
if [ "${TESTS:-1}" = 1 ]; then
    step v2 "$T_V2" $PY -m pytest -q -p no:cacheprovider --timeout 25 -rs \
        tests/loader/transforms/test_torchvision_v2.py
    tail -n 1 "$OUT/v2.txt" | sed "s/^/transforms-v2: /" | tee -a "$SUMMARY" || true
fi
# ---- END v2

for decode in opencv device; do
    limit=$T_TRAIN_OPENCV
    [ "$decode" = device ] && limit=$T_TRAIN_DEVICE
    step "train-$decode" "$limit" $PY -m torch.distributed.run --standalone --nproc_per_node 1 \
        -m server.cli train --shards "$D/shards" --device "$DEV" --epochs 2 --batch-size 256 \
        --workers "$CORES" --image-size "$IMAGE_SIZE" --decode "$decode"
    grep "epoch" "$OUT/train-$decode.txt" | grep -v "^==" | tail -n 2 | sed "s/^/$decode: /" \
        | tee -a "$SUMMARY"
done

note "end at $(elapsed) s of ${BUDGET} s, exit $FAIL"
exit $FAIL
