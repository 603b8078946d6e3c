"""The committed CSIST-100K decoding report is the rendering of its committed JSON, and it states the preset's
fresh-process and repeated-call times (the README quotes both)."""

import argparse
import json
from pathlib import Path

import pytest

from experiments.benchmarks import bench_decode_csist100k as bench

RESULTS = Path(bench.__file__).resolve().parent / "results"


def test_the_committed_report_renders_from_its_json_with_the_preset_timed_first():
    res = json.loads((RESULTS / "bench_decode_csist100k_tfds.json").read_text())
    text = bench.markdown(res)
    assert text == (RESULTS / "bench_decode_csist100k_tfds.md").read_text()
    first = res["rows"][0]
    assert first["name"] == "refine, CSIST100K_OPTIONS (centred)"
    assert 0 < first["warm_seconds"] < first["seconds"]
    assert (f"its {first['seconds']:.1f} s wall includes compiling every program it uses; the same call again in "
            f"the same process, already compiled, took {first['warm_seconds']:.1f} s") in text


def test_a_failed_fresh_process_timing_is_one_error_line_with_its_cause():
    args = argparse.Namespace(images=-5, seed=1, standin=True)
    with pytest.raises(SystemExit) as err:
        bench.fresh_process_seconds(args)
    message = str(err.value)
    assert message.startswith("error: the fresh-process timing (") and "--time-preset-only --images -5" in message
    cause = message.split(" failed: ", 1)[1]
    assert "\n" not in message and "Error" in cause  # the child's last stderr line: its exception
