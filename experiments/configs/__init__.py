"""Experiment configs: ``experiments/configs/<name>.py`` files, each with ``get_config(arg=None)``.

``--config=<name>`` or ``--config=<name>:<variant>`` resolves a config by name (see :func:`resolve`), and
``--config.a.b=value`` overrides any field (ml_collections ``config_flags``).
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys

import ml_collections

from seqcsist_jax.suggest import did_you_mean

CONFIG_DIR = pathlib.Path(__file__).resolve().parent
_NOT_CONFIGS = {"__init__", "common"}


def available_configs() -> list[str]:
    """Names of the config files in this directory (those defining ``get_config``)."""
    names = []
    for path in sorted(CONFIG_DIR.glob("*.py")):
        if path.stem in _NOT_CONFIGS or path.stem.startswith("_"):
            continue
        if "def get_config" in path.read_text():
            names.append(path.stem)
    return names


def config_path(spec: str) -> str:
    """Maps ``name[:arg]`` to ``/abs/path/name.py[:arg]`` (paths are passed through unchanged).

    Raises:
      ValueError: the name is not a config file; the message lists the available configs.
    """
    name, sep, arg = spec.partition(":")
    if name.endswith(".py") or "/" in name:
        return spec
    path = CONFIG_DIR / f"{name}.py"
    if not path.exists() or name in _NOT_CONFIGS:
        hint = did_you_mean(name, available_configs())
        stem, _, suffix = name.rpartition("_")
        if not sep and suffix in ("quick", "smoke") and stem in available_configs():
            # `derefnet_quick` is a config of its own; the other models take the variant after a colon
            hint = f" (did you mean '{stem}:{suffix}'?)"
        raise ValueError(
            f"unknown config {name!r}{hint}; available configs: {', '.join(available_configs())} "
            f"(or pass a path to a config file)"
        )
    return f"{path}{sep}{arg}"


def get_config(spec: str) -> ml_collections.ConfigDict:
    """Loads a config by ``name[:arg]`` or ``path/to/file.py[:arg]`` without flags (for notebooks and tests).

    Raises:
      ValueError: unknown name or variant, a path that is not a config file, or a config file with a syntax error
        or a failing import (the message says which; errors raised by the file's own code propagate unchanged).
    """
    name, _, arg = spec.partition(":")
    if name.endswith(".py") or "/" in name:
        path = pathlib.Path(name).expanduser()
        if not path.is_file():
            raise ValueError(f"config file {path} not found")
        module_spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        # Registered while it runs: a file that also defines its model (a Flax module is a dataclass) needs its
        # module to be findable by name.
        sys.modules[module_spec.name] = module
        try:
            module_spec.loader.exec_module(module)
        except SyntaxError as e:  # the file as written: one line naming where, not a traceback
            raise ValueError(f"config file {path}: {e.msg} (line {e.lineno})") from None
        except ImportError as e:  # e.g. a module it imports is not installed (ModuleNotFoundError)
            raise ValueError(f"config file {path}: {type(e).__name__}: {e}") from None
        finally:
            sys.modules.pop(module_spec.name, None)
        if not hasattr(module, "get_config"):
            raise ValueError(f"{path} defines no get_config()")
    else:
        config_path(spec)  # validates the name
        module = importlib.import_module(f"experiments.configs.{name}")
    return module.get_config(arg or None)
