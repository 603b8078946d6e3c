"""Background compilation of a decode's jitted programs, so that compiling overlaps fitting.

A cold ``refine`` decode of 10,000 CSIST-100K images on 2 CPU cores spent more than half its wall time
compiling its four large programs (the per-count stages of :mod:`seqcsist_jax.decode.frames` in 1, 2 and 5 slots
and the centring of :mod:`seqcsist_jax.decode.centre`), one after another, each while nothing else ran. Their
input shapes follow from the frames and the options before the first one runs, so :func:`compiling` lowers and
compiles them on background threads (XLA releases the GIL while it compiles): the first stage starts as soon as
its own program is ready, and the others compile while it runs. Measured side by side in fresh processes
(``bench_decode_csist100k``): median 20.3 s against 21.8 s without it (33.5 against 35.8 s on a slower day of
the shared machine); the run stays CPU-bound (about 35 CPU s on 2 cores, 17.5 of them in the compiled calls).

JAX caches a jitted function's trace, lowering and executable by its argument shapes, dtypes and static
arguments, so an ordinary call of the same function finds what a background ``.lower(...).compile()`` built
(the decode's calls are unchanged). :func:`ready`, placed before such a call, waits for a background compile of
exactly that program instead of compiling it a second time. Nothing depends on the guesses: a program whose
shapes were not foreseen (or whose background compile failed) compiles in the calling thread as usual, and the
results are those of the same executable either way.

``SEQCSIST_COMPILE_THREADS`` sets the number of compiling threads (default 2, or 1 on a single core); ``0``
turns background compilation off (every program then compiles in the calling thread, when first called).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

import jax

from seqcsist_jax.compile_threads import compile_threads

#: ``(jitted function, its positional arguments)``: arrays as ``jax.ShapeDtypeStruct``, static arguments as
#: values, passed exactly as the call passes them (JAX keys its caches on whether a static argument came by
#: position or by name).
ProgramSpec = tuple[Callable[..., Any], tuple[Any, ...]]

_LOCK = threading.Lock()
_PENDING: dict[Any, concurrent.futures.Future] = {}


def _key(fn: Callable[..., Any], args: Sequence[Any]) -> Any:
    return id(fn), tuple((tuple(a.shape), str(a.dtype)) if hasattr(a, "shape") and hasattr(a, "dtype") else a
                         for a in args)


def spec(fn: Callable[..., Any], shapes: Sequence[tuple[tuple[int, ...], Any]], *static: Any) -> ProgramSpec:
    """A :data:`ProgramSpec` of ``fn`` (a ``jax.jit`` function) called with arrays of the given
    ``(shape, dtype)`` pairs followed by the static positional arguments ``static``."""
    return fn, tuple(jax.ShapeDtypeStruct(tuple(s), d) for s, d in shapes) + tuple(static)


def default_workers() -> int:
    """Compiling threads of :func:`compiling`: ``SEQCSIST_COMPILE_THREADS`` if set (``0``: off), else 2 (1 on a
    single core). Raises ValueError naming the variable when it is not a non-negative integer."""
    return compile_threads()


def _compile(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    fn.lower(*args).compile()


@contextlib.contextmanager
def compiling(programs: Sequence[ProgramSpec], workers: int | None = None) -> Iterator[None]:
    """Compiles ``programs`` on background threads while the body runs.

    Args:
      programs: the programs the body will call, in the order it first needs them (distinct ones; a program
        already compiled in this process costs only its cache lookup).
      workers: compiling threads (default: :func:`default_workers`; 0: none, the body compiles as it goes).
        The body's own calls run meanwhile.

    On exit (also after an exception), compiles that have not started are cancelled and running ones are
    waited for, so no thread outlives the body.
    """
    programs = list(programs)
    workers = default_workers() if workers is None else int(workers)
    if not programs or workers <= 0:
        yield
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="seqcsist-compile")
    keys = []
    try:
        with _LOCK:
            for fn, args in programs:
                key = _key(fn, args)
                if key not in _PENDING:
                    _PENDING[key] = pool.submit(_compile, fn, args)
                    keys.append(key)
        yield
    finally:
        with _LOCK:
            for key in keys:
                _PENDING.pop(key, None)
        pool.shutdown(wait=True, cancel_futures=True)


def ready(fn: Callable[..., Any], *args: Any) -> None:
    """Waits until a background compile of ``fn`` for these positional arguments (arrays, or anything with
    ``shape`` and ``dtype``, and static values) has finished, if :func:`compiling` started one; returns at once
    otherwise. A failed background compile is ignored: the caller's own call then compiles (and reports)."""
    with _LOCK:
        future = _PENDING.get(_key(fn, args))
    if future is not None:
        with contextlib.suppress(Exception):
            future.result()
