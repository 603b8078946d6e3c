#!/usr/bin/env bash
# The paper's DeRefNet run (`--config=derefnet`: SPEC §5 and §8, global batch 4, public sampler order, overwrite
# labels, mmcv edge gradients, K = 100 steps per call) on a machine with no TFDS build: seqcsist/default's three
# splits are generated in memory (dataset `simulated` with the same seeds and split sizes, so the very same
# trajectories as `tfds.load('seqcsist/default')`). Checkpoints at every evaluation, every 300 s and on the
# SIGTERM that SECONDS sends, so running the same command again resumes where it stopped.
#
# Usage: bash experiments/benchmarks/run_paper_gpu.sh WORKDIR [SECONDS] [--config.key=value ...]
#   SECONDS > 0 stops training after that many seconds (checkpoint saved, exit status 0); 0 or absent: no limit.
#   PYTHON=python3 picks the interpreter (default: python).
set -uo pipefail
workdir=${1:?usage: run_paper_gpu.sh WORKDIR [SECONDS] [--config.key=value ...]}
seconds=${2:-0}
shift $(( $# >= 2 ? 2 : 1 ))
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
  echo "run_paper_gpu: stopped at the ${seconds}s limit (checkpoint saved); run the same command to resume"
  exit 0
fi
exit "$rc"
