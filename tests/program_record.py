"""Records which programs a decode compiles in the background and which it waits for
(:mod:`seqcsist_jax.decode.precompile`), without changing either: tests then check that the decoder foresaw
exactly the programs it calls."""

from __future__ import annotations

import contextlib
from typing import Iterator

from seqcsist_jax.decode import precompile


@contextlib.contextmanager
def recorded_programs(monkeypatch) -> Iterator[tuple[list, list]]:
    """Yields ``(started, asked)``: the keys of the background compiles started and of every ``ready`` call."""
    started: list = []
    asked: list = []
    compile_, ready = precompile._compile, precompile.ready

    def record_compile(fn, args):
        started.append(precompile._key(fn, args))
        compile_(fn, args)

    def record_ready(fn, *args):
        asked.append(precompile._key(fn, args))
        ready(fn, *args)

    with monkeypatch.context() as m:
        m.setattr(precompile, "_compile", record_compile)
        m.setattr(precompile, "ready", record_ready)
        yield started, asked


def assert_all_foreseen(started: list, asked: list) -> None:
    """Every program the decode waited for was compiled in the background, and nothing else was."""
    assert asked, "the decode called no foreseen program"
    assert set(asked) == set(started) and len(started) == len(set(started)), (started, asked)
