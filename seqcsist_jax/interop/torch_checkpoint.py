"""Public PyTorch DeRefNet checkpoints ↔ Flax params.

The public code (GrokCV/SeqCSIST, mmengine) saves ``{"state_dict": {...}, "meta": ..., ...}`` with keys such as
``fcs.0.conv1_forward`` and ``TDDA.align_1.conv_offset.weight`` (a ``module.`` prefix appears when a DDP-wrapped
model was saved directly). The mapping to :class:`seqcsist_jax.models.DeRefNet`'s parameter tree is:

=====================================================  =========================================================
PyTorch key                                            Flax path
=====================================================  =========================================================
``fcs.{i}.{lambda_step,soft_thr}``                     ``stage_{i}/{lambda_step,soft_thr}``
``fcs.{i}.{conv1,conv2}_{forward,backward}`` (OIHW)    ``stage_{i}/…`` (HWIO)
``TDDA.mlp.{weight (out,in), bias}``                   ``time_encoding/dense/{kernel (in,out), bias}``
``TDDA.feat_extract.0.conv.{weight,bias}``             ``tdfa/feat_extract/{kernel,bias}``
``TDDA.feat_aggregate.{conv0_s,conv1_s,conv_squeeze}``  ``tdfa/attention/{conv0_s,conv1_s,conv_squeeze}``
``TDDA.align_{1,2}.weight``                            ``tdfa/align_{1,2}/kernel``
``TDDA.align_{1,2}.conv_offset.{weight,bias}``         ``tdfa/align_{1,2}/conv_offset/{kernel,bias}``
``TDDA.conv.{weight,bias}``                            ``tdfa/conv/{kernel,bias}``
``TDDA.tail_conv.0.conv.{weight,bias}``                ``tdfa/tail/head/{kernel,bias}``
``TDDA.tail_conv.1.{k}.{conv1,conv2}.{weight,bias}``   ``tdfa/tail/res_{k}/{conv1,conv2}/{kernel,bias}``
``TDDA.tail_conv.2.weight``                            ``tdfa/tail/out/kernel``
=====================================================  =========================================================

4-D conv weights go OIHW → HWIO, the Linear weight ``(out, in)`` → Dense kernel ``(in, out)``; the deformable
offsets need no permutation (same channel order, SPEC §6). Expected keys and shapes are derived from the Flax
model itself, so any option set (stages, channels, window, ablations) converts with the same code.

Loading never unpickles arbitrary objects: ``.pth`` files go through ``torch.load(weights_only=True)``; objects
of classes outside PyTorch's allow-list (mmengine's ``HistoryBuffer`` in ``message_hub``, numpy scalars in
``meta``…) are replaced by inert placeholders that never run the class's code. A plain ``.npz`` holding the same
keys (see :func:`save_npz`) needs no torch at all.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax.models.derefnet import DeRefNet

__all__ = [
    "convert_state_dict",
    "params_to_state_dict",
    "load_public_checkpoint",
    "read_state_dict",
    "state_dict_shapes",
    "torch_key",
    "save_npz",
]

_LEAF = {"kernel": "weight", "bias": "bias"}
# (flax path regex over "/"-joined paths, torch key template using the regex groups)
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"stage_(\d+)/(\w+)"), "fcs.{0}.{1}"),
    (re.compile(r"time_encoding/dense/(kernel|bias)"), "TDDA.mlp.{L0}"),
    (re.compile(r"tdfa/feat_extract/(kernel|bias)"), "TDDA.feat_extract.0.conv.{L0}"),
    (re.compile(r"tdfa/attention/(conv0_s|conv1_s|conv_squeeze)/(kernel|bias)"), "TDDA.feat_aggregate.{0}.{L1}"),
    (re.compile(r"tdfa/(align_[12])/kernel"), "TDDA.{0}.weight"),
    (re.compile(r"tdfa/(align_[12])/conv_offset/(kernel|bias)"), "TDDA.{0}.conv_offset.{L1}"),
    (re.compile(r"tdfa/conv/(kernel|bias)"), "TDDA.conv.{L0}"),
    (re.compile(r"tdfa/tail/head/(kernel|bias)"), "TDDA.tail_conv.0.conv.{L0}"),
    (re.compile(r"tdfa/tail/res_(\d+)/(conv[12])/(kernel|bias)"), "TDDA.tail_conv.1.{0}.{1}.{L2}"),
    (re.compile(r"tdfa/tail/out/kernel"), "TDDA.tail_conv.2.weight"),
]


def torch_key(path: tuple[str, ...] | str) -> str:
    """Public state-dict key of a Flax parameter path (``("stage_0", "soft_thr")`` → ``"fcs.0.soft_thr"``)."""
    joined = path if isinstance(path, str) else "/".join(path)
    for pattern, template in _RULES:
        match = pattern.fullmatch(joined)
        if match:
            groups = match.groups()
            named = {f"L{i}": _LEAF.get(g, g) for i, g in enumerate(groups)}
            return template.format(*groups, **named)
    raise ValueError(f"no public state-dict key for the Flax parameter {joined!r}")


def _to_torch_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # HWIO → OIHW
        return np.transpose(value, (3, 2, 0, 1))
    if value.ndim == 2:  # Dense (in, out) → Linear (out, in)
        return value.T
    return value


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # OIHW → HWIO
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:
        return value.T
    return value


def _flax_shapes(grid_side: int, frame_side: int, options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """``"/"``-joined Flax path → shape, from the model itself (abstract init, no compute)."""
    model = DeRefNet(**options)
    t = max(model.window, 5)
    frames = jax.ShapeDtypeStruct((1, t, frame_side, frame_side), jnp.float32)
    phi = jax.ShapeDtypeStruct((frame_side**2, grid_side**2), jnp.float32)
    q = jax.ShapeDtypeStruct((grid_side**2, frame_side**2), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), frames, phi, q)
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


_STAGE_LEAVES = ("lambda_step", "soft_thr", "conv1_forward", "conv2_forward", "conv1_backward", "conv2_backward")
_TDDA_ORDER = (
    "mlp.", "feat_extract.", "feat_aggregate.conv0_s.", "feat_aggregate.conv1_s.", "feat_aggregate.conv_squeeze.",
    "align_1.", "align_2.", "conv.", "tail_conv.0.", "tail_conv.1.", "tail_conv.2.",
)


def _key_order(key: str) -> tuple:
    """Sort key reproducing the public model's ``state_dict()`` order."""
    parts = key.split(".")
    if parts[0] == "fcs":
        return (0, int(parts[1]), _STAGE_LEAVES.index(parts[2]))
    rest = key[len("TDDA."):]
    group = next(i for i, prefix in enumerate(_TDDA_ORDER) if rest.startswith(prefix))
    nums = tuple(int(p) for p in parts if p.isdigit())
    return (1, group, nums, "conv_offset" in parts, parts[-2], parts[-1] == "bias")


def state_dict_shapes(grid_side: int = 33, frame_side: int = 11, **model_options: Any) -> dict[str, tuple[int, ...]]:
    """Public state-dict key → PyTorch shape for a :class:`DeRefNet` with these options, in the order of the
    public model's ``state_dict()``."""
    out = {}
    for path, shape in _flax_shapes(grid_side, frame_side, model_options).items():
        fake = np.empty(shape, dtype=np.uint8)
        out[torch_key(path)] = tuple(_to_torch_layout(fake).shape)
    return {k: out[k] for k in sorted(out, key=_key_order)}


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def convert_state_dict(
    state_dict: Mapping[str, Any], *, grid_side: int = 33, frame_side: int = 11, **model_options: Any
) -> dict[str, Any]:
    """Public (PyTorch-layout) state dict → Flax ``params`` for ``DeRefNet(**model_options)``.

    Args:
      state_dict: key → array (numpy or torch tensors); a common ``module.`` prefix is removed.
      grid_side, frame_side: label-grid and frame sides (33, 11), which fix the time-encoding Dense size.
      **model_options: :class:`DeRefNet` fields (defaults: the public model).

    Returns:
      Nested dict of float32 ``jax.Array`` (use as ``{"params": params}``).

    Raises:
      ValueError: listing every missing key, unexpected key and wrongly shaped key.
    """
    state = _strip_prefix(state_dict)
    non_finite = sorted(k for k, v in state.items() if np.issubdtype(_as_numpy(v).dtype, np.floating)
                        and not np.all(np.isfinite(_as_numpy(v))))
    if non_finite:
        raise ValueError(f"non-finite (NaN or inf) weights in {len(non_finite)} key(s): {', '.join(non_finite[:5])}"
                         + (" ..." if len(non_finite) > 5 else ""))
    shapes = _flax_shapes(grid_side, frame_side, model_options)
    expected = {torch_key(p): p for p in shapes}
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    bad_shape = []
    params: dict[str, Any] = {}
    for key, path in expected.items():
        if key not in state:
            continue
        value = _as_numpy(state[key])
        converted = _to_flax_layout(value)
        if converted.shape != shapes[path]:
            want = _to_torch_layout(np.empty(shapes[path], np.uint8)).shape
            bad_shape.append(f"{key}: got {tuple(value.shape)}, expected {tuple(want)}")
            continue
        node = params
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = jnp.asarray(converted, dtype=jnp.float32)
    if missing or unexpected or bad_shape:
        lines = [f"state dict does not match DeRefNet({_options_str(model_options)}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if bad_shape:
            lines.append(f"  wrong shapes ({len(bad_shape)}): {'; '.join(bad_shape)}")
        raise ValueError("\n".join(lines))
    return params


def _options_str(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def params_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax ``params`` → public state dict (PyTorch layouts, float32 numpy), inverse of
    :func:`convert_state_dict`."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    out = {}
    for path, leaf in flat:
        joined = "/".join(k.key for k in path)
        out[torch_key(joined)] = np.ascontiguousarray(_to_torch_layout(np.asarray(leaf, np.float32)))
    return {k: out[k] for k in sorted(out, key=_key_order)}


def save_npz(path: str | os.PathLike, state_dict: Mapping[str, Any]) -> None:
    """Writes a state dict as a plain ``.npz`` (keys unchanged) that :func:`load_public_checkpoint` reads
    without torch."""
    np.savez(path, **{k: _as_numpy(v) for k, v in _strip_prefix(state_dict).items()})


class _Opaque:
    """Inert stand-in for a pickled object of a class outside torch's allow-list: accepts and drops any state."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Opaque":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _torch_load(path: str) -> Any:
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"reading {path} needs PyTorch (pip install -e '.[torch]'); without torch, convert it once "
            "elsewhere with seqcsist_jax.interop.save_npz and load the .npz"
        ) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        stubs = [(type(name.rsplit(".", 1)[-1], (_Opaque,), {}), name) for name in unsafe]
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The raw (PyTorch-layout) state dict of a ``.pth`` checkpoint or a ``.npz`` file, ``module.`` stripped.

    Raises:
      ValueError: the file has no state dict (names the file and what it holds instead).
      FileNotFoundError: the file does not exist.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.endswith(".npz"):
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path} is empty (0 bytes); an interrupted download or copy?")
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e})") from None
        if not state:
            raise ValueError(f"{path} holds no arrays")
    else:
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path} is empty (0 bytes); an interrupted download or copy?")
        try:
            ckpt = _torch_load(path)
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 (torch raises RuntimeError, UnpicklingError, EOFError, ...)
            raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
            ckpt = ckpt["state_dict"]
        if not isinstance(ckpt, Mapping) or not all(hasattr(v, "shape") for v in ckpt.values()):
            kind = sorted(ckpt)[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
            raise ValueError(f"{path} holds no state dict of tensors (found {kind})")
        state = {k: _as_numpy(v) for k, v in ckpt.items()}
    return _strip_prefix(state)


def load_public_checkpoint(
    path: str | os.PathLike, *, grid_side: int = 33, frame_side: int = 11, **model_options: Any
) -> dict[str, Any]:
    """Flax ``params`` from a public DeRefNet checkpoint (mmengine ``.pth`` or ``.npz`` of the same keys).

    Args:
      path: ``.pth``/``.pt`` (read with ``torch.load(weights_only=True)``) or ``.npz``.
      grid_side, frame_side, **model_options: as :func:`convert_state_dict` (defaults: the public model).

    Raises:
      ValueError: missing / unexpected / wrongly shaped keys (all listed), or no state dict in the file.
    """
    state = read_state_dict(path)
    try:
        return convert_state_dict(state, grid_side=grid_side, frame_side=frame_side, **model_options)
    except ValueError as err:
        raise ValueError(f"{os.fspath(path)}: {err}") from None
