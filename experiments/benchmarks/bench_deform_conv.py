"""Deformable convolution alone: JAX formulations vs ``torchvision.ops.deform_conv2d``, side by side.

Run from the repository root::

    python -m experiments.benchmarks.bench_deform_conv [--repeats 5] [--methods gather matmul] [--no-torch]

At DeRefNet's shape by default (N = 64 centre/neighbour pairs, 33×33, C = O = 32, 3×3, stride 1, padding 1,
one offset group, float32, offsets ~ N(0, 1) px), on the default JAX backend and on PyTorch's CPU kernels,
measures forward and forward + backward (gradients w.r.t. input, offsets and kernel for a fixed random
cotangent), each repetition interleaving all implementations so that machine load hits them alike; reports
medians (and minima), the JAX / PyTorch time ratios (< 1: JAX faster) and the largest difference between
the JAX and PyTorch outputs on these inputs. Writes
``experiments/benchmarks/results/bench_deform_conv.{json,md}``.

``run(...) -> dict`` is the importable entry point (the model benchmark includes it).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from experiments.arg_parser import ArgumentParser
from experiments.cli import plain_text

RESULTS = Path(__file__).resolve().parent / "results"


def _inputs(batch: int, size: int, channels: int, features: int, offset_scale: float, seed: int):
    rng = np.random.default_rng(seed)
    bound = np.sqrt(6.0 / (9 * channels))  # mmcv's kaiming-uniform bound
    return {
        "x": rng.normal(size=(batch, size, size, channels)).astype(np.float32),
        "offset": (offset_scale * rng.normal(size=(batch, size, size, 18))).astype(np.float32),
        "kernel": rng.uniform(-bound, bound, size=(3, 3, channels, features)).astype(np.float32),
        "cotangent": rng.normal(size=(batch, size, size, features)).astype(np.float32),
    }


def _jax_impls(inputs: dict, methods: Sequence[str]) -> dict[str, dict[str, Callable[[], Any]]]:
    import jax
    import jax.numpy as jnp

    from seqcsist_jax.ops.deform_conv import deform_conv2d

    args = [jnp.asarray(inputs[k]) for k in ("x", "offset", "kernel")]
    cot = jnp.asarray(inputs["cotangent"])
    impls = {}
    for method in methods:

        def f(x, offset, kernel, method=method):
            return deform_conv2d(x, offset, kernel, stride=1, padding=1, method=method)

        fwd = jax.jit(f)
        fwd_bwd = jax.jit(lambda x, o, k, f=f: jax.vjp(f, x, o, k)[1](cot))
        impls[f"jax:{method}"] = {
            "forward": lambda fwd=fwd: jax.block_until_ready(fwd(*args)),
            "forward+backward": lambda fb=fwd_bwd: jax.block_until_ready(fb(*args)),
            "output": lambda fwd=fwd: np.asarray(fwd(*args)),
        }
    return impls


def _torch_impl(inputs: dict) -> dict[str, Callable[[], Any]]:
    import torch
    import torchvision

    def nchw(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    x, offset, cot = nchw(inputs["x"]), nchw(inputs["offset"]), nchw(inputs["cotangent"])
    weight = torch.from_numpy(np.ascontiguousarray(inputs["kernel"].transpose(3, 2, 0, 1)))

    def forward():
        with torch.no_grad():
            return torchvision.ops.deform_conv2d(x, offset, weight, padding=(1, 1))

    def forward_backward():
        xs, os_, ws = (t.detach().requires_grad_(True) for t in (x, offset, weight))
        torchvision.ops.deform_conv2d(xs, os_, ws, padding=(1, 1)).backward(cot)
        return xs.grad, os_.grad, ws.grad

    return {
        "forward": forward,
        "forward+backward": forward_backward,
        "output": lambda: forward().numpy().transpose(0, 2, 3, 1),
    }


def run(
    batch: int = 64,
    size: int = 33,
    channels: int = 32,
    features: int = 32,
    repeats: int = 5,
    methods: Sequence[str] = ("gather", "matmul"),
    torch_baseline: bool = True,
    offset_scale: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Times every implementation; returns a JSON-serialisable dict (see module docstring).

    ``result["timings_ms"][impl][phase]`` holds ``median``/``min``/``all`` in milliseconds for
    ``impl`` in ``jax:<method>`` (and ``torchvision``), ``phase`` in ``forward``, ``forward+backward``;
    ``result["ratios_jax_over_torch"][f"{impl}/{phase}"]`` the median-time ratios.
    """
    import jax

    inputs = _inputs(batch, size, channels, features, offset_scale, seed)
    impls = _jax_impls(inputs, methods)
    info: dict[str, Any] = {
        "shape": {"batch": batch, "size": size, "channels": channels, "features": features, "kernel": [3, 3]},
        "offset_scale_px": offset_scale,
        "dtype": "float32",
        "repeats": repeats,
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
    if torch_baseline:
        import torch
        import torchvision

        impls["torchvision"] = _torch_impl(inputs)
        info.update(torch=torch.__version__, torchvision=torchvision.__version__,
                    torch_threads=torch.get_num_threads())

    phases = ("forward", "forward+backward")
    compile_s = {}
    for name, impl in impls.items():  # warm-up: compilation (JAX) and allocator/thread-pool start (both)
        t = time.perf_counter()
        for phase in phases:
            impl[phase]()
        compile_s[name] = time.perf_counter() - t
    outputs = {name: impl["output"]() for name, impl in impls.items()}

    times: dict[str, dict[str, list[float]]] = {name: {p: [] for p in phases} for name in impls}
    try:
        from tqdm import tqdm

        rounds = tqdm(range(repeats), desc="deform_conv rounds", disable=not progress)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        rounds = range(repeats)
    for _ in rounds:
        for name, impl in impls.items():
            for phase in phases:
                t = time.perf_counter()
                impl[phase]()
                times[name][phase].append((time.perf_counter() - t) * 1e3)

    timings = {
        name: {p: {"median": statistics.median(v), "min": min(v), "all": v} for p, v in per.items()}
        for name, per in times.items()
    }
    result = {"info": info, "warmup_s": compile_s, "timings_ms": timings}
    if torch_baseline:
        ref = outputs["torchvision"]
        result["max_abs_diff_vs_torch"] = {
            name: float(np.abs(out - ref).max()) for name, out in outputs.items() if name != "torchvision"
        }
        result["ratios_jax_over_torch"] = {
            f"{name}/{p}": timings[name][p]["median"] / timings["torchvision"][p]["median"]
            for name in impls
            if name != "torchvision"
            for p in phases
        }
    return result


def to_markdown(result: dict, note: str = "") -> str:
    info = result["info"]
    s = info["shape"]
    lines = [
        "# Deformable convolution: JAX vs torchvision",
        "",
        f"Shape: N = {s['batch']}, {s['size']}×{s['size']}, C = {s['channels']} → O = {s['features']}, 3×3, "
        f"stride 1, padding 1, 1 offset group, {info['dtype']}, "
        f"offsets ~ N(0, {info['offset_scale_px']}) px.",
        f"JAX {info['jax']} on `{info['jax_backend']}`; "
        + (
            f"torch {info['torch']} / torchvision {info['torchvision']} on CPU "
            f"({info['torch_threads']} threads); "
            if "torch" in info
            else ""
        )
        + f"{info['cpu_count']} CPUs; {info['platform']}; {info['repeats']} interleaved repetitions.",
    ]
    if note:
        lines += ["", f"Note: {note}"]
    lines += ["", "| implementation | forward (ms, median / min) | forward+backward (ms, median / min) |",
              "|---|---|---|"]
    for name, per in result["timings_ms"].items():
        f, fb = per["forward"], per["forward+backward"]
        lines.append(
            f"| {name} | {f['median']:.1f} / {f['min']:.1f} | {fb['median']:.1f} / {fb['min']:.1f} |"
        )
    if "ratios_jax_over_torch" in result:
        lines += ["", "JAX / PyTorch time ratio (median; < 1 means JAX is faster):", ""]
        lines += [f"- {k}: {v:.3f}" for k, v in result["ratios_jax_over_torch"].items()]
        lines += ["", "Largest |JAX − torchvision| output difference on these inputs:", ""]
        lines += [f"- {k}: {v:.2e}" for k, v in result["max_abs_diff_vs_torch"].items()]
    lines += ["", "Warm-up (compilation for JAX) seconds: "
              + ", ".join(f"{k} {v:.1f}" for k, v in result["warmup_s"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("--batch", type=int, default=64,
                        help="batch size N of the input (DeRefNet: 64 centre/neighbour pairs; "
                             "default %(default)s)")
    parser.add_argument("--size", type=int, default=33,
                        help="height = width of the input and output maps, in pixels (default %(default)s)")
    parser.add_argument("--channels", type=int, default=32, help="input channels C (default %(default)s)")
    parser.add_argument("--features", type=int, default=32, help="output channels O (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved timed rounds after one warm-up; median and minimum are reported "
                             "(default %(default)s)")
    parser.add_argument("--methods", nargs="+", default=["gather", "matmul"], choices=["gather", "matmul", "auto"],
                        help="JAX formulations of deform_conv2d to time, space-separated: gather, matmul or "
                             "auto (= gather) (default: gather matmul)")
    parser.add_argument("--offset-scale", type=float, default=1.0, help="offset std in pixels")
    parser.add_argument("--no-torch", action="store_true", help="skip the torchvision baseline")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "bench_deform_conv",
        help="path prefix of the results: .json and .md replace its suffix, if any "
             "(default: experiments/benchmarks/results/bench_deform_conv)",
    )
    args = parser.parse_args(argv)
    result = run(
        batch=args.batch,
        size=args.size,
        channels=args.channels,
        features=args.features,
        repeats=args.repeats,
        methods=args.methods,
        torch_baseline=not args.no_torch,
        offset_scale=args.offset_scale,
    )
    result["note"] = args.note
    md = to_markdown(result, args.note)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(md)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
