#!/usr/bin/env bash
# Issue 30's GPU figure in one short run (at most 8 minutes on one H100/H200), for a session
# that is lent a GPU: the linear probe's exact solver (newton) against the paper's 100-epoch
# SGD protocol, both on the GPU, at the same optimum (goal: sgd / newton >= 5; the optimum
# table's gaps to scikit-learn <= 1e-4). The CPU figures are in BENCHMARKS.md, "The probe's
# solver".
#
# On this machine first (the copy travels without faiss-cpu, to stay under 64 MiB with the
# three official MedMNIST files; the searches fall back to torch where FAISS is absent):
#     bash bench/gpu_issue30.sh prepare
# Then through the device tool:          bash bench/gpu_issue30.sh  (writes to $OUT if set)
# SMALL=1 runs the same steps at toy sizes on the CPU (a dry run of the script itself);
# ONLY=random,trained (any of random, trained, and cpu, which runs only when named: the same
# probe on the device machine's CPU cores) runs those steps alone.
# Each step has its own time limit (seconds): a step that overruns is cut off and the next
# one runs, and what the cut one printed stays in the log.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = prepare ]; then
  set -e
  WITHOUT="faiss-cpu" bash ../shared/gpu/prepare.sh
  rm -f .devcheck/data/pneumoniamnist_28.npz  # the official file below replaces it
  mkdir -p .devcheck/data/medmnist
  cp ../shared/data/medmnist/*.npz .devcheck/data/medmnist/
  du -cb .devcheck $(git ls-files) | tail -1 | awk '{printf "to send: %.1f MiB (at most 64)\n", $1 / 2^20}'
  exit 0
fi
small=${SMALL:-0}
if [ "$small" != 1 ] && [ -f .devcheck/setup.sh ]; then source .devcheck/setup.sh; fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
LOG=${OUT:-.}/gpu_issue30.log
WORK=$(mktemp -d)
source bench/_gpu_steps.sh
if [ "$small" = 1 ]; then
  # toy sizes on the CPU: BreastMNIST alone, one repeat, a one-epoch encoder
  device=cpu repeats=1 epochs=1 fraction=1.0 pretrain_on=breastmnist embed_on=breastmnist
  data=$WORK/root
  mkdir -p "$data"
  ln -s "$(realpath "${DATA:-../shared/data/medmnist}")/breastmnist.npz" "$data/"
else
  device=cuda repeats=2 epochs=3 fraction=1.0 pretrain_on=retinamnist+pneumoniamnist
  embed_on=retinamnist,pneumoniamnist,breastmnist
  data=${DATA:-.devcheck/data/medmnist}
fi
export PY WORK device repeats epochs fraction pretrain_on embed_on data  # for step_trained
# the random-weight resnet18 store of BENCHMARKS.md (the demo sets and every MedMNIST file in
# the data root, embedded on the device by the bench itself), then each protocol's probe per
# dataset (the least of the repeats, the protocols taking turns)
run random 200 $PY bench/eval_speed.py --sections probe --data-root "$data" \
  --repeats "$repeats" --device "$device"
# a trained SimCLR encoder (the small recipe, 3 epochs on RetinaMNIST + PneumoniaMNIST, as on
# the CPU), its store of the three datasets, and the same probe bench over it
step_trained() {
  $PY -m embedkit.cli.main pretrain --output "$WORK/run" --dataset "$pretrain_on" \
    --recipe small --epochs "$epochs" --data-fraction "$fraction" --data-root "$data" \
    --device "$device" --no-progress &&
    $PY -m embedkit.cli.main embed --run "$WORK/run" --dataset "$embed_on" --data-root "$data" \
      --store "$WORK/trained.zarr" --device "$device" --no-progress >/dev/null &&
    $PY bench/eval_speed.py --sections probe --store "$WORK/trained.zarr" \
      --repeats "$repeats" --device "$device"
}
export -f step_trained
run trained 170 bash -c step_trained
# the optimum over the same random-weight store (embedded again: seconds on the GPU): newton
# and L-BFGS fitted on the device along the probe's path, against scikit-learn's objective
# (on the CPU: most of this step; cut off, the datasets done stay), the MedMNIST ones first
run optimum 110 $PY bench/eval_speed.py --sections optimum --data-root "$data" \
  --device "$device" \
  --datasets breastmnist,retinamnist,pneumoniamnist,demo-med,demo-natural
# the same random-weight probe on the device machine's CPU cores (ONLY=cpu)
if [[ ",${ONLY:-}," == *",cpu,"* ]]; then
  run cpu 240 $PY bench/eval_speed.py --sections probe --data-root "$data" --repeats 2 \
    --device cpu
fi
rm -rf "$WORK"
