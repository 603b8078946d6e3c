"""Writes ``tests/fixtures/dista_parity.npz`` from the PyTorch reference DISTA-Net (needs torch).

    python -m experiments.reference.make_dista_fixtures        # write the fixture, print JAX-vs-torch errors

Weights and inputs come from ``seqcsist_jax.testing.dista_parity_inputs`` (seeded numpy), so the fixture holds
only PyTorch's results: for every case in ``DISTA_PARITY_CASES`` the outputs, symmetry residuals, the loss
terms, the gradient of the loss w.r.t. the input frames, and for every parameter the gradient's norm and its
projection on a seeded unit direction (full gradients for parameters with at most ``SMALL`` values). It also
records the public models' state-dict keys and parameter counts (c = 3 and 5 with 6 stages, c = 7 with 4), which
the tests compare with the Flax model. ``tests/test_dista.py`` rebuilds the JAX side without torch.

The script needs torch next to this project's environment (Φ and the parity inputs come from
``seqcsist_jax.imaging``, which imports JAX), e.g. a venv with torch whose ``.pth`` file appends the project
venv's site-packages; it also prints the Flax model's errors against the PyTorch results.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

SEED = 20250525
SMALL = 300
FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "dista_parity.npz"
FIRST_STEP = "fcs.0.lambda_step"
TERMS = ("total", "discrepancy", "constraint")
# (c, stages) of the public configs c_3, c_5, c_7
PUBLIC_MODELS = ((3, 6), (5, 6), (7, 4))

_TORCH_OPTIONS = ("num_stages", "c", "channels", "lambda_weight", "kernel_hidden", "dynamic_mixing",
                  "detach_dynamic_kernels")
_DEFAULTS = {"num_stages": 6, "c": 3, "channels": 64, "lambda_weight": 0.7, "kernel_hidden": 256,
             "dynamic_mixing": "image", "detach_dynamic_kernels": True}


def case_setup(name: str) -> tuple[dict, dict, dict]:
    """``(options with defaults filled in, state dict, inputs)`` of one parity case."""
    from seqcsist_jax.models.dista_net import state_dict_shapes
    from seqcsist_jax.testing import dista_parity_inputs as dpi

    case = dpi.DISTA_PARITY_CASES[name]
    options = {**_DEFAULTS, **case["options"]}
    shapes = state_dict_shapes(options["num_stages"], options["channels"], options["c"], options["kernel_hidden"])
    state = dpi.dista_parity_state_dict(SEED, shapes)
    inputs = dpi.dista_parity_inputs(SEED + 1, case["batch"], case["frames"], c=options["c"])
    return options, state, inputs


def torch_results(options: dict, state: dict, inputs: dict) -> dict:
    """Outputs, loss terms and gradients of the PyTorch reference, as numpy (parameter grads by key)."""
    import torch

    from experiments.reference.torch_dista import TorchDISTA, torch_dista_loss

    torch.manual_seed(0)
    model = TorchDISTA(**{k: options[k] for k in _TORCH_OPTIONS})
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    frames = torch.from_numpy(inputs["frames"]).requires_grad_(True)
    out = model(frames, torch.from_numpy(inputs["phi"]), torch.from_numpy(inputs["q"]))
    total, terms = torch_dista_loss(out, torch.from_numpy(inputs["labels"]))
    total.backward()
    res = {k: out[k].detach().numpy() for k in ("output", "sym")}
    res["total"] = np.float32(total.item())
    res.update({k: np.float32(v.item()) for k, v in terms.items()})
    res["grad_frames"] = frames.grad.numpy()
    res["grads"] = {
        k: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape), np.float32))
        for k, p in model.named_parameters()
    }
    res["dynamic_spread"] = _dynamic_spread(model, inputs)
    return res


def _dynamic_spread(model, inputs) -> float:
    """Std of the first stage's pre-sigmoid dynamic response (to check the drawn kernels do not saturate)."""
    import torch
    import torch.nn.functional as F

    y = torch.from_numpy(inputs["frames"]).reshape(-1, 121)
    phi, q = torch.from_numpy(inputs["phi"]), torch.from_numpy(inputs["q"])
    block = model.fcs[0]
    with torch.no_grad():
        x = y @ q.T
        r = x - block.lambda_step * (x @ phi.T @ phi) + block.lambda_step * (y @ phi)
        s = block.side
        k = block.w2(block.w1(x)).reshape(-1, 1, 3, 3)
        n = r.shape[0]
        dyn = F.conv2d(r.view(1, n, s, s), k, padding=1, groups=n)
    return float(dyn.std())


def jax_results(options: dict, state: dict, inputs: dict) -> dict:
    """The same quantities from the Flax model (for the printed comparison)."""
    import jax

    from seqcsist_jax.models.dista_net import DISTANet, dista_loss, params_from_state_dict, params_to_state_dict

    model = DISTANet(**options)
    params = params_from_state_dict(state)

    def loss(p, frames):
        out = model.apply({"params": p}, frames, inputs["phi"], inputs["q"])
        total, terms = dista_loss(out, inputs["labels"])
        return total, (out, terms)

    with jax.default_matmul_precision("highest"):
        (total, (out, terms)), (g_params, g_frames) = jax.jit(
            jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        )(params, inputs["frames"])
    res = {k: np.asarray(out[k]) for k in ("output", "sym")}
    res["total"] = np.float32(total)
    res.update({k: np.float32(terms[k]) for k in ("discrepancy", "constraint")})
    res["grad_frames"] = np.asarray(g_frames)
    res["grads"] = params_to_state_dict(g_params)
    return res


def compare(a: dict, b: dict) -> dict[str, float | str]:
    """Max relative differences (max |a-b| / max |b|); gradients: worst relative L2 over the non-zero keys."""
    errs: dict[str, float | str] = {}
    for k in ("output", "sym", "grad_frames", *TERMS):
        errs[k] = float(np.max(np.abs(np.asarray(a[k]) - b[k])) / max(np.max(np.abs(b[k])), 1e-30))
    # Zero by construction: w1/w2 when the kernels are detached (exactly), and the first stage's λ (ΦQ = I
    # makes the first gradient step vanish, so its gradient is float32 rounding noise on both sides).
    zero = [k for k, g in b["grads"].items() if not g.any() or k == FIRST_STEP]
    rel = {
        k: float(np.linalg.norm(a["grads"][k] - g) / np.linalg.norm(g))
        for k, g in b["grads"].items()
        if k not in zero
    }
    worst = max(rel, key=rel.get)
    errs["grads: worst relative L2"] = rel[worst]
    errs["grads: worst key"] = worst
    typical = float(np.median([np.linalg.norm(g) for g in b["grads"].values()]))
    errs["grads: zero-by-construction keys, max norm (JAX, torch) / median"] = str(
        (max(float(np.linalg.norm(a["grads"][k])) / typical for k in zero),
         max(float(np.linalg.norm(b["grads"][k])) / typical for k in zero))
    )
    return errs


def public_model_facts() -> dict[str, np.ndarray]:
    """State-dict keys/sizes of the public c = 3 model and the parameter counts of the public c = 3/5/7 models."""
    from experiments.reference.torch_dista import TorchDISTA

    facts: dict[str, np.ndarray] = {}
    for c, stages in PUBLIC_MODELS:
        model = TorchDISTA(num_stages=stages, c=c)
        state = model.state_dict()
        facts[f"param_count__c{c}_stages{stages}"] = np.int64(sum(p.numel() for p in model.parameters()))
        if c == 3:
            facts["state_dict_keys"] = np.array(list(state), dtype=np.str_)
            facts["state_dict_sizes"] = np.array([v.numel() for v in state.values()], np.int64)
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=FIXTURE)
    args = parser.parse_args(argv)

    from seqcsist_jax.testing import dista_parity_inputs as dpi

    arrays: dict[str, np.ndarray] = {"seed": np.int64(SEED), **public_model_facts()}
    for name in dpi.DISTA_PARITY_CASES:
        options, state, inputs = case_setup(name)
        res = torch_results(options, state, inputs)
        print(f"[{name}] first-stage dynamic response before the sigmoid: std {res.pop('dynamic_spread'):.2f}")
        probes = dpi.dista_grad_probes(SEED + 2, {k: v.shape for k, v in state.items()})
        grads = res.pop("grads")
        for k, v in res.items():
            arrays[f"{name}__{k}"] = np.asarray(v, np.float32)
        arrays[f"{name}__grad_norm"] = np.array([np.linalg.norm(grads[k]) for k in probes], np.float32)
        arrays[f"{name}__grad_proj"] = np.array([np.vdot(grads[k], probes[k]) for k in probes], np.float32)
        for k in probes:
            if grads[k].size <= SMALL:
                arrays[f"{name}__grad__{k}"] = grads[k].astype(np.float32)
        res["grads"] = grads
        jres = jax_results(options, state, inputs)
        print(f"[{name}] JAX vs torch: {compare(jres, res)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main(sys.argv[1:])
