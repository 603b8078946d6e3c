"""The trajectory-basins benchmark: its group-distance helper against closed forms, one tiny run end to end.

``_rms_apart`` decides which fits count as different basins (and how much a rotation of the group explains),
so it is checked against distances computed by hand; the run checks the files it writes: every variant scored,
the oracle rows marked untimed (``None`` in the JSON, ``–`` in the table), the diagnostics consistent.
"""

import json

import numpy as np
import pytest

from experiments.benchmarks import trajectory_basins as tb


def _fit(points: np.ndarray, frames: int = 3) -> np.ndarray:
    """``(1, T, K, 3)`` fit holding ``points (K, 2)`` in every frame (brightness 1)."""
    k = points.shape[0]
    one = np.c_[points, np.ones(k)]
    return np.broadcast_to(one, (frames, k, 3))[None].copy()


def test_rms_apart_is_the_matched_rms_distance():
    a = np.array([[5.0, 5.0], [5.3, 5.0], [5.0, 5.4]])
    shift = np.array([[0.03, -0.04], [0.0, 0.06], [-0.08, 0.0]])  # per-target errors 0.05, 0.06, 0.08
    b = (a + shift)[[2, 0, 1]]  # another order: the helper must match, not pair by index
    got = tb._rms_apart(_fit(a), _fit(b), np.array([3]))
    assert got[0] == pytest.approx(np.sqrt((0.05**2 + 0.06**2 + 0.08**2) / 3), abs=1e-12)
    assert tb._rms_apart(_fit(a), _fit(a[::-1]), np.array([3]))[0] == pytest.approx(0.0, abs=1e-12)


def test_rms_apart_counts_only_the_first_k_targets():
    a = np.array([[5.0, 5.0], [5.3, 5.0], [9.0, 9.0]])
    b = np.array([[5.0, 5.1], [5.3, 5.0], [1.0, 1.0]])
    assert tb._rms_apart(_fit(a), _fit(b), np.array([2]))[0] == pytest.approx(np.sqrt(0.01 / 2), abs=1e-12)


@pytest.mark.parametrize("phi", [0.2, -0.35])
def test_rotation_explains_a_rotated_group(phi):
    a = np.array([[5.0, 5.3], [5.3, 5.0], [5.0, 4.7], [4.7, 5.0]])
    c = a.mean(0)
    rot = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
    b = (a - c) @ rot.T + c
    plain = tb._rms_apart(_fit(a), _fit(b), np.array([4]))[0]
    rotated = tb._rms_apart(_fit(a), _fit(b), np.array([4]), rotate=True)[0]
    # closed form without rotation: each point of a ring of radius 0.3 moves by the chord 2·0.3·sin(|phi|/2)
    # (the 4-fold ring can also match to the neighbour: take the smaller chord)
    chord = min(2 * 0.3 * np.sin(abs(phi) / 2), 2 * 0.3 * np.sin((np.pi / 2 - abs(phi)) / 2))
    assert plain == pytest.approx(chord, abs=1e-9)
    # the search grid is 0.5° wide: a residual rotation of at most 0.25° remains
    assert rotated <= 2 * 0.3 * np.sin(np.deg2rad(0.25) / 2) + 1e-12
    assert rotated < plain


@pytest.mark.slow
def test_tiny_run_writes_every_row(tmp_path):
    tb.main(["--config", "default", "--trajectories", "3", "--restarts", "1", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "trajectory_basins_default.json").read_text())
    names = [r["variant"] for r in out["rows"]]
    assert names[1].startswith("free trajectory fit, 1 restart (")
    # the `default` preset has no restarts: with one, no row may claim to be the decoder's preset
    assert not any("preset" in name for name in names)
    oracle_names = ("perfect optimiser", "rounding likelihood started", "least squares started")
    oracle = [r for r in out["rows"] if r["variant"].startswith(oracle_names)]
    assert len(oracle) == 4 and all(r["seconds"] is None for r in oracle)
    timed = [r for r in out["rows"] if r not in oracle]
    assert all(r["seconds"] > 0 for r in timed)
    for r in out["rows"]:
        assert 0.0 <= r["constant"]["mAP"] <= 100.0
    diag = out["diagnostics"]
    assert diag["trajectories"] == 3
    split = diag["differs_and_free_costs_more"] + diag["differs_and_free_costs_less"]
    assert split <= diag["differs_least_squares"]
    assert sum(b["trajectories"] for b in out["by_count"]) == 3
    md = (tmp_path / "trajectory_basins_default.md").read_text()
    table = [line for line in md.splitlines() if line.startswith(tuple("| " + o for o in oracle_names))]
    assert len(table) == 4 and all(line.endswith("| – |") for line in table)


@pytest.mark.parametrize("flag, value", [("--trajectories", "0"), ("--restarts", "-1"), ("--jitter", "-0.1"),
                                         ("--jitter", "nan"), ("--trajectories", "many")])
def test_bad_arguments_stop_at_the_command_line(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        tb.main([flag, value, "--out", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected" in err and value in err
    assert not list(tmp_path.iterdir())
