"""The method table: config name → builder of (Flax module, loss function).

Every method's module is called as ``module.apply(variables, frames, phi, q)`` with ``frames (B, T, 11, 11)``
raw grey values, Φ ``(121, 1089)`` and Q ``(1089, 121)``, and returns a dict holding at least
``"output"`` ``(B, T', 33, 33)`` and ``"frame_index"`` ``(T',)`` (which input frames the outputs are for).
Its loss is ``loss_fn(outputs, labels (B, T, 33, 33)) -> (total scalar, dict of named scalars)``.

:data:`METHOD_TABLE` is the whole list, written out: each entry names the module and the builder function
``build(model_config, loss_config) -> Method`` that the module exports. Modules are imported only when their
method is built, so importing this table costs nothing and no method module imports another's.

A method that is not part of this package needs no entry: ``config.model.name`` may name its builder directly,
as ``"package.module:build_fn"`` or ``"path/to/file.py:build_fn"`` (README: Adding a method).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pathlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqcsist_jax.suggest import did_you_mean

LossFn = Callable[[dict, Any], tuple[Any, dict]]
Builder = Callable[[ml_collections.ConfigDict, ml_collections.ConfigDict], "Method"]

# name → "module:builder", in the order of the paper's Table 7 (FISTA after ISTA; DISTA-Net, the CSIST-100K
# model, last). experiments.compare's default list is this table.
METHOD_TABLE: dict[str, str] = {
    "ista": "seqcsist_jax.baselines.classical:build_ista",
    "fista": "seqcsist_jax.baselines.classical:build_fista",
    "bid": "seqcsist_jax.baselines.bid:build_bid",
    "srcnn": "seqcsist_jax.baselines.srnets:build_srcnn",
    "gmfn": "seqcsist_jax.baselines.dbpn_gmfn:build_gmfn",
    "dbpn": "seqcsist_jax.baselines.dbpn_gmfn:build_dbpn",
    "srgan": "seqcsist_jax.baselines.gan:build_srgan",
    "bsrgan": "seqcsist_jax.baselines.gan:build_bsrgan",
    "esrgan": "seqcsist_jax.baselines.gan:build_esrgan",
    "rdn": "seqcsist_jax.baselines.rdn:build_rdn",
    "edsr": "seqcsist_jax.baselines.srnets:build_edsr",
    "espcn": "seqcsist_jax.baselines.srnets:build_espcn",
    "tdan": "seqcsist_jax.baselines.tdan:build_tdan",
    "liht": "seqcsist_jax.baselines.unfolded:build_liht",
    "lamp": "seqcsist_jax.baselines.unfolded:build_lamp",
    "istanet": "seqcsist_jax.baselines.istanet:build_istanet",
    "fistanet": "seqcsist_jax.baselines.fistanet:build_fistanet",
    "istanet_plus": "seqcsist_jax.baselines.istanet:build_istanet_plus",
    "istanet_pp": "seqcsist_jax.baselines.istanet_pp:build_istanet_pp",
    "lista": "seqcsist_jax.baselines.lista:build_lista",
    "usrnet": "seqcsist_jax.baselines.usrnet:build_usrnet",
    "tilista": "seqcsist_jax.baselines.unfolded:build_tilista",
    "rpcanet": "seqcsist_jax.baselines.rpcanet:build_rpcanet",
    "derefnet": "seqcsist_jax.models.derefnet:build_derefnet",
    "dista": "seqcsist_jax.models.dista_net:build_dista",
}
# Methods whose configs target the single-image CSIST-100K benchmark (SPEC §9), not SeqCSIST's Table 7.
CSIST100K_METHODS: tuple[str, ...] = ("dista",)


def all_frames(num_frames: int) -> np.ndarray:
    """Output frame indices of a method that predicts every input frame."""
    return np.arange(num_frames)


@dataclasses.dataclass(frozen=True)
class Method:
    """A trainable method. ``frame_index(T)`` gives the input frames its ``(B, T', 33, 33)`` output covers.

    Optional hooks for methods that do not train with one loss and one optimiser (the GANs); ``None`` uses the
    Trainer's generic version: ``make_optimizer(optimizer_config, num_steps)`` (like ``train.create_optimizer``),
    ``make_train_step(model, loss_fn, optimizer, phi, q)`` (like ``train.make_train_step``) and
    ``init_params(params) -> params`` applied to freshly initialised params (e.g. a pretrained generator).
    """

    name: str
    model: nn.Module
    loss_fn: LossFn
    frame_index: Callable[[int], np.ndarray] = all_frames
    make_optimizer: Callable[..., Any] | None = None
    make_train_step: Callable[..., Any] | None = None
    init_params: Callable[[Any], Any] | None = None


def available_methods() -> list[str]:
    """Every method name of :data:`METHOD_TABLE`, in table order."""
    return list(METHOD_TABLE)


class UnknownMethodError(ValueError):
    """``config.model.name`` is not in :data:`METHOD_TABLE` (reported in one line, before a workdir is created)."""


def _import_builder(target: str) -> Builder:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` → that function."""
    module_name, _, function = target.rpartition(":")
    if module_name.endswith(".py"):  # a file outside any package, e.g. a researcher's model next to its config
        import hashlib
        import sys

        path = pathlib.Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"file {path} not found")
        # Keyed by path and content: a file edited in a long-lived process (a notebook, compare called twice) is
        # imported again, never served from the first import.
        key = (f"_seqcsist_method_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}_"
               f"{hashlib.sha1(path.read_bytes()).hexdigest()[:12]}")
        module = sys.modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # before exec: dataclasses and pickling look the module up by name
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[key]
                raise
    else:
        module = importlib.import_module(module_name)
    if not callable(getattr(module, function, None)):
        raise AttributeError(f"{module_name} defines no function {function!r}")
    return getattr(module, function)


def check_method_name(name: str) -> None:
    """Raises :class:`UnknownMethodError` (one line) unless ``name`` is in :data:`METHOD_TABLE` or is an import
    target ``"package.module:build_fn"`` / ``"path/to/file.py:build_fn"`` whose builder function exists (the
    module is imported to check)."""
    if name in METHOD_TABLE:
        return
    if isinstance(name, str) and ":" in name:
        try:
            _import_builder(name)
        except Exception as e:  # noqa: BLE001 - any failure to import a user's module is reported in one line
            raise UnknownMethodError(f"config.model.name: cannot import the builder {name!r}: "
                                     f"{type(e).__name__}: {e}") from None
        return
    hint = did_you_mean(str(name), METHOD_TABLE)
    raise UnknownMethodError(
        f"config.model.name: unknown model {name!r}{hint}; available: {', '.join(METHOD_TABLE)}, or a builder "
        f"given as 'package.module:build_fn' or 'path/to/file.py:build_fn' (README: Adding a method)")


def method_builder(name: str) -> Builder:
    """The builder function of method ``name``: a :data:`METHOD_TABLE` name, or an import target
    ``"package.module:build_fn"`` / ``"path/to/file.py:build_fn"`` (a method that is not part of this package).

    Raises:
      UnknownMethodError: unknown name or a target that cannot be imported (a ``ValueError``; one line).
    """
    check_method_name(name)
    return _import_builder(METHOD_TABLE.get(name, name))


def display_name(name: str, method: Method) -> str:
    """The method's label in tables: ``name`` for a :data:`METHOD_TABLE` method, the builder's ``Method.name``
    for a builder given as an import target (``"/abs/path/file.py:build"`` would fill the table's first column)."""
    return name if name in METHOD_TABLE or ":" not in str(name) else f"{method.name} ({str(name).rpartition(':')[2]})"


class MethodContractError(ValueError):
    """A user's builder or model breaks the method contract (README: Adding a method); one line naming what."""


_CONTRACT = "README: Adding a method; experiments/examples/tiny_method.py is a whole method"


def build_method(model_config: ml_collections.ConfigDict, loss_config: ml_collections.ConfigDict) -> Method:
    """Instantiates the method named ``model_config.name``.

    Raises:
      UnknownMethodError: see :func:`method_builder`.
      MethodContractError: a builder outside :data:`METHOD_TABLE` that cannot take ``(model_config, loss_config)``
        or returns something other than a :class:`Method` (one line; errors raised inside the builder's own code
        propagate unchanged, with their traceback).
    """
    name = model_config.name
    builder = method_builder(name)
    if name not in METHOD_TABLE:
        import inspect

        try:
            inspect.signature(builder).bind(model_config, loss_config)
        except TypeError:
            raise MethodContractError(
                f"config.model.name: the builder {name!r} must take (model_config, loss_config); its signature is "
                f"{builder.__name__}{inspect.signature(builder)} ({_CONTRACT})") from None
        except ValueError:  # no signature to inspect (a builtin or C callable): let the call itself decide
            pass
    method = builder(model_config, loss_config)
    if not isinstance(method, Method):
        raise MethodContractError(
            f"config.model.name: the builder {name!r} returned {type(method).__name__}; expected "
            f"seqcsist_jax.methods.Method(name, model, loss_fn) ({_CONTRACT})")
    return method


def check_method_contract(method: Method, params: Any, frames_shape: tuple[int, ...], phi: Any, q: Any) -> None:
    """Abstractly evaluates (no FLOPs) ``method.model.apply`` on ``frames_shape (B, T, 11, 11)`` and
    ``method.loss_fn`` on its outputs; raises :class:`MethodContractError` in one line unless the model returns a
    mapping whose ``"output"`` is ``(B, T', 11c, 11c)`` with ``T' = len(method.frame_index(T))`` and the loss
    returns ``(scalar, dict of scalars)`` for labels ``(B, T, 11c, 11c)`` (c from Q's ``((11c)², 121)`` shape).
    The loss is not checked for methods with their own ``make_train_step`` (they define their own losses)."""
    b, t = int(frames_shape[0]), int(frames_shape[1])
    side = int(round(np.sqrt(np.shape(q)[0])))
    frames = jax.ShapeDtypeStruct(tuple(frames_shape), jnp.float32)
    phi_, q_ = jnp.asarray(phi, jnp.float32), jnp.asarray(q, jnp.float32)
    outputs = jax.eval_shape(lambda p, f: method.model.apply({"params": p}, f, phi_, q_), params, frames)
    where = f"method {method.name!r}"
    if not isinstance(outputs, Mapping) or "output" not in outputs:
        got = f"a mapping with keys {sorted(outputs)}" if isinstance(outputs, Mapping) else _describe(outputs)
        raise MethodContractError(f"{where}: the model returned {got}; expected a dict with 'output' "
                                  f"(B, T', {side}, {side}) maps ({_CONTRACT})")
    want = (b, len(np.asarray(method.frame_index(t))), side, side)
    got_shape = tuple(getattr(outputs["output"], "shape", ()))
    if got_shape != want:
        raise MethodContractError(
            f"{where}: the model's 'output' has shape {got_shape}; expected {want} = (batch, "
            f"len(frame_index({t})), {side}, {side}) for frames {tuple(frames_shape)} ({_CONTRACT})")
    if method.make_train_step is not None:
        return
    labels = jax.ShapeDtypeStruct((b, t, side, side), jnp.float32)
    result = jax.eval_shape(method.loss_fn, outputs, labels)
    ok = (isinstance(result, tuple) and len(result) == 2 and getattr(result[0], "shape", None) == ()
          and isinstance(result[1], Mapping) and all(getattr(v, "shape", None) == () for v in result[1].values()))
    if not ok:
        raise MethodContractError(
            f"{where}: the loss returned {_describe(result)}; expected (total, {{name: value}}) with scalar "
            f"total and values ({_CONTRACT})")


def _describe(tree: Any) -> str:
    """A short account of an abstract value: ``float32[3]``, ``tuple of 2``, ``dict``."""
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return f"an array {tree.dtype}{list(tree.shape)}"
    if isinstance(tree, tuple):
        return f"a tuple of {len(tree)} ({', '.join(_describe(x) for x in tree[:3])})"
    return type(tree).__name__


def builder_file(name: str) -> pathlib.Path | None:
    """The file that defines the builder of method ``name`` when the method is not part of this package: the file
    of a ``"path/to/file.py:build_fn"`` target, or the module file of ``"package.module:build_fn"``; None for the
    methods of :data:`METHOD_TABLE`, builders in this package and targets whose file cannot be found."""
    if not isinstance(name, str) or name in METHOD_TABLE or ":" not in name:
        return None
    module_name = name.rpartition(":")[0]
    if module_name.endswith(".py"):
        return pathlib.Path(module_name).expanduser()
    if module_name.partition(".")[0] == __name__.partition(".")[0]:
        return None
    try:
        spec = importlib.util.find_spec(module_name)  # imports the parent packages, not the module itself
    except Exception:  # noqa: BLE001 - an unimportable target: building the method reports it
        return None
    if spec is None or not spec.has_location or not spec.origin:
        return None
    return pathlib.Path(spec.origin)


def method_source_fingerprint(name: str) -> str | None:
    """SHA-256 (hex) of :func:`builder_file` of method ``name`` (None where that is None or unreadable).

    Only that one file is hashed, not the modules it imports. ``experiments.compare`` records it with a row, so
    that a row whose method's code changed is trained again instead of reused.
    """
    import hashlib

    path = builder_file(name)
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def line_in_file(error: BaseException, path: str | pathlib.Path) -> int | None:
    """The line of the innermost frame of ``error``'s traceback that runs in file ``path`` (None if none does)."""
    import traceback

    try:
        target = pathlib.Path(path).expanduser().resolve()
        lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
                 if pathlib.Path(f.filename).resolve() == target]
    except (OSError, ValueError):
        return None
    return lines[-1] if lines else None


def user_code_line(name: str, error: BaseException) -> str:
    """`` at FILE, line N`` for the innermost frame of ``error``'s traceback in :func:`builder_file` of ``name``
    ('' when the error did not pass through that file): where in a user's method a failure happened."""
    path = builder_file(name)
    line = None if path is None else line_in_file(error, path)
    return "" if line is None else f" at {path}, line {line}"
