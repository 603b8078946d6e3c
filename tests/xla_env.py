"""XLA flags for the subprocesses tests start (see ``conftest.py``: the session compiles at level 0)."""

from __future__ import annotations

import os

FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(*extra: str) -> str:
    """``XLA_FLAGS`` for a subprocess: this session's flags (fast compiles) plus ``extra``."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *extra]).strip()


def default_xla_env(**extra: str) -> dict[str, str]:
    """``os.environ`` for a subprocess that compiles at XLA's default optimisation level (as users run)."""
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f != FAST_COMPILE)
    return {**os.environ, "XLA_FLAGS": flags, **extra}
