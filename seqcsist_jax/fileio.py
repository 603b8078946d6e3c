"""Crash-safe file writes: write to a hidden temporary file next to the target, fsync, then rename into place.

A reader (or a restarted run) therefore sees either the old file or the complete new one, never a torn one,
whatever kills the writer (SIGKILL, a full disk). The temporary name is unique per process and thread, so
concurrent writers never share one, and starts with a dot, so directory scans that skip hidden names never
mistake it for data. Every module that writes a result file goes through here; :func:`read_json_object` is
the matching reader (one-line errors naming the file).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import pathlib
import threading
from typing import Any, Iterator

PathLike = str | os.PathLike


def temporary_sibling(path: PathLike, suffix: str = "") -> pathlib.Path:
    """A hidden, per-process/thread unique name next to ``path`` (``suffix`` keeps e.g. ``.png`` or ``.npz``
    for writers that choose the format from the extension)."""
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp{suffix}")


STALE_SECONDS = 60.0  # a temporary file this old whose writer is gone is left over from a killed write


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: a live process of another user
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> list[pathlib.Path]:
    """Deletes the temporary siblings of ``path`` (:func:`temporary_sibling` names) left by writers that were
    killed mid-write: their process no longer exists and the file is older than :data:`STALE_SECONDS` (a live
    writer, or one on another host sharing the folder, keeps its file). Returns what was removed."""
    import time

    path = pathlib.Path(path)
    removed = []
    now = time.time()
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp*"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        try:
            stale = pid.isdigit() and not _pid_alive(int(pid)) and now - tmp.stat().st_mtime > STALE_SECONDS
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # vanished meanwhile, or not ours to remove
            continue
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped (``[`` → ``[[]`` and so on)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "", fsync: bool = True) -> Iterator[pathlib.Path]:
    """Yields a temporary path to write to; on success it is fsynced and renamed to ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is untouched::

        with atomic_path(out / "q.npz", suffix=".npz") as tmp:
            np.savez(tmp, q=q)
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # a killed earlier write must not leave its (possibly large) file forever
    tmp = temporary_sibling(path, suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None and e.strerror is not None:
            # A writer that got a file object (np.savez, zipfile) raises without a name: say which file it was.
            e.filename = str(path)
        raise


def atomic_write(path: PathLike, data: str | bytes, fsync: bool = True) -> None:
    """Writes ``data`` (text as UTF-8, or bytes) to ``path`` atomically (see module docstring)."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_write_json(path: PathLike, data: Any, strict: bool = False, **json_options: Any) -> None:
    """``json.dumps(data, indent=2, default=float)`` written atomically; ``json_options`` override those.

    ``strict``: NaN and infinities become ``null`` (:func:`without_non_finite`), so any JSON reader loads the
    file; for files meant for people and other programs (a run's ``result.json``, ``metrics.json``). Files only
    this project reads back keep NaN as NaN.
    """
    options = {"indent": 2, "default": float, **json_options}
    if strict:
        data, options["allow_nan"] = without_non_finite(data), False
    atomic_write(path, json.dumps(data, **options) + "\n")


def without_non_finite(data: Any) -> Any:
    """``data`` with every NaN or infinite float (in nested dicts, lists and tuples) replaced by ``None``.

    Python's ``json`` writes those floats as the bare words ``NaN``/``Infinity``, which are not JSON: strict
    readers (``jq``, JavaScript, most other languages) reject the whole file. Tables meant for other programs
    go through here and then ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: without_non_finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [without_non_finite(v) for v in data]
    if hasattr(data, "dtype") and getattr(data, "shape", None) == ():  # numpy/JAX scalars
        return without_non_finite(data.item())
    return data


def json_type(value: Any) -> str:
    """How JSON names ``value``'s type, for messages: ``an object``, ``a list``, ``a string``, ``a number`` ..."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def read_json_object(path: PathLike, expected: str, *, label: str | None = None,
                     error: type[Exception] = ValueError) -> dict:
    """The JSON object in file ``path``; ``error`` (one line) if the file is empty, not UTF-8, not JSON or not an
    object. Messages start with ``label`` (default: the path) and end with ``expected`` (what the file should
    be, e.g. "the JSON experiments.export_weights writes"). OSErrors (a missing file) pass through."""
    path = pathlib.Path(path)
    label = str(path) if label is None else label
    raw = path.read_bytes()
    if not raw.strip():
        raise error(f"{label} is empty ({len(raw)} bytes; an interrupted write or copy?); expected {expected}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{label} is not UTF-8 text (byte {e.start}); expected {expected}") from None
    except json.JSONDecodeError as e:
        raise error(f"{label}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}); expected "
                    f"{expected}") from None
    if not isinstance(data, dict):
        raise error(f"{label}: the file holds {json_type(data)}; expected a JSON object ({expected})")
    return data


def _caused_by(error: BaseException | None, code: int, texts: tuple[str, ...]) -> bool:
    """Whether ``error`` or an exception it was raised from is ``OSError(code)`` or says one of ``texts``."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == code:
            return True
        if any(text in str(error) for text in texts):
            return True
        error = error.__cause__ or error.__context__
    return False


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is a full disk: ``ENOSPC``, or a library's own
    exception whose message carries it (TFDS's writers raise ``OSError`` without an errno, Orbax wraps it)."""
    return _caused_by(error, errno.ENOSPC, ("No space left on device", "ENOSPC"))


def is_file_too_large(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is a file-size limit (``EFBIG``: ``ulimit -f``, a
    file system's largest file), also when a library wraps it in its own exception (Orbax's TensorStore writes
    raise ``ValueError: OUT_OF_RANGE … File too large``)."""
    return _caused_by(error, errno.EFBIG, ("File too large",))


def file_sha256(path: PathLike) -> str:
    """SHA-256 of the file at ``path`` as 64 lowercase hex digits, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
