"""How many CPU cores one XLA process uses for a convolution and for a matrix product (why ``compare --jobs=2``
pays on a 2-core machine): ``python -m experiments.benchmarks.bench_cpu_threads``.

Each case runs in a fresh process, pinned to one core or free to use all of them, and reports GFLOP/s of a
jitted chain of 20 3×3 convolutions (the SR networks' shape: 160 images of 11×11, 64 → 64 channels) and of a
2048² matrix product; then two unpinned convolution processes run at once. Results go to
``results/bench_cpu_threads.{md,json}``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import platform
import time
from experiments.arg_parser import ArgumentParser
from experiments.cli import plain_text

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _measure(kind: str, cores: list[int] | None, repeats: int, queue) -> None:
    if cores is not None:
        os.sched_setaffinity(0, cores)  # before JAX starts its threads
    import jax
    import jax.numpy as jnp

    if kind == "conv":
        x, w = jnp.ones((160, 11, 11, 64)), jnp.full((3, 3, 64, 64), 0.01)

        @jax.jit
        def run(x, w):
            for _ in range(20):
                x = jax.nn.leaky_relu(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                                   dimension_numbers=("NHWC", "HWIO", "NHWC")))
            return x

        args, flops = (x, w), 20 * 2 * 160 * 121 * 64 * 64 * 9
    else:
        a = jnp.ones((2048, 2048))
        run, args, flops = jax.jit(lambda a: a @ a), (a,), 2 * 2048**3
    run(*args).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(*args).block_until_ready()
        best = min(best, time.perf_counter() - start)
    queue.put(flops / best / 1e9)


def _run(cases: list[tuple[str, list[int] | None]], repeats: int) -> list[float]:
    """Runs the cases at once, each in its own spawned process; GFLOP/s of each."""
    context = multiprocessing.get_context("spawn")
    queues = [context.Queue() for _ in cases]
    procs = [context.Process(target=_measure, args=(kind, cores, repeats, q)) for (kind, cores), q in zip(cases, queues)]
    for p in procs:
        p.start()
    values = [q.get() for q in queues]
    for p in procs:
        p.join()
    return values


def main() -> dict:
    parser = ArgumentParser(description=plain_text(__doc__.split("\n\n")[0]))
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed calls per case after one compile call; the fastest is reported "
                             "(default %(default)s)")
    parser.add_argument("--output", default=str(RESULTS / "bench_cpu_threads"),
                        help="path prefix of the results: .md and .json replace its suffix, if any "
                             "(default: experiments/benchmarks/results/bench_cpu_threads)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    rows = []
    for kind in ("conv", "matmul"):
        (one,) = _run([(kind, cores[:1])], args.repeats)
        (all_,) = _run([(kind, None)], args.repeats)
        rows.append({"case": kind, "one core": one, f"all {len(cores)} cores": all_, "ratio": all_ / one})
        print(f"{kind}: one core {one:.1f} GFLOP/s, all {len(cores)} cores {all_:.1f} GFLOP/s ({all_ / one:.2f}×)")
    both = _run([("conv", None), ("conv", None)], args.repeats)
    print(f"two conv processes at once: {both[0]:.1f} + {both[1]:.1f} = {sum(both):.1f} GFLOP/s "
          f"({sum(both) / rows[0]['one core']:.2f}× one process)")
    machine = {"platform": platform.platform(), "cpus": len(cores), "load": os.getloadavg()}
    lines = ["# GFLOP/s of one XLA:CPU process, pinned to one core or free",
             "", "`python -m experiments.benchmarks.bench_cpu_threads` (best of "
             f"{args.repeats} calls, each case in a fresh process)", "",
             f"| case | one core | all {len(cores)} cores | all / one |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['one core']:.1f} | {r[f'all {len(cores)} cores']:.1f} | {r['ratio']:.2f}× |"
              for r in rows]
    lines += ["", f"Two unpinned convolution processes at once: {both[0]:.1f} + {both[1]:.1f} = {sum(both):.1f} "
              f"GFLOP/s, {sum(both) / rows[0]['one core']:.2f}× one process on one core.", "",
              "conv: 20 jitted 3×3 convolutions, 160 × 11 × 11 × 64 → 64 channels, leaky ReLU; matmul: 2048² f32.",
              "", f"Machine: {machine['platform']}, {machine['cpus']} CPUs, load average "
              + ", ".join(f"{v:.2f}" for v in machine["load"])]
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    result = {"rows": rows, "two_conv_processes": both, "machine": machine}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
