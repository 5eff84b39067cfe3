#!/usr/bin/env bash
# Issue 14's GPU checks, in one call of the device tool (device time is scarce: one full call, ~8 min).
# Run it again after any change to the training path. FID is timed with pytorch-fid's network holding
# random weights (its real ones, 91 MB, do not fit the 64 MiB a call carries): the cost is the same, the
# values are meaningless. pytorch-fid itself travels as a wheel in .whl (the machine has scipy).
#   cp -r ../shared/celeba-10k datasets/     # 10,000 real 89x109 faces, carried with the call
#   pip download --no-deps -d .whl pytorch-fid==0.3.0
#   run: bash docs/gpu/check.sh   (carry datasets/celeba-10k and .whl)
# Timings first, each alone on the GPU; then correctness (the CUDA test suite in the background
# beside the real-data checks). Every step has a time limit and is skipped, not half-run, when the
# call's budget is short. Logs, bench JSONs and the run's pictures come back in $OUT/gpu.tar.gz.
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-out}
W=/tmp/gpu
DATA=${DATA:-datasets/celeba-10k}
BIG=$W/celeba-178x218        # the same faces upscaled to CelebA's own 178x218: JPEG decoding costs as much
START=$(date +%s)
BUDGET=${BUDGET:-470}        # seconds for the whole script
CORRECTNESS=${CORRECTNESS:-190}             # seconds kept for the correctness part
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
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ ^($ONLY)$ ]]; then return 0; fi   # ONLY='fid|sample': a re-check
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
train() { local out=$1; shift; bash -c "$TRAIN --out $W/$out --save-g $W/$out/g.pth --save-d $W/$out/d.pth $* 2>&1 | stamp"; }
export -f train; export TRAIN W PY
KEEP=$BENCH_KEEP TAIL=12 step bench_b128 90 $T $B --steps 200 --warmup 20 --profile --out $W/bench_b128.json
KEEP=$BENCH_KEEP TAIL=4 step bench_b128_eager 30 $T $B --steps 200 --warmup 20 --profile --no-cuda-graph --no-baseline \
  --out $W/bench_b128_eager.json
step train25 70 $T bash -c "train run --epochs 25 --log-every 26"
step eager5 30 $T bash -c "train eager --epochs 5 --log-every 13 --no-cuda-graph"
step torchrun1 40 $T bash -c "$PY -m torch.distributed.run --standalone --nproc_per_node=1 dcgan.py train --data $DATA \
  --cache-dir $W/cache --out $W/tr1 --epochs 5 --log-every 13 --save-g $W/tr1/g.pth --save-d $W/tr1/d.pth 2>&1 | stamp"
# FID every epoch (2,000 samples against 2,000 training images; the first also computes the reference), then 10,000
$PY -c "import os, torch, fid; p = fid.inception_weights(); os.makedirs(os.path.dirname(p), exist_ok=True)
os.path.exists(p) or torch.save(fid.pytorch_fid_layout(), p); print('FID Inception weights:', p, os.path.getsize(p))"
KEEP='FID|done' TAIL=8 step fid 80 $T bash -c "train fid --epochs 3 --log-every 78 --fid-every 1 --fid-n 2000"
KEEP='FID|done' step fid10k 50 $T bash -c "train fid10k --epochs 1 --log-every 78 --fid-every 1 --fid-n 10000"
KEEP=$BENCH_KEEP step bench_b1024 30 $T $B --steps 30 --warmup 5 --batch-size 1024 --no-baseline --out $W/bench_b1024.json
KEEP=$BENCH_KEEP step bench_b128_fp32 30 $T $B --steps 200 --warmup 20 --amp off --no-baseline --out $W/bench_b128_fp32.json
step ema5 30 $T bash -c "train ema --epochs 5 --log-every 13 --ema 0.999"

# ---------------------------------------------------------------- correctness
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")   # pytest-xdist, where installed
( DCGAN_TEST_DEVICE=cuda timeout -k 10 $(( $(left "$BUDGET") - 15 )) $PY -m pytest -q $XDIST -p no:cacheprovider \
    ${PYTEST_K:+-k "$PYTEST_K"} test_dcgan.py > "$W/logs/pytest.log" 2>&1; echo "pytest rc $?" >> "$W/logs/pytest.log" ) &
PYTEST=$!
TAIL=12 step resume_deterministic 70 $BUDGET $PY docs/gpu/resume_check.py $W/resume-det $DATA --cache-dir $W/cache \
  --deterministic
# the CUDA graph changes nothing: with deterministic kernels, replayed and eager steps give the same run
TAIL=12 step graph_vs_eager 60 $BUDGET bash -c "train det-graph --epochs 2 --log-every 13 --deterministic &&
  train det-eager --epochs 2 --log-every 13 --deterministic --no-cuda-graph && $PY docs/gpu/same_run.py $W/det-graph $W/det-eager"
step sample 45 $BUDGET bash -c "$PY dcgan.py sample --ckpt $W/run/g.pth --seed 0 --out $W/run/samples.png &&
  $PY dcgan.py sample --ckpt $W/run/g.pth --seed 0 --interpolate 8 --out $W/run/interpolation.png &&
  $PY dcgan.py sample --ckpt $W/run/checkpoint.pth --n 8 --seed 1 --out $W/run/from_checkpoint.png"
step amp_fp16 40 $BUDGET bash -c "train fp16 --epochs 3 --log-every 26 --amp fp16"
TAIL=12 step resume_default 60 $BUDGET $PY docs/gpu/resume_check.py $W/resume-default $DATA --cache-dir $W/cache
wait $PYTEST
echo "=== pytest (DCGAN_TEST_DEVICE=cuda)"; grep -E "^(FAILED|ERROR)|passed|failed" "$W/logs/pytest.log" | tail -n 25

# ---------------------------------------------------------------- what comes back
cp $W/bench_*.json $W/logs/ 2>/dev/null
tar czf "$OUT/gpu.tar.gz" -C $W logs $(cd $W && ls run/*.png run/*.gif run/*.csv fid*/fid.* 2>/dev/null | grep -v 'epoch_0[01]')
echo "=== done in $(( $(date +%s) - START )) s"; ls -la "$OUT"
