"""Training throughput: today's step-by-step host loop vs device-resident K-step calls, side by side in one run.

Run from the repository root::

    python -m experiments.benchmarks.bench_train [--steps 100] [--repeats 2] [--paper] [--paper_steps 100]

For every (global batch ∈ {1, 4}) × (compute dtype ∈ {float32, bfloat16}) it builds one
:class:`seqcsist_jax.train.Trainer` (DeRefNet, 20-frame simulated trajectories, the smoke model by default:
2 stages, 8 channels, so that the whole table runs in minutes on 2 CPU cores) and measures trajectories per
second of

* ``host``: today's loop, ``trainer.shard(next(loader))`` then the jitted ``train_step``, one dispatch a step;
* ``K=1, 10, 100``: :mod:`seqcsist_jax.train_multistep`, the split on the device and one ``lax.scan`` call of
  K steps gathering its batches there.

Compilation is excluded (one warm-up call of every shape). The variants are measured interleaved, ``--repeats``
rounds of ``--steps`` steps each, and the best round is kept, so machine load hits them alike; ratios are
against ``host`` of the same row. ``--paper`` adds the paper-size model (9 stages, 32 channels) at batch 1,
float32: host vs K = 1 and K = ``--paper_steps``.
Writes ``experiments/benchmarks/results/bench_train.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import jax

from seqcsist_jax import train_multistep
from seqcsist_jax.fileio import atomic_write, atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"


def _config(batch: int, dtype: str, paper: bool, num_train: int):
    from experiments import configs

    config = configs.get_config("derefnet:smoke")
    if paper:
        config.model.num_stages, config.model.channels = 9, 32
    else:
        config.model.num_stages, config.model.channels = 2, 8
    config.model.compute_dtype = dtype
    config.dataset.num_train = num_train
    config.dataset.simulate.frames_per_trajectory = 20
    config.global_batch_size = batch
    config.device_data = True
    config.num_train_steps = 10**6
    config.progress_bar = False
    return config


class _Runner:
    """One Trainer and its two ways of running ``n`` steps (returns trajectories/s)."""

    def __init__(self, config, workdir: str):
        from seqcsist_jax import train as train_lib

        self.trainer = train_lib.Trainer(config, workdir)
        self.state = self.trainer.initial_state()
        self.iterator = iter(self.trainer.loader)

    def host(self, n: int) -> float:
        t = self.trainer
        t0 = time.perf_counter()
        state = self.state
        for _ in range(n):
            state, metrics = t.train_step(state, t.shard(next(self.iterator)))
        jax.block_until_ready(metrics["loss"])
        seconds = time.perf_counter() - t0
        self.state = state
        return n * t.global_batch / seconds

    def device(self, n: int, k: int) -> float:
        t = self.trainer
        t0 = time.perf_counter()
        state = self.state
        for _ in range(n // k):
            table = train_multistep.indices_table(t.loader, t.loader.take_positions(k))
            state, metrics = t.multi_step(state, t.device_data, table)
        jax.block_until_ready(metrics["loss"])
        seconds = time.perf_counter() - t0
        self.state = state
        return (n // k) * k * t.global_batch / seconds


def _measure(runner: _Runner, ks: list[int], steps: int, repeats: int) -> dict[str, float]:
    runner.host(2)  # compile
    for k in ks:
        runner.device(k, k)  # compile this K
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in [("host", lambda: runner.host(steps))] + [
            (f"K={k}", (lambda k=k: runner.device(steps, k))) for k in ks
        ]:
            best[name] = max(best.get(name, 0.0), fn())
    return best


def _write(rows: list[dict], args) -> str:
    """Writes the results so far (called after every row, so a cut run keeps what it measured)."""
    for row in rows:
        row["ratio_vs_host"] = {k: v / row["traj_per_s"]["host"] for k, v in row["traj_per_s"].items()}
    result = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "steps": args.steps,
        "repeats": args.repeats,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "bench_train.json", result, indent=2)
    lines = [
        "# Training throughput: host loop vs device-resident K-step calls",
        "",
        f"Backend {result['backend']}, {len(result['devices'])} device(s), {result['cpu_count']} CPUs, load average "
        f"{', '.join(f'{x:.1f}' for x in result['load_average'])} at the end (shared machine: absolute numbers are "
        "noisy; ratios are measured interleaved in one run). Trajectories per second (ratio vs host loop).",
        "",
        "| model | global batch | dtype | " + " | ".join(rows[0]["traj_per_s"]) + " |",
        "|---|---|---|" + "---|" * len(rows[0]["traj_per_s"]),
    ]
    for row in rows:
        tps, ratio = row["traj_per_s"], row["ratio_vs_host"]
        cells = [f"{tps[k]:.1f} ({ratio[k]:.2f}×)" if k in tps else "—" for k in rows[0]["traj_per_s"]]
        lines.append(f"| {row['model']} | {row['batch']} | {row['dtype']} | " + " | ".join(cells) + " |")
    atomic_write(RESULTS / "bench_train.md", "\n".join(lines) + "\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per measurement (a multiple of 100)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--paper", action="store_true", help="also the paper-size model (slow on CPU)")
    parser.add_argument("--paper_steps", type=int, default=100)
    parser.add_argument("--num_train", type=int, default=64)
    parser.add_argument("--batches", default="1,4", help="global batch sizes, comma-separated")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--ks", default="1,10,100", help="steps per call to measure")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ks = [int(k) for k in args.ks.split(",")]
        for batch in (int(b) for b in args.batches.split(",")):
            for dtype in args.dtypes.split(","):
                runner = _Runner(_config(batch, dtype, False, args.num_train), os.path.join(tmp, f"{batch}{dtype}"))
                tps = _measure(runner, ks, args.steps, args.repeats)
                rows.append({"model": "smoke (2 stages, 8 ch)", "batch": batch, "dtype": dtype, "traj_per_s": tps})
                print(json.dumps(rows[-1]), flush=True)
                _write(rows, args)
        if args.paper:
            runner = _Runner(_config(1, "float32", True, args.num_train), os.path.join(tmp, "paper"))
            tps = _measure(runner, [1, args.paper_steps], args.paper_steps, 1)
            rows.append({"model": "paper (9 stages, 32 ch)", "batch": 1, "dtype": "float32", "traj_per_s": tps})
            print(json.dumps(rows[-1]), flush=True)
    print(_write(rows, args))



if __name__ == "__main__":
    main()
