#!/usr/bin/env bash
# Issue 12's GPU figures in one short run (about 6-8 minutes on one H100), for a session that
# is lent a GPU. On this machine first:  bash ../shared/gpu/prepare.sh
# Then through the device tool:          bash bench/gpu_issue12.sh  (writes to $OUT if set)
# SMALL=1 runs the same steps at toy sizes (a CPU dry run of the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .devcheck/setup.sh ]; then source .devcheck/setup.sh; fi
PY=${PY:-python3}
LOG=${OUT:-.}/gpu_issue12.log
small=${SMALL:-0}
run() { echo "+ $*" | tee -a "$LOG"; timeout "${STEP_TIMEOUT:-240}" "$@" 2>&1 | grep -v Warning | tee -a "$LOG"; }
if [ "$small" = 1 ]; then
  run $PY bench/embed_throughput.py --backbone resnet18 --passes 1 --ceiling-images 2000 --ceiling-passes 1
  run $PY bench/pretrain_throughput.py --backbone resnet18 --size 28 --batch-size 16 --steps 1 --rounds 1 --methods simclr,vicreg
  run $PY bench/eval_speed.py --sections knn,matrix --bank 2000 --queries 500 --dim 256 --scale 0.01
  exit 0
fi
# the host side's pinned copies and writer thread: the ratio to the bare forward (goal 0.90)
run $PY bench/embed_throughput.py --backbone resnet50
# the method against its own networks (goal 0.85) and the bare backbone, ResNet-50, 64 px
run $PY bench/pretrain_throughput.py --backbone resnet50 --size 64 --batch-size 256 --steps 5 --rounds 2
# the torch search (faiss-gpu cannot travel) and the 12 x 11 matrix of 8 scorers (goal < 60 s)
run $PY bench/eval_speed.py --sections knn,matrix --scale 1.0
