#!/usr/bin/env bash
# Issue 12's GPU figures in one short run (at most 9.5 minutes on one H100), for a session that
# is lent a GPU. On this machine first:  bash ../shared/gpu/prepare.sh
# Then through the device tool:          bash bench/gpu_issue12.sh  (writes to $OUT if set)
# SMALL=1 runs the same steps at toy sizes (a CPU dry run of the script itself); ONLY=embed,matrix
# (any of pretrain, embed, ceiling, matrix, and knn, hostprof, ablate or compiled, which run
# only when named) runs those steps alone.
# Each step has its own time limit (seconds): a step that overruns is cut off and the next
# one runs, and what the cut one printed stays in the log.
set -uo pipefail
cd "$(dirname "$0")/.."
small=${SMALL:-0}
if [ "$small" != 1 ] && [ -f .devcheck/setup.sh ]; then source .devcheck/setup.sh; fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
LOG=${OUT:-.}/gpu_issue12.log
source bench/_gpu_steps.sh
if [ "$small" = 1 ]; then
  run pretrain 120 $PY bench/pretrain_throughput.py --backbone resnet18 --size 28 --batch-size 16 \
    --steps 1 --rounds 1 --methods simclr,vicreg
  if [[ ",${ONLY:-}," == *",hostprof,"* ]]; then
    run hostprof 120 $PY bench/pretrain_throughput.py --backbone resnet18 --size 28 \
      --batch-size 8 --steps 1 --rounds 1 --methods dino --host-profile 5
  fi
  if [[ ",${ONLY:-}," == *",ablate,"* ]]; then
    run ablate 120 $PY bench/pretrain_throughput.py --backbone resnet18 --size 28 \
      --batch-size 8 --steps 1 --rounds 1 --methods dino,mocov1 --ablate all
  fi
  if [[ ",${ONLY:-}," == *",compiled,"* ]]; then
    run compiled 120 $PY bench/pretrain_throughput.py --backbone resnet18 --size 28 \
      --batch-size 8 --steps 1 --rounds 1 --methods dino,mocov1 --compile-loss --ablate loss
  fi
  run embed 120 $PY bench/embed_throughput.py --backbone resnet18 --sizes 28,64 --sizes-only \
    --synthetic-images 600 --passes 1 --profile 5
  run ceiling 120 $PY bench/embed_throughput.py --ceiling-only --ceiling-images 2000 --ceiling-passes 1
  run knn 120 $PY bench/eval_speed.py --sections knn --bank 2000 --queries 500 --dim 256 --no-sklearn
  run matrix 120 $PY bench/eval_speed.py --sections matrix --dim 256 --scale 0.01 --no-per-scorer \
    --profile 5
  exit 0
fi
# the method against its own networks (goal 0.85) and the bare backbone, ResNet-50, 64 px,
# with the GPU's busy fraction per step (are launches the limit?); demo-med images, since the
# prepared copy holds PneumoniaMNIST at 28 px only. Rounds of 10 steps: of 5 steps, one
# round's method / model spread 0.5-1.6 on the H100
run pretrain 200 env -u EMBEDKIT_DATA $PY bench/pretrain_throughput.py --backbone resnet50 \
  --size 64 --batch-size 256 --steps 10 --rounds 8
# where DINO's step spends what its networks' does not (ONLY=hostprof): per op and CUDA call
# the host time, per kernel the GPU time (on the H100 its GPU time was 4.2 ms above its
# networks' and its host time in ops no higher, yet it read 0.82-0.84 of them)
if [[ ",${ONLY:-}," == *",hostprof,"* ]]; then
  run hostprof 100 env -u EMBEDKIT_DATA $PY bench/pretrain_throughput.py --backbone resnet50 \
    --size 64 --batch-size 256 --steps 5 --rounds 2 --methods dino --host-profile 25
fi
# what each of DINO's and MoCo v1's own parts costs in place (ONLY=ablate): the step timed
# without its augmentation (views replayed), its loss (a sum, as the networks' baseline), its
# momentum update, and without all three, in the same rounds as the whole step and its networks
if [[ ",${ONLY:-}," == *",ablate,"* ]]; then
  run ablate 150 env -u EMBEDKIT_DATA $PY bench/pretrain_throughput.py --backbone resnet50 \
    --size 64 --batch-size 256 --steps 10 --rounds 6 --methods dino,mocov1 --ablate all
  # a device free or retry inside the timed rounds makes the host wait: then DINO once more with
  # segments that grow in place instead of new blocks (pinned-block calls need another remedy)
  if grep -Eq "DINO (method|-[a-z]+): allocator calls.*(cudaFree|retries)" "$LOG"; then
    run ablate 90 env -u EMBEDKIT_DATA PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
      $PY bench/pretrain_throughput.py --backbone resnet50 --size 64 --batch-size 256 \
      --steps 10 --rounds 4 --methods dino --ablate all
  fi
fi
# DINO's and MoCo v1's losses compiled (ONLY=compiled; what `pretrain --compile` adds to the
# backbone's), the networks as written: DINO's passes over the 65,536 prototypes fuse (on the
# CPU its cost in place fell from 187 to 49 ms a step). Needs Triton on the device; the first
# step compiles
if [[ ",${ONLY:-}," == *",compiled,"* ]]; then
  run compiled 180 env -u EMBEDKIT_DATA $PY bench/pretrain_throughput.py --backbone resnet50 \
    --size 64 --batch-size 256 --steps 10 --rounds 6 --methods dino,mocov1 --compile-loss \
    --ablate loss
fi
# the pipeline against the bare forward, eager and as one CUDA graph, at 28 and 64 px (goal
# 0.90), A/Bs with the former reads and the former store setting, each part alone and a
# profile of one pass, then the host ceiling
run embed 100 $PY bench/embed_throughput.py --backbone resnet50 --sizes 28,64 --sizes-only \
  --synthetic-images 20480 --passes 2 --profile 15
run ceiling 60 $PY bench/embed_throughput.py --ceiling-only --ceiling-images 20000 --ceiling-passes 2
# the torch search alone (faiss-gpu cannot travel; measured on the H100 before: ONLY=knn)
# and the 12 x 11 matrix of 8 scorers (goal < 60 s; writing its store takes ~50 s)
if [[ ",${ONLY:-}," == *",knn,"* ]]; then run knn 60 $PY bench/eval_speed.py --sections knn --no-sklearn; fi
run matrix 170 $PY bench/eval_speed.py --sections matrix --scale 1.0 --no-per-scorer --profile 22
