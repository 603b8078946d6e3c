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
import zipfile
import zlib
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from seqcsist_jax.fileio import atomic_path, atomic_write_json, file_sha256, json_type, read_json_object

__all__ = [
    "WEIGHTS_DIR",
    "WeightsFileError",
    "available",
    "check_name",
    "check_params",
    "export_state_dict",
    "load_card",
    "load_pretrained",
    "pretrained_q",
    "resolve",
    "save_pretrained",
]

#: Where the shipped weight files and model cards live (inside the package).
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"
_Q_KEY = "__q__"
_SHA_KEY = "npz_sha256"  # the card's checksum of its .npz (cards written before it existed have none)
_WRITER = "experiments.export_weights"


class WeightsFileError(ValueError):
    """A weight file (``NAME.npz``) or its model card (``NAME.json``) that cannot be used as it is.

    The message is one line naming the file, the member or field, and what was expected, so a command-line tool
    prints it as is (``experiments.evaluate`` turns any ``ValueError`` into one ``error:`` line).
    """


def check_name(name: str) -> str:
    """Returns ``name`` if it is a plain file stem (``NAME`` of ``NAME.npz``/``NAME.json``); raises ValueError.

    Refused: empty names, path separators, ``.``/``..``, a leading dot (hidden files; the atomic writers'
    temporaries start with one), a ``.npz``/``.json`` ending (the extension is added here), and characters other
    than ASCII letters, digits, ``_``, ``.`` and ``-`` (or a leading ``-``), so ``--pretrained=NAME`` needs no quoting.
    """
    text = str(name)
    seps = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}
    if not text.strip():
        raise ValueError("an empty name; expected a plain file stem such as derefnet_quick")
    if any(c in text for c in seps) or "\0" in text:
        raise ValueError(f"{text!r} contains a path separator; expected a plain file stem such as derefnet_quick "
                         "(choose the folder with --weights_dir)")
    if text.startswith("."):
        raise ValueError(f"{text!r} starts with a dot (., .. and hidden names are refused); expected a plain file "
                         "stem such as derefnet_quick")
    for ext in (".npz", ".json"):
        if text.endswith(ext):
            raise ValueError(f"{text!r} ends with {ext}; give the stem only ({text[:-len(ext)]}): NAME.npz and its "
                             "card NAME.json are both written")
    odd = sorted({c for c in text if not (c.isascii() and (c.isalnum() or c in "_.-"))})
    if odd or text.startswith("-"):
        # --pretrained=NAME must read back without quoting, and a leading '-' reads as a flag in most shells' tools
        what = f"characters {''.join(odd)!r}" if odd else "a leading '-'"
        raise ValueError(f"{text!r} has {what}; expected a plain file stem of letters, digits, '_', '.' and '-' "
                         "(not first) such as derefnet_quick")
    return text


def available(weights_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the weight files in ``weights_dir`` (default :data:`WEIGHTS_DIR`)."""
    folder = pathlib.Path(weights_dir or WEIGHTS_DIR)
    return sorted(p.stem for p in folder.glob("*.npz") if (folder / f"{p.stem}.json").exists())


def resolve(spec: str) -> tuple[str, pathlib.Path | None]:
    """``(name, weights_dir)`` of a weights reference: a shipped name (``"derefnet_quick"`` → its name and
    ``None``, the package folder) or a path to an exported ``NAME.npz`` (``.npz`` optional; its card ``NAME.json``
    names it too), as
    ``experiments.export_weights --weights_dir=DIR`` writes them (→ ``NAME`` and ``DIR``).

    Raises:
      FileNotFoundError: a path whose ``.npz`` exists without its card ``NAME.json``, or the reverse (names the
        missing file). A path where neither exists is returned as is: the caller says what is available.
      WeightsFileError: the path is a folder.
    """
    text = str(spec)
    if text.endswith(".npz") or "/" in text or os.sep in text:
        path = pathlib.Path(text).expanduser()
        name, folder = path.name.removesuffix(".npz"), path.parent
        if path.suffix == ".json" and path.with_suffix(".npz").exists():  # its model card names the weights too
            name = path.stem
        npz, card = folder / f"{name}.npz", folder / f"{name}.json"
        if path.is_dir() and not npz.exists():
            inside = ", ".join(f"{n}.npz" for n in available(path)) or "no weights"
            raise WeightsFileError(f"{path} is a folder ({inside}); expected the path of an exported weights file, "
                                   "DIR/NAME.npz")
        if npz.exists() or card.exists():
            _paths(name, folder)  # half a pair: say which file is missing (FileNotFoundError)
        return name, folder
    return text, None


def _paths(name: str, weights_dir) -> tuple[pathlib.Path, pathlib.Path]:
    folder = pathlib.Path(weights_dir or WEIGHTS_DIR)
    npz, card = folder / f"{name}.npz", folder / f"{name}.json"
    if npz.exists() and not card.exists():
        raise FileNotFoundError(
            f"the model card {card} of {npz} is missing: it is the JSON (run config, metrics, provenance) that "
            f"{_WRITER} writes next to the .npz; copy it along with the weights, or export them again")
    if card.exists() and not npz.exists():
        raise FileNotFoundError(f"{npz} does not exist, though its model card {card.name} does (an interrupted "
                                "export or copy?); copy the .npz along with its card, or export them again")
    if not npz.exists():
        names = ", ".join(available(folder)) or "none"
        raise FileNotFoundError(f"no pretrained weights {name!r}: {npz} does not exist (available: {names})")
    return npz, card


def load_card(name: str, weights_dir: str | os.PathLike | None = None) -> dict:
    """The model card (JSON) of weight file ``name``.

    Raises:
      FileNotFoundError: the weights or their card do not exist (names the missing file).
      WeightsFileError: the card is not JSON, or lacks a field the loader needs or holds it with the wrong type
        (names the card, the field and what was expected).
    """
    path = _paths(name, weights_dir)[1]
    return _check_card(read_json_object(path, f"the JSON {_WRITER} writes", label=f"model card {path}",
                                        error=WeightsFileError), path)


# (dotted field, type, what it is) that loading needs from a card; checked in order.
_CARD_FIELDS = (
    ("config", dict, "the run config"),
    ("config.model", dict, "the model section of the run config"),
    ("config.model.name", str, "the model name, e.g. 'derefnet'"),
    ("config.loss", dict, "the loss section of the run config"),
    ("config.dataset", dict, "the dataset section of the run config"),
    ("config.eval", dict, "the eval section of the run config"),
)


def _check_card(card: dict, path: pathlib.Path) -> dict:
    for field, kind, what in _CARD_FIELDS:
        node: Any = card
        for part in field.split("."):
            if part not in node:
                raise WeightsFileError(f"model card {path}: field {field!r} is missing; expected {what} "
                                       f"({json_type(kind())}), as {_WRITER} writes it")
            node = node[part]
        if not isinstance(node, kind):
            raise WeightsFileError(f"model card {path}: field {field!r} is {json_type(node)} ({node!r:.40}); "
                                   f"expected {json_type(kind())}: {what}")
    sha = card.get(_SHA_KEY)
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                and all(c in "0123456789abcdef" for c in sha)):
        raise WeightsFileError(f"model card {path}: field {_SHA_KEY!r} is {sha!r:.40}; expected the .npz's "
                               "SHA-256 as 64 lowercase hex digits")
    return card


_sha256 = file_sha256  # the weights file's checksum (its model card's npz_sha256)


def _read_npz(npz: pathlib.Path) -> dict[str, np.ndarray]:
    """Every array of weight file ``npz``, or WeightsFileError naming the file (and the member) and the fault."""
    expected = f"expected the .npz {_WRITER} writes"
    size = npz.stat().st_size
    if size == 0:
        raise WeightsFileError(f"{npz} is empty (0 bytes); an interrupted download or copy? ({expected})")
    if not zipfile.is_zipfile(npz):
        with open(npz, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        what = ("a truncated zip archive: its directory at the end is missing; an interrupted download or copy?"
                if zipped else f"not a zip archive, {size} bytes")
        raise WeightsFileError(f"{npz} is not a readable weights archive ({what}); {expected}")
    arrays = {}
    try:
        with np.load(npz, allow_pickle=False) as data:
            for key in data.files:
                try:
                    arrays[key] = data[key]
                except ValueError as e:
                    reason = ("holds Python objects, not numbers" if "allow_pickle" in str(e)
                              else f"{type(e).__name__}: {e}")
                    raise WeightsFileError(f"{npz}: member {key!r} is not a readable array ({reason}); "
                                           f"{expected}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, NotImplementedError) as e:
        if isinstance(e, WeightsFileError):
            raise
        raise WeightsFileError(f"{npz} is not a readable weights archive ({type(e).__name__}: {e}); "
                               f"{expected}") from None
    if not arrays:
        raise WeightsFileError(f"{npz} holds no arrays; {expected}")
    return arrays


def _flatten(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(k.key for k in path): np.asarray(leaf) for path, leaf in flat}


def _unflatten(flat: Mapping[str, np.ndarray], source: str = "params") -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise WeightsFileError(f"{source}: parameter {key!r} lies under {p!r}, which is an array itself; "
                                       "expected keys that name leaves of one tree (stage_0/lambda_step ...)")
        if isinstance(node.get(leaf), dict):
            raise WeightsFileError(f"{source}: parameter {key!r} is also a group of parameters; expected keys that "
                                   "name leaves of one tree (stage_0/lambda_step ...)")
        node[leaf] = value
    return tree


_SHAPES_CACHE: dict[str, dict[str, tuple[int, ...]]] = {}


def _expected_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of ``config.model`` (abstract init: no FLOPs, no memory; cached per model and loss)."""
    key = json.dumps([config.model.to_dict(), config.loss.to_dict()], sort_keys=True, default=repr)
    if key not in _SHAPES_CACHE:
        _SHAPES_CACHE[key] = _model_shapes(config)
    return dict(_SHAPES_CACHE[key])


def _model_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
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
      name: a weight file's stem, e.g. ``"derefnet_quick"`` (see :func:`available`), or, without
        ``weights_dir``, the path of exported weights ``DIR/NAME.npz`` (or of their card ``DIR/NAME.json``), as
        ``--pretrained`` takes them (:func:`resolve`).
      config: the config whose model the params must fit (default: the run config stored in the card).
      weights_dir: folder of the weight files (default :data:`WEIGHTS_DIR`).

    Returns:
      the config (the card's run config, or ``config``) and the float32 params tree.

    Raises:
      FileNotFoundError: no such weights (the message lists the available names), or the ``.npz`` without its
        card (or the reverse).
      WeightsFileError: an unreadable, empty or truncated ``.npz``; an ``.npz`` that is not the one its card was
        written for; a card that is not JSON or lacks a field; a card naming a builder outside
        :data:`~seqcsist_jax.methods.METHOD_TABLE` while ``config`` is None (loading weights never imports code);
        non-numeric or non-finite (NaN/inf) parameters.
        One line naming the file and the first bad member or field.
      ValueError: the file does not fit the model (names the missing/unexpected keys and shape mismatches).
    """
    if weights_dir is None:
        name, weights_dir = resolve(name)
    npz, card_path = _paths(name, weights_dir)
    card = load_card(name, weights_dir)
    sha = card.get(_SHA_KEY)
    if sha is not None and _sha256(npz) != sha:
        raise WeightsFileError(
            f"{npz} is not the file its model card {card_path.name} was written for (its SHA-256 differs from the "
            f"card's {_SHA_KEY}): one of the pair was replaced or damaged after the export (an interrupted "
            "export or copy?); export the run again (--overwrite) or copy both files together")
    source = str(npz)
    if config is None:
        from seqcsist_jax.methods import METHOD_TABLE

        builder = card["config"]["model"]["name"]
        if builder not in METHOD_TABLE and ":" in builder:
            # A weights file must never run code: an outside builder is imported only from a config the user gives.
            raise WeightsFileError(
                f"model card {card_path}: field 'config.model.name' names the builder {builder!r}, outside this "
                "package; loading weights never imports code that a card names: pass the method's config "
                "(evaluate --config=path/to/method.py, or load_pretrained(..., config=...)) to build it yourself")
        config = ml_collections.ConfigDict(card["config"])
        source = f"{npz} (model from its card {card_path.name})"
        try:
            _expected_shapes(config)
        except Exception as e:  # noqa: BLE001 (a card's model fields reach model code: any error is the card's)
            model = ", ".join(f"{k}={v!r}" for k, v in card["config"]["model"].items())
            first = (str(e).splitlines() or [""])[0]
            raise WeightsFileError(f"model card {card_path}: field 'config.model' ({model}) does not describe a "
                                   f"model this code builds ({type(e).__name__}: {first}); expected the run config "
                                   f"{_WRITER} writes") from None
    arrays = {k: v for k, v in _read_npz(npz).items() if k != _Q_KEY}
    for key in sorted(arrays):
        if arrays[key].dtype.kind not in "fiub":
            raise WeightsFileError(f"{npz}: parameter {key!r} has dtype {arrays[key].dtype}; expected float32 "
                                   "weights")
    params = _unflatten({k: np.asarray(v, np.float32) for k, v in arrays.items()}, source=str(npz))
    check_params(params, config, source=source)
    for key, value in sorted(_flatten(params).items()):
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise WeightsFileError(f"{npz}: parameter {key!r} has NaN or inf in {bad} of its {np.size(value)} "
                                   "values; expected finite weights (the run diverged, or the file is damaged)")
    return config, params


def pretrained_q(name: str, weights_dir: str | os.PathLike | None = None) -> np.ndarray | None:
    """Q ``(1089, 121)`` stored with the weights (``None`` if the file has none: compute it from the data).

    Raises:
      FileNotFoundError: no such weights.
      WeightsFileError: an unreadable ``.npz``, or a Q of the wrong shape, type or with NaN/inf (names the file).
    """
    from seqcsist_jax import imaging

    npz, _ = _paths(name, weights_dir)
    arrays = _read_npz(npz)
    if _Q_KEY not in arrays:
        return None
    q = arrays[_Q_KEY]
    want = imaging.measurement_matrix().T.shape
    if q.dtype.kind not in "fiu" or q.shape != want:
        raise WeightsFileError(f"{npz}: member {_Q_KEY!r} (the run's Q) is {q.dtype} {q.shape}; expected a float "
                               f"array of shape {want}")
    if not np.all(np.isfinite(q)):
        raise WeightsFileError(f"{npz}: member {_Q_KEY!r} (the run's Q) has NaN or inf values; expected finite "
                               "numbers (the file is damaged)")
    return np.asarray(q)


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
    parameter count, file name and the ``.npz``'s SHA-256 are added here. Returns the ``.npz`` path.

    The card is written last and records the checksum of the ``.npz`` it describes, so a writer killed between
    the two files leaves either an ``.npz`` without a card (not listed by :func:`available`) or, replacing
    weights of the same name, a pair that :func:`load_pretrained` refuses as mismatched; never a torn file.

    Raises:
      ValueError: ``name`` is not a plain file stem (:func:`check_name`), or ``params`` do not fit the model.
    """
    check_name(name)
    check_params(params, config)
    folder = pathlib.Path(weights_dir or WEIGHTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
    if q is not None:
        flat[_Q_KEY] = np.asarray(q)
    npz = folder / f"{name}.npz"
    with atomic_path(npz, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **flat)
        sha = _sha256(tmp)
    full = {"name": name, "file": npz.name, **dict(card), "config": config.to_dict(),
            "num_params": int(sum(v.size for k, v in flat.items() if k != _Q_KEY)), _SHA_KEY: sha}
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
