"""``KEY=VALUE`` decoder options (``bench_decode --decode-option``, ``evaluate --decode_option``): literals
parsed, bad items refused with one line."""

from __future__ import annotations

import pytest

from experiments.benchmarks.bench_decode import parse_decode_options
from seqcsist_jax.decode import parse_option_items


def test_values_are_python_literals_or_strings():
    items = ["trajectory_restarts=0", "restart_jitter=0.15", "brightness_prior=(230, 5)", "clip_level=None",
             "runner_up=never", " degree = 3 "]
    want = {"trajectory_restarts": 0, "restart_jitter": 0.15, "brightness_prior": (230, 5), "clip_level": None,
            "runner_up": "never", "degree": 3}
    assert parse_option_items(items) == want and parse_decode_options(items) == want
    assert parse_option_items([]) == {} and parse_decode_options([]) == {}


@pytest.mark.parametrize("item,match", [("trajectory_restarts", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE"),
                                        ("no_such_option=1", "unknown decode option"),
                                        ("max_tragets=3", r"did you mean max_targets\?"),
                                        ("max_targets=0", "max_targets must be"),
                                        ("trajectory_restarts=-1", "trajectory_restarts must be")])
def test_bad_items_are_one_line_errors(item, match, capsys):
    with pytest.raises(ValueError, match=f"^--opt.*{match}") as e:
        parse_option_items([item], "--opt")
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit) as stop:  # the benchmark's flag: one error: line, exit 2 as the entry points
        parse_decode_options([item])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: --decode-option") and err.count("\n") == 1
