#!/usr/bin/env bash
# The GPU comparison recorded in results/compare_gpu.* (one NVIDIA H200, 2026-11-26): paper-size data
# (the in-memory simulator with seqcsist/default's seeds and split sizes, so no TFDS build is needed on the
# GPU machine), an equal 2-epoch budget per learned method (lr 1e-3, cosine), best of 2 validation evaluations.
# Usage: bash experiments/benchmarks/run_compare_gpu.sh [OUTPUT_PREFIX]
set -euo pipefail
out=${1:-experiments/benchmarks/results/compare_gpu}
python -m experiments.compare --methods=derefnet,srcnn,espcn,fistanet,istanet,edsr,ista \
  --dataset=simulated --config.dataset.num_train=3500 --config.dataset.num_eval=750 --config.dataset.num_test=750 \
  --budget_epochs=2 --learning_rate=1e-3 --lr_schedule=cosine --evals=2 --max_eval_trajectories=150 \
  --workdir=/tmp/compare_gpu --output="$out"
