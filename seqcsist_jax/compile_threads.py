"""``SEQCSIST_COMPILE_THREADS``: how many threads compile a decode's programs in the background.

Kept apart from :mod:`seqcsist_jax.decode.precompile` (which imports JAX) so that the command-line entry
points can refuse a bad value before anything else starts, without paying JAX's import for a ``--help`` or a
usage error.
"""

from __future__ import annotations

import os

VARIABLE = "SEQCSIST_COMPILE_THREADS"


def compile_threads() -> int:
    """Compiling threads of :func:`seqcsist_jax.decode.precompile.compiling`: ``SEQCSIST_COMPILE_THREADS`` if
    set (``0``: off), else 2 (1 on a single core). Raises ValueError naming the variable when it is not a
    non-negative integer."""
    value = os.environ.get(VARIABLE, "").strip()
    if not value:
        return min(2, os.cpu_count() or 1)
    if not value.isdigit():
        raise ValueError(f"{VARIABLE} must be a non-negative integer (0 turns background compilation off), "
                         f"got {value!r}")
    return int(value)
