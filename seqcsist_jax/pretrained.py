"""Published weights: ``load_pretrained(name) -> (config, params)`` from ``seqcsist_jax/weights/<name>.npz``.

A weight file holds the parameters only (float32, one array per leaf, keys ``"stage_0/lambda_step"`` …), plus
``__q__``, the run's Q ``(1089, 121)`` (data-derived, SPEC §2), so scoring needs neither the optimiser nor the
training split. Its model card ``<name>.json`` says what produced it: the full run config, data config,
protocol, seed, commit, validation/test CSO-mAP, wall time and hardware. The folder is package data, so
``pip install`` (editable or wheel) ships it.

Shipped: ``derefnet_quick`` (``python -m experiments.train --config=derefnet_quick`` on 2 CPU cores; NOT the
paper's schedule). Paper-schedule weights (``derefnet``) are added only from a run of the full protocol.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from seqcsist_jax.fileio import atomic_path, atomic_write_json

__all__ = [
    "WEIGHTS_DIR",
    "available",
    "check_params",
    "export_state_dict",
    "load_card",
    "load_pretrained",
    "pretrained_q",
    "save_pretrained",
]

#: Where the shipped weight files and model cards live (inside the package).
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"
_Q_KEY = "__q__"


def available(weights_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the weight files in ``weights_dir`` (default :data:`WEIGHTS_DIR`)."""
    folder = pathlib.Path(weights_dir or WEIGHTS_DIR)
    return sorted(p.stem for p in folder.glob("*.npz") if (folder / f"{p.stem}.json").exists())


def resolve(spec: str) -> tuple[str, pathlib.Path | None]:
    """``(name, weights_dir)`` of a weights reference: a shipped name (``"derefnet_quick"`` → its name and
    ``None``, the package folder) or a path to an exported ``NAME.npz`` (``.npz`` optional), as
    ``experiments.export_weights --weights_dir=DIR`` writes them (→ ``NAME`` and ``DIR``)."""
    text = str(spec)
    if text.endswith(".npz") or "/" in text or os.sep in text:
        path = pathlib.Path(text).expanduser()
        return path.name.removesuffix(".npz"), path.parent
    return text, None


def _paths(name: str, weights_dir) -> tuple[pathlib.Path, pathlib.Path]:
    folder = pathlib.Path(weights_dir or WEIGHTS_DIR)
    npz, card = folder / f"{name}.npz", folder / f"{name}.json"
    for path in (npz, card):
        if not path.exists():
            names = ", ".join(available(folder)) or "none"
            raise FileNotFoundError(f"no pretrained weights {name!r}: {path} does not exist (available: {names})")
    return npz, card


def load_card(name: str, weights_dir: str | os.PathLike | None = None) -> dict:
    """The model card (JSON) of weight file ``name``."""
    return json.loads(_paths(name, weights_dir)[1].read_text())


def _flatten(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(k.key for k in path): np.asarray(leaf) for path, leaf in flat}


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _expected_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of ``config.model`` (abstract init: no FLOPs, no memory)."""
    from seqcsist_jax import imaging, methods

    method = methods.build_method(config.model, config.loss)
    phi = imaging.measurement_matrix().astype(np.float32)
    frames = jax.ShapeDtypeStruct((1, 20, 11, 11), np.float32)  # param shapes do not depend on T
    q = jax.ShapeDtypeStruct(phi.T.shape, np.float32)
    shapes = jax.eval_shape(lambda f, q_: method.model.init(jax.random.PRNGKey(0), f, phi, q_)["params"], frames, q)
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _listed(items: list[str], limit: int = 8) -> str:
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + more + "]"


def check_params(params: Mapping[str, Any], config: ml_collections.ConfigDict, source: str = "params") -> None:
    """Raises ValueError naming every missing key, unexpected key and shape mismatch of ``params`` against
    the model of ``config`` (one line, so a command-line tool can print it as is)."""
    have = {k: tuple(v.shape) for k, v in _flatten(params).items()}
    want = _expected_shapes(config)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shapes = [f"{k}: file {have[k]} vs model {want[k]}" for k in sorted(set(have) & set(want)) if have[k] != want[k]]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_listed(missing)}")
        if extra:
            parts.append(f"unexpected keys {_listed(extra)}")
        if shapes:
            parts.append(f"shape mismatches {_listed(shapes)}")
        model = ", ".join(f"{k}={v}" for k, v in config.model.to_dict().items())
        raise ValueError(f"{source} does not fit the model ({model}): " + "; ".join(parts))


def load_pretrained(
    name: str,
    config: ml_collections.ConfigDict | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> tuple[ml_collections.ConfigDict, dict]:
    """``(config, params)`` of the published weights ``name``.

    Args:
      name: a weight file's stem, e.g. ``"derefnet_quick"`` (see :func:`available`).
      config: the config whose model the params must fit (default: the run config stored in the card).
      weights_dir: folder of the weight files (default :data:`WEIGHTS_DIR`).

    Returns:
      the config (the card's run config, or ``config``) and the float32 params tree.

    Raises:
      FileNotFoundError: no such weights (the message lists the available names).
      ValueError: the file does not fit the model (names the missing/unexpected keys and shape mismatches).
    """
    npz, _ = _paths(name, weights_dir)
    card = load_card(name, weights_dir)
    if config is None:
        config = ml_collections.ConfigDict(card["config"])
    with np.load(npz, allow_pickle=False) as data:
        flat = {k: np.asarray(data[k], np.float32) for k in data.files if k != _Q_KEY}
    params = _unflatten(flat)
    check_params(params, config, source=str(npz))
    return config, params


def pretrained_q(name: str, weights_dir: str | os.PathLike | None = None) -> np.ndarray | None:
    """Q ``(1089, 121)`` stored with the weights (``None`` if the file has none: compute it from the data)."""
    npz, _ = _paths(name, weights_dir)
    with np.load(npz, allow_pickle=False) as data:
        return np.asarray(data[_Q_KEY]) if _Q_KEY in data.files else None


def save_pretrained(
    name: str,
    params: Mapping[str, Any],
    config: ml_collections.ConfigDict,
    card: Mapping[str, Any],
    q: np.ndarray | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> pathlib.Path:
    """Writes ``<name>.npz`` (float32 params, and Q) and its model card ``<name>.json`` atomically.

    ``card`` holds the facts of the run (protocol, seed, commit, metrics, wall time, hardware); the config,
    parameter count and file name are added here. Returns the ``.npz`` path.
    """
    check_params(params, config)
    folder = pathlib.Path(weights_dir or WEIGHTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
    if q is not None:
        flat[_Q_KEY] = np.asarray(q)
    npz = folder / f"{name}.npz"
    with atomic_path(npz, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **flat)
    full = {"name": name, "file": npz.name, **dict(card), "config": config.to_dict(),
            "num_params": int(sum(v.size for k, v in flat.items() if k != _Q_KEY))}
    full.setdefault("hardware", f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    atomic_write_json(folder / f"{name}.json", full, indent=2, sort_keys=True)
    return npz


def export_state_dict(name: str, path: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> None:
    """Exports weights ``name`` as a public-layout state dict (the public PyTorch DeRefNet's keys and layouts):
    ``.pth`` (``torch.save`` of tensors; needs torch) or ``.npz`` (same keys, no torch needed).

    Raises:
      ImportError: a ``.pth`` path without PyTorch installed (says to use ``.npz`` or install the extra).
    """
    from seqcsist_jax.interop import params_to_state_dict, save_npz

    _, params = load_pretrained(name, weights_dir=weights_dir)
    state = params_to_state_dict(params)
    path = os.fspath(path)
    if path.endswith(".npz"):
        with atomic_path(path, suffix=".npz") as tmp:
            save_npz(tmp, state)
        return
    try:
        import torch
    except ImportError:
        raise ImportError(f"writing {path} needs PyTorch (pip install -e '.[torch]'); or export to a .npz "
                          "with the same keys, which seqcsist_jax.interop.read_state_dict and numpy read") from None
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, tmp)
