"""Registers the ``seqcsist`` TFDS builder without making ``import seqcsist_jax`` pay for TFDS.

TFDS resolves ``tfds.builder('seqcsist')``, ``tfds.load`` and ``tfds.data_source`` by name once the module
defining the builder has been imported (``tfds_builders.seqcsist``). Importing ``tensorflow_datasets`` costs
about 0.3 s, so ``seqcsist_jax/__init__.py`` only calls :func:`install`: if TFDS is already imported the
builder is registered at once; otherwise a one-shot import hook registers it right after the first
``import tensorflow_datasets`` of the process completes. Either way the name resolves whenever TFDS is used.

:func:`register` imports the builder eagerly (idempotent); the pipeline calls it before ``tfds.data_source``.
"""

from __future__ import annotations

import importlib
import sys
import warnings

_TFDS = "tensorflow_datasets"
_BUILDER_MODULES = ("tfds_builders.seqcsist", "tfds_builders.csist100k")


def register() -> None:
    """Imports the builder modules so TFDS knows ``seqcsist`` and ``csist100k`` (imports TFDS if needed)."""
    for module in _BUILDER_MODULES:
        importlib.import_module(module)


class _RegisterAfterTfdsImport:  # a meta path finder (duck-typed: importlib.abc costs ~40 ms)
    """Wraps the loader of ``tensorflow_datasets`` so the builder registers once TFDS has fully executed."""

    def find_spec(self, fullname: str, path, target=None):
        if fullname != _TFDS:
            return None
        _uninstall_hook()  # one shot; also keeps the search below from finding this finder again
        import importlib.util

        spec = importlib.util.find_spec(fullname)  # the regular finders, this one removed
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader:  # a loader (duck-typed)
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        # TFDS is complete here; the builder module imports it from sys.modules. A broken builder must not
        # break `import tensorflow_datasets` for everything else, hence a warning instead of an exception.
        try:
            register()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"could not register the seqcsist TFDS builder: {e!r}", RuntimeWarning, stacklevel=2)

    def __getattr__(self, name: str):  # e.g. get_resource_reader, is_package
        return getattr(self._inner, name)


_hook = _RegisterAfterTfdsImport()


def _uninstall_hook() -> None:
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)


def install() -> None:
    """Registers the builder now if TFDS is imported, else as soon as it is. Cheap (no TFDS import)."""
    if _TFDS in sys.modules:
        register()
        return
    if _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)
