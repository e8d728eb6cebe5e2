#!/usr/bin/env bash
# Issue 12's GPU figures in one short run (about 6-8 minutes on one H100), for a session that
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
  run 120 $PY bench/embed_throughput.py --backbone resnet18 --passes 1 --sizes 28,64 \
    --synthetic-images 600 --ceiling-images 2000 --ceiling-passes 1
  run 120 $PY bench/pretrain_throughput.py --backbone resnet18 --size 28 --batch-size 16 \
    --steps 1 --rounds 1 --methods simclr,vicreg
  run 120 $PY bench/eval_speed.py --sections knn,matrix --bank 2000 --queries 500 --dim 256 \
    --scale 0.01 --no-sklearn --no-per-scorer
  exit 0
fi
# the method against its own networks (goal 0.85) and the bare backbone, ResNet-50, 64 px,
# with the GPU's busy fraction per step (are launches the limit?)
run 170 $PY bench/pretrain_throughput.py --backbone resnet50 --size 64 --batch-size 256 \
  --steps 5 --rounds 3
# the pipeline against the bare forward at 28 and 64 px (goal 0.90), real test split, host
# ceiling
run 100 $PY bench/embed_throughput.py --backbone resnet50 --passes 3 --sizes 28,64 \
  --synthetic-images 20000 --ceiling-images 20000 --ceiling-passes 2
# the torch search (faiss-gpu cannot travel) and the 12 x 11 matrix of 8 scorers (goal < 60 s)
run 220 $PY bench/eval_speed.py --sections knn,matrix --scale 1.0 --no-sklearn
