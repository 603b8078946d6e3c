"""config.eval values are checked before anything runs (evaluate.check_eval_config)."""
import math
import subprocess
import sys

import numpy as np
import pytest

from experiments import configs
from seqcsist_jax import evaluate as evaluation
from seqcsist_jax import protocol


@pytest.mark.parametrize("name", configs.available_configs())
def test_every_shipped_config_passes(name):
    evaluation.check_eval_config(configs.get_config(name).eval)


def test_missing_keys_take_defaults_and_pass():
    evaluation.check_eval_config({})
    evaluation.check_eval_config({"threshold": 0.0})  # zero is a brightness (zero cells are never detections)
    evaluation.check_eval_config({"threshold": 50, "batch_size": np.int64(4), "scored_margin": 0,
                                  "decode": None, "ties": "grouped"})
    for decode in protocol.DECODERS:
        evaluation.check_eval_config({"decode": decode})


@pytest.mark.parametrize("key,value,words", [
    ("threshold", math.nan, "finite brightness"),
    ("threshold", math.inf, "finite brightness"),
    ("threshold", -5.0, "finite brightness >= 0"),
    ("threshold", "70", "must be a number"),
    ("threshold", True, "must be a number"),
    ("batch_size", 0, "whole number >= 1"),
    ("batch_size", -2, "whole number >= 1"),
    ("batch_size", 2.5, "whole number >= 1"),
    ("batch_size", None, "must be a number"),
    ("num_figure_samples", -1, "whole number >= 0"),
    ("scored_margin", -1, "whole number >= 0"),
    ("scored_margin", math.nan, "whole number >= 0"),
    ("decode", "grdi", "must be one of grid"),
    ("ties", "stable", "'input_order' or 'grouped'"),
])
def test_bad_values_name_the_key(key, value, words):
    with pytest.raises(evaluation.EvalConfigError, match=f"config.eval.{key} ") as info:
        evaluation.check_eval_config({key: value})
    assert words in str(info.value) and "\n" not in str(info.value)


def test_train_refuses_a_nan_threshold_in_one_line_before_the_workdir_exists(tmp_path):
    workdir = tmp_path / "w"
    bad = subprocess.run([sys.executable, "-m", "experiments.train", "--config=derefnet:smoke", f"--workdir={workdir}",
                          "--config.eval.threshold=nan"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2, bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.strip()] == [
        "error: config.eval.threshold must be a finite brightness >= 0 (SPEC §4.1: 70 for SeqCSIST, 50 for CSIST-100K), "
        "got nan"]
    assert not workdir.exists()


def test_optimizer_and_seed_values_are_checked(tmp_path):
    from seqcsist_jax import train as train_lib

    train_lib.check_learning_rate(configs.get_config("derefnet:smoke").optimizer)
    for bad in (0.0, -1e-3, math.nan, math.inf, "1e-3", True, None):
        with pytest.raises(train_lib.OptimizerConfigError, match="optimizer.learning_rate must be a finite number"):
            train_lib.check_learning_rate({"learning_rate": bad})
    config = configs.get_config("derefnet:smoke")
    config.seed = -1
    with pytest.raises(ValueError, match=r"config.seed must be a whole number in \[0, 2\*\*32\), got -1"):
        train_lib.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("key, value, expected", [
    ("optimizer.name", "adamw2", r"config.optimizer.name must be one of adam, got 'adamw2' \(did you mean 'adam'\?\)"),
    ("optimizer.schedule", "cosin", r"config.optimizer.schedule must be one of constant, cosine, got 'cosin'"),
    ("model.compute_dtype", "float8", r"config.model.compute_dtype must be one of float32, bfloat16, got 'float8'"),
])
def test_optimizer_and_dtype_choices_are_refused_before_the_workdir_is_created(tmp_path, key, value, expected):
    """These were refused only when the optimizer or the model was built: after the dataset build and the Q
    computation, leaving a lock and a Q cache in a new workdir."""
    from seqcsist_jax import train as train_lib

    for name in ("derefnet", "derefnet:smoke", "dista:quick"):
        train_lib.check_config(configs.get_config(name))  # the shipped choices pass
    config = configs.get_config("derefnet:smoke")
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ValueError, match=expected):
        train_lib.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_too_many_devices_or_an_unsplittable_batch_is_refused_before_the_workdir_is_created(tmp_path):
    import jax

    from seqcsist_jax import train as train_lib

    n = jax.device_count()
    config = configs.get_config("derefnet:smoke")
    train_lib.check_devices(config)  # every device, per-device batch: passes
    config.num_devices = n + 1
    with pytest.raises(ValueError, match=rf"config.num_devices={n + 1} but only {n} device"):
        train_lib.train_and_evaluate(config, tmp_path / "w")
    config.num_devices, config.global_batch_size = -1, n + 1  # n + 1 trajectories cannot split over n > 1 devices
    if n > 1:
        with pytest.raises(ValueError, match=rf"global_batch_size={n + 1} cannot be split evenly over {n} devices"):
            train_lib.train_and_evaluate(config, tmp_path / "w")
    else:
        train_lib.check_devices(config)  # one device takes any batch
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("options,words", [
    ({"max_targets": 0}, "max_targets must be a positive integer"),
    ({"max_tragets": 3}, "did you mean max_targets?"),
    ([("max_targets", 3)], "must be a mapping of decoder options"),
])
def test_decode_options_are_checked_before_training(options, words, tmp_path):
    """A bad ``config.eval.decode_options`` (set from Python or a config file) was refused only at the final test,
    after the whole training; it is now one line before the workdir is created."""
    from seqcsist_jax import train as train_lib

    evaluation.check_eval_config({"decode": "refine", "decode_options": {"max_targets": 5, "layout_starts": 0}})
    with pytest.raises(evaluation.EvalConfigError, match="^config.eval.decode_options") as info:
        evaluation.check_eval_config({"decode": "refine", "decode_options": options})
    assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(evaluation.EvalConfigError, match="^--my_flag"):
        evaluation.check_decode_options(options, "--my_flag")
    config = configs.get_config("derefnet:smoke")
    config.eval.decode, config.eval.decode_options = "refine", options
    with pytest.raises(ValueError, match=words.replace("?", r"\?")):
        train_lib.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()
