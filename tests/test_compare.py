"""``python -m experiments.compare``: overrides, table layout, and one tiny end-to-end run with reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import cli, compare
from seqcsist_jax.baselines import published


def _row(name: str, **values) -> dict:
    row = {
        "method": name, "label": published.label(name), "trainable": name != "ista", "params": 15841,
        "flops_per_trajectory": 2.5e9, "fps": 1234.5, "mAP": 0.4, "AP05": 0.01, "AP10": 0.1, "AP15": 0.4,
        "AP20": 0.7, "AP25": 0.79, "steps": 300, "paper": compare._paper_row(name),
    }  # fmt: skip
    row.update(values)
    return row


def test_an_unknown_flag_is_one_line_with_the_closest_flags(capsys):
    with pytest.raises(SystemExit) as stop:
        compare.parse_args(["--workdir=/tmp/x", "--budget_steps=5", "--methodz=srcnn"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: unknown flag --methodz (did you mean --methods or --method_steps?); --help lists the flags"]
    with pytest.raises(SystemExit):
        compare.parse_args(["--budget_steps=5", "--methods=srcnn"])
    want = "error: --workdir is required: the comparison's directory (one run per row, the table), e.g. "
    assert capsys.readouterr().err.strip() == want + "--workdir=workdirs/compare"


def test_parse_args_validation():
    with pytest.raises(SystemExit):  # no budget
        compare.parse_args(["--workdir=/tmp/x"])
    with pytest.raises(SystemExit):  # two budgets
        compare.parse_args(["--workdir=/tmp/x", "--budget_steps=3", "--paper_scale"])
    with pytest.raises(SystemExit):
        compare.parse_args(["--workdir=/tmp/x", "--budget_steps=0"])
    with pytest.raises(SystemExit):
        compare.parse_args(["--workdir=/tmp/x", "--budget_steps=5", "--jobs=0"])
    assert compare.parse_args(["--workdir=/tmp/x", "--budget_steps=5"]).jobs == 1
    args = compare.parse_args(["--workdir=/tmp/x", "--budget_steps=5", "--methods=srcnn, tdan"])
    assert args.methods == ["srcnn", "tdan"]
    assert compare.parse_args(["--workdir=/tmp/x", "--paper_scale"]).methods == list(compare.DEFAULT_METHODS)


def test_unknown_method_is_reported(tmp_path):
    with pytest.raises(SystemExit, match="unknown method") as err:
        compare.main(["--methods=srcnn,bogus,espcnn@public_loss", "--budget_steps=1", f"--workdir={tmp_path}"])
    assert str(err.value).startswith("error: unknown methods 'bogus', 'espcnn' (did you mean 'espcn' for 'espcnn'?)")
    assert not tmp_path.joinpath("srcnn").exists()  # refused before any row ran
    with pytest.raises(SystemExit) as err:  # one unknown name, spelled as the paper does
        compare.main(["--methods=srcnn,ISTA-Net++", "--budget_steps=1", f"--workdir={tmp_path}"])
    assert str(err.value).startswith("error: unknown method 'ISTA-Net++' (did you mean 'istanet_pp'?)")
    for methods, message in (("srcnn,tabel", "unknown method 'tabel' (did you mean 'table'?)"),  # a list name
                             ("srcnn@public_los", "unknown row variant 'public_los' in 'srcnn@public_los' (did you "
                                                  "mean 'public_loss'?); variants: "),
                             ("srcnn@smoke", "'srcnn@smoke': 'smoke' is a config variant, set for every row with "
                                             "--variant=smoke (row variants after '@': public_loss,")):
        with pytest.raises(SystemExit) as err:
            compare.main([f"--methods={methods}", "--budget_steps=1", f"--workdir={tmp_path}"])
        assert str(err.value).startswith(f"error: {message}"), err.value


def test_caption_names_the_test_size_and_explains_variant_rows_only_when_there_are_some():
    machine = {"device": "cpu", "cpu_count": 2, "backend": "cpu"}
    row = {"method": "srcnn", "label": "SRCNN", "num_test_trajectories": 75, "dataset": "seqcsist/mini",
           "trainable": True, "params": 1, "flops_per_trajectory": 1.0, "fps": 1.0, "steps": 1, "seconds": 1.0,
           **{k: 0.5 for k in compare.METRICS}, "paper": None}
    text = compare.markdown_table([row], {"budget_steps": 1}, machine)
    assert "Test split (75 trajectories), paper protocol" in text and "Rows `method (variant)`" not in text
    variant = {**row, "method": "lista@public_loss", "label": "LISTA (public loss)"}
    assert "Rows `method (variant)`" in compare.markdown_table([row, variant], {"budget_steps": 1}, machine)
    image = {**row, "num_test_trajectories": 1000, "dataset": "csist100k/mini"}
    assert "Test split (1000 images), CSIST-100K protocol" in compare.markdown_table(
        [image], {"budget_steps": 1, "dataset": "csist100k/mini"}, machine)


def test_method_config_applies_the_equal_budget():
    args = compare.parse_args(
        ["--workdir=/tmp/x", "--budget_steps=90", "--learning_rate=1e-3", "--dataset=seqcsist/mini", "--evals=3"]
    )
    for name in ("srcnn", "tdan", "istanet_pp"):
        config = compare.method_config(name, args)
        assert compare._schedule(config, args.evals) == 90
        assert config.num_train_steps == 90
        assert config.eval_every_steps == 30 and config.checkpoint_every_steps == 30
        assert config.optimizer.learning_rate == 1e-3
        assert config.dataset.name == "seqcsist/mini"
    # a config's own settings that the budget does not touch stay (ISTA-Net++ has no weight decay)
    assert compare.method_config("istanet_pp", args).optimizer.weight_decay == 0.0
    assert compare.method_config("srcnn", args).optimizer.weight_decay == 1e-5
    assert not compare.is_trainable(compare.method_config("ista", args))
    assert compare.is_trainable(compare.method_config("derefnet", args))
    assert "trainable" not in compare.method_config("derefnet", args).model  # DeRefNet takes every model field
    paper = compare.parse_args(["--workdir=/tmp/x", "--paper_scale"])
    assert compare.method_config("srcnn", paper).num_epochs == 200


def test_markdown_table_keeps_paper_numbers_apart():
    rows = [_row("ista", trainable=False, params=0, steps=0), _row("srcnn"), _row("fista", trainable=False),
            compare.failed_row("tdan", FloatingPointError("non-finite loss at step 7"))]
    machine = {"device": "cpu", "cpu_count": 2, "backend": "cpu"}
    settings = {"dataset": "seqcsist/mini", "budget_steps": 300, "learning_rate": 1e-3}
    text = compare.markdown_table(rows, settings, machine)
    ours, paper = text.split("## Published numbers (from the paper, not measured here)")
    assert "300 steps" in ours and "seqcsist/mini" in ours and "learning rate 0.001" in ours
    srcnn_row = next(line for line in ours.splitlines() if line.startswith("| SRCNN"))
    cells = [c.strip() for c in srcnn_row.strip("|").split("|")]
    assert cells == ["SRCNN", "15.8 K", "2.5 G", "1,234", "40.00", "1.00", "10.00", "40.00", "70.00", "79.00",
                     "300", "–", "49.64"]  # fmt: skip
    assert "| SRCNN | 49.64 | 1.40 | 16.30 | 51.20 | 85.00 | 94.30 | 102,961 | 15.8 K |" in paper
    assert "| FISTA | not reported |" in paper
    tdan_row = next(line for line in ours.splitlines() if line.startswith("| TDAN"))
    assert "failed: FloatingPointError: non-finite loss at step 7" in tdan_row and tdan_row.endswith("| 47.96 |")
    assert tdan_row.count("|") == srcnn_row.count("|")
    assert "| ISTA | 10.72 | 0.14 | 1.97 | 8.74 | 18.22 | 24.53 | 0.1 | – |" in paper


def test_row_variants_and_reduced_budgets():
    args = compare.parse_args(["--workdir=/tmp/x", "--budget_epochs=1", "--methods=table",
                               "--method_steps=rdn=50,lista=7"])  # fmt: skip
    assert args.methods[: len(compare.DEFAULT_METHODS)] == list(compare.DEFAULT_METHODS)
    assert "lista@public_loss" in args.methods and "bid@public_input" in args.methods
    # a variant row is its method's config with the variant's fields; the method's reduced budget applies to it
    faithful = compare.method_config("lista@public_loss", args)
    assert faithful.loss.public_broadcast is True and faithful.num_train_steps == 7
    assert compare.method_config("lista", args).loss.public_broadcast is False
    assert compare.method_config("tilista@shared_storage", args).model.shared_storage is True
    assert compare.method_config("bid@public_input", args).model.input_mode == "public_column"
    assert compare.method_config("rdn", args).num_train_steps == 50
    assert compare.method_config("srcnn", args).num_train_steps == -1  # the common (epoch) budget
    assert compare.row_label("lista@public_loss") == "LISTA (public broadcast loss)"
    assert compare._paper_row("lista@public_loss") == compare._paper_row("lista")
    with pytest.raises(cli.UsageError, match=r"row variant 'public_loss' \(loss.public_broadcast=True\) does not apply "
                                             r"to srcnn: .*; it is for lista@public_loss, liht@public_loss"):
        compare.method_config("srcnn@public_loss", args)
    for bad, message in (("--methods=lista@nope", "unknown row variant"), ("--method_steps=rdn=0", "positive"),
                         ("--method_steps=rdn", "NAME=STEPS"), ("--method_steps=edsr=5", "not among"),
                         ("--method_steps=rnd=5", r"not among the selected rows \(did you mean 'rdn'\?\)")):
        argv = ["--workdir=/tmp/x", "--budget_steps=3", bad] + ([] if "methods" in bad else ["--methods=rdn"])
        with pytest.raises(SystemExit, match=message):
            compare.parse_args(argv)
    with pytest.raises(SystemExit, match="paper_scale"):
        compare.parse_args(["--workdir=/tmp/x", "--paper_scale", "--methods=rdn", "--method_steps=rdn=5"])


def test_markdown_table_marks_reduced_budgets_and_variant_rows():
    rows = [_row("rdn", reduced_budget=True, steps=50, seconds=90.0),
            _row("lista@public_loss", label=compare.row_label("lista@public_loss"), paper=compare._paper_row("lista")),
            _row("lista")]  # fmt: skip
    settings = {"dataset": "seqcsist/mini", "budget_epochs": 1.0, "method_steps": {"rdn": 50}}
    text = compare.markdown_table(rows, settings, {"device": "cpu", "cpu_count": 2, "backend": "cpu"})
    ours, paper = text.split("## Published numbers (from the paper, not measured here)")
    rdn = [c.strip() for c in next(l for l in ours.splitlines() if l.startswith("| RDN")).strip("|").split("|")]
    assert rdn[10:12] == ["50 †", "1.5"]
    assert "reduced step budgets" in ours and "RDN 50" in ours
    assert "| LISTA (public broadcast loss) |" in ours
    assert paper.count("| LISTA |") == 1 and "public broadcast" not in paper


@pytest.mark.slow
def test_end_to_end_smoke_run_and_reuse(tmp_path):
    import jax

    cache_before = jax.config.jax_compilation_cache_dir  # the test session's own cache (tests/conftest.py)
    workdir = tmp_path / "runs"
    prefix = tmp_path / "out" / "compare_test"
    argv = ["--methods=ista,espcn", "--variant=smoke", "--budget_steps=2", f"--workdir={workdir}",
            f"--output={prefix}", "--evals=1"]  # fmt: skip
    result = compare.main(argv)
    for ext in ("md", "json", "png"):
        assert prefix.with_name(f"compare_test.{ext}").stat().st_size > 200
    data = json.loads(prefix.with_name("compare_test.json").read_text())
    assert data["settings"]["budget_steps"] == 2 and data["machine"]["backend"]
    ista, espcn = data["rows"]
    assert (ista["method"], ista["trainable"], ista["steps"], ista["params"]) == ("ista", False, 0, 0)
    assert ista["mean_iterations"] == pytest.approx(50)  # the smoke config's max_iter: never converges
    assert espcn["trainable"] and espcn["steps"] == 2
    assert espcn["params"] == (25 * 4 + 4) + (9 * 4 * 4 + 4) + (9 * 4 * 9 + 9)  # the smoke ESPCN (4/4 channels)
    for row in (ista, espcn):
        assert 0.0 <= row["mAP"] <= 1.0 and row["fps"] > 0 and row["flops_per_trajectory"] > 0
        assert row["paper"]["mAP"] == published.published(row["method"]).mAP
        assert np.isclose(row["mAP"], np.mean([row[k] for k in ("AP05", "AP10", "AP15", "AP20", "AP25")]))
    assert (workdir / "espcn" / "eval" / "test" / "metrics.json").exists()

    # a second call with the same settings reuses both finished runs
    marker = (workdir / "espcn" / "metrics.jsonl").stat().st_mtime_ns
    again = compare.main(argv)
    assert [r["seconds"] for r in again["rows"]] == [r["seconds"] for r in result["rows"]]
    assert (workdir / "espcn" / "metrics.jsonl").stat().st_mtime_ns == marker

    # the same rows two at a time, each in its own process: the same scores, FPS re-measured row by row after
    parallel = tmp_path / "parallel"
    argv2 = [a for a in argv if not a.startswith(("--workdir", "--output"))]
    result2 = compare.main([*argv2, "--jobs=2", f"--workdir={parallel}", f"--output={parallel / 'table'}"])
    for serial, row in zip(result["rows"], result2["rows"]):
        assert row["method"] == serial["method"] and not row.get("error"), row
        for key in ("mAP", "AP05", "AP25", "params", "steps"):
            assert row[key] == serial[key], (row["method"], key)  # same programs on the same data: same bits
        assert row["fps_measured"] == "alone" and row["fps"] > 0 and row["fps_shared"] > 0
        saved = json.loads((parallel / row["method"] / compare.ROW_FILE).read_text())
        assert saved["fps"] == row["fps"] and saved["fps_measured"] == "alone"
    assert any((parallel / compare.COMPILE_CACHE).iterdir())  # the FPS pass loads the workers' compilations
    # ... in its own process: this one's settings are untouched
    assert jax.config.jax_compilation_cache_dir == cache_before != str(parallel / compare.COMPILE_CACHE)
    table = (parallel / "table.md").read_text()
    assert "2 rows at a time in separate processes" in table and "FPS timed row by row" in table


def test_set_overrides_and_schedule_reach_the_config():
    args = compare.parse_args(["--methods=srcnn", "--budget_steps=5", "--workdir=w", "--lr_schedule=cosine",
                               "--config.dataset.num_train=3500", "--config.dataset.name", "simulated"])
    config = compare.method_config("srcnn", args)
    assert config.dataset.num_train == 3500 and config.dataset.name == "simulated"
    assert config.optimizer.schedule == "cosine"
    bad = compare.parse_args(["--methods=srcnn", "--budget_steps=5", "--workdir=w", "--config.dataset.nope=1"])
    with pytest.raises(cli.UsageError, match="unknown config field dataset.nope"):
        compare.method_config("srcnn", bad)
    with pytest.raises(SystemExit, match="needs a value"):
        compare.parse_args(["--budget_steps=5", "--workdir=w", "--config.dataset.num_train"])


def test_a_changed_budget_sets_the_unfinished_run_aside_only_when_asked(tmp_path):
    """A row run of another budget is neither continued (two schedules in one run) nor deleted."""
    from seqcsist_jax.workdir import save_or_check_run_config

    argv = ["--methods=srcnn", f"--workdir={tmp_path}", "--budget_steps=10", "--evals=1"]
    old = compare.method_config("srcnn", compare.parse_args(argv))
    compare._schedule(old, 1)
    row_dir = tmp_path / "srcnn"
    row_dir.mkdir()
    save_or_check_run_config(row_dir, old)
    (row_dir / "marker").write_text("an earlier run")
    args = compare.parse_args(argv[:2] + ["--budget_steps=20", "--evals=1"])
    new = compare.method_config("srcnn", args)
    compare._schedule(new, 1)
    compare._set_aside_stale_run(row_dir, old, force=False)  # the same config: resumed, nothing moved
    assert (row_dir / "marker").exists()
    with pytest.raises(cli.UsageError, match="holds an unfinished run .*num_train_steps: 10 → 20.*--restart_changed"):
        compare._set_aside_stale_run(row_dir, new, force=False)
    (row_dir / "result.json").write_text("{}")  # finished: said so, as a finished run is no less another config
    with pytest.raises(cli.UsageError, match="holds a finished run of another config"):
        compare._set_aside_stale_run(row_dir, new, force=False)
    compare._set_aside_stale_run(row_dir, new, force=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("srcnn.replaced-")]
    assert len(aside) == 1 and (aside[0] / "marker").read_text() == "an earlier run"
    assert row_dir.is_dir() and not any(row_dir.iterdir())


def test_a_row_trained_on_another_device_count_is_not_reused_silently(tmp_path):
    """The same config on other devices trains another global batch (per-device batch × devices): reusing it
    would put rows of two batch sizes in one table without a word."""
    from seqcsist_jax.train_multistep import resolve_global_batch

    args = compare.parse_args(["--methods=srcnn", f"--workdir={tmp_path}", "--budget_steps=6", "--evals=1",
                               "--variant=smoke"])
    config = compare.method_config("srcnn", args)
    compare._schedule(config, args.evals)
    devices = compare._num_devices(config)
    here = resolve_global_batch(config, devices)
    row_dir = compare.row_dir(tmp_path, "srcnn")
    row_dir.mkdir(parents=True)
    (row_dir / "marker").write_text("the earlier run")
    cached = {"method": "srcnn", "config": json.loads(json.dumps(config.to_dict(), default=str)), "source": None,
              "global_batch": 4 * here, "num_devices": 4 * devices, "mAP": 12.5}
    (row_dir / compare.ROW_FILE).write_text(json.dumps(cached))
    want = (rf"a global batch of {4 * here} trajectories on {4 * devices} device\(s\); here it would be {here} on "
            rf"{devices} device\(s\): rerun with --restart_changed to set it aside and train this row again here, "
            rf"or run the whole table on {4 * devices} device\(s\) to reuse it")
    with pytest.raises(cli.UsageError, match=want):
        compare.run_method("srcnn", args, row_dir)
    assert (row_dir / "marker").exists()  # nothing moved without --restart_changed
    cached.update(global_batch=here, num_devices=devices)
    (row_dir / compare.ROW_FILE).write_text(json.dumps(cached))
    assert compare.run_method("srcnn", args, row_dir) == cached  # the same batch: reused as it is


def test_jobs_schedule_longest_rows_first_from_the_previous_table(tmp_path):
    prefix = tmp_path / "table"
    assert compare.previous_row_seconds(prefix) == {}  # no previous table
    prefix.with_name("table.json").write_text("{not json")
    assert compare.previous_row_seconds(prefix) == {}  # unreadable: no hints, no crash
    rows = [{"method": "srcnn", "seconds": 14.0}, {"method": "rdn", "seconds": 355.0},
            {"method": "lista@public_loss", "seconds": 65.0}, {"method": "dbpn", "error": "x", "seconds": None}]
    prefix.with_name("table.json").write_text(json.dumps({"rows": rows}))
    seconds = compare.previous_row_seconds(prefix)
    assert seconds == {"srcnn": 14.0, "rdn": 355.0, "lista@public_loss": 65.0}
    order = compare.longest_first(["srcnn", "dbpn", "rdn", "lista@public_loss", "tdan"], seconds)
    assert order == ["dbpn", "tdan", "rdn", "lista@public_loss", "srcnn"]  # unknown cost first, in table order


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_row_and_a_rerun_finishes_it(tmp_path, monkeypatch):
    workdir = tmp_path / "runs"
    argv = ["--methods=ista,espcn", "--variant=smoke", "--budget_steps=2", f"--workdir={workdir}",
            f"--output={tmp_path / 'table'}", "--evals=1", "--jobs=2"]  # fmt: skip
    monkeypatch.setenv("SEQCSIST_FAULT", "compare_row/espcn:step=0")  # SIGKILL espcn's worker as it starts
    ista, espcn = compare.main(argv)["rows"]
    assert not ista.get("error") and ista["fps_measured"] == "alone"
    assert "worker process died (killed by signal 9" in espcn["error"] and np.isnan(espcn["mAP"])
    assert "| ESPCN | failed: RuntimeError: its worker process died" in (tmp_path / "table.md").read_text()
    monkeypatch.delenv("SEQCSIST_FAULT")
    ista2, espcn2 = compare.main(argv)["rows"]
    assert ista2["seconds"] == ista["seconds"]  # reused, not rerun
    assert not espcn2.get("error") and espcn2["steps"] == 2 and espcn2["fps_measured"] == "alone"


def test_a_worker_that_cannot_write_its_row_is_one_line_and_a_named_failure(tmp_path, caplog):
    (tmp_path / compare.RESULT_FILE).mkdir()  # the write fails as on a full disk (an OSError), deterministically
    with caplog.at_level("ERROR", logger="compare"), pytest.raises(SystemExit) as stop:
        compare._write_worker_result("espcn", tmp_path, {"method": "espcn", "error": "x"})
    assert stop.value.code == compare._WORKER_WRITE_FAILED
    (record,) = caplog.records
    assert record.getMessage().startswith("espcn: ") and compare.RESULT_FILE in record.getMessage()
    assert record.exc_info is None  # one line, no traceback
    assert "could not write in the row's folder" in compare.worker_failure_reason(compare._WORKER_WRITE_FAILED)
    assert "killed by signal 9, e.g. for memory" in compare.worker_failure_reason(-9)
    assert "(exit code 1)" in compare.worker_failure_reason(1)


def test_ctrl_c_in_a_jobs_run_is_one_message_and_exit_130(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "_run_rows_in_processes", interrupted)
    with pytest.raises(SystemExit) as stop:
        compare.main(["--methods=srcnn", "--variant=smoke", "--budget_steps=1", "--jobs=2", f"--workdir={tmp_path}"])
    assert stop.value.code == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    assert "4 s" in compare.settings_text({"jobs": 2, "seconds_this_call": 4.2, "budget_steps": 1})
    assert "55 min" in compare.settings_text({"jobs": 2, "seconds_this_call": 3323.0, "budget_steps": 1})
    serial = {"budget_steps": 1, "seconds_all_methods": 3600.0}
    assert compare.settings_text({**serial, "seconds_this_call": 3590.0}).endswith("wall time of all runs 60 min")
    text = compare.settings_text({**serial, "seconds_this_call": 30.0})  # rows reused from an earlier call
    assert text.endswith("wall time of all runs 60 min (counting earlier calls' training and reused rows; "
                         "this call 30 s)")


def test_settings_text_names_the_learning_rates_the_configs_used():
    rows = [{"learning_rate": 1e-3}, {"learning_rate": None}, {"learning_rate": 1e-3}, {"learning_rate": 1e-4}]
    assert "each config's learning rate (0.0001, 0.001)" in compare.settings_text({"budget_steps": 1}, rows)
    assert "learning rate 0.01 for every method" in compare.settings_text({"budget_steps": 1, "learning_rate": 1e-2})


def test_settings_text_names_the_datasets_and_the_variant():
    rows = [{"dataset": "seqcsist/mini"}, {"dataset": "seqcsist/mini"}, {}]
    text = compare.settings_text({"budget_steps": 1, "variant": "smoke"}, rows)
    assert text.startswith("each config's own dataset (`seqcsist/mini`); config variant `smoke` for every method;")
    text = compare.settings_text({"budget_steps": 1, "dataset": "csist100k/mini"}, rows)
    assert text.startswith("dataset `csist100k/mini`; budget") and "variant" not in text


def test_settings_text_shows_overrides_and_step_counts_as_typed():
    """Overrides are (key, value) pairs (lists once compare.json is read back): shown as the flag that set them,
    not as a Python tuple; one step is "1 step"."""
    for pair in (("dataset.data_dir", "/tmp/tfds"), ["dataset.data_dir", "/tmp/tfds"]):
        text = compare.settings_text({"budget_steps": 1, "overrides": [pair, ("seed", "2")]})
        assert "; overrides `--config.dataset.data_dir=/tmp/tfds`, `--config.seed=2`" in text
        assert "budget: 1 step (of each config's global batch)" in text
    assert "budget: 3 steps (of" in compare.settings_text({"budget_steps": 3})


def test_a_workers_log_lines_name_its_row(capsys):
    import logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in ("compare", "seqcsist_jax")})
    try:
        compare._logging_in_worker("lista@public_loss")
        logging.getLogger("seqcsist_jax.train").info("step %d of 9: 100%% done", 5)
        compare._logging_in_worker()  # the FPS pass names the row in each message instead
        logging.getLogger("compare").info("FPS pass [1/2] srcnn")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["[lista@public_loss] step 5 of 9: 100% done", "FPS pass [1/2] srcnn"]


def test_a_workers_progress_lines_name_its_row(monkeypatch, capsys):
    from seqcsist_jax import train as train_lib

    train_lib._say("step 2: validation")
    monkeypatch.setattr(train_lib, "MESSAGE_PREFIX", "[espcn] ")  # what a --jobs worker sets
    train_lib._say("step 4: validation")
    assert capsys.readouterr().out.splitlines() == ["step 2: validation", "[espcn] step 4: validation"]


def test_a_second_compare_on_the_same_workdir_is_refused_in_one_line(tmp_path):
    from seqcsist_jax.run_lock import WorkdirLock

    workdir = tmp_path / "runs"
    argv = ["--methods=ista", "--variant=smoke", "--budget_steps=1", f"--workdir={workdir}", "--evals=1"]
    with WorkdirLock(workdir, holder="another compare"):  # a first comparison running there
        with pytest.raises(SystemExit) as err:
            compare.main(argv)
    message = str(err.value)
    assert message.startswith(f"error: {workdir} is in use by another compare (PID ") and "\n" not in message
    assert not (workdir / "ista").exists()  # no row was started
    assert compare.main(argv)["rows"][0]["method"] == "ista"  # free again: the comparison runs


def test_config_values_and_broken_builders_are_refused_before_any_row(tmp_path, capsys):
    workdir = tmp_path / "runs"
    for extra, words in ((["--config.seed=-1"], "config.seed must be a whole number"),
                         (["--config.eval.threshold=nan"], "config.eval.threshold must be a finite brightness"),
                         (["--learning_rate=-1"], "config.optimizer.learning_rate must be a finite number > 0")):
        with pytest.raises(SystemExit) as err:
            compare.main(["--methods=srcnn", "--variant=smoke", "--budget_steps=1", f"--workdir={workdir}", *extra])
        assert err.value.code == 2 and words in str(err.value)
    builder = tmp_path / "tuple_builder.py"
    builder.write_text("from experiments.examples import tiny_method as tiny\n"
                       "def build(model_config, loss_config):\n"
                       "    return tiny.TinyRefiner(), tiny.mse_loss\n")
    with pytest.raises(SystemExit) as err:
        compare.main(["--methods=srcnn", "--variant=smoke", "--budget_steps=1", f"--workdir={workdir}",
                      f"--config.model.name={builder}:build"])
    assert err.value.code == 2 and "returned tuple; expected seqcsist_jax.methods.Method" in str(err.value)
    assert not workdir.exists()  # nothing was trained or created


def test_a_row_failing_with_a_config_error_is_logged_in_one_line(caplog):
    import logging

    from seqcsist_jax.methods import MethodContractError

    with caplog.at_level(logging.ERROR, logger="compare"):
        compare.log_row_failure("mine", MethodContractError("method 'mine': the model returned an array\nsecond"))
        compare.log_row_failure("bug", KeyError("x"))
        compare.log_row_failure("espcn", FileExistsError(17, "File exists", "/w/espcn"))  # the row folder a file
    one, bug, machine = caplog.records
    assert one.getMessage() == ("mine failed: MethodContractError: method 'mine': the model returned an array "
                                "second") and one.exc_info is None
    assert machine.getMessage() == ("espcn failed: FileExistsError: File exists (/w/espcn): a path that must be a "
                                    "directory is a file (or the reverse); check --workdir") and machine.exc_info is None
    assert bug.getMessage() == "bug failed" and isinstance(bug.exc_info[1], KeyError)  # a bug keeps its traceback


def test_failed_rows_line_and_output_error_line(tmp_path):
    import errno

    rows = [{"method": "srcnn"}, {"method": "espcn", "error": "FloatingPointError: loss is nan\ntraceback…"},
            {"method": "edsr", "error": "killed for memory"}]
    line = compare.failed_rows_line(rows)
    assert line.startswith("2 of 3 rows failed: espcn (FloatingPointError: loss is nan), edsr (killed for memory);")
    assert "traceback" not in line and "run the same command again" in line
    assert compare.failed_rows_line(rows[:1]) is None
    rows.append({"method": "rdn", "error": "UsageError: w/rdn holds a finished run of another config (…); rerun "
                                           "with --restart_changed to set it aside"})
    line = compare.failed_rows_line(rows)  # the same command would fail the same way: it must not be the advice
    assert "run the same command again" not in line and line.endswith(
        "rerun with --restart_changed where a reason asks for it (or another --workdir); finished rows are reused")

    prefix = tmp_path / "table"
    read_only = compare.output_error_line(OSError(errno.EROFS, "Read-only file system", str(tmp_path)), prefix)
    assert read_only == (f"cannot write the table {prefix}.{{md,json,png}}: Read-only file system ({tmp_path}); "
                         "choose a writable --output (finished rows are kept in their workdirs)")
    full = compare.output_error_line(OSError(errno.ENOSPC, "No space left on device", f"{prefix}.md"), prefix)
    assert full.startswith(f"cannot write the table {prefix}.{{md,json,png}}: No space left on device") and \
        "the disk is full" in full
