"""Test-session setup: one persistent JAX compilation cache per test run, fast XLA compiles.

Many tests compile the same programs (every ``Trainer`` of a smoke config builds fresh jitted functions, the
decoders compile per test module, subprocess tests start new interpreters); JAX's in-memory cache only serves
the same function object, the persistent cache serves equal programs across objects, xdist workers and the
subprocesses the tests start. The cache lives in a temporary folder created for this run and removed after it,
so no run reuses another run's (or another machine's) executables. A ``JAX_COMPILATION_CACHE_DIR`` already set
by the user is respected and left in place.

XLA:CPU compiles at backend optimisation level 0 here (``XLA_FLAGS=--xla_backend_optimization_level=0``, added
to flags already set unless they name a level): the suite is compile-bound, and level 0 halves LLVM's share of
each compile. Results differ from the default level only in float rounding (operation order, fused
multiply-adds) -- the same kind of difference another CPU (with or without AVX-512) makes, which every
tolerance already covers. Subprocesses that set their own ``XLA_FLAGS`` add to
``tests.xla_env.xla_flags()``; the one run-time-bound check (the shipped weights reproduce their card) runs at
the default level, as users run it (``tests.xla_env.default_xla_env()``).

Tests that take tens of seconds carry ``@pytest.mark.slow`` (CI runs them; ``-m "not slow"`` leaves them out
locally). Scheduling them first with xdist's ``worksteal`` was measured slower than the default ``load``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from tests.xla_env import FAST_COMPILE, xla_flags

_OWNED_ENV = "SEQCSIST_TEST_OWNS_JAX_CACHE"


def pytest_configure(config) -> None:
    # The xdist controller (or a plain run) runs this before any worker starts or any test module imports JAX,
    # so the environment reaches every worker and subprocess.
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = xla_flags(FAST_COMPILE)
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="seqcsist-jax-test-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    os.environ[_OWNED_ENV] = "1"


def pytest_unconfigure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or not os.environ.pop(_OWNED_ENV, None):
        return
    shutil.rmtree(os.environ.pop("JAX_COMPILATION_CACHE_DIR"), ignore_errors=True)
