"""experiments.benchmarks.paper_run_report on a hand-written run directory."""

import json
import sys

import pytest

from experiments.benchmarks import paper_run_report


def _write_run(tmp_path, steps_done=300, with_test=True):
    from experiments import configs

    config = configs.get_config("derefnet")  # global batch 4, 100 epochs
    config.dataset.num_train = 8
    (tmp_path / "config.json").write_text(config.to_json())
    records = []
    for step in range(100, steps_done + 1, 100):
        # 2 steps per epoch; the record after the evaluation at step 200 is slow (it includes the evaluation)
        rate = 5.0 if step in (100, 300) else 60.0 + step / 100
        records.append({"step": step, "split": "train", "loss": 1.0, "steps_per_second": rate, "epoch": step / 2})
        if step % 200 == 0:
            records.append({"step": step, "split": "validation", "mAP": 0.5 - step / 1e4, "AP05": 0.01, "AP10": 0.1,
                            "AP15": 0.5, "AP20": 0.9, "AP25": 0.97, "count_accuracy": 0.4, "precision": 0.75,
                            "recall": 0.99})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if with_test:  # as experiments.evaluate writes it
        (tmp_path / "eval" / "test").mkdir(parents=True)
        (tmp_path / "eval" / "test" / "metrics.json").write_text(json.dumps(
            {"step": 200, "split": "test", "mAP": 0.51, "AP05": 0.011, "AP10": 0.15, "AP15": 0.55, "AP20": 0.89,
             "AP25": 0.96, "AP05_curve": {"recall": [0.1]}}))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "evals.json").write_text(json.dumps({"best_step": 200, "evals": {}}))
    return tmp_path


def test_summarize_run_reads_progress_curve_rate_and_test(tmp_path):
    s = paper_run_report.summarize_run(_write_run(tmp_path, steps_done=600))
    assert s["steps_per_epoch"] == 2 and s["total_steps"] == 200  # 100 epochs x 2 steps
    assert s["steps_done"] == 600 and s["global_batch"] == 4
    assert [v["step"] for v in s["validation"]] == [200, 400, 600]
    assert s["validation"][0]["mAP"] == pytest.approx(48.0) and s["validation"][0]["epoch"] == 100
    assert s["validation"][0]["count_accuracy"] == pytest.approx(40.0)
    assert s["best_step"] == 200
    assert s["test"]["mAP"] == pytest.approx(51.0) and s["test"]["AP05"] == pytest.approx(1.1)
    assert s["test"]["step"] == 200
    # steady rates: steps 200 (after 100), 400 (after 300) and 600 (after 500); 300 and 500 follow evaluations
    # at 200 and 400 and are left out, as is 100 (first record: compilation)
    assert s["steps_per_second"] == pytest.approx(64.0)
    assert s["trajectories_per_second"] == pytest.approx(256.0)
    assert s["train_seconds"] is None  # no checkpoint to read it from


def test_report_marks_an_unfinished_run_as_interim(tmp_path):
    config = json.loads((_write_run(tmp_path, steps_done=600).joinpath("config.json")).read_text())
    config["num_epochs"] = 1000.0
    (tmp_path / "config.json").write_text(json.dumps(config))
    s = paper_run_report.summarize_run(tmp_path)
    text = paper_run_report.report_markdown(s, "test machine", "cmd", 12.0)
    assert "unfinished: stopped at step 600 of 2,000" in text
    assert "| this run, step 200 (interim: best of the 300 of 1000 epochs trained so far) | 51.00 |" in text
    assert "| paper (100 epochs, 4 GPUs) | 51.55 |" in text
    assert "| 200 (best) | 100 | 48.00 |" in text


def test_report_without_test_record_says_how_to_score(tmp_path):
    s = paper_run_report.summarize_run(_write_run(tmp_path, steps_done=400, with_test=False))
    text = paper_run_report.report_markdown(s, "test machine", "cmd", None, note="closing words")
    assert s["test"] is None and "not scored yet" in text and text.endswith("closing words\n")


def test_main_writes_markdown_json_and_figure(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    run = _write_run(tmp_path / "run")
    out = tmp_path / "out" / "report"
    monkeypatch.setattr(sys, "argv", ["paper_run_report", f"--workdir={run}", f"--output={out}",
                                      "--hardware=test machine", "--wall_s=5", "--command=the launch command"])
    paper_run_report.main()
    assert json.loads(out.with_suffix(".json").read_text())["hardware"] == "test machine"
    assert "Command: `the launch command`" in out.with_suffix(".md").read_text()
    assert "DeRefNet, paper protocol" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0


def test_missing_config_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        paper_run_report.summarize_run(tmp_path)


def test_unlogged_run_reports_its_checkpoint_step_and_protocol_changes(tmp_path):
    # a run stopped after its first checkpoint but before its first log line, with a changed model
    from experiments import configs

    config = configs.get_config("derefnet")
    config.model.num_stages = 1
    (tmp_path / "config.json").write_text(config.to_json())
    (tmp_path / "checkpoints" / "latest" / "2").mkdir(parents=True)
    s = paper_run_report.summarize_run(tmp_path)
    assert s["steps_done"] == 2 and s["steps_per_epoch"] is None
    assert s["protocol_differences"] == ["model.num_stages: 1 → 9"]
    text = paper_run_report.report_markdown(s, "cpu", "cmd", None)
    assert "**modified** paper protocol" in text and "`model.num_stages: 1 → 9`" in text
    assert "no training record logged yet" in text


def test_paper_config_on_in_memory_default_splits_is_the_paper_protocol(tmp_path):
    from experiments import configs

    config = configs.get_config("derefnet")
    config.dataset.name = "simulated"
    config.dataset.num_train, config.dataset.num_eval, config.dataset.num_test = 3500, 750, 750
    config.checkpoint_every_steps = 0
    (tmp_path / "config.json").write_text(config.to_json())
    assert paper_run_report.protocol_differences(tmp_path) == []
    config.dataset.num_train = 8
    (tmp_path / "config.json").write_text(config.to_json())
    assert paper_run_report.protocol_differences(tmp_path) == ["dataset.num_train: 8 → 3500"]
