"""experiments.benchmarks.quick_seeds: collecting finished runs into mean ± spread (no training here)."""

import json

import numpy as np
import pytest

from experiments.benchmarks import quick_seeds
from seqcsist_jax.protocol import METRIC_KEYS


def _fake_run(workdir, test_map, wall=None):
    """A finished run's result.json (metrics in [0, 1]) and, optionally, the script's wall-time record."""
    workdir.mkdir(parents=True)
    test = {k: test_map - 0.01 * i for i, k in enumerate(METRIC_KEYS)}
    result = {"step": 700, "best": {"mAP": test_map + 0.02, "step": 350}, "test": test}
    (workdir / "result.json").write_text(json.dumps(result))
    if wall is not None:
        (workdir / quick_seeds.WALL_FILE).write_text(json.dumps({"wall_s": wall, "load_avg": 3.0}))
    return test


def test_collect_only_summarises_the_seeds(tmp_path):
    maps, walls = (0.41, 0.40, 0.44), (300.0, 330.0, None)
    tests = [_fake_run(tmp_path / f"q{s}", m, w) for s, (m, w) in enumerate(zip(maps, walls))]
    out = quick_seeds.main(["--collect-only", "--workdir-prefix", str(tmp_path / "q"), "--results-dir",
                            str(tmp_path / "results"), "--note", "test"])
    for key in METRIC_KEYS:
        values = 100 * np.array([t[key] for t in tests])
        got = out["summary"][key]
        np.testing.assert_allclose([got["mean"], got["std"], got["min"], got["max"]],
                                   [values.mean(), values.std(ddof=1), values.min(), values.max()], rtol=1e-12)
    assert out["summary"]["wall_s"]["n"] == 2 and out["summary"]["wall_s"]["mean"] == 315.0
    assert [r["best_step"] for r in out["rows"]] == [350] * 3 and out["rows"][2]["wall_s"] is None
    written = json.loads((tmp_path / "results" / "quick_seeds.json").read_text())
    assert written["summary"]["mAP"]["mean"] == pytest.approx(100 * np.mean(maps))
    table = (tmp_path / "results" / "quick_seeds.md").read_text()
    mean, std = 100 * np.mean(maps), 100 * np.std(maps, ddof=1)
    assert f"| mean ± std | {mean:.2f} ± {std:.2f} |" in table and "| 2 | 44.00 |" in table


def test_unfinished_run_is_one_clear_error(tmp_path):
    (tmp_path / "q0").mkdir()
    with pytest.raises(SystemExit, match=r"q0/result.json: expected a finished run's result.json"):
        quick_seeds.main(["--collect-only", "--seeds", "0", "--workdir-prefix", str(tmp_path / "q"),
                          "--results-dir", str(tmp_path / "results")])


def test_overrides_reach_every_seed_and_the_results(tmp_path):
    cmd = quick_seeds.train_command(1, tmp_path / "q1", ["optimizer.warmup_steps=70"])
    assert cmd[-2:] == ["--config.seed=1", "--config.optimizer.warmup_steps=70"]
    _fake_run(tmp_path / "q0", 0.41)
    out = quick_seeds.main(["--collect-only", "--seeds", "0", "--workdir-prefix", str(tmp_path / "q"),
                            "--results-dir", str(tmp_path / "results"), "--set", "optimizer.warmup_steps=70",
                            "--tag", "_warmup70"])
    assert out["overrides"] == ["optimizer.warmup_steps=70"]
    table = (tmp_path / "results" / "quick_seeds_warmup70.md").read_text()
    assert "--config.optimizer.warmup_steps=70" in table.splitlines()[0]
    with pytest.raises(SystemExit, match=r"--set 'warmup': expected KEY=VALUE"):
        quick_seeds.main(["--collect-only", "--seeds", "0", "--workdir-prefix", str(tmp_path / "q"),
                          "--results-dir", str(tmp_path / "results"), "--set", "warmup"])
