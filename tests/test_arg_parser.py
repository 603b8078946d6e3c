"""The benchmark scripts' parser takes an option with ``_`` for ``-`` (absl's spelling) and never rewrites values."""

import subprocess
import sys

import pytest

from experiments.arg_parser import ArgumentParser


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench")
    p.add_argument("--no-oracle-seeds", action="store_true")
    p.add_argument("--decode-option", action="append", default=[])
    p.add_argument("--tag", default="")
    p.add_argument("--num_images", type=int, default=1)  # defined with an underscore: dashes work too
    p.add_argument("rest", nargs="*")
    return p


def test_underscores_and_dashes_name_the_same_option_and_values_are_kept():
    args = _parser().parse_args(["--no_oracle_seeds", "--decode_option", "trajectory_restarts=0",
                                 "--decode-option=centre_softness=0.1", "--tag=_a-b", "--num-images", "7"])
    assert args.no_oracle_seeds is True
    assert args.decode_option == ["trajectory_restarts=0", "centre_softness=0.1"]
    assert args.tag == "_a-b"
    assert args.num_images == 7


def test_the_defined_spelling_and_abbreviations_still_work():
    args = _parser().parse_args(["--no-oracle-seeds", "--num_images=3", "--no_oracle"])
    assert args.no_oracle_seeds is True and args.num_images == 3


def test_nothing_after_a_bare_double_dash_is_rewritten():
    args = _parser().parse_args(["--tag", "x", "--", "--no_oracle_seeds"])
    assert args.no_oracle_seeds is False
    assert args.rest == ["--no_oracle_seeds"]


def test_an_unknown_option_is_still_an_error_naming_what_was_typed(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["--no_such_option"])
    assert exit_info.value.code == 2
    assert "--no_such_option" in capsys.readouterr().err


def test_a_benchmark_script_accepts_the_absl_spelling():
    """A real script: the underscore spelling of its ``--baseline-images`` reaches that option (argparse's own
    check of the value names it), while an option it does not know is refused."""
    cmd = [sys.executable, "-m", "experiments.benchmarks.bench_decode_csist100k"]
    typed = subprocess.run(cmd + ["--baseline_images=many"], capture_output=True, text=True, timeout=300)
    assert typed.returncode == 2
    assert "argument --baseline-images: invalid int value: 'many'" in typed.stderr
    bad = subprocess.run(cmd + ["--no_such_option"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unrecognized arguments: --no_such_option" in bad.stderr
