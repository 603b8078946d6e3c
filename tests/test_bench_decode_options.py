"""``bench_decode --decode-option KEY=VALUE``: literals parsed, bad items refused with one line."""

from __future__ import annotations

import pytest

from experiments.benchmarks.bench_decode import parse_decode_options


def test_values_are_python_literals_or_strings():
    got = parse_decode_options(["trajectory_restarts=0", "restart_jitter=0.15", "brightness_prior=(230, 5)",
                                "clip_level=None", "runner_up=never", " degree = 3 "])
    assert got == {"trajectory_restarts": 0, "restart_jitter": 0.15, "brightness_prior": (230, 5),
                   "clip_level": None, "runner_up": "never", "degree": 3}
    assert parse_decode_options([]) == {}


@pytest.mark.parametrize("item,match", [("trajectory_restarts", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE"),
                                        ("no_such_option=1", "unknown decode option"),
                                        ("trajectory_restarts=-1", "trajectory_restarts must be")])
def test_bad_items_are_one_line_errors(item, match):
    with pytest.raises(SystemExit, match=match) as e:
        parse_decode_options([item])
    assert "\n" not in str(e.value)
