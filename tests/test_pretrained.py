"""Published weights: load_pretrained reads the shipped file and refuses a model it does not fit."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import configs
from seqcsist_jax import pretrained
from seqcsist_jax.interop import read_state_dict, state_dict_shapes
from tests.xla_env import default_xla_env


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
    """README's ``python -m experiments.evaluate --pretrained=derefnet_quick --split=test``: the shipped weights,
    scored on CPU with no training, give the test CSO-mAP their model card records (the data are rebuilt
    deterministically in a temporary data_dir; XLA at its default level, as users run it). The tolerance allows
    a few grid cells to cross the threshold 70 under another CPU's rounding."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", "--pretrained=derefnet_quick", "--split=test",
         f"--workdir={out}", f"--config.dataset.data_dir={tmp_path / 'tfds'}"],
        capture_output=True, text=True, timeout=900, env=default_xla_env(), cwd=pathlib.Path(__file__).parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    card = pretrained.load_card("derefnet_quick")
    assert metrics["mAP"] == pytest.approx(card["test_cso_map"], abs=2e-3)


def test_evaluate_unknown_pretrained_is_one_clear_line():
    """``--pretrained=derefnet`` (the paper-schedule weights, not published without a GPU run) says why, in one line."""
    proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--pretrained=derefnet", "--split=test"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "not published yet" in lines[0] and "derefnet_quick" in lines[0]


@pytest.mark.slow
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
    protocol = card["protocol"]  # the batch the run trained with, which per_device_batch_size alone does not say
    if protocol["global_batch_size"] > 0:
        assert protocol["trained_global_batch"] == protocol["global_batch_size"]
    else:
        assert protocol["trained_on_devices"] == jax.device_count()
        assert protocol["trained_global_batch"] == protocol["per_device_batch_size"] * jax.device_count()
    assert card["test_cso_map"] == result["test"]["mAP"]
    _, params = pretrained.load_pretrained("tiny", weights_dir=tmp_path / "weights")
    _, _, best, _ = restore_run(str(run), "best")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.device_get(best))
    for by_path in (path, path.with_suffix(".json")):  # a path, as --pretrained takes it
        jax.tree_util.tree_map(np.testing.assert_array_equal, pretrained.load_pretrained(str(by_path))[1], params)
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
    assert pretrained.resolve(str(path.with_suffix(".json"))) == ("tiny", tmp_path / "weights")
    scored = evaluate_workdir(tmp_path / "scored", split="test", pretrained=str(path))
    assert scored["mAP"] == result["test"]["mAP"] or (np.isnan(scored["mAP"]) and np.isnan(result["test"]["mAP"]))
    assert pathlib.Path(scored["out_dir"]) == tmp_path / "scored" / "eval" / "test"
    # another config than the card's (here a threshold; another dataset alike) writes next to the weights' own
    # results, never over them
    config = pretrained.load_pretrained("tiny", weights_dir=tmp_path / "weights")[0]
    config.eval.threshold = float(config.eval.threshold) + 5.0
    other = evaluate_workdir(tmp_path / "scored", split="test", pretrained=str(path), config=config)
    assert pathlib.Path(other["out_dir"]).name == f"test-eval.threshold={config.eval.threshold}"
    assert json.loads((tmp_path / "scored" / "eval" / "test" / "metrics.json").read_text())["threshold"] == (
        scored["threshold"])
    # decoder options (--decode_option) reach the decoder and write their own folder; refused for map decoders
    from experiments import cli

    capped = evaluate_workdir(tmp_path / "scored", split="test", pretrained=str(path), decode="refine",
                              decode_options={"max_targets": 1})
    assert pathlib.Path(capped["out_dir"]).name == "test-refine-decode.max_targets=1"
    assert capped["count_accuracy"] < 1.0  # SeqCSIST frames hold 1-4 targets: a cap at 1 must miss counts
    for options, decode, match in (({"max_targets": 1}, "grid", "applies to the continuous decoders"),
                                   ({"max_targets": 0}, "refine", "max_targets must be a positive integer")):
        with pytest.raises(cli.UsageError, match=match):
            evaluate_workdir(tmp_path / "scored", split="test", pretrained=str(path), decode=decode,
                             decode_options=options)
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


# ---------------------------------------------------------------------------------------- damaged weight files
# Every fault of a weight file or its card is one line naming the file (and the member or field) and what was
# expected; experiments.evaluate prints it as `error: ...` (it turns FileNotFoundError/ValueError into one line).


@pytest.fixture(scope="module")
def smoke_model():
    """The smoke config and random params of its model's shapes (no slow model.init)."""
    config = configs.get_config("derefnet:smoke")
    rng = np.random.default_rng(0)
    return config, pretrained._unflatten({k: rng.normal(size=shape).astype(np.float32)
                                          for k, shape in pretrained._expected_shapes(config).items()})


@pytest.fixture()
def pair(tmp_path, smoke_model):
    """A freshly saved ``tiny.npz`` + ``tiny.json`` in ``tmp_path``; returns ``(npz, card)``."""
    config, params = smoke_model
    q = np.random.default_rng(0).normal(size=(1089, 121))
    npz = pretrained.save_pretrained("tiny", params, config, {"seed": 0}, q=q, weights_dir=tmp_path)
    return npz, npz.with_suffix(".json")


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text and "allow_pickle" not in text, text
    return text


def test_half_a_pair_names_the_missing_file(pair):
    """Item 1: an .npz without its card says the card is missing (and what a card is), not 'no such weights'."""
    npz, card = pair
    card.unlink()
    for call in (lambda: pretrained.resolve(str(npz)), lambda: pretrained.load_pretrained("tiny", None, npz.parent)):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert _one_line(info.value).startswith(f"the model card {card} of {npz} is missing")
        assert "the JSON" in str(info.value) and "experiments.export_weights writes next to the .npz" in str(info.value)
    card.write_text("{}")
    npz.unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{npz} does not exist, though its model card tiny.json does"):
        pretrained.resolve(str(npz))
    card.unlink()  # neither file: resolve returns, the caller lists what is available
    assert pretrained.resolve(str(npz)) == ("tiny", npz.parent)
    with pytest.raises(pretrained.WeightsFileError, match=r"is a folder .*expected the path of an exported"):
        pretrained.resolve(str(npz.parent))


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize("damage, expected", [
    (lambda data: b"\x93NUMPY garbage that is no zip" * 10, "is not a readable weights archive (not a zip archive"),
    (_truncated, "is not a readable weights archive (a truncated zip archive"),
    (lambda data: b"", "is empty (0 bytes); an interrupted download or copy?"),
], ids=["garbage", "truncated", "empty"])
def test_unreadable_npz_is_one_line_naming_the_file(pair, damage, expected):
    """Items 2 and 3: garbage, truncated and empty archives name the file (no pickle hint, no BadZipFile)."""
    npz, _ = pair
    npz.write_bytes(damage(npz.read_bytes()))
    pair[1].write_text(json.dumps({k: v for k, v in json.loads(pair[1].read_text()).items() if k != "npz_sha256"}))
    for call in (lambda: pretrained.load_pretrained("tiny", weights_dir=npz.parent),
                 lambda: pretrained.pretrained_q("tiny", npz.parent)):
        with pytest.raises(pretrained.WeightsFileError) as info:
            call()
        assert _one_line(info.value).startswith(str(npz)) and expected in str(info.value)


def test_object_arrays_and_non_numbers_name_the_member(pair):
    npz, card = pair
    card.write_text(json.dumps({k: v for k, v in json.loads(card.read_text()).items() if k != "npz_sha256"}))
    np.savez(npz, **{"stage_0/lambda_step": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(pretrained.WeightsFileError, match=r"member 'stage_0/lambda_step' is not a readable array "
                                                          r"\(holds Python objects, not numbers\)") as info:
        pretrained.load_pretrained("tiny", weights_dir=npz.parent)
    _one_line(info.value)
    np.savez(npz, **{"stage_0/lambda_step": np.array(["a"])})
    with pytest.raises(pretrained.WeightsFileError, match=r"parameter 'stage_0/lambda_step' has dtype <U1"):
        pretrained.load_pretrained("tiny", weights_dir=npz.parent)


@pytest.mark.parametrize("edit, expected", [
    (lambda card: "{bad", r"not valid JSON at line 1, column 2 \(Expecting property name"),
    (lambda card: "[1, 2]", r"the file holds a list; expected a JSON object"),
    (lambda card: json.dumps({k: v for k, v in card.items() if k != "config"}), r"field 'config' is missing"),
    (lambda card: json.dumps({**card, "config": {**card["config"], "model": [1]}}),
     r"field 'config.model' is a list \(\[1\]\); expected an object"),
    (lambda card: json.dumps({**card, "config": {**card["config"], "model": {**card["config"]["model"], "name": 3}}}),
     r"field 'config.model.name' is a number \(3\); expected a string"),
    (lambda card: json.dumps({**card, "config": {k: v for k, v in card["config"].items() if k != "loss"}}),
     r"field 'config.loss' is missing"),
    (lambda card: json.dumps({**card, "config": {**card["config"], "model": {**card["config"]["model"], "bogus": 1}}}),
     r"field 'config.model' \(.*bogus=1\) does not describe a model this code builds \(TypeError: .*'bogus'"),
    (lambda card: json.dumps({**card, "config": {**card["config"], "model": {**card["config"]["model"],
                                                                            "name": "no_such_model"}}}),
     r"field 'config.model' \(.*name='no_such_model'.*\) does not describe a model this code builds "
     r"\(UnknownMethodError: config.model.name: unknown model 'no_such_model'"),
    (lambda card: json.dumps({**card, "npz_sha256": "abc"}), r"field 'npz_sha256' is 'abc'; expected the .npz's SHA"),
    (lambda card: json.dumps({**card, "config": {**card["config"], "model": {**card["config"]["model"],
                                                                            "name": "/tmp/evil.py:build"}}}),
     r"field 'config.model.name' names the builder '/tmp/evil.py:build', outside this package; loading weights "
     r"never imports code that a card names: pass the method's config"),
], ids=["not-json", "not-object", "no-config", "model-list", "name-int", "no-loss", "bad-field", "unknown-model", "sha",
        "outside-builder"])
def test_bad_card_names_the_card_and_field(pair, edit, expected):
    """Item 4: a card that is not JSON, or lacks a field or holds it with the wrong type, names the card file."""
    npz, card = pair
    card.write_text(edit(json.loads(card.read_text())))
    with pytest.raises(pretrained.WeightsFileError) as info:
        pretrained.load_pretrained("tiny", weights_dir=npz.parent)
    assert _one_line(info.value).startswith(f"model card {card}"), str(info.value)
    assert re.search(expected, str(info.value)), str(info.value)


def test_non_finite_or_misshapen_weights_name_the_file_and_parameter(pair, smoke_model):
    npz, card = pair
    arrays = dict(np.load(npz))
    first = sorted(k for k in arrays if k != "__q__")[2]
    arrays[first] = arrays[first].copy()
    arrays[first].flat[-1] = np.inf
    arrays[sorted(arrays)[-2]] = arrays[sorted(arrays)[-2]] * np.nan  # a later one is bad too: the first is named
    np.savez(npz, **arrays)
    card.write_text(json.dumps({k: v for k, v in json.loads(card.read_text()).items() if k != "npz_sha256"}))
    with pytest.raises(pretrained.WeightsFileError) as info:
        pretrained.load_pretrained("tiny", weights_dir=npz.parent)
    assert _one_line(info.value) == (f"{npz}: parameter {first!r} has NaN or inf in 1 of its {arrays[first].size} "
                                     "values; expected finite weights (the run diverged, or the file is damaged)")
    arrays = dict(np.load(pair[0].with_name("tiny.npz")))
    arrays["stage_0/conv1_forward"] = np.zeros((2, 2), np.float32)
    np.savez(npz, **arrays)
    with pytest.raises(ValueError) as info:
        pretrained.load_pretrained("tiny", weights_dir=npz.parent)
    assert _one_line(info.value).startswith(f"{npz} (model from its card tiny.json) does not fit the model")
    assert "shape mismatches [stage_0/conv1_forward: file (2, 2) vs model" in str(info.value)
    for q, expected in ((np.zeros((3, 3)), r"'__q__' \(the run's Q\) is float64 \(3, 3\); expected a float array "
                                           r"of shape \(1089, 121\)"),
                        (np.full((1089, 121), np.nan), r"'__q__' \(the run's Q\) has NaN or inf values")):
        np.savez(npz, **{**arrays, "__q__": q})
        with pytest.raises(pretrained.WeightsFileError, match=rf"^{npz}: member {expected}"):
            pretrained.pretrained_q("tiny", npz.parent)


def test_check_params_names_every_missing_unexpected_and_misshapen_key_in_one_line(smoke_model):
    config, params = smoke_model
    pretrained.check_params(params, config)  # the model's own shapes fit: no error
    flat = pretrained._flatten(params)
    bad = dict(flat)
    del bad["stage_0/lambda_step"], bad["stage_1/soft_thr"]
    bad["stage_0/conv1_forward"] = np.zeros((3, 3, 1, 6), np.float32)
    for i in range(10):  # more than the 8 listed: the rest are counted
        bad[f"extra/p{i}"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as info:
        pretrained.check_params(pretrained._unflatten(bad), config, source="w.npz")
    message = _one_line(info.value)
    model = ", ".join(f"{k}={v}" for k, v in config.model.to_dict().items())
    assert message == (
        f"w.npz does not fit the model ({model}): missing keys [stage_0/lambda_step, stage_1/soft_thr]; "
        "unexpected keys [extra/p0, extra/p1, extra/p2, extra/p3, extra/p4, extra/p5, extra/p6, extra/p7, "
        "... 2 more]; "
        "shape mismatches [stage_0/conv1_forward: file (3, 3, 1, 6) vs model (3, 3, 1, 4)]")
    assert "name=derefnet" in message and "channels=4" in message
    wider = pretrained._unflatten({**flat, "stage_0/conv1_forward": bad["stage_0/conv1_forward"]})
    with pytest.raises(ValueError, match=r"^params does not fit the model .*: shape mismatches "
                                         r"\[stage_0/conv1_forward: file \(3, 3, 1, 6\) vs model "
                                         r"\(3, 3, 1, 4\)\]$"):
        pretrained.check_params(wider, config)  # only a mismatch: the default source, one part


def test_a_pair_whose_npz_was_replaced_is_refused(pair, smoke_model):
    """The card records the SHA-256 of its .npz: weights swapped under an old card are not scored as that run."""
    npz, card = pair
    config, params = smoke_model
    other = pretrained.save_pretrained("other", jax.tree_util.tree_map(lambda x: x + 1, params), config, {},
                                       weights_dir=npz.parent)
    npz.write_bytes(other.read_bytes())
    with pytest.raises(pretrained.WeightsFileError, match=rf"^{npz} is not the file its model card tiny.json was "
                                                          r"written for \(its SHA-256 differs"):
        pretrained.load_pretrained("tiny", weights_dir=npz.parent)


def test_save_refuses_names_that_are_not_a_plain_stem(tmp_path, smoke_model):
    config, params = smoke_model
    folder = tmp_path / "weights"
    for name in ("../evil", "a/b", ".", "..", ".hidden", "", "x.npz", "x.json", "my weights", "-x", "a:b", "ü"):
        with pytest.raises(ValueError) as info:
            pretrained.save_pretrained(name, params, config, {}, weights_dir=folder)
        assert "expected a plain file stem" in _one_line(info.value) or "give the stem only" in str(info.value)
    assert not folder.exists() and not (tmp_path / "evil.npz").exists()
    assert pretrained.check_name("derefnet_quick-2") == "derefnet_quick-2"


def test_an_interrupted_save_never_leaves_a_torn_or_silently_mismatched_pair(pair, smoke_model, monkeypatch):
    """The .npz and the card are each replaced atomically and the card last: a write that fails mid-.npz keeps
    the old pair, one killed between the two files leaves a pair that is refused as mismatched."""
    import errno

    npz, card = pair
    config, params = smoke_model
    before = npz.read_bytes(), card.read_text()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full_disk)
    with pytest.raises(OSError, match="No space left"):
        pretrained.save_pretrained("tiny", params, config, {"seed": 1}, weights_dir=npz.parent)
    monkeypatch.undo()
    assert (npz.read_bytes(), card.read_text()) == before
    assert sorted(p.name for p in npz.parent.iterdir()) == ["tiny.json", "tiny.npz"]  # no temporaries
    pretrained.load_pretrained("tiny", weights_dir=npz.parent)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrained, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrained.save_pretrained("tiny", jax.tree_util.tree_map(lambda x: x * 2, params), config, {},
                                   weights_dir=npz.parent)
    assert card.read_text() == before[1] and npz.read_bytes() != before[0]
    with pytest.raises(pretrained.WeightsFileError, match=r"is not the file its model card tiny.json was written"):
        pretrained.load_pretrained("tiny", weights_dir=npz.parent)


@pytest.mark.parametrize("case", ["no-card", "garbage", "truncated", "empty", "bad-json", "nan"])
def test_evaluate_pretrained_damaged_files_are_one_error_line(tmp_path, pair, case):
    """``experiments.evaluate --pretrained=DIR/NAME.npz`` on damaged weights: exit 2, one ``error:`` line naming
    the damaged file, no traceback."""
    npz, card = pair
    named = npz
    if case == "no-card":
        card.unlink()
        named = card
    elif case == "bad-json":
        card.write_text('{"config": ')
        named = card
    else:
        card.write_text(json.dumps({k: v for k, v in json.loads(card.read_text()).items() if k != "npz_sha256"}))
        data = npz.read_bytes()
        if case == "nan":
            arrays = dict(np.load(npz))
            arrays["stage_0/lambda_step"] = arrays["stage_0/lambda_step"] * np.nan
            np.savez(npz, **arrays)
        else:
            npz.write_bytes({"garbage": os.urandom(300), "truncated": data[:2000], "empty": b""}[case])
    proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--pretrained={npz}",
                           f"--workdir={tmp_path / 'eval'}"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and str(named) in lines[0] and "allow_pickle" not in lines[0], lines[0]
