#!/usr/bin/env bash
# The paper's DeRefNet run (`--config=derefnet`: SPEC §5 and §8, global batch 4, public sampler order, overwrite
# labels, mmcv edge gradients, K = 100 steps per call) on a machine with no TFDS build: seqcsist/default's three
# splits are generated in memory (dataset `simulated` with the same seeds and split sizes, so the very same
# trajectories as `tfds.load('seqcsist/default')`). Checkpoints at every evaluation, every 300 s and on the
# SIGTERM that SECONDS sends, so running the same command again resumes where it stopped.
#
# Usage: bash experiments/benchmarks/run_paper_gpu.sh WORKDIR [SECONDS] [--config.key=value ...]
#   SECONDS > 0 stops training after that many seconds (SIGTERM: the trainer saves a checkpoint once its first
#   step has run; exit status 0); 0 or absent: no limit.
#   PYTHON=python3 picks the interpreter (default: python).
set -uo pipefail
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: run_paper_gpu.sh WORKDIR [SECONDS] [--config.key=value ...]" >&2
  exit 2
fi
workdir=$1
shift
seconds=0
if [ $# -ge 1 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
cmd=("${PYTHON:-python}" -m experiments.train --config=derefnet --workdir="$workdir"
  --config.dataset.name=simulated --config.dataset.num_train=3500 --config.dataset.num_eval=750
  --config.dataset.num_test=750 --config.checkpoint_every_steps=0 "$@")
echo "+ ${cmd[*]}"
if [ "$seconds" -le 0 ]; then
  exec "${cmd[@]}"
fi
start=$(date +%s)
timeout --signal=TERM --kill-after=30 "$seconds" "${cmd[@]}"
rc=$?
echo "run_paper_gpu: exit status $rc after $(( $(date +%s) - start )) s"
if [ "$rc" -eq 124 ]; then
  last=$(ls "$workdir/checkpoints/latest" 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -n 1)
  if [ -n "$last" ]; then
    echo "run_paper_gpu: stopped at the ${seconds}s limit as asked; latest checkpoint at step $last; run the same command to resume"
  else
    echo "run_paper_gpu: stopped at the ${seconds}s limit as asked, before the first checkpoint (nothing to resume; the same command starts again)"
  fi
  exit 0
fi
exit "$rc"
