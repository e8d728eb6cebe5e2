#!/usr/bin/env bash
# Issue 12's GPU figures in one short run (about 9 minutes on one H100), for a session that
# is lent a GPU. On this machine first:  bash ../shared/gpu/prepare.sh
# Then through the device tool:          bash bench/gpu_issue12.sh  (writes to $OUT if set)
# SMALL=1 runs the same steps at toy sizes (a CPU dry run of the script itself).
# Each step has its own time limit (seconds): a step that overruns is cut off and the next
# one runs, and what the cut one printed stays in the log.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .devcheck/setup.sh ]; then source .devcheck/setup.sh; fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
LOG=${OUT:-.}/gpu_issue12.log
small=${SMALL:-0}
run() {
  local limit=$1
  shift
  echo "+ [$(date +%T), limit ${limit}s] $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep --line-buffered -v Warning | tee -a "$LOG"
  echo "= exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$LOG"
}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU',
  'cpus', __import__('os').cpu_count())" 2>&1 | tee -a "$LOG"
if [ "$small" = 1 ]; then
  run 120 $PY bench/pretrain_throughput.py --backbone resnet18 --size 28 --batch-size 16 \
    --steps 1 --rounds 1 --methods simclr,vicreg
  run 120 $PY bench/embed_throughput.py --backbone resnet18 --sizes 28,64 --sizes-only \
    --synthetic-images 600 --passes 1 --profile 5
  run 120 $PY bench/embed_throughput.py --ceiling-only --ceiling-images 2000 --ceiling-passes 1
  run 120 $PY bench/eval_speed.py --sections knn --bank 2000 --queries 500 --dim 256 --no-sklearn
  run 120 $PY bench/eval_speed.py --sections matrix --dim 256 --scale 0.01 --no-per-scorer \
    --profile 5
  exit 0
fi
# the method against its own networks (goal 0.85) and the bare backbone, ResNet-50, 64 px,
# with the GPU's busy fraction per step (are launches the limit?); demo-med images, since the
# prepared copy holds PneumoniaMNIST at 28 px only
run 200 env -u EMBEDKIT_DATA $PY bench/pretrain_throughput.py --backbone resnet50 --size 64 \
  --batch-size 256 --steps 5 --rounds 8
# the pipeline against the bare forward, eager and as one CUDA graph, at 28 and 64 px (goal
# 0.90), each part of the pipeline alone and a profile of one pass (where is the host's ~15 ms
# per batch?), then the host ceiling
run 100 $PY bench/embed_throughput.py --backbone resnet50 --sizes 28,64 --sizes-only \
  --synthetic-images 20480 --passes 2 --profile 15
run 60 $PY bench/embed_throughput.py --ceiling-only --ceiling-images 20000 --ceiling-passes 2
# the torch search (faiss-gpu cannot travel) and the 12 x 11 matrix of 8 scorers (goal < 60 s)
run 60 $PY bench/eval_speed.py --sections knn --no-sklearn
run 150 $PY bench/eval_speed.py --sections matrix --scale 1.0 --no-per-scorer --profile 22
