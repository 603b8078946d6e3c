"""Data-generation benchmark: closed-form rendering vs the public per-pixel ``dblquad`` method, simulator wall
time for the paper-size dataset, and public-format file I/O.

Run from the repository root::

    python -m experiments.benchmarks.bench_data [--dblquad-frames 2] [--render-trajectories 5000]
        [--sim-trajectories 5000] [--io-trajectories 500] [--io-dir DIR] [--note "shared 2-core machine"]

All rates are measured side by side in one run and written, with a machine description, to
``experiments/benchmarks/results/bench_data.json`` and ``.md``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.integrate import dblquad

from seqcsist_jax import imaging
from seqcsist_jax.data import public_format
from seqcsist_jax.data.simulate import simulate_seqcsist
from experiments.arg_parser import ArgumentParser
from experiments.cli import plain_text

RESULTS = Path(__file__).resolve().parent / "results"


def render_dblquad(targets: np.ndarray, size: int = 11, sigma: float = 0.5) -> np.ndarray:
    """Reference renderer, the public method: one ``scipy.integrate.dblquad`` per pixel per target.

    Args:
      targets: ``(K, 3)`` rows ``(xc, yc, brightness)``; rows with brightness 0 are skipped.

    Returns:
      ``(size, size)`` float64; ``xc`` on rows. Default dblquad tolerances, as the public code uses.
    """
    norm = 1.0 / (2.0 * math.pi * sigma * sigma)
    inv = 1.0 / (2.0 * sigma * sigma)

    def psf(v: float, u: float, xc: float, yc: float, b: float) -> float:  # v: column (inner), u: row (outer)
        return b * norm * math.exp(-((u - xc) ** 2 + (v - yc) ** 2) * inv)

    out = np.zeros((size, size))
    for r in range(size):
        for c in range(size):
            for xc, yc, b in targets:
                if b != 0:
                    out[r, c] += dblquad(psf, r - 0.5, r + 0.5, c - 0.5, c + 0.5, args=(xc, yc, b))[0]
    return out


def _timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls (seconds) and the last result."""
    best, result = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def machine() -> dict[str, Any]:
    """Platform, CPU model and core count of this machine."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import jax

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
    }


def bench_render(dblquad_frames: int, render_trajectories: int) -> dict[str, Any]:
    data = simulate_seqcsist(max(render_trajectories, 1), seed=0)
    targets = data["targets"].astype(np.float64)
    frames = targets.reshape(-1, *targets.shape[2:])
    n = frames.shape[0]

    # Reference: the first frames (K = 2..4 targets each, as in the dataset).
    ref_frames = frames[:dblquad_frames]
    t_ref, ref = _timed(lambda: np.stack([render_dblquad(f) for f in ref_frames]))
    fast = imaging.render(ref_frames)
    rel_err = float(np.max(np.abs(fast - ref) / np.maximum(np.abs(ref), 1e-300)))
    abs_err = float(np.max(np.abs(fast - ref)))

    t_np, _ = _timed(lambda: imaging.render(frames), repeats=3)

    import jax
    import jax.numpy as jnp

    render_jit = jax.jit(imaging.render)
    frames32 = jnp.asarray(frames, jnp.float32)
    render_jit(frames32).block_until_ready()  # compile outside the timing
    t_jax, _ = _timed(lambda: render_jit(frames32).block_until_ready(), repeats=3)

    fps_ref = dblquad_frames / t_ref
    return {
        "dblquad_frames": dblquad_frames,
        "dblquad_seconds": t_ref,
        "dblquad_fps": fps_ref,
        "dblquad_targets_per_frame": float((ref_frames[..., 2] != 0).sum(-1).mean()),
        "closed_form_vs_dblquad_max_rel_err": rel_err,
        "closed_form_vs_dblquad_max_abs_err": abs_err,
        "render_frames": n,
        "render_numpy_seconds": t_np,
        "render_numpy_fps": n / t_np,
        "render_jax_cpu_seconds": t_jax,
        "render_jax_cpu_fps": n / t_jax,
        "speedup_numpy_vs_dblquad": (n / t_np) / fps_ref,
        "speedup_jax_vs_dblquad": (n / t_jax) / fps_ref,
    }


def bench_simulator(sim_trajectories: int) -> dict[str, Any]:
    simulate_seqcsist(10, seed=1)  # warm imports and caches
    t_sim, data = _timed(lambda: simulate_seqcsist(sim_trajectories, seed=1), repeats=2)
    out_bytes = sum(v.nbytes for v in data.values())
    n_frames = data["frames"].shape[0] * data["frames"].shape[1]
    clipped_frames = int(np.count_nonzero(data["clipped_pixels"]))
    del data
    # Peak memory (numpy allocations are traced) of a separate, untimed run.
    tracemalloc.start()
    simulate_seqcsist(sim_trajectories, seed=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t_noise, _ = _timed(lambda: simulate_seqcsist(sim_trajectories, seed=1, noise_sigma=3.0))
    return {
        "sim_trajectories": sim_trajectories,
        "sim_frames": n_frames,
        "sim_seconds": t_sim,
        "sim_fps": n_frames / t_sim,
        "sim_noise3_seconds": t_noise,
        "sim_output_mib": out_bytes / 2**20,
        "sim_peak_traced_mib": peak / 2**20,
        "sim_frames_with_clipped_pixels": clipped_frames,
        "sim_fraction_frames_clipped": clipped_frames / max(n_frames, 1),
    }


def bench_io(io_trajectories: int, io_dir: str | None) -> dict[str, Any]:
    data = simulate_seqcsist(io_trajectories, seed=2)
    n = io_trajectories * data["frames"].shape[1]
    if io_dir is not None:
        Path(io_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_", dir=io_dir))
    try:
        t_write, _ = _timed(lambda: public_format.write_public_split(tmp, "test", data, progress=False))
        t_read, back = _timed(lambda: public_format.read_public_split(
            tmp, "test", max_targets=data["targets"].shape[2], progress=False))
        exact = all(back[k].tobytes() == data[k].tobytes() for k in ("frames", "targets", "num_targets"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "io_dir": str(tmp.parent),
        "io_frames": n,
        "io_write_seconds": t_write,
        "io_write_fps": n / t_write,
        "io_read_seconds": t_read,
        "io_read_fps": n / t_read,
        "io_read_100k_frames_estimate_seconds": 100_000 / (n / t_read),
        "io_round_trip_exact": exact,
    }


def _markdown(result: dict[str, Any]) -> str:
    m, r = result["machine"], result["results"]
    lines = [
        "# bench_data",
        "",
        f"Measured {result['timestamp']} with `{result['command']}`.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, numpy {m['numpy']}, "
        f"JAX {m['jax']} ({m['jax_backend']}).",
    ]
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    lines += ["", "| quantity | value |", "|---|---|"]
    rows = [
        ("dblquad reference renderer (public method)", f"{r['dblquad_fps']:.3g} frames/s "
         f"({r['dblquad_frames']} frames, {r['dblquad_targets_per_frame']:.1f} targets/frame)"),
        ("closed form vs dblquad, max relative error", f"{r['closed_form_vs_dblquad_max_rel_err']:.2e}"),
        (f"closed-form render, numpy float64 ({r['render_frames']:,} frames)", f"{r['render_numpy_fps']:,.0f} frames/s"),
        ("closed-form render, JAX jit CPU float32", f"{r['render_jax_cpu_fps']:,.0f} frames/s"),
        ("**speed-up numpy render / dblquad**", f"**{r['speedup_numpy_vs_dblquad']:,.0f}×**"),
        ("speed-up JAX render / dblquad", f"{r['speedup_jax_vs_dblquad']:,.0f}×"),
        (f"simulator, {r['sim_trajectories']:,} trajectories ({r['sim_frames']:,} frames, uint8)",
         f"{r['sim_seconds']:.2f} s ({r['sim_fps']:,.0f} frames/s)"),
        ("simulator with noise σ = 3", f"{r['sim_noise3_seconds']:.2f} s"),
        ("simulator output / peak traced memory", f"{r['sim_output_mib']:.1f} MiB / {r['sim_peak_traced_mib']:.1f} MiB"),
        ("frames with clipped pixels (8-bit storage)", f"{r['sim_frames_with_clipped_pixels']:,} "
         f"({100 * r['sim_fraction_frames_clipped']:.1f} %)"),
        ("public format I/O directory", f"`{r['io_dir']}`"),
        (f"public format write ({r['io_frames']:,} frames)", f"{r['io_write_seconds']:.2f} s ({r['io_write_fps']:,.0f} frames/s)"),
        (f"public format read ({r['io_frames']:,} frames)", f"{r['io_read_seconds']:.2f} s ({r['io_read_fps']:,.0f} frames/s); "
         f"100k frames ≈ {r['io_read_100k_frames_estimate_seconds']:.0f} s"),
        ("round trip exact", str(r["io_round_trip_exact"])),
    ]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = ArgumentParser(description=plain_text(__doc__.split("\n\n")[0]))
    p.add_argument("--dblquad-frames", type=int, default=2, help="frames rendered by the dblquad reference")
    p.add_argument("--render-trajectories", type=int, default=5000, help="×20 frames for the vectorised render")
    p.add_argument("--sim-trajectories", type=int, default=5000, help="simulator size (paper: 5000)")
    p.add_argument("--io-trajectories", type=int, default=500, help="×20 frames written and read back")
    p.add_argument("--io-dir", default=None,
                   help="where the I/O benchmark writes its temporary split (default: the system temp dir); "
                        "file-creation speed depends heavily on this file system")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    p.add_argument("--out", default=str(RESULTS), help="directory for bench_data.json/.md")
    args = p.parse_args(argv)

    results: dict[str, Any] = {}
    print("rendering ...", flush=True)
    results.update(bench_render(args.dblquad_frames, args.render_trajectories))
    print(f"  dblquad {results['dblquad_fps']:.3g} frames/s | numpy {results['render_numpy_fps']:,.0f} frames/s | "
          f"JAX {results['render_jax_cpu_fps']:,.0f} frames/s | ratio numpy/dblquad "
          f"{results['speedup_numpy_vs_dblquad']:,.0f}× (max rel err {results['closed_form_vs_dblquad_max_rel_err']:.1e})",
          flush=True)
    print("simulator ...", flush=True)
    results.update(bench_simulator(args.sim_trajectories))
    print(f"  {args.sim_trajectories} trajectories in {results['sim_seconds']:.2f} s "
          f"({results['sim_fps']:,.0f} frames/s), peak {results['sim_peak_traced_mib']:.0f} MiB for "
          f"{results['sim_output_mib']:.0f} MiB output", flush=True)
    print("public format I/O ...", flush=True)
    results.update(bench_io(args.io_trajectories, args.io_dir))
    print(f"  write {results['io_write_fps']:,.0f} frames/s, read {results['io_read_fps']:,.0f} frames/s, "
          f"exact={results['io_round_trip_exact']}", flush=True)

    record = {
        "benchmark": "bench_data",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "experiments.benchmarks.bench_data",
                               *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "note": args.note,
        "args": vars(args),
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_data.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    (out / "bench_data.md").write_text(_markdown(record), encoding="utf-8")
    print(f"wrote {out / 'bench_data.json'} and {out / 'bench_data.md'}")
    return record


if __name__ == "__main__":
    main()
