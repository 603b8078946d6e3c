"""Opening a prepared TFDS dataset safely: one builder per dataset at a time, and damaged files rebuilt.

``tfds.data_source(..., download=True)`` prepares a missing dataset, but two processes doing so at once (two
trainers, ``compare --jobs 2``) race: the loser fails renaming its ``incomplete.*`` folder onto the winner's. And a
damaged prepared file (a truncated Parquet file, a garbled ``dataset_info.json``) fails with pyarrow's or
protobuf's own error, at every later call. :func:`read_tfds_split` holds an advisory lock per dataset config in
the data directory while it opens (and, if needed, prepares) a split and reads it through (the builders take the
same lock when TFDS prepares them directly, and remove the folders of killed builds); when the prepared files
cannot be read it moves that version folder aside (``<version>.damaged-<time>``, never deleted) and prepares it
again: generated configs rebuild byte-identically, ``public`` ones from their manual folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

from seqcsist_jax.data.names import check_whole_splits, split_expression_names

log = logging.getLogger(__name__)
T = TypeVar("T")


class DamagedDatasetError(ValueError):
    """A prepared dataset cannot be read even after rebuilding it (the message names the folder and the cause)."""


def data_root(data_dir: str | os.PathLike | None) -> pathlib.Path:
    """The TFDS data directory: ``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return pathlib.Path(os.path.expanduser(str(data_dir or os.environ.get("TFDS_DATA_DIR")
                                               or "~/tensorflow_datasets")))


def _family_config(name: str) -> tuple[str, str]:
    family, _, rest = name.partition("/")
    family = family.split(":", 1)[0]
    config = rest.split(":", 1)[0] if rest else "default"
    return family, config


_HELD: dict[tuple[str, int], int] = {}  # (lock file, thread) this process holds, with the nesting depth


@contextlib.contextmanager
def build_lock(name: str, data_dir: str | os.PathLike | None) -> Iterator[None]:
    """Holds ``<data_dir>/.<family>-<config>.lock`` (``flock``; released by the kernel if the holder dies): a
    second process preparing or reading the same config through :func:`read_tfds_split`, or preparing it through
    TFDS directly (the builders take it too), waits, and then finds the data prepared. Re-entrant within a
    thread: :func:`read_tfds_split` holds it while TFDS calls the builder, which takes it again (another thread
    waits, like another process)."""
    family, config = _family_config(name)
    root = data_root(data_dir)
    path = str((root / f".{family}-{config}.lock").resolve())
    key = (path, threading.get_ident())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or prepared_dir(name, data_dir) is None:
            raise
        # A prepared copy in a folder this process may not write (a shared, read-only dataset folder): it is
        # only read, and nothing can build there, so there is nothing to serialise.
        log.debug("%s: not writable (%s); reading the prepared %s/%s without the build lock", path,
                  e.strerror or e, family, config)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process preparing or reading %s/%s in %s", family, config, root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD[key] = 1
        try:
            yield
        finally:
            _HELD.pop(key, None)
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale_incomplete(version_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Removes TFDS's ``incomplete.*_<version>`` folders next to ``version_dir``, left by builds that were
    killed; call it holding :func:`build_lock` (then no build of that config is running). Returns them."""
    import shutil

    version_dir = pathlib.Path(version_dir)
    stale = sorted(version_dir.parent.glob(f"incomplete.*_{version_dir.name}"))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed %s, left by an interrupted build of this dataset", folder)
    return stale


CHECKSUMS_NAME = "shards.sha256.json"  # written by the builders next to the shards, when they are prepared
_VERIFIED: set[tuple] = set()  # (folder, the record's and shards' sizes and mtimes) already verified in this process


def write_shard_checksums(folder: str | os.PathLike, files: list[pathlib.Path]) -> None:
    """Records ``{file name: SHA-256}`` of ``files`` in ``folder/shards.sha256.json`` (sorted: byte-identical
    builds give byte-identical records)."""
    import json

    from seqcsist_jax.fileio import atomic_write, file_sha256

    record = {pathlib.Path(f).name: file_sha256(f) for f in files}
    atomic_write(pathlib.Path(folder) / CHECKSUMS_NAME, json.dumps(record, indent=1, sort_keys=True) + "\n")


def verify_shard_checksums(folder: str | os.PathLike, split: str | None = None) -> bool:
    """Checks the shards of a prepared version folder (of ``split`` only, e.g. ``"test"`` or ``"train[:10]"``;
    None: all) against the SHA-256 recorded when they were written; returns False when the folder has no
    record (prepared before the builders wrote one: not checked).

    Raises:
      DamagedDatasetError: a shard is missing or its bytes changed since it was prepared (naming the file).
    """
    import json

    folder = pathlib.Path(folder)
    record_path = folder / CHECKSUMS_NAME
    if not record_path.exists():
        return False
    try:
        record = json.loads(record_path.read_text())
        if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
            raise ValueError("not a {file: sha256} object")
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedDatasetError(f"{record_path}: not a checksum record ({e})") from None
    if split is not None:  # shard names are <dataset>-<split>.<format>-NNNNN-of-NNNNN
        wanted = set(split_expression_names(split))
        record = {n: v for n, v in record.items() if n.split(".", 1)[0].rpartition("-")[2] in wanted}
    stats = []
    for name in sorted(record):
        try:
            st = (folder / name).stat()
        except OSError:
            raise DamagedDatasetError(f"{folder / name}: missing (listed in {CHECKSUMS_NAME})") from None
        stats.append((name, st.st_size, st.st_mtime_ns))
    key = (str(folder.resolve()), record_path.stat().st_mtime_ns, tuple(stats))
    if key in _VERIFIED:
        return True
    from seqcsist_jax.fileio import file_sha256

    for name, expected in sorted(record.items()):
        if file_sha256(folder / name) != expected:
            raise DamagedDatasetError(f"{folder / name}: its SHA-256 differs from the one recorded when it was "
                                      "prepared (the file changed on disk)")
    _VERIFIED.add(key)
    return True


def prepared_dir(name: str, data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """The folder of the prepared version of ``name`` (``<data_dir>/<family>/<config>/<version>``), or None when
    it has not been prepared."""
    import tensorflow_datasets as tfds

    family, config = _family_config(name)
    version = name.split(":", 1)[1] if ":" in name else str(tfds.builder_cls(family).VERSION)
    folder = data_root(data_dir) / family / config / version
    return folder if folder.is_dir() else None


def manual_dir_kwargs(manual_dir: str | os.PathLike | None) -> dict[str, Any]:
    """``tfds.data_source``/``tfds.load`` keyword arguments that read a ``public`` config's release from
    ``manual_dir`` when it is prepared (``{}`` for None: TFDS's default ``<data_dir>/downloads/manual/``)."""
    if manual_dir is None:
        return {}
    import tensorflow_datasets as tfds

    path = os.path.expanduser(os.fspath(manual_dir))
    return {"download_and_prepare_kwargs": {"download_config": tfds.download.DownloadConfig(manual_dir=path)}}


def read_tfds_split(name: str, split: str, data_dir: str | os.PathLike | None, build_if_missing: bool,
                    read: Callable[[Any], T], **data_source_kwargs: Any) -> T:
    """``read(tfds.data_source(name, split=split, ...))`` under :func:`build_lock`; when the prepared files are
    damaged (any error while opening or reading a folder that exists), the folder is moved aside and the dataset
    prepared again once (``build_if_missing``), with a warning naming both folders.

    Raises:
      DamagedDatasetError: the dataset still cannot be read after rebuilding (or may not be rebuilt).
      ValueError: ``split`` slices a split (:func:`~seqcsist_jax.data.names.check_whole_splits`).
    """
    check_whole_splits(split)
    import tensorflow_datasets as tfds

    from seqcsist_jax.data import tfds_registration

    tfds_registration.register()
    for attempt in (0, 1):
        with build_lock(name, data_dir):
            try:
                source = tfds.data_source(name, split=split, data_dir=data_dir, download=build_if_missing,
                                          **data_source_kwargs)
                folder = prepared_dir(name, data_dir)
                if folder is not None:
                    verify_shard_checksums(folder, split)  # a changed bit would read as other data, silently
                return read(source)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 (pyarrow, protobuf, OSError, KeyError: whatever the damage)
                if isinstance(e, ValueError) and str(e).startswith("Unknown split"):
                    raise  # a wrong split name, not damage
                folder = prepared_dir(name, data_dir)
                if folder is None:
                    raise  # nothing prepared: a build error (e.g. a bad manual folder) says what it is itself
                cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if attempt or not build_if_missing:
                    raise DamagedDatasetError(
                        f"the prepared dataset {folder} cannot be read ({cause})"
                        + ("" if build_if_missing else "; delete that folder or allow building it to rebuild")
                    ) from e
                aside = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(folder, aside)
                log.warning("the prepared dataset %s cannot be read (%s); moved it to %s and preparing it again",
                            folder, cause, aside)
    raise AssertionError("unreachable")
