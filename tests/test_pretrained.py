"""Published weights: load_pretrained reads the shipped file and refuses a model it does not fit."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import configs
from seqcsist_jax import pretrained
from seqcsist_jax.interop import read_state_dict, state_dict_shapes


def _smoke_params(config):
    from seqcsist_jax import imaging, methods

    method = methods.build_method(config.model, config.loss)
    phi = imaging.measurement_matrix().astype(np.float32)
    frames = np.zeros((1, 8, 11, 11), np.float32)
    return jax.device_get(method.model.init(jax.random.PRNGKey(0), frames, phi, phi.T.copy())["params"])


def test_shipped_weights_load_and_fit_their_model():
    names = pretrained.available()
    assert names, f"no weight files in {pretrained.WEIGHTS_DIR}"
    for name in names:
        config, params = pretrained.load_pretrained(name)
        card = pretrained.load_card(name)
        for field in ("trained_with", "data", "protocol", "seed", "commit", "validation_cso_map",
                      "test_cso_map", "wall_time_s", "hardware"):
            assert field in card, (name, field)
        leaves = jax.tree_util.tree_leaves(params)
        assert all(x.dtype == np.float32 and np.all(np.isfinite(x)) for x in leaves)
        assert card["num_params"] == sum(x.size for x in leaves)
        q = pretrained.pretrained_q(name)
        assert q is None or q.shape == (1089, 121)
        assert config.model.name == "derefnet"
        # paper-named weights only from the paper schedule
        assert name != "derefnet" or card["protocol"]["num_epochs"] == 100


def test_save_load_roundtrip_and_mismatch_names_the_keys(tmp_path):
    config = configs.get_config("derefnet:smoke")
    params = _smoke_params(config)
    q = np.random.default_rng(0).normal(size=(1089, 121))
    pretrained.save_pretrained("tiny", params, config, {"seed": 0}, q=q, weights_dir=tmp_path)
    assert pretrained.available(tmp_path) == ["tiny"]
    loaded_config, loaded = pretrained.load_pretrained("tiny", weights_dir=tmp_path)
    assert loaded_config.model.to_dict() == config.model.to_dict()
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    np.testing.assert_array_equal(pretrained.pretrained_q("tiny", tmp_path), q)

    other = configs.get_config("derefnet:smoke")
    other.model.channels = 6  # every conv's shape changes
    with pytest.raises(ValueError, match=r"does not fit the model .*shape mismatches \[.*stage_0/conv1_forward"):
        pretrained.load_pretrained("tiny", config=other, weights_dir=tmp_path)
    deeper = configs.get_config("derefnet:smoke")
    deeper.model.num_stages = 3
    with pytest.raises(ValueError, match=r"missing keys \[stage_2/"):
        pretrained.load_pretrained("tiny", config=deeper, weights_dir=tmp_path)
    shallower = configs.get_config("derefnet:smoke")
    shallower.model.num_stages = 1
    with pytest.raises(ValueError, match=r"unexpected keys \[stage_1/"):
        pretrained.load_pretrained("tiny", config=shallower, weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no pretrained weights 'nope'.*available: tiny"):
        pretrained.load_pretrained("nope", weights_dir=tmp_path)


def test_export_public_state_dict(tmp_path):
    config = configs.get_config("derefnet:smoke")
    pretrained.save_pretrained("tiny", _smoke_params(config), config, {}, weights_dir=tmp_path)
    pretrained.export_state_dict("tiny", tmp_path / "tiny_public.npz", weights_dir=tmp_path)
    state = read_state_dict(tmp_path / "tiny_public.npz")
    options = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    expected = state_dict_shapes(**options)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v) for k, v in expected.items()}
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"needs PyTorch .*\.npz"):
            pretrained.export_state_dict("tiny", tmp_path / "tiny.pth", weights_dir=tmp_path)
    else:
        pretrained.export_state_dict("tiny", tmp_path / "tiny.pth", weights_dir=tmp_path)
        assert read_state_dict(tmp_path / "tiny.pth").keys() == state.keys()


@pytest.mark.slow
def test_evaluate_pretrained_reproduces_its_card(tmp_path):
    """``experiments.evaluate --pretrained=derefnet_quick``: the shipped weights, scored on CPU with no training,
    give the test CSO-mAP their model card records (the data are rebuilt deterministically in a temporary
    data_dir). The tolerance allows a few grid cells to cross the threshold 70 under another CPU's rounding."""
    from experiments.evaluate import evaluate_workdir

    config, _ = pretrained.load_pretrained("derefnet_quick")
    config.dataset.data_dir = str(tmp_path / "tfds")
    result = evaluate_workdir(tmp_path / "out", split="test", config=config, pretrained="derefnet_quick")
    card = pretrained.load_card("derefnet_quick")
    assert result["mAP"] == pytest.approx(card["test_cso_map"], abs=2e-3)
    assert (tmp_path / "out" / "eval" / "test" / "metrics.json").exists()


def test_evaluate_unknown_pretrained_is_one_clear_line():
    """``--pretrained=derefnet`` (the paper-schedule weights, not published without a GPU run) says why, in one line."""
    proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--pretrained=derefnet", "--split=test"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "not published yet" in lines[0] and "derefnet_quick" in lines[0]


def test_export_weights_writes_the_best_checkpoint_and_a_card_with_the_runs_wall_time(tmp_path, capsys):
    """``experiments.export_weights`` on a finished smoke run: the shipped params are the best checkpoint's, the
    card's wall time defaults to the training time the run recorded, and ``--hardware`` names where it trained
    (the export may run elsewhere)."""
    import json

    from experiments import export_weights
    from seqcsist_jax.predictor import restore_run
    from seqcsist_jax.train import train_and_evaluate

    run = tmp_path / "run"
    result = train_and_evaluate(configs.get_config("derefnet:smoke"), run)
    path = export_weights.main([f"--workdir={run}", "--name=tiny", "--command=train smoke",
                                "--hardware=one test GPU", f"--weights_dir={tmp_path / 'weights'}"])
    assert path == tmp_path / "weights" / "tiny.npz"
    card = pretrained.load_card("tiny", weights_dir=tmp_path / "weights")
    recorded = json.loads((run / "result.json").read_text())["train_seconds"]
    assert card["wall_time_s"] == recorded == result["train_seconds"] and recorded > 0
    assert card["hardware"] == "one test GPU" and card["trained_with"] == "train smoke"
    assert card["test_cso_map"] == result["test"]["mAP"]
    _, params = pretrained.load_pretrained("tiny", weights_dir=tmp_path / "weights")
    _, _, best, _ = restore_run(str(run), "best")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.device_get(best))
    # an existing name is kept unless asked, and a directory that is no run is one clear line
    for argv, expected in (([f"--workdir={run}", "--name=tiny"], "exists already; pass --overwrite"),
                           ([f"--workdir={tmp_path / 'nope'}", "--name=other"], "no config.json there")):
        with pytest.raises(SystemExit) as stop:
            export_weights.main([*argv, "--command=x", f"--weights_dir={tmp_path / 'weights'}"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
    assert export_weights.main([f"--workdir={run}", "--name=tiny", "--command=again", "--overwrite",
                                f"--weights_dir={tmp_path / 'weights'}"]) == path
    assert pretrained.load_card("tiny", weights_dir=tmp_path / "weights")["trained_with"] == "again"
    # Exported weights are scored by path like shipped ones, and reproduce the run's own test score exactly
    # (same params, same Q stored with them, same jitted predictor and data).
    from experiments.evaluate import evaluate_workdir

    assert pretrained.resolve(str(path)) == ("tiny", tmp_path / "weights")
    assert pretrained.resolve(str(path.with_suffix(""))) == ("tiny", tmp_path / "weights")
    assert pretrained.resolve("derefnet_quick") == ("derefnet_quick", None)
    scored = evaluate_workdir(tmp_path / "scored", split="test", pretrained=str(path))
    assert scored["mAP"] == result["test"]["mAP"] or (np.isnan(scored["mAP"]) and np.isnan(result["test"]["mAP"]))
    proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--pretrained={tmp_path / 'nothing.npz'}"],
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "no nothing.npz with its card nothing.json" in lines[0]


def test_export_records_a_dirty_checkout(tmp_path):
    """The card's commit says ``-dirty`` when tracked files differ from HEAD: those weights came from code no
    commit holds."""
    from experiments import export_weights

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "model.py").write_text("a = 1\n")
    git("add", "model.py")
    git("commit", "-qm", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert export_weights._commit(tmp_path) == head
    (tmp_path / "model.py").write_text("a = 2\n")
    assert export_weights._commit(tmp_path) == head + "-dirty"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".git").write_text("not a repository\n")  # git refuses it, whatever encloses tmp_path
    assert export_weights._commit(outside) == "unknown"
