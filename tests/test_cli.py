"""The command-line layer: one style for every entry point, one-line errors, and workdirs that refuse a config
they were not trained with."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import pathlib

import ml_collections
import pytest

from experiments import cli, configs
from seqcsist_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(args, timeout=300, **extra_env):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra_env)
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- overrides


def test_split_overrides_takes_both_spellings_out_of_argv():
    rest, overrides = cli.split_overrides(["prog", "--workdir=w", "--config=derefnet", "--config.seed=3",
                                           "--config.optimizer.learning_rate", "1e-3", "--force_config"])
    assert rest == ["prog", "--workdir=w", "--config=derefnet", "--force_config"]
    assert overrides == [("seed", "3"), ("optimizer.learning_rate", "1e-3")]
    with pytest.raises(cli.UsageError, match="needs a value"):
        cli.split_overrides(["prog", "--config.seed"])


def test_apply_overrides_keeps_field_types():
    config = configs.get_config("derefnet:smoke")
    cli.apply_overrides(config, [("seed", "7"), ("optimizer.learning_rate", "2e-3"), ("shuffle", "false"),
                                 ("dataset.data_dir", "/data/tfds"), ("dataset.max_eval_trajectories", "none"),
                                 ("optimizer.grad_clip_norm", "1.5"), ("dataset.name", "seqcsist/mini")])
    assert config.seed == 7 and isinstance(config.seed, int)
    assert config.optimizer.learning_rate == 2e-3
    assert config.shuffle is False
    assert config.dataset.data_dir == "/data/tfds"
    assert config.dataset.max_eval_trajectories is None
    assert config.optimizer.grad_clip_norm == 1.5
    assert config.dataset.name == "seqcsist/mini"


@pytest.mark.parametrize("key,value,message", [
    ("learning_rate", "abc", "unknown config field learning_rate; did you mean optimizer.learning_rate?"),
    ("optimizer.learning_rat", "1", "did you mean optimizer.learning_rate?"),
    ("modle.name", "x", "unknown config field modle.name; did you mean model.name?"),  # not dataset.name too
    ("num_train_step", "10", "did you mean num_train_steps?"),
    ("optimizer.learning_rate", "abc", "expected a float"),
    ("seed", "1.5", "expected an int"),
    ("shuffle", "maybe", "expected a bool"),
    ("optimizer", "1", "is a group of fields"),
    ("nope.deeper", "1", "unknown config field nope.deeper"),
])
def test_apply_overrides_rejects_with_one_clear_line(key, value, message):
    config = configs.get_config("derefnet:smoke")
    with pytest.raises(cli.UsageError) as info:
        cli.apply_overrides(config, [(key, value)])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_load_config_names_unknown_configs_and_variants():
    with pytest.raises(cli.UsageError, match="unknown config 'nope'; available configs: .*derefnet"):
        cli.load_config("nope")
    with pytest.raises(cli.UsageError, match=r"unknown config 'dsita' \(did you mean 'dista'\?\); available"):
        cli.load_config("dsita:quick")
    with pytest.raises(cli.UsageError, match="unknown config variant 'fast'"):
        cli.load_config("derefnet:fast")
    with pytest.raises(cli.UsageError, match=r"unknown config variant 'smok' \(did you mean 'smoke'\?\); choose one of quick"):
        cli.load_config("derefnet:smok")
    with pytest.raises(cli.UsageError, match=r"unknown config 'DISTA-Net' \(did you mean 'dista'\?\)"):
        cli.load_config("DISTA-Net")
    with pytest.raises(cli.UsageError, match=r"unknown config 'dista_quick' \(did you mean 'dista:quick'\?\)"):
        cli.load_config("dista_quick")  # as derefnet_quick is named; not "did you mean 'derefnet_quick'"
    with pytest.raises(cli.UsageError, match=r"unknown config 'ista_smoke' \(did you mean 'ista:smoke'\?\)"):
        cli.load_config("ista_smoke")
    with pytest.raises(cli.UsageError, match="--config is required; available configs"):
        cli.require_config(None)
    with pytest.raises(cli.UsageError, match=r"^--config is required \(no run is saved in runs/typo to resume\); "
                                             "available configs: .*derefnet_quick"):
        cli.require_config("", "runs/typo")
    assert cli.require_config("dista", "runs/typo") == "dista"


def test_get_config_accepts_a_path(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from experiments.configs import derefnet\n"
                    "def get_config(arg=None):\n    c = derefnet.get_config(arg)\n    c.seed = 11\n    return c\n")
    assert configs.get_config(f"{path}:smoke").seed == 11
    with pytest.raises(ValueError, match="not found"):
        configs.get_config(str(tmp_path / "missing.py"))


# ---------------------------------------------------------------------------------------------- workdirs


def test_workdir_refuses_another_config_and_leaves_it_untouched(tmp_path):
    run = configs.get_config("derefnet:smoke")
    workdir_lib.save_or_check_run_config(tmp_path, run)
    saved = (tmp_path / "config.json").read_text()
    other = configs.get_config("srcnn:smoke")
    with pytest.raises(workdir_lib.ConfigMismatchError) as info:
        workdir_lib.save_or_check_run_config(tmp_path, other)
    assert "model.name: 'derefnet' → 'srcnn'" in str(info.value) and "--force_config" in str(info.value)
    assert (tmp_path / "config.json").read_text() == saved
    # fields that do not change the result may differ between restarts
    same = configs.get_config("derefnet:smoke")
    same.progress_bar = True
    same.dataset.data_dir = "/elsewhere"
    workdir_lib.save_or_check_run_config(tmp_path, same)
    assert json.loads((tmp_path / "config.json").read_text())["dataset"]["data_dir"] == "/elsewhere"
    workdir_lib.save_or_check_run_config(tmp_path, other, force=True)
    assert workdir_lib.load_run_config(tmp_path).model.name == "srcnn"



def test_a_changed_step_count_explains_the_saved_minus_one(tmp_path):
    run = configs.get_config("dista:quick")
    assert run.num_train_steps == -1  # epoch-based
    workdir_lib.save_or_check_run_config(tmp_path, run)
    longer = configs.get_config("dista:quick")
    longer.num_train_steps = 300
    with pytest.raises(workdir_lib.ConfigMismatchError) as info:
        workdir_lib.save_or_check_run_config(tmp_path, longer)
    assert "num_train_steps: -1 → 300) (num_train_steps -1: the run's length comes from num_epochs)." in str(
        info.value)
    other = configs.get_config("dista:quick")
    other.seed = 5
    with pytest.raises(workdir_lib.ConfigMismatchError) as info:
        workdir_lib.save_or_check_run_config(tmp_path, other)
    assert "num_epochs" not in str(info.value)  # the note only where the field differs

def test_train_without_config_resumes_the_saved_config_with_overrides(tmp_path):
    config = configs.get_config("dista:smoke")
    workdir_lib.save_or_check_run_config(tmp_path, config)
    resumed = cli.saved_run_config(str(tmp_path), [("progress_bar", "true"), ("dataset.data_dir", "/data")])
    assert resumed.progress_bar is True and resumed.dataset.data_dir == "/data"
    assert workdir_lib.run_config_differences(tmp_path, resumed) == []  # the same run


def test_restore_run_with_a_config_refuses_a_workdir_without_checkpoints_and_creates_nothing(tmp_path):
    """With a config given, restore_run does not read config.json; it checked nothing before opening the
    checkpoint managers, which created ``checkpoints/{latest,best}`` in a mistyped or empty workdir."""
    from seqcsist_jax.predictor import restore_run

    config = configs.get_config("derefnet:smoke")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a run")
    for name, what in (("nowhere", "does not exist"), ("empty", "holds no checkpoints/ folder"),
                       ("a_file", "is a file")):
        with pytest.raises(FileNotFoundError, match=rf"/{name} {what}: pass a training run's directory"):
            restore_run(str(tmp_path / name), "best", config)
    assert not (tmp_path / "nowhere").exists() and list((tmp_path / "empty").iterdir()) == []


def test_load_run_config_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        workdir_lib.load_run_config(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"/nowhere does not exist: pass a training run's directory"):
        workdir_lib.load_run_config(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("not a run")
    with pytest.raises(FileNotFoundError, match=r"/a_file is a file, not a directory: pass a training run's"):
        workdir_lib.load_run_config(tmp_path / "a_file")
    (tmp_path / "config.json").write_text('{"model": {"name": ')
    with pytest.raises(ValueError, match=r"config.json: not valid JSON at line 1"):
        workdir_lib.load_run_config(tmp_path)
    # training in that workdir names the way out, which works
    from seqcsist_jax.train import train_and_evaluate

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')  # a run that trained
    config = configs.get_config("srcnn:smoke")
    config.num_train_steps = 2
    with pytest.raises(ValueError, match=r"config.json: not valid JSON at line 1.*; --force_config replaces it "
                                         r"with this command's config"):
        train_and_evaluate(config, tmp_path)
    assert train_and_evaluate(config, tmp_path, force_config=True)["step"] == 2
    assert workdir_lib.run_config_differences(tmp_path, config) == []  # replaced by this command's config


def test_config_differences_lists_changed_added_and_removed_keys():
    old = {"a": 1, "b": {"c": 2, "d": [1, 2]}}
    new = {"a": 1, "b": {"c": 3, "d": (1, 2)}, "e": None}
    assert workdir_lib.config_differences(old, new) == ["b.c: 2 → 3", "e: (absent) → None"]
    assert isinstance(ml_collections.ConfigDict(old), ml_collections.ConfigDict)


def test_config_saved_before_a_field_was_added_is_the_same_run_at_its_default():
    """``optimizer.warmup_steps`` came later: a saved config without it equals one with 0 (the old behaviour),
    but not one with another value."""
    saved = {"optimizer": {"learning_rate": 3e-3}}
    assert workdir_lib.config_differences(saved, {"optimizer": {"learning_rate": 3e-3, "warmup_steps": 0}}) == []
    assert workdir_lib.config_differences(saved, {"optimizer": {"learning_rate": 3e-3, "warmup_steps": 50}}) == [
        "optimizer.warmup_steps: 0 → 50"]


# ---------------------------------------------------------------------------------------------- commands


@pytest.mark.slow
def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path):
    import yaml

    proc = _run(["-m", "experiments.train", "--config=dista:quick", "--print_config", "--config.seed=7",
                 "--config.optimizer.learning_rate=0.002"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0] == ("# --config=dista:quick with --config.seed=7, "
                                           "--config.optimizer.learning_rate=0.002")
    shown = yaml.safe_load(proc.stdout)
    expected = configs.get_config("dista:quick").to_dict()
    expected["seed"], expected["optimizer"]["learning_rate"] = 7, 0.002
    assert shown == expected
    # the checks of a run apply: an unknown field is one error line, as for training
    bad = _run(["-m", "experiments.train", "--config=dista:quick", "--print_config", "--config.learning_rate=1"])
    assert bad.returncode == 2 and _error_lines(bad) == [
        "error: unknown config field learning_rate; did you mean optimizer.learning_rate?"]
    # a saved run's config is shown from its workdir, which is left as it was
    workdir_lib.save_or_check_run_config(tmp_path, configs.get_config("dista:smoke"))
    before = sorted(p.name for p in tmp_path.iterdir())
    saved = _run(["-m", "experiments.train", f"--workdir={tmp_path}", "--print_config"])
    assert saved.returncode == 0, saved.stderr[-2000:]
    assert yaml.safe_load(saved.stdout)["model"] == configs.get_config("dista:smoke").model.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert saved.stdout.startswith(f"# the run saved in {tmp_path / 'config.json'}\n")
    # a workdir without a saved run, and no --config: one line saying so
    empty = _run(["-m", "experiments.train", f"--workdir={tmp_path / 'nothing'}", "--print_config"])
    assert empty.returncode == 2 and _error_lines(empty) == [
        f"error: --print_config: {tmp_path / 'nothing'} holds no saved run ({tmp_path / 'nothing' / 'config.json'} "
        "not found); pass --config to print a named config"]
    assert not (tmp_path / "nothing").exists()


def test_print_config_checks_the_devices_as_a_run_does():
    """``derefnet`` fixes the paper's global batch of 4, which 3 devices cannot split: the run would refuse it."""
    from tests.xla_env import xla_flags

    proc = _run(["-m", "experiments.train", "--config=derefnet", "--print_config"],
                XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=3"))
    assert proc.returncode == 2 and proc.stdout == ""
    lines = _error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(
        "error: config.global_batch_size=4 cannot be split evenly over 3 devices: run on 1, 2, 4 devices"), lines


def test_plain_text_drops_rest_markup_and_keeps_the_words():
    doc = ("Run ``python -m x --a=1``; see :func:`run` and :class:`~m.Error`, e.g.::\n\n"
           "    python -m x\n\nA paragraph::\n\n  ::\n\nend with `single` ticks kept.")
    assert cli.plain_text(doc) == ("Run python -m x --a=1; see run and m.Error, e.g.:\n\n"
                                   "    python -m x\n\nA paragraph:\n\n\nend with `single` ticks kept.")
    plain = "no markup: a::b stays, and so do 3 lines\n\n  indented\n"
    assert cli.plain_text(plain) == plain


def test_entry_points_help_and_errors(tmp_path):
    for module in ("experiments.train", "experiments.evaluate"):
        proc = _run(["-m", module, "--help"])
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "available:" in proc.stdout and "derefnet_quick" in proc.stdout and "tilista" in proc.stdout
        assert "``" not in proc.stdout and "--workdir" in proc.stdout.split("flags (")[0]  # docstring, plain text
    proc = _run(["-m", "experiments.compare", "--help"])
    assert proc.returncode == 0 and "--budget_steps" in proc.stdout and "``" not in proc.stdout
    assert "--flagfile" not in proc.stdout  # its own flags only, as train's and evaluate's --help show

    missing = _run(["-m", "experiments.train", f"--workdir={tmp_path / 'w'}"])  # a workdir with no saved run
    assert missing.returncode == 2 and _error_lines(missing) == [
        f"error: --config is required (no run is saved in {tmp_path / 'w'} to resume); available configs: "
        f"{', '.join(configs.available_configs())} (e.g. --config=derefnet_quick)"]
    bad = _run(["-m", "experiments.train", "--config=derefnet:smoke", f"--workdir={tmp_path / 'w'}",
                "--config.learning_rate=abc"])
    assert bad.returncode == 2
    assert _error_lines(bad) == ["error: unknown config field learning_rate; did you mean optimizer.learning_rate?"]
    assert not (tmp_path / "w" / "config.json").exists()  # nothing written for a rejected command

    # a workdir of another run is refused before anything in it changes
    (tmp_path / "run").mkdir()
    workdir_lib.save_or_check_run_config(tmp_path / "run", configs.get_config("derefnet:smoke"))
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')  # it trained (a config that
    # never trained a step is replaced instead: tests/test_fault_repairs.py)
    before = (tmp_path / "run" / "config.json").read_text()
    other = _run(["-m", "experiments.train", "--config=srcnn:smoke", f"--workdir={tmp_path / 'run'}"])
    assert other.returncode == 2 and len(_error_lines(other)) == 1
    assert "holds a run of another config" in other.stderr and "model.name" in other.stderr
    assert (tmp_path / "run" / "config.json").read_text() == before
    # without --config the saved run is resumed with its own config; overrides apply to it
    resume = _run(["-m", "experiments.train", f"--workdir={tmp_path / 'run'}", "--config.nope=1"])
    assert "resuming the run saved in" in resume.stdout
    assert resume.returncode == 2 and _error_lines(resume) == ["error: unknown config field nope"]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text("{")
    resume = _run(["-m", "experiments.train", f"--workdir={damaged}"])
    (line,) = _error_lines(resume)
    assert resume.returncode == 2 and str(damaged / "config.json") in line and line.endswith(
        "pass --config to choose the run's config")

    # absl's own "FATAL Flags parsing error" (a value its parser refuses) is one line too
    bad_flag = _run(["-m", "experiments.train", "--config=dista:smoke", f"--workdir={tmp_path / 'w'}",
                     "--force_config=maybe"])
    (line,) = _error_lines(bad_flag)  # the wording after "error:" is absl's
    assert bad_flag.returncode == 2 and line.startswith("error: ") and "force_config" in line
    assert line.endswith("; --help lists the flags")
    unknown = _run(["-m", "experiments.train", "--confg=dista:smoke", f"--workdir={tmp_path / 'w'}"])
    assert unknown.returncode == 2 and _error_lines(unknown) == [
        "error: unknown flag --confg (did you mean --config?); --help lists the flags"]
    bad_enum = _run(["-m", "experiments.evaluate", f"--workdir={tmp_path / 'w'}", "--decode=refin"])
    (line,) = _error_lines(bad_enum)
    assert bad_enum.returncode == 2 and line.startswith("error: ") and "--decode=refin" in line

    typo = _run(["-m", "experiments.train", "--config=dista:smoke", f"--workdir={tmp_path / 'typo'}",
                 "--config.dataset.name=csist10k/mini"])
    assert typo.returncode == 2 and len(_error_lines(typo)) == 1  # not TFDS's catalogue of every dataset
    assert "unknown dataset 'csist10k/mini' (did you mean 'csist100k/mini'?)" in typo.stderr
    assert not (tmp_path / "typo").exists()  # refused before the workdir is created
    split_typo = _run(["-m", "experiments.train", "--config=derefnet_quick", f"--workdir={tmp_path / 'typo'}",
                       "--config.dataset.test_split=tset"])  # TFDS itself would say so after the whole training
    assert split_typo.returncode == 2 and _error_lines(split_typo) == [
        "error: config.dataset.test_split: unknown split 'tset' of seqcsist/mini (did you mean 'test'?); its "
        "splits are train, validation, test"]
    assert not (tmp_path / "typo").exists()

    bad_option = _run(["-m", "experiments.evaluate", f"--workdir={tmp_path / 'empty'}", "--decode=refine",
                       "--decode_option=max_tragets=3"])  # before the workdir is looked at
    (line,) = _error_lines(bad_option)
    assert bad_option.returncode == 2 and line.startswith(
        "error: --decode_option: unknown decode option(s): max_tragets (did you mean max_targets?)")

    no_run = _run(["-m", "experiments.evaluate", f"--workdir={tmp_path / 'empty'}"])
    assert no_run.returncode == 2 and len(_error_lines(no_run)) == 1 and "empty does not exist" in no_run.stderr

    # a bad environment setting the decoder reads later is refused at once, in one line
    bad_env = _run(["-m", "experiments.evaluate", f"--workdir={tmp_path / 'empty'}"], SEQCSIST_COMPILE_THREADS="abc")
    assert bad_env.returncode == 2 and _error_lines(bad_env) == [
        "error: SEQCSIST_COMPILE_THREADS must be a non-negative integer (0 turns background compilation off), "
        "got 'abc'"]

    compare_bad = _run(["-m", "experiments.compare", f"--workdir={tmp_path / 'c'}", "--budget_steps=1",
                        "--methods=srcnn", "--config.nope=1"])
    assert compare_bad.returncode != 0 and "unknown config field nope" in compare_bad.stderr


@pytest.mark.slow
def test_train_on_a_damaged_public_release_is_one_line(tmp_path):
    from tfds_builders.csist100k import csist100k_dataset_builder as cdb

    manual = tmp_path / "data" / "downloads" / "manual" / "csist100k"
    shutil.copytree(pathlib.Path(cdb.__file__).parent / "dummy_data", manual)
    bad = manual / "test" / "Annotations" / "CSO2.xml"
    bad.write_text(bad.read_text().replace("<xc>", "<xc>abc", 1))
    proc = _run(["-m", "experiments.train", "--config=dista:smoke", f"--workdir={tmp_path / 'run'}",
                 "--config.dataset.name=csist100k/public", f"--config.dataset.data_dir={tmp_path / 'data'}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in _error_lines(proc) if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "xc" in errors[0]
    assert not (tmp_path / "run").exists()  # refused before the first step: the new workdir is not left behind


def test_train_on_a_missing_public_release_is_one_line(tmp_path):
    """TFDS asserts that the manual folder exists and is not empty (an 80-line traceback with its whole
    instructions); the run says which folder in one line and leaves no workdir behind."""
    proc = _run(["-m", "experiments.train", "--config=dista:smoke", f"--workdir={tmp_path / 'run'}",
                 "--config.dataset.name=csist100k/public", f"--config.dataset.data_dir={tmp_path / 'data'}"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in _error_lines(proc) if line.startswith("error:")]
    manual = tmp_path / "data" / "downloads" / "manual"
    assert len(errors) == 1 and str(manual) in errors[0] and "train/, val/ and test/" in errors[0], errors
    assert not (tmp_path / "run").exists()


def test_an_error_closes_open_progress_bars_before_its_line(capsys):
    """A dataset build that fails mid-way (a full disk) leaves TFDS's bars open; their final redraw used to land
    after the error line, and a nested bar's cursor-up put the error mid-line over the bar above."""
    import io

    from tqdm import auto, std

    cli.close_progress_bars()  # bars other tests left open in this process
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.fail("plain")
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: plain\n"

    screen = io.StringIO()
    outer = std.tqdm(total=3, file=screen, desc="splits")
    inner = auto.tqdm(total=350, file=screen, position=1, leave=False, desc="examples")
    inner.update(1)
    assert not outer.disable and not inner.disable
    with pytest.raises(SystemExit):
        cli.fail("No space left on device")
    assert outer.disable and inner.disable  # closed: nothing redraws after the line below
    assert capsys.readouterr().err == "\nerror: No space left on device\n"
    assert cli.close_progress_bars() == 0


def test_continuous_scores_are_attributed_to_the_decoder():
    from experiments import evaluate

    for decode in ("refine", "trajectory"):
        assert evaluate.decoder_note(decode).startswith(f"note: the {decode} decoder fits the frames themselves")
        # the note names only the columns the row has (PSNR/SSIM: single-image benchmarks)
        assert evaluate.decoder_note(decode).endswith("the row's FPS is the model's (its maps), not the decoder's")
        assert evaluate.decoder_note(decode, image_quality=True).endswith(
            "the row's FPS, PSNR and SSIM are the model's (its maps), not the decoder's")
    assert evaluate.decoder_note("grid") == evaluate.decoder_note("peak") == evaluate.decoder_note(None) == ""
    # on single images, trajectory is pointed to refine (a second line); refine and grid are not
    assert evaluate.decoder_note("refine", True) == evaluate.decoder_note("refine")
    assert evaluate.decoder_note("grid", True) == ""
    extra = evaluate.decoder_note("trajectory", True).removeprefix(evaluate.decoder_note("trajectory"))
    assert extra.startswith("\nnote: this dataset has one image per example") and "--decode=refine" in extra


def test_log_records_and_warnings_are_one_line_each():
    import logging
    import warnings

    formatter = cli.OneLineFormatter("[row] ")
    record = lambda level, msg: logging.LogRecord("x", level, "/a/b.py", 3, msg, None, None)  # noqa: E731
    assert formatter.format(record(logging.WARNING, "a torn last line")) == "[row] warning: a torn last line"
    assert formatter.format(record(logging.ERROR, "espcn failed")) == "[row] error: espcn failed"
    assert formatter.format(record(logging.INFO, "[1/3] srcnn ...")) == "[row] [1/3] srcnn ..."
    previous = warnings.formatwarning
    try:
        cli.one_line_warnings()
        text = warnings.formatwarning("Y Yᵀ is\n ill-conditioned", RuntimeWarning, "/x/splits.py", 184, "source()")
    finally:
        warnings.formatwarning = previous
    assert text == "warning: RuntimeWarning: Y Yᵀ is ill-conditioned\n"


def _imported_modules(importtime_stderr: str) -> set[str]:
    # `python -X importtime` writes "import time: self [us] | cumulative | <indent>module" per import
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


@pytest.mark.parametrize("args,status,last_line", [
    (["experiments.train", "--help"], 0, None),
    (["experiments.evaluate", "--help"], 0, None),
    (["experiments.train", "--workdir=unused"], 2, "error: --config is required (no run is saved in "),
    (["experiments.train", "--config=derefnet:smoke", "--workdir=unused", "--config.learning_rate=abc"], 2,
     "error: unknown config field learning_rate; did you mean optimizer.learning_rate?"),
    (["experiments.evaluate", "--workdir=unused", "--decode=refin"], 2, "error: "),
    (["experiments.train", "--config=derefnet:smoke", "--workdir=unused", "--config.eval.decode_options.max_targets=3"],
     2, "error: --config.eval.decode_options.max_targets: the continuous decoder's options are set with "
        "experiments.evaluate --decode_option KEY=VALUE"),
    # configs that point at CSIST-100K resolve their dataset's protocol while loading (seqcsist_jax.data.names)
    (["experiments.train", "--config=dista:quik", "--workdir=unused"], 2, "error: unknown config variant 'quik'"),
    (["experiments.train", "--config=dista:quick", "--workdir=unused", "--config.num_train_step=1"], 2,
     "error: unknown config field num_train_step; did you mean num_train_steps?"),
])
def test_help_and_usage_errors_answer_without_importing_jax(args, status, last_line, tmp_path):
    """`--help` and a mistyped command answer in about half a second: JAX (and everything that imports it, such
    as the exception types of a run's own errors) is imported only by a command that runs."""
    args = [a.replace("unused", str(tmp_path / "w")) for a in args]
    proc = _run(["-X", "importtime", "-m", *args])
    assert proc.returncode == status, proc.stderr[-2000:]
    errors = [line for line in _error_lines(proc) if not line.startswith("import time:")]
    assert (errors == []) if last_line is None else (len(errors) == 1 and errors[0].startswith(last_line)), errors
    imported = _imported_modules(proc.stderr)
    assert "experiments.cli" in imported  # the parse saw the imports
    assert not {m for m in imported if m == "jax" or m.startswith(("jax.", "flax", "optax", "orbax"))}
    assert not (tmp_path / "w").exists()


def test_a_stopped_run_exits_as_the_signal_would_and_errors_exit_2():
    # In a subprocess: absl's app.run installs its log handler on the interpreter's (here captured) stderr.
    script = textwrap.dedent("""
        import signal, sys
        from experiments import cli
        from seqcsist_jax.train import TrainingInterrupted

        def stopped(argv, overrides):
            raise TrainingInterrupted("stopped by SIGINT at step 3 of 9; checkpoint saved", signum=signal.SIGINT)

        def refused(argv, overrides):
            raise ValueError("config.seed must be a whole number")

        def interrupted(argv, overrides):  # Ctrl-C where nothing turns it into a message (evaluate's decoding)
            raise KeyboardInterrupt

        main = {"stop": stopped, "refuse": refused, "interrupt": interrupted}[sys.argv[1]]
        expected = (TrainingInterrupted, ValueError)
        # the entry points pass a function returning the types (imported only when a run raises)
        cli.run(main, ["prog"], expected=(lambda: expected) if sys.argv[2:] == ["lazy"] else expected)
    """)
    stop = _run(["-c", script, "stop"])
    assert stop.returncode == 128 + signal.SIGINT, stop.stderr
    assert _error_lines(stop) == ["stopped by SIGINT at step 3 of 9; checkpoint saved"]  # not "error: …"
    for how in ([], ["lazy"]):
        error = _run(["-c", script, "refuse", *how])
        assert error.returncode == 2 and _error_lines(error) == ["error: config.seed must be a whole number"]
    lazy_stop = _run(["-c", script, "stop", "lazy"])
    assert lazy_stop.returncode == 128 + signal.SIGINT and _error_lines(lazy_stop) == _error_lines(stop)
    interrupted = _run(["-c", script, "interrupt"])  # one line and the shell's 130, not a traceback
    assert interrupted.returncode == 128 + signal.SIGINT, interrupted.stderr
    assert _error_lines(interrupted) == [
        "interrupted by Ctrl-C (SIGINT): each output file is replaced whole, never left half-written; run the same "
        "command again (a training run resumes from its last checkpoint)"]


def test_a_closed_stdout_pipe_ends_quietly_like_a_shell_tool():
    """`python -m experiments.train --print_config | head -1`: the reader goes away before the output is
    written. That is no error of the command: exit 141 (SIGPIPE's shell status), nothing on stderr (it was
    `error: Broken pipe`, exit 2)."""
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", "--config=derefnet:smoke", "--print_config"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # before the command has printed anything (it imports for a second first)
    try:
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=300) == 141, err
    finally:
        proc.kill()
    assert "error:" not in err and "Broken pipe" not in err and "Traceback" not in err, err
