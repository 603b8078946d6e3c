#!/usr/bin/env bash
# Re-measures every CPU benchmark quoted in README.md, one after another (run it on a quiet machine; the two
# that time the PyTorch reference, bench_deform_conv and bench_model, need the torch extra and are skipped without it):
#   bash experiments/benchmarks/run_all.sh [QUICK_RUN_WORKDIR]
# Each benchmark prints its side-by-side ratios and writes experiments/benchmarks/results/<name>.{json,md}.
# QUICK_RUN_WORKDIR (default workdirs/quick, from `python -m experiments.train --config=derefnet_quick`) adds the
# rows decoded from that model's maps to bench_decode.
set -euo pipefail
cd "$(dirname "$0")/../.."
quick=${1:-workdirs/quick}
note="quiet machine, benchmarks run one at a time"
python -m experiments.benchmarks.bench_data --note "$note"
python -m experiments.benchmarks.bench_metric
python -m experiments.benchmarks.bench_pipeline
if python -c "import torch" 2>/dev/null; then
  python -m experiments.benchmarks.bench_deform_conv --note "$note"
  python -m experiments.benchmarks.bench_model
else  # both time the PyTorch reference side by side with ours
  echo "skipping bench_deform_conv and bench_model: they need PyTorch (pip install -e \".[torch]\")" >&2
fi
python -m experiments.benchmarks.bench_classical
python -m experiments.benchmarks.bench_cpu_threads
python -m experiments.benchmarks.bench_decode --config all
python -m experiments.benchmarks.bench_decode --config targets_2_8 --methods trajectory --no-oracle-seeds --tag _targets_2_8
python -m experiments.benchmarks.trajectory_basins
if [ -d "$quick/checkpoints/best" ]; then
  python -m experiments.benchmarks.bench_decode --config default --workdir "$quick" --tag _derefnet_quick --no-diagnostics
fi
python -m experiments.benchmarks.bench_decode_csist100k --tag=_tfds
python -m experiments.benchmarks.bench_decode_csist100k --standin --tag=_10k
