"""Background compilation (seqcsist_jax.decode.precompile): a program compiled on a background thread is the one
the ordinary jitted call then runs (nothing compiled twice), and a wrong guess or a failed background compile
costs nothing but time. That the decoder foresees exactly the programs it calls is checked where the decodes
run anyway (tests.program_record: test_decode, test_decode_centre, test_calibrate)."""

from __future__ import annotations

import functools
import logging
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqcsist_jax import compile_threads
from seqcsist_jax.decode import precompile


class _CompileLog(logging.Handler):
    """Records ``(thread name, program)`` of every XLA compilation JAX logs (``jax_log_compiles``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("Finished XLA compilation of "):
            self.records.append((record.threadName, text.split(" of ", 1)[1].split(" in ", 1)[0]))


@pytest.fixture
def compile_log():
    handler = _CompileLog()
    logger = logging.getLogger("jax._src.dispatch")
    logger.addHandler(handler)
    before = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)  # global, not a context: the compiling threads must see it
    try:
        yield handler.records
    finally:
        jax.config.update("jax_log_compiles", before)
        logger.removeHandler(handler)


def _fresh_program():
    # A new function object per test: nothing of it is in any cache yet.
    @functools.partial(jax.jit, static_argnums=(1,))
    def program(x, repeats):
        for _ in range(repeats):
            x = jnp.tanh(x @ x.T) + x
        return x.sum(0)

    return program


def test_the_call_runs_the_program_compiled_in_the_background(compile_log):
    program = _fresh_program()
    x = jnp.asarray(np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    expected = np.asarray(_fresh_program()(x, 3))  # another function object: its own caches
    compile_log.clear()
    with precompile.compiling([precompile.spec(program, [((64, 64), jnp.float32)], 3)]):
        precompile.ready(program, x, 3)
        got = np.asarray(program(x, 3))
    mine = [t for t, name in compile_log if name == "jit(program)"]
    assert len(mine) == 1 and mine[0].startswith("seqcsist-compile"), compile_log
    np.testing.assert_array_equal(got, expected)  # the same program, compiled elsewhere: the same bits
    assert not any(t.name.startswith("seqcsist-compile") for t in threading.enumerate())  # none outlives it


def test_wrong_guesses_and_failed_compiles_only_cost_time(compile_log, monkeypatch):
    program = _fresh_program()
    x = jnp.ones((8, 8), jnp.float32)
    compile_log.clear()
    wrong_shape = precompile.spec(program, [((16, 16), jnp.float32)], 2)
    wrong_rank = precompile.spec(program, [((2, 3, 4), jnp.float32)], 2)  # batch dims 2 and 4: fails to trace
    with precompile.compiling([wrong_shape, wrong_rank]):
        precompile.ready(program, x, 2)  # nothing started for these shapes: returns at once
        precompile.ready(program, jax.ShapeDtypeStruct((2, 3, 4), jnp.float32), 2)  # failed there: ignored
        got = np.asarray(program(x, 2))
    threads = [t for t, name in compile_log if name == "jit(program)"]
    assert sorted(t.startswith("seqcsist-compile") for t in threads) == [False, True]  # (16, 16) bg, (8, 8) here
    np.testing.assert_array_equal(got, np.asarray(_fresh_program()(x, 2)))
    # off: nothing in the background
    monkeypatch.setenv("SEQCSIST_COMPILE_THREADS", "0")
    compile_log.clear()
    other = _fresh_program()
    with precompile.compiling([precompile.spec(other, [((8, 8), jnp.float32)], 2)]):
        np.asarray(other(x, 2))
    assert [t for t, name in compile_log if name == "jit(program)"] == ["MainThread"]


@pytest.mark.parametrize("read", [precompile.default_workers, compile_threads.compile_threads])
def test_compile_threads_variable(monkeypatch, read):
    # the entry points check it through the JAX-free module; the decoder reads it through precompile
    monkeypatch.delenv("SEQCSIST_COMPILE_THREADS", raising=False)
    assert read() == min(2, __import__("os").cpu_count() or 1)
    monkeypatch.setenv("SEQCSIST_COMPILE_THREADS", " 3 ")
    assert read() == 3
    monkeypatch.setenv("SEQCSIST_COMPILE_THREADS", "0")
    assert read() == 0
    for bad in ("two", "-1", "1.5"):
        monkeypatch.setenv("SEQCSIST_COMPILE_THREADS", bad)
        with pytest.raises(ValueError, match=rf"^SEQCSIST_COMPILE_THREADS must be a non-negative integer .*'{bad}'"):
            read()
