"""The benchmark scripts' command lines: every option documents itself, and ``--help`` works."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "experiments" / "benchmarks"


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _option_names(call: ast.Call) -> list[str]:
    return [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]


def _is_empty(value: ast.expr | None) -> bool:
    """No ``help=``, or a literal one that is blank (``help=""``, ``help=None``)."""
    if value is None:
        return True
    if isinstance(value, ast.Constant):
        return value.value is None or (isinstance(value.value, str) and not value.value.strip())
    return False  # an expression (e.g. an f-string or a name): assumed to give text


def options_without_help(source: str) -> list[str]:
    """Long options (``"--..."`` first argument) of every ``*.add_argument(...)`` call lacking a ``help=``."""
    missing = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        names = _option_names(node)
        if names and names[0].startswith("--") and _is_empty(_keyword(node, "help")):
            missing.append(names[0])
    return missing


def test_the_checker_finds_options_without_help():
    source = ("p.add_argument('--a', help='documented')\np.add_argument('--b', type=int)\n"
              "p.add_argument('--c', help='')\np.add_argument('pos')\np.add_argument('-d', '--dee')\n")
    assert options_without_help(source) == ["--b", "--c"]


def test_every_benchmark_option_has_help():
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert len(scripts) > 10
    missing = {p.name: options_without_help(p.read_text(encoding="utf-8")) for p in scripts}
    missing = {name: options for name, options in missing.items() if options}
    assert not missing, "options without help=: " + "; ".join(
        f"{name}: {' '.join(options)}" for name, options in missing.items())


def _parser_options(path: pathlib.Path) -> list[str]:
    return [name for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
            for name in _option_names(node) if name.startswith("--")]


@pytest.mark.parametrize("name", ["bench_metric", "bench_decode", "paper_run_report"])
def test_help_lists_every_option(name):
    options = _parser_options(BENCHMARKS / f"{name}.py")
    assert options
    env = dict(os.environ, JAX_PLATFORMS="cpu", COLUMNS="120")
    proc = subprocess.run([sys.executable, "-m", f"experiments.benchmarks.{name}", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:")
    assert "``" not in proc.stdout and ":func:" not in proc.stdout  # the docstring as plain text
    absent = [o for o in options if o not in proc.stdout]
    assert not absent, f"{name} --help lacks {absent}"


OUTPUT_OPTIONS = ("--out", "--output", "--results-dir")


def test_every_benchmark_that_writes_results_can_write_elsewhere():
    """A user trying a benchmark must be able to keep the committed results (the README's numbers) untouched."""
    writers = [p for p in sorted(BENCHMARKS.glob("*.py")) if "RESULTS" in p.read_text(encoding="utf-8")]
    assert len(writers) > 10
    lacking = [p.name for p in writers if not set(OUTPUT_OPTIONS) & set(_parser_options(p))]
    assert not lacking, f"no {'/'.join(OUTPUT_OPTIONS)} option: {lacking}"
