"""Writes ``tests/fixtures/derefnet_parity.npz`` from the PyTorch reference DeRefNet (needs the `torch` extra).

    python -m experiments.reference.make_derefnet_fixtures            # write the fixture
    python -m experiments.reference.make_derefnet_fixtures --check-full  # also compare the default 9-stage
                                                                        # model on a 20-frame trajectory

Weights and inputs come from ``seqcsist_jax.testing.parity_inputs`` (seeded numpy), so the fixture holds only
PyTorch's results: for every case in ``DEREFNET_PARITY_CASES`` the outputs, aligned maps, last-stage maps, the
loss terms (``code`` preset), the gradient of the loss w.r.t. the input frames, and for every parameter the
gradient's norm and its projection on a seeded unit direction (full gradients for parameters with at most
``SMALL`` values). The tests rebuild the JAX side without torch.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

SEED = 20250709
SMALL = 300
FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "derefnet_parity.npz"
LOSS_KEYS = ("loss_constraint", "loss_reg", "loss_align", "constraint", "align")


def torch_results(options: dict, state: dict, inputs: dict, mode: str = "vectorised") -> dict[str, np.ndarray]:
    """Runs the PyTorch reference: outputs, loss terms and gradients as numpy (parameter grads by key)."""
    import torch

    from experiments.reference.torch_derefnet import TorchDeRefNet, torch_derefnet_loss

    torch.manual_seed(0)
    model = TorchDeRefNet(**options)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    frames = torch.from_numpy(inputs["frames"]).requires_grad_(True)
    out = model(frames, torch.from_numpy(inputs["phi"]), torch.from_numpy(inputs["q"]), mode=mode)
    total, terms = torch_derefnet_loss(out, torch.from_numpy(inputs["labels"]))
    total.backward()
    res = {k: out[k].detach().numpy() for k in ("output", "aligned", "x_last")}
    res["offsets_1"] = _offsets(model, out, inputs)
    res["total"] = np.float32(total.item())
    res.update({k: np.float32(v.item()) for k, v in terms.items()})
    res["grad_frames"] = frames.grad.numpy()
    res["grads"] = {k: p.grad.numpy() for k, p in model.named_parameters()}
    return res


def _offsets(model, out, inputs) -> np.ndarray:
    """Spread of the first alignment conv's offsets (to check the drawn weights give O(1)-pixel offsets)."""
    import torch

    captured = []
    handle = model.TDDA.align_1.conv_offset.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(*(torch.from_numpy(inputs[k]) for k in ("frames", "phi", "q")))
    handle.remove()
    return captured[0].numpy()


def jax_results(options: dict, state: dict, inputs: dict) -> dict[str, np.ndarray]:
    """The same quantities from the Flax model (used by ``--check-full`` and for the summary)."""
    import jax

    from seqcsist_jax.interop import convert_state_dict, params_to_state_dict
    from seqcsist_jax.models.derefnet_loss import derefnet_loss
    from seqcsist_jax.models import DeRefNet

    model = DeRefNet(**options)
    params = convert_state_dict(state, **options)
    phi, q, labels = inputs["phi"], inputs["q"], inputs["labels"]

    def loss(p, frames):
        out = model.apply({"params": p}, frames, phi, q)
        total, terms = derefnet_loss(out, labels)
        return total, (out, terms)

    (total, (out, terms)), (g_params, g_frames) = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    )(params, inputs["frames"])
    res = {k: np.asarray(out[k]) for k in ("output", "aligned", "x_last")}
    res["total"] = np.float32(total)
    res.update({k: np.float32(v) for k, v in terms.items()})
    res["grad_frames"] = np.asarray(g_frames)
    res["grads"] = params_to_state_dict(g_params)
    return res


def compare(a: dict, b: dict) -> dict[str, float]:
    """Max relative differences (max |a-b| / max |b|) per quantity; gradients: worst key."""
    errs = {}
    for k in ("output", "aligned", "x_last", "grad_frames", "total", *LOSS_KEYS):
        errs[k] = float(np.max(np.abs(np.asarray(a[k]) - b[k])) / max(np.max(np.abs(b[k])), 1e-30))
    # The stage-1 λ's gradient is zero in exact arithmetic (ΦQ = I: the first residual vanishes), so it is
    # rounding noise on both sides; such keys are reported by their absolute size instead.
    typical = float(np.median([np.linalg.norm(g) for g in b["grads"].values()]))
    rel = {
        k: float(np.linalg.norm(a["grads"][k] - g) / np.linalg.norm(g))
        for k, g in b["grads"].items()
        if np.linalg.norm(g) >= 1e-6 * typical
    }
    worst = max(rel, key=rel.get)
    errs["grads: worst relative L2"] = rel[worst]
    errs["grads: worst key"] = worst  # type: ignore[assignment]
    zero = [k for k in b["grads"] if k not in rel]
    errs["grads: zero-by-construction keys, max |JAX| / median norm"] = max(
        (float(np.linalg.norm(a["grads"][k])) / typical for k in zero), default=0.0
    )
    return errs


def build_case(name: str) -> tuple[dict, dict, dict]:
    from seqcsist_jax.interop import state_dict_shapes
    from seqcsist_jax.testing import parity_inputs as pi

    case = pi.DEREFNET_PARITY_CASES[name]
    shapes = state_dict_shapes(**case["options"])
    state = pi.derefnet_parity_state_dict(SEED, shapes)
    inputs = pi.derefnet_parity_inputs(SEED + 1, case["batch"], case["frames"])
    return case["options"], state, inputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=FIXTURE)
    parser.add_argument("--check-full", action="store_true", help="compare the 9-stage model at T=20 too")
    args = parser.parse_args(argv)

    from seqcsist_jax.interop import state_dict_shapes
    from seqcsist_jax.testing import parity_inputs as pi

    arrays: dict[str, np.ndarray] = {"seed": np.int64(SEED)}
    for name in pi.DEREFNET_PARITY_CASES:
        options, state, inputs = build_case(name)
        res = torch_results(options, state, inputs)
        loop = torch_results(options, state, inputs, mode="loop")
        loop_err = float(np.max(np.abs(loop["output"] - res["output"])) / np.max(np.abs(res["output"])))
        off = res.pop("offsets_1")
        print(f"[{name}] offsets of align_1: std {off.std():.2f} px, |max| {np.abs(off).max():.2f} px; "
              f"loop vs vectorised output rel diff {loop_err:.2e}")
        probes = pi.derefnet_grad_probes(SEED + 2, state_dict_shapes(**options))
        keys = list(probes)
        grads = res.pop("grads")
        for k, v in res.items():
            arrays[f"{name}__{k}"] = np.asarray(v, np.float32)
        arrays[f"{name}__grad_norm"] = np.array([np.linalg.norm(grads[k]) for k in keys], np.float32)
        arrays[f"{name}__grad_proj"] = np.array([np.vdot(grads[k], probes[k]) for k in keys], np.float32)
        for k in keys:
            if grads[k].size <= SMALL:
                arrays[f"{name}__grad__{k}"] = grads[k].astype(np.float32)
        jres = jax_results(options, state, inputs)
        res["grads"] = grads
        print(f"[{name}] JAX vs torch: {compare(jres, res)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")

    if args.check_full:
        from seqcsist_jax.interop import state_dict_shapes as shapes_of

        state = pi.derefnet_parity_state_dict(SEED, shapes_of())
        inputs = pi.derefnet_parity_inputs(SEED + 1, 1, 20)
        t0 = time.perf_counter()
        res = torch_results({}, state, inputs)
        res.pop("offsets_1")
        t1 = time.perf_counter()
        jres = jax_results({}, state, inputs)
        t2 = time.perf_counter()
        print(f"[default 9 stages, T=20] torch {t1 - t0:.1f} s, JAX (incl. compile) {t2 - t1:.1f} s")
        print(f"[default 9 stages, T=20] JAX vs torch: {compare(jres, res)}")


if __name__ == "__main__":
    main(sys.argv[1:])
