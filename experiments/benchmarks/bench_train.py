"""Training throughput: today's step-by-step host loop vs device-resident K-step calls, side by side in one run.

Run from the repository root::

    python -m experiments.benchmarks.bench_train [--steps 20] [--repeats 1] [--paper] [--paper_steps 100]
    python -m experiments.benchmarks.bench_train --model=paper --tag=_gpu   # the grid with the paper model (GPU)

For every (global batch ∈ {1, 4}) × (compute dtype ∈ {float32, bfloat16}) it builds one
:class:`seqcsist_jax.train.Trainer` (DeRefNet, 20-frame simulated trajectories, the smoke model by default:
2 stages, 8 channels, so that the whole table runs in minutes on 2 CPU cores) and measures trajectories per
second of

* ``host``: today's loop, ``trainer.shard(next(loader))`` then the jitted ``train_step``, one dispatch a step;
* ``K=1, 10, 100``: :mod:`seqcsist_jax.train_multistep`, the split on the device and one ``lax.scan`` call of
  K steps gathering its batches there.

Compilation is excluded (two warm-up host steps; the K-step calls compiled ahead of time). The variants are
measured interleaved, ``--repeats`` rounds of ``--steps`` steps each (K = 100: one call of 100 steps), and the
best round is kept, so machine load hits them alike; ratios are against ``host`` of the same row. Besides wall
time it records the process CPU time (user + system) and minor page faults per step, which do not depend on
how a shared machine's cores are divided: XLA:CPU allocates a step's temporaries (~350 MB for the smoke model's
backward pass) afresh on every call and faults them in, so a K-step call pays that once per K steps.
``--paper`` adds the paper-size model (9 stages, 32 channels) at batch 1, float32: host vs K = 1 and
K = ``--paper_steps``. ``--model=paper`` runs the whole grid with the paper-size model instead (what a GPU run
measures: the paper protocol is global batch 4, float32).
Writes ``bench_train{--tag}.{json,md}`` into ``--out`` (default ``experiments/benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import resource
import time
from pathlib import Path

import jax
import numpy as np

from seqcsist_jax import train_multistep
from seqcsist_jax.fileio import atomic_write, atomic_write_json
from experiments.arg_parser import ArgumentParser

RESULTS = Path(__file__).resolve().parent / "results"


def _table_rows(rows: list[dict], names: list[str], cell) -> list[str]:
    """One Markdown line per benchmark row: model, batch, dtype, then ``cell(row, variant)`` per variant."""
    return [f"| {row['model']} | {row['batch']} | {row['dtype']} | " + " | ".join(cell(row, k) for k in names) + " |"
            for row in rows]


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
    """One Trainer and its two ways of running ``n`` steps (returns trajectories/s, and records the process CPU
    time and minor page faults per step of the last measurement in ``self.cost``)."""

    def __init__(self, config, workdir: str):
        from seqcsist_jax import train as train_lib

        self.trainer = train_lib.Trainer(config, workdir)
        self.state = self.trainer.initial_state()
        self.iterator = iter(self.trainer.loader)
        self.calls: dict[int, object] = {}
        self.cost: dict[str, float] = {}

    def compile(self, k: int) -> None:
        """Compiles the K-step call ahead of time (no warm-up call of K steps), the same jitted function as
        ``Trainer.run_steps`` uses."""
        t = self.trainer
        table = np.zeros((k, t.global_batch), np.int32)
        self.calls[k] = t.multi_step.lower(self.state, t.device_data, table).compile()

    def _timed(self, run, steps: int) -> float:
        u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        self.cost = {
            "cpu_ms_per_step": 1e3 * ((u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)) / steps,
            "sys_ms_per_step": 1e3 * (u1.ru_stime - u0.ru_stime) / steps,
            "minor_faults_per_step": (u1.ru_minflt - u0.ru_minflt) / steps,
        }
        return steps * self.trainer.global_batch / seconds

    def host(self, n: int) -> float:
        t = self.trainer

        def run():
            state = self.state
            for _ in range(n):
                state, metrics = t.train_step(state, t.shard(next(self.iterator)))
            jax.block_until_ready(metrics["loss"])
            self.state = state

        return self._timed(run, n)

    def device(self, n: int, k: int) -> float:
        t = self.trainer
        call = self.calls[k]

        def run():
            state = self.state
            for _ in range(n // k):
                table = train_multistep.indices_table(t.loader, t.loader.take_positions(k))
                state, metrics = call(state, t.device_data, table)
            jax.block_until_ready(metrics["loss"])
            self.state = state

        return self._timed(run, (n // k) * k)


def _measure(runner: _Runner, ks: list[int], steps: int, repeats: int) -> tuple[dict, dict]:
    """Best trajectories/s of each variant over ``repeats`` interleaved rounds (host, K=1, K=10, …; each K
    runs ``max(steps, K)`` steps a round), and the CPU cost per step of that best round."""
    runner.host(2)  # compile
    for k in ks:
        runner.compile(k)
    best: dict[str, float] = {}
    cost: dict[str, dict] = {}
    for _ in range(repeats):
        for name, fn in [("host", lambda: runner.host(steps))] + [
            (f"K={k}", (lambda k=k: runner.device(max(steps, k), k))) for k in ks
        ]:
            tps = fn()
            if tps > best.get(name, 0.0):
                best[name], cost[name] = tps, dict(runner.cost)
            print(f"  {name}: {tps:.2f} traj/s, {runner.cost}", flush=True)
    return best, cost


MODELS = {"smoke": "smoke (2 stages, 8 ch)", "paper": "paper (9 stages, 32 ch)"}


def _write(rows: list[dict], args, load_start) -> str:
    """Writes the results so far (called after every row, so a cut run keeps what it measured)."""
    for row in rows:
        row["ratio_vs_host"] = {k: v / row["traj_per_s"]["host"] for k, v in row["traj_per_s"].items()}
        row["cpu_ratio_vs_host"] = {k: row["cost"]["host"]["cpu_ms_per_step"] / v["cpu_ms_per_step"]
                                    for k, v in row["cost"].items()}
    result = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average": os.getloadavg(),
        "steps": args.steps,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"bench_train{args.tag}.json", result, indent=2)
    names = list(rows[0]["traj_per_s"])
    head = ["| model | global batch | dtype | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    lines = [
        "# Training throughput: host loop vs device-resident K-step calls",
        "",
        f"Backend {result['backend']} ({result['device_kind']}), {len(result['devices'])} device(s), "
        f"{result['cpu_count']} CPUs shared with "
        f"other jobs: load average {', '.join(f'{x:.1f}' for x in load_start)} at the start, "
        f"{', '.join(f'{x:.1f}' for x in result['load_average'])} at the end. One run, the variants of a row "
        f"interleaved ({args.repeats} round(s); host, K=1 and K=10 {args.steps} steps a round, K=100 one call "
        f"of 100 steps; compilation excluded). DeRefNet {MODELS[args.model]}, 20-frame trajectories.",
        "",
        "Trajectories per second, wall clock (ratio vs the host loop of the row). The machine is shared, so wall "
        "ratios move with the other jobs' load:",
        "",
        *head,
        *_table_rows(rows, names, lambda row, k: f"{row['traj_per_s'][k]:.2f} ({row['ratio_vs_host'][k]:.2f}×)"
                     if k in row["traj_per_s"] else "—"),
        "",
        "Process CPU time per training step, user + system, ms (host ÷ variant: how much less CPU a step takes; "
        "independent of how the machine's cores are shared), and minor page faults per step:",
        "",
        *head,
        *_table_rows(rows, names, lambda row, k: f"{row['cost'][k]['cpu_ms_per_step']:.0f} "
                     f"({row['cpu_ratio_vs_host'][k]:.2f}×), {row['cost'][k]['minor_faults_per_step']:.0f} faults"
                     if k in row["cost"] else "—"),
    ]
    atomic_write(args.out / f"bench_train{args.tag}.md", "\n".join(lines) + "\n")
    print(f"wrote {args.out / f'bench_train{args.tag}.md'} and .json")
    return "\n".join(lines)


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="steps per round of host, K=1, K=10 (K=100: 100)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the best round is kept")
    parser.add_argument("--paper", action="store_true",
                        help="after the grid, one extra row: the paper-size model at batch 1, float32 (slow on CPU)")
    parser.add_argument("--paper_steps", type=int, default=100, help="K of the --paper row")
    parser.add_argument("--num_train", type=int, default=64, help="simulated training trajectories on the device")
    parser.add_argument("--batches", default="1,4", help="global batch sizes, comma-separated")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="convolution dtypes, comma-separated")
    parser.add_argument("--ks", default="1,10,100", help="steps per call to measure")
    parser.add_argument("--model", choices=sorted(MODELS), default="smoke",
                        help="DeRefNet size of the grid: smoke = 2 stages x 8 channels, paper = 9 x 32")
    parser.add_argument("--tag", default="", help="suffix of the results files, e.g. _gpu writes "
                        "results/bench_train_gpu.{md,json}; without one the run replaces results/bench_train.*")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder (created if missing) for bench_train<tag>.json and .md "
                             "(the default holds the README's numbers)")
    args = parser.parse_args()

    rows = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ks = [int(k) for k in args.ks.split(",")]
        for batch in (int(b) for b in args.batches.split(",")):
            for dtype in args.dtypes.split(","):
                runner = _Runner(_config(batch, dtype, args.model == "paper", args.num_train),
                                 os.path.join(tmp, f"{batch}{dtype}"))
                tps, cost = _measure(runner, ks, args.steps, args.repeats)
                rows.append({"model": MODELS[args.model], "batch": batch, "dtype": dtype, "traj_per_s": tps,
                             "cost": cost})
                print(json.dumps(rows[-1]), flush=True)
                _write(rows, args, load_start)
        if args.paper:
            runner = _Runner(_config(1, "float32", True, args.num_train), os.path.join(tmp, "paper"))
            tps, cost = _measure(runner, [1, args.paper_steps], args.paper_steps, 1)
            rows.append({"model": MODELS["paper"], "batch": 1, "dtype": "float32", "traj_per_s": tps,
                         "cost": cost})
            print(json.dumps(rows[-1]), flush=True)
    print(_write(rows, args, load_start))


if __name__ == "__main__":
    main()
