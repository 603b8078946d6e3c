"""Test-session setup: one persistent JAX compilation cache per test run.

Many tests compile the same programs (every ``Trainer`` of a smoke config builds fresh jitted functions, the
decoders compile per test module, subprocess tests start new interpreters); JAX's in-memory cache only serves
the same function object, the persistent cache serves equal programs across objects, xdist workers and the
subprocesses the tests start. The cache lives in a temporary folder created for this run and removed after it,
so no run reuses another run's (or another machine's) executables. A ``JAX_COMPILATION_CACHE_DIR`` already set
by the user is respected and left in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_OWNED_ENV = "SEQCSIST_TEST_OWNS_JAX_CACHE"


def pytest_configure(config) -> None:
    # The xdist controller (or a plain run) runs this before any worker starts or any test module imports JAX,
    # so the environment reaches every worker and subprocess.
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="seqcsist-jax-test-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    os.environ[_OWNED_ENV] = "1"


def pytest_unconfigure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or not os.environ.pop(_OWNED_ENV, None):
        return
    shutil.rmtree(os.environ.pop("JAX_COMPILATION_CACHE_DIR"), ignore_errors=True)
