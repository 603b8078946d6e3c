"""Writes ``tests/fixtures/deform_conv_parity.npz`` from ``torchvision.ops.deform_conv2d`` (`torch` extra).

    python -m experiments.reference.make_deform_conv_fixtures           # write the fixture
    python -m experiments.reference.make_deform_conv_fixtures --check   # also compare seqcsist_jax's op to it

Inputs, offsets, kernels and the upstream cotangent come from ``seqcsist_jax.testing.parity_inputs``
(``DEFORM_CONV_CASES``, seeded numpy, float64), so the fixture stores only torchvision's results, computed in
float64 on CPU: for every case ``{case}/out`` ``(N, Ho, Wo, O)``, ``{case}/grad_x`` ``(N, H, W, C)``,
``{case}/grad_offset`` ``(N, Ho, Wo, 2·G·kh·kw)`` and ``{case}/grad_kernel`` ``(kh, kw, C/groups, O)`` — the
gradients of ``Σ out · cotangent`` — all in JAX layout, plus ``{case}/input_digest`` (sums of the inputs) so
the tests notice when the generators change and the fixture must be rebuilt. ``meta/versions`` records the
torch and torchvision versions used.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "deform_conv_parity.npz"


def input_digest(case: dict) -> np.ndarray:
    """Four float64 numbers that change whenever the generated inputs change."""
    return np.array([case[k].sum() + (case[k] ** 2).sum() for k in ("x", "offset", "kernel", "cotangent")])


def torchvision_case(case: dict) -> dict[str, np.ndarray]:
    """torchvision's output and gradients for one case (float64, CPU), returned in JAX layout."""
    import torch
    import torchvision

    x = torch.from_numpy(np.ascontiguousarray(case["x"].transpose(0, 3, 1, 2))).requires_grad_(True)
    offset = torch.from_numpy(np.ascontiguousarray(case["offset"].transpose(0, 3, 1, 2))).requires_grad_(True)
    # HWIO (kh, kw, C/groups, O) -> OIHW (O, C/groups, kh, kw); torchvision infers groups from the shapes.
    weight = torch.from_numpy(np.ascontiguousarray(case["kernel"].transpose(3, 2, 0, 1))).requires_grad_(True)
    out = torchvision.ops.deform_conv2d(
        x,
        offset,
        weight,
        stride=tuple(case["stride"]),
        padding=tuple(case["padding"]),
        dilation=tuple(case["dilation"]),
    )
    out.backward(torch.from_numpy(np.ascontiguousarray(case["cotangent"].transpose(0, 3, 1, 2))))
    return {
        "out": out.detach().numpy().transpose(0, 2, 3, 1),
        "grad_x": x.grad.numpy().transpose(0, 2, 3, 1),
        "grad_offset": offset.grad.numpy().transpose(0, 2, 3, 1),
        "grad_kernel": weight.grad.numpy().transpose(2, 3, 1, 0),
    }


def build() -> dict[str, np.ndarray]:
    """All fixture arrays, keyed ``{case}/{name}``."""
    import torch
    import torchvision

    from seqcsist_jax.testing import parity_inputs as pi

    arrays: dict[str, np.ndarray] = {
        "meta/versions": np.array([torch.__version__, torchvision.__version__]),
    }
    for name in pi.DEFORM_CONV_CASES:
        case = pi.deform_conv_case(name)
        if case["offset_groups"] != 1 and case["x"].shape[3] % case["offset_groups"]:
            raise ValueError(f"case {name}: channels not divisible by offset_groups")
        for key, value in torchvision_case(case).items():
            arrays[f"{name}/{key}"] = np.asarray(value, np.float64)
        arrays[f"{name}/input_digest"] = input_digest(case)
    return arrays


def check(arrays: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between seqcsist_jax's op (float64, both methods) and the fixture."""
    import jax

    from seqcsist_jax.ops.deform_conv import METHODS, deform_conv2d
    from seqcsist_jax.testing import parity_inputs as pi

    worst = 0.0
    with jax.enable_x64(True):
        for name in pi.DEFORM_CONV_CASES:
            case = pi.deform_conv_case(name)
            for method in METHODS:

                def f(x, offset, kernel, case=case, method=method):
                    return deform_conv2d(
                        x,
                        offset,
                        kernel,
                        stride=case["stride"],
                        padding=case["padding"],
                        dilation=case["dilation"],
                        groups=case["groups"],
                        offset_groups=case["offset_groups"],
                        method=method,
                    )

                out, vjp = jax.vjp(f, case["x"], case["offset"], case["kernel"])
                grads = vjp(case["cotangent"])
                got = dict(zip(("out", "grad_x", "grad_offset", "grad_kernel"), (out, *grads)))
                errs = {k: float(np.abs(np.asarray(v) - arrays[f"{name}/{k}"]).max()) for k, v in got.items()}
                worst = max(worst, *errs.values())
                print(f"{name:15s} {method:7s} " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=FIXTURE, help="fixture path (.npz)")
    parser.add_argument("--check", action="store_true", help="compare seqcsist_jax against the new fixture")
    args = parser.parse_args(argv)
    arrays = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KB, {len(arrays)} arrays)")
    if args.check:
        worst = check(arrays)
        print(f"largest difference: {worst:.2e}")
        return 0 if worst < 1e-9 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
