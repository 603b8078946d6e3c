"""DeRefNet speed: the Flax model vs the PyTorch reference, same machine, one run (needs the `torch` extra).

Run from the repository root::

    python -m experiments.benchmarks.bench_model [--repeats 3] [--batch 8] [--skip-loop] [--torch-device cuda]

Measures, for the default model (9 stages, 32 channels) on 20-frame trajectories of raw grey values:

* inference: output frames per second (16 scored centre frames per trajectory), one trajectory per call
  (the public protocol) and ``--batch`` trajectories per call;
* training: trajectories per second of a full step (forward, loss, backward, Adam with L2 weight decay 1e-5);
* the deformable convolution alone at DeRefNet's shape (64 pairs, 33×33, 32→32, 3×3), forward and
  forward+backward, vs ``torchvision.ops.deform_conv2d``;

for JAX (jitted), PyTorch in the public code's loop structure (per trajectory, per centre, per neighbour) and
PyTorch vectorised (all pairs in one batched call, like the JAX model). Ratios are JAX / PyTorch throughputs
(> 1: JAX faster). Also reports parameters and XLA's FLOPs per trajectory next to the paper's numbers.
Writes ``experiments/benchmarks/results/bench_model.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
from experiments.arg_parser import ArgumentParser
from experiments.cli import plain_text

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"params_M": 0.89, "GFLOPs": 15.70, "FPS": 367}


def _timeit(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import jax
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
    }


def _device_name(torch_device: str) -> str:
    import jax

    dev = jax.devices()[0]
    return f"JAX on {dev.platform}:{getattr(dev, 'device_kind', '')}, PyTorch on {torch_device}"


def _inputs(batch: int, frames: int = 20):
    from seqcsist_jax.testing import parity_inputs as pi

    return pi.derefnet_parity_inputs(0, batch, frames)


def _torch_sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def bench_models(repeats: int, batch: int, skip_loop: bool, device: str = "cpu") -> dict:
    import jax
    import optax
    import torch

    from experiments.reference.torch_derefnet import TorchDeRefNet, torch_derefnet_loss
    from seqcsist_jax.interop import convert_state_dict, state_dict_shapes
    from seqcsist_jax.models.derefnet_loss import derefnet_loss
    from seqcsist_jax.models import DeRefNet
    from seqcsist_jax.model_stats import count_params, flops_per_trajectory
    from seqcsist_jax.testing import parity_inputs as pi

    model = DeRefNet()
    state = pi.derefnet_parity_state_dict(0, state_dict_shapes())
    params = convert_state_dict(state)
    one, many = _inputs(1), _inputs(batch)
    phi, q = one["phi"], one["q"]
    out_frames = len(model.output_frame_index(20))
    res: dict = {"params": count_params(params), "output_frames_per_trajectory": out_frames}
    res["gflops_inference"] = flops_per_trajectory(model, params, phi, q) / 1e9
    res["gflops_train_step"] = flops_per_trajectory(model, params, phi, q, training=True) / 1e9

    # ---- JAX
    fwd = jax.jit(lambda p, f: model.apply({"params": p}, f, phi, q)["output"])
    tx = optax.chain(optax.add_decayed_weights(1e-5), optax.adam(1e-4))  # PyTorch Adam(weight_decay) = L2

    @jax.jit
    def step(p, opt_state, frames, labels):
        def loss(p):
            return derefnet_loss(model.apply({"params": p}, frames, phi, q), labels)[0]

        value, grads = jax.value_and_grad(loss)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value

    opt_state = tx.init(params)
    jf1, jfb = jax.device_put(one["frames"]), jax.device_put(many["frames"])
    jl1 = jax.device_put(one["labels"])
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, opt_state, jf1, jl1))
    res["jax_train_compile_s"] = time.perf_counter() - t0
    jax_inf1 = _timeit(lambda: jax.block_until_ready(fwd(params, jf1)), repeats * 3)
    jax_infb = _timeit(lambda: jax.block_until_ready(fwd(params, jfb)), repeats)
    state_holder = [params, opt_state]

    def jax_step():
        p, s, v = step(state_holder[0], state_holder[1], jf1, jl1)
        jax.block_until_ready(v)
        state_holder[:] = [p, s]

    jax_train = _timeit(jax_step, repeats * 2)

    # ---- PyTorch
    sync = _torch_sync(device)
    tmodel = TorchDeRefNet()
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    tmodel.to(device)
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-4, weight_decay=1e-5)
    tphi, tq = torch.from_numpy(phi).to(device), torch.from_numpy(q).to(device)
    tf1, tfb, tl1 = (torch.from_numpy(a).to(device) for a in (one["frames"], many["frames"], one["labels"]))

    def t_infer(frames, mode):
        with torch.no_grad():
            tmodel(frames, tphi, tq, mode=mode)
        sync()

    def t_step(mode):
        out = tmodel(tf1, tphi, tq, mode=mode)
        loss, _ = torch_derefnet_loss(out, tl1)
        topt.zero_grad()
        loss.backward()
        topt.step()
        sync()

    timings = {
        "jax": {"infer_1": jax_inf1, "infer_batch": jax_infb, "train": jax_train},
        "torch_vectorised": {
            "infer_1": _timeit(lambda: t_infer(tf1, "vectorised"), repeats * 3),
            "infer_batch": _timeit(lambda: t_infer(tfb, "vectorised"), repeats),
            "train": _timeit(lambda: t_step("vectorised"), repeats * 2),
        },
    }
    if not skip_loop:
        timings["torch_loop"] = {
            "infer_1": _timeit(lambda: t_infer(tf1, "loop"), repeats),
            "infer_batch": _timeit(lambda: t_infer(tfb, "loop"), 1, warmup=0),
            "train": _timeit(lambda: t_step("loop"), repeats),
        }
    rows = {}
    for impl, t in timings.items():
        rows[impl] = {
            "inference_frames_per_s_b1": out_frames / t["infer_1"],
            f"inference_frames_per_s_b{batch}": batch * out_frames / t["infer_batch"],
            "train_trajectories_per_s": 1.0 / t["train"],
            "seconds": t,
        }
    res["throughput"] = rows
    res["ratios_jax_over"] = {
        impl: {k: rows["jax"][k] / rows[impl][k] for k in rows["jax"] if k != "seconds"}
        for impl in rows
        if impl != "jax"
    }
    return res


def bench_deform(repeats: int, device: str = "cpu") -> dict:
    """The deformable op alone at DeRefNet's shape: JAX (default method) vs torchvision, forward and fwd+bwd."""
    import jax
    import torch
    import torchvision

    from seqcsist_jax.ops.deform_conv import deform_conv2d

    rng = np.random.default_rng(0)
    n, h, c = 64, 33, 32
    x = rng.normal(size=(n, h, h, c)).astype(np.float32)
    off = rng.normal(0, 1.5, size=(n, h, h, 18)).astype(np.float32)
    k = (rng.normal(size=(3, 3, c, c)) / np.sqrt(9 * c)).astype(np.float32)
    fwd = jax.jit(lambda x, o, k: deform_conv2d(x, o, k, padding=1))
    grad = jax.jit(jax.grad(lambda x, o, k: deform_conv2d(x, o, k, padding=1).sum(), argnums=(0, 1, 2)))
    jx, jo, jk = (jax.device_put(a) for a in (x, off, k))
    res = {
        "jax_forward_s": _timeit(lambda: jax.block_until_ready(fwd(jx, jo, jk)), repeats * 3),
        "jax_fwd_bwd_s": _timeit(lambda: jax.block_until_ready(grad(jx, jo, jk)), repeats * 3),
    }
    sync = _torch_sync(device)
    tx, to, tk = (
        torch.from_numpy(a.copy()).to(device).requires_grad_(True)
        for a in (x.transpose(0, 3, 1, 2), off.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1))
    )

    def t_fwd():
        with torch.no_grad():
            torchvision.ops.deform_conv2d(tx, to, tk, padding=(1, 1))
        sync()

    def t_bwd():
        torchvision.ops.deform_conv2d(tx, to, tk, padding=(1, 1)).sum().backward()
        sync()

    res["torch_forward_s"] = _timeit(t_fwd, repeats * 3)
    res["torch_fwd_bwd_s"] = _timeit(t_bwd, repeats * 3)
    res["ratio_forward"] = res["torch_forward_s"] / res["jax_forward_s"]
    res["ratio_fwd_bwd"] = res["torch_fwd_bwd_s"] / res["jax_fwd_bwd_s"]
    return res


def bench_conv_formulations(repeats: int) -> dict:
    """3×3 32→32 'same' convolution on 33×33 maps, the bulk of DeRefNet's FLOPs, written three ways:
    ``lax.conv_general_dilated`` in NHWC (what the model uses) and NCHW, and an im2col matmul."""
    import jax
    import jax.numpy as jnp

    def nhwc(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def nchw(x, k):  # x given as NCHW
        return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "HWIO", "NCHW"))

    def im2col(x, k):
        h, w = x.shape[1:3]
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
        return cols @ k.reshape(-1, k.shape[-1])

    rng = np.random.default_rng(0)
    k = jnp.asarray(rng.normal(size=(3, 3, 32, 32)) / np.sqrt(288), jnp.float32)
    res = {}
    for n in (20, 64):  # one trajectory's frames (ISTA stages); its 64 (centre, neighbour) pairs (TDFA)
        x = jnp.asarray(rng.normal(size=(n, 33, 33, 32)), jnp.float32)
        inputs = {"nhwc": x, "nchw": jnp.transpose(x, (0, 3, 1, 2)), "im2col": x}
        for name, fn in (("nhwc", nhwc), ("nchw", nchw), ("im2col", im2col)):
            xi = inputs[name]
            f = jax.jit(fn)
            g = jax.jit(jax.grad(lambda x, k, fn=fn: jnp.sum(fn(x, k) ** 2), argnums=(0, 1)))
            res[f"N{n}_{name}_forward_ms"] = 1e3 * _timeit(lambda: jax.block_until_ready(f(xi, k)), repeats * 3)
            res[f"N{n}_{name}_fwd_bwd_ms"] = 1e3 * _timeit(lambda: jax.block_until_ready(g(xi, k)), repeats * 3)
    return res


def to_markdown(result: dict) -> str:
    m, r = result["machine"], result["model"]
    batch = result["batch"]
    lines = [
        "# DeRefNet speed: Flax vs PyTorch reference",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (PyTorch threads {m['torch_threads']}); {m['device']}. JAX {m['jax']} "
        f"({m['jax_backend']}), PyTorch {m['torch']}; load average at start {m['load_average_start']}, "
        f"at end {m['load_average_end']}. Command: `python -m experiments.benchmarks.bench_model "
        f"--repeats {result['repeats']} --batch {batch} --torch-device {result['torch_device']}`.",
        "",
        f"Parameters: {r['params']:,} (paper: {PAPER['params_M']} M). XLA FLOPs per 20-frame trajectory: "
        f"{r['gflops_inference']:.2f} G inference, {r['gflops_train_step']:.2f} G per training step "
        f"(paper: {PAPER['GFLOPs']} G). Paper speed: {PAPER['FPS']} FPS (GPU).",
        "",
        f"| implementation | inference frames/s (1 traj.) | inference frames/s ({batch} traj.) | "
        "training trajectories/s |",
        "|---|---|---|---|",
    ]
    for impl, row in r["throughput"].items():
        lines.append(
            f"| {impl} | {row['inference_frames_per_s_b1']:.1f} | {row[f'inference_frames_per_s_b{batch}']:.1f} | "
            f"{row['train_trajectories_per_s']:.3f} |"
        )
    lines += ["", "Ratios JAX / PyTorch (throughput; > 1 means JAX is faster):", ""]
    lines += ["| vs | inference (1 traj.) | inference (batch) | training |", "|---|---|---|---|"]
    for impl, ratio in r["ratios_jax_over"].items():
        lines.append(
            f"| {impl} | {ratio['inference_frames_per_s_b1']:.2f} | "
            f"{ratio[f'inference_frames_per_s_b{batch}']:.2f} | {ratio['train_trajectories_per_s']:.2f} |"
        )
    d = result["deform_conv"]
    lines += [
        "",
        "Deformable conv alone (64 pairs, 33×33, 32→32, 3×3):",
        "",
        "| | JAX | torchvision | ratio (torch time / JAX time) |",
        "|---|---|---|---|",
        f"| forward | {d['jax_forward_s'] * 1e3:.1f} ms | {d['torch_forward_s'] * 1e3:.1f} ms | "
        f"{d['ratio_forward']:.2f} |",
        f"| forward + backward | {d['jax_fwd_bwd_s'] * 1e3:.1f} ms | {d['torch_fwd_bwd_s'] * 1e3:.1f} ms | "
        f"{d['ratio_fwd_bwd']:.2f} |",
        "",
    ]
    conv = result.get("conv_formulations")
    if conv:
        lines += [
            "Convolution formulations (3×3, 32→32, 33×33; milliseconds, JAX):",
            "",
            "| batch | NHWC fwd | NCHW fwd | im2col fwd | NHWC fwd+bwd | NCHW fwd+bwd | im2col fwd+bwd |",
            "|---|---|---|---|---|---|---|",
        ]
        for n in (20, 64):
            cells = [f"{conv[f'N{n}_{f}_{p}_ms']:.1f}" for p in ("forward", "fwd_bwd") for f in ("nhwc", "nchw", "im2col")]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls per measurement after one warm-up call, median kept; the faster "
                             "measurements use 2× or 3× as many (default %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="trajectories per call for batched inference")
    parser.add_argument("--skip-loop", action="store_true", help="skip the slow public-loop PyTorch mode")
    parser.add_argument("--torch-device", default="cpu", help="PyTorch device ('cuda' on a GPU machine)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder (created if missing) for <name>.json and <name>.md, see --name "
                             "(default: experiments/benchmarks/results)")
    parser.add_argument("--name", default="bench_model", help="results file stem")
    args = parser.parse_args(argv)

    result = {"machine": _machine(), "repeats": args.repeats, "batch": args.batch, "torch_device": args.torch_device}
    result["machine"]["device"] = _device_name(args.torch_device)
    result["deform_conv"] = bench_deform(args.repeats, args.torch_device)
    result["conv_formulations"] = bench_conv_formulations(args.repeats)
    result["model"] = bench_models(args.repeats, args.batch, args.skip_loop, args.torch_device)
    result["machine"]["load_average_end"] = os.getloadavg()
    md = to_markdown(result)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=float))
    (args.out / f"{args.name}.md").write_text(md)
    print(f"wrote {args.out / f'{args.name}.md'} and .json")
    return result


if __name__ == "__main__":
    main()
