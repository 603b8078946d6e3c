"""``python -m experiments.compare``: a row is reused only for the same code; one-line errors and exit codes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from experiments import compare
from seqcsist_jax import methods
from seqcsist_jax.baselines import published

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "experiments" / "examples" / "tiny_method.py"
# One more 3×3 convolution (4 → 4 channels in the smoke variant): 77 + 4·4·9 + 4 = 225 parameters.
EXTRA_LAYER = ("        hidden = jax.nn.relu(nn.Conv(self.channels, (3, 3), padding=\"SAME\")(x0))\n",
               "        hidden = jax.nn.relu(nn.Conv(self.channels, (3, 3), padding=\"SAME\")(x0))\n"
               "        hidden = jax.nn.relu(nn.Conv(self.channels, (3, 3), padding=\"SAME\")(hidden))\n")


def _compare(args, cwd=REPO, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "experiments.compare", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _fake_row(name: str) -> dict:
    return {"method": name, "label": published.label(name), "trainable": True, "params": 10,
            "flops_per_trajectory": 1e6, "fps": 100.0, **{k: 0.5 for k in compare.METRICS}, "steps": 1,
            "seconds": 1.0, "paper": compare._paper_row(name)}


# ------------------------------------------------------------------------------------ source fingerprints


def test_method_source_fingerprint_hashes_the_file_of_a_users_builder(tmp_path):
    assert methods.method_source_fingerprint("srcnn") is None  # versioned with the package
    assert methods.method_source_fingerprint("seqcsist_jax.baselines.srnets:build_srcnn") is None
    assert methods.method_source_fingerprint("srcnnn") is None
    assert methods.method_source_fingerprint(f"{tmp_path}/missing.py:build") is None
    path = tmp_path / "mine.py"
    shutil.copy(EXAMPLE, path)
    first = methods.method_source_fingerprint(f"{path}:build_tiny")
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text(path.read_text().replace(*EXTRA_LAYER))
    assert methods.method_source_fingerprint(f"{path}:build_tiny") not in (None, first)
    # an importable module outside the package: the module's file
    module = methods.method_source_fingerprint("experiments.examples.tiny_method:build_tiny")
    assert module == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()


def test_row_source_covers_the_builder_and_a_config_files_row(tmp_path):
    args = compare.parse_args(["--workdir=/tmp/x", "--budget_steps=1", "--variant=smoke"])
    assert compare.row_source("srcnn", compare.method_config("srcnn", args)) is None
    # a config file whose model is a built-in one: the config file alone
    config_file = tmp_path / "mysrcnn.py"
    config_file.write_text("from experiments.configs.srcnn import get_config  # noqa: F401\n")
    source = compare.row_source(str(config_file), compare.method_config(str(config_file), args))
    assert source == {"config_file": hashlib.sha256(config_file.read_bytes()).hexdigest()}
    # the example holds its builder and its config: both fingerprints (the same file)
    path = tmp_path / "tiny.py"
    shutil.copy(EXAMPLE, path)
    source = compare.row_source(f"{path}@public_loss", compare.method_config(str(path), args))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert source == {"builder": digest, "config_file": digest}


def test_a_row_of_other_or_unrecorded_source_is_set_aside_and_kept(tmp_path, caplog):
    args = compare.parse_args(["--workdir=/tmp/x", "--budget_steps=1", "--variant=smoke"])
    path = tmp_path / "tiny.py"
    shutil.copy(EXAMPLE, path)
    config = compare.method_config(str(path), args)
    source = compare.row_source(str(path), config)
    row = tmp_path / "runs" / "tiny"
    row.mkdir(parents=True)
    compare._set_aside_changed_source(str(path), row, config, source)  # an empty folder: nothing to set aside
    assert row.is_dir() and list(tmp_path.joinpath("runs").iterdir()) == [row]

    # an unfinished run of this source (checkpoints, no row yet) is resumed, not moved
    (row / "checkpoints").mkdir()
    (row / compare.SOURCE_FILE).write_text(json.dumps({"source": source}))
    compare._set_aside_changed_source(str(path), row, config, source)
    assert (row / "checkpoints").is_dir()

    # ... of other source: moved aside, one line naming the file and where the old row is
    (row / compare.SOURCE_FILE).write_text(json.dumps({"source": {**source, "builder": "0" * 64}}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="compare"):
        compare._set_aside_changed_source(str(path), row, config, source)
    (aside,) = [p for p in row.parent.iterdir() if p.name.startswith("tiny.stale-")]
    assert (aside / "checkpoints").is_dir() and row.is_dir() and not any(row.iterdir())
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (f"{path}: the method's source ({path}) changed since the row in {row} was trained; moved that "
                    f"row to {aside} (kept) and training it afresh")

    # a finished row written before sources were recorded: it may be of any version of the file
    (row / compare.ROW_FILE).write_text(json.dumps({"method": str(path), "config": {}}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="compare"):
        compare._set_aside_changed_source(str(path), row, config, source)
    assert len([p for p in row.parent.iterdir() if p.name.startswith("tiny.stale-")]) == 2  # both kept
    assert "does not record its method's source" in caplog.records[0].getMessage()
    assert not any(row.iterdir())


@pytest.mark.slow
def test_a_users_method_edited_between_two_compares_is_trained_again(tmp_path):
    """The fresh-user report: twoconv.py gained a layer (same config) and the rerun reused the old model."""
    path = tmp_path / "twoconv.py"
    shutil.copy(EXAMPLE, path)
    workdir = tmp_path / "cmp"
    argv = [f"--methods={path}", "--variant=smoke", "--budget_steps=1", "--evals=1", f"--workdir={workdir}"]
    first = _compare(argv)
    assert first.returncode == 0, first.stderr[-3000:]
    old = json.loads((workdir / "twoconv" / compare.ROW_FILE).read_text())
    assert old["params"] == 77
    first_digest = hashlib.sha256(path.read_bytes()).hexdigest()

    # unchanged: reused (in this process; nothing trains)
    again = compare.main(argv)["rows"][0]
    assert again["seconds"] == old["seconds"]
    assert not [p for p in workdir.iterdir() if ".stale-" in p.name]

    path.write_text(path.read_text().replace(*EXTRA_LAYER))
    edited = _compare(argv)
    assert edited.returncode == 0, edited.stderr[-3000:]
    (aside,) = [p for p in workdir.iterdir() if p.name.startswith("twoconv.stale-")]
    notes = [line for line in edited.stderr.splitlines() if "source" in line]
    assert notes == [f"warning: {path}: the method's source ({path}) changed since the row in "
                     f"{workdir / 'twoconv'} was "
                     f"trained; moved that row to {aside} (kept) and training it afresh"], edited.stderr[-3000:]
    assert "reusing the finished run" not in edited.stderr
    new = json.loads((workdir / "twoconv" / compare.ROW_FILE).read_text())
    assert new["params"] == 225 and new["steps"] == 1  # the edited model, trained from scratch
    assert json.loads((aside / compare.ROW_FILE).read_text())["params"] == 77  # the old result is kept
    assert old["source"] == {"builder": first_digest, "config_file": first_digest}  # what the rerun compared
    assert new["source"]["builder"] == hashlib.sha256(path.read_bytes()).hexdigest() != first_digest
    assert "| twoconv |" in (workdir / "compare.md").read_text()


# ---------------------------------------------------------------------------------------- one-line errors


def test_a_config_file_without_get_config_is_named_once(tmp_path, capsys):
    path = tmp_path / "noconfig.py"
    path.write_text("x = 1\n")
    with pytest.raises(SystemExit) as err:
        compare.main([f"--methods={path}", "--budget_steps=1", f"--workdir={tmp_path / 'w'}"])
    assert err.value.code == 2
    assert str(err.value) == f"error: {path} defines no get_config()"
    assert _error_lines(capsys.readouterr().err) == [str(err.value)]


@pytest.mark.parametrize("text, wanted", [
    ("def get_config(arg=None):\n    return (\n", "line 2"),  # SyntaxError
    ("import no_such_module_xyz\n\ndef get_config(arg=None):\n    return None\n", "no_such_module_xyz"),
    ("def get_config(arg=None):\n    return undefined_name\n", "NameError: name 'undefined_name' is not defined "
                                                             "(broken.py, line 2)"),
])
def test_a_config_file_that_does_not_run_is_one_line(tmp_path, capsys, text, wanted):
    path = tmp_path / "broken.py"
    path.write_text(text)
    with pytest.raises(SystemExit) as err:
        compare.main([f"--methods=srcnn,{path}", "--budget_steps=1", f"--workdir={tmp_path / 'w'}"])
    line = str(err.value)
    assert err.value.code == 2 and line.startswith("error: ") and "\n" not in line
    assert line.count(str(path)) == 1 and wanted in line, line
    assert _error_lines(capsys.readouterr().err) == [line]
    assert not (tmp_path / "w" / "srcnn").exists()  # refused before any row ran


def test_config_error_line_of_a_syntax_error():
    try:
        compile("def get_config(arg=None):\n    return (\n", "/tmp/x/syn.py", "exec")
    except SyntaxError as e:
        line = compare.config_error_line("/tmp/x/syn.py", e)
    assert line == "/tmp/x/syn.py: '(' was never closed (syn.py, line 2)"
    assert compare.config_error_line("srcnn", ValueError("unknown variant 'x'")) == "srcnn: unknown variant 'x'"


def test_usage_errors_exit_2_with_one_line_on_stderr(tmp_path, capsys):
    for argv in (["--workdir=/tmp/x"], ["--workdir=/tmp/x", "--budget_steps=1", "--methods=srcnnn"]):
        with pytest.raises(SystemExit) as err:
            compare.main(argv)
        assert err.value.code == 2
        assert _error_lines(capsys.readouterr().err) == [str(err.value)] and str(err.value).startswith("error: ")


def test_an_unwritable_workdir_or_output_is_one_line_before_any_row_runs(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    base = ["--methods=ista", "--variant=smoke", "--budget_steps=1", "--evals=1"]
    with pytest.raises(SystemExit) as err:
        compare.main([*base, f"--workdir={a_file / 'sub'}"])
    assert err.value.code == 2
    assert str(err.value) == (f"error: Not a directory ({a_file / 'sub'}): a path that must be a directory is a "
                              "file (or the reverse); check --workdir")
    assert _error_lines(capsys.readouterr().err) == [str(err.value)]

    workdir = tmp_path / "runs"
    with pytest.raises(SystemExit) as err:
        compare.main([*base, f"--workdir={workdir}", f"--output={a_file / 'sub' / 'table'}"])
    assert err.value.code == 2
    assert str(err.value) == (f"error: cannot write the table {a_file / 'sub' / 'table'}.{{md,json,png}}: Not a "
                              f"directory ({a_file / 'sub'}); choose a writable --output (finished rows are kept in "
                              "their workdirs)")
    assert _error_lines(capsys.readouterr().err) == [str(err.value)]
    assert not (workdir / "ista").exists()  # refused before the row ran, not after


def test_a_read_only_output_directory_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    mounted = False
    try:
        try:
            (locked / "probe").write_text("x")
        except OSError:
            pass
        else:  # root writes through a read-only mode: a read-only file system stops everyone
            (locked / "probe").unlink()
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"root here and no read-only mount possible ({done.stderr.strip()}); the "
                            "path-under-a-file test covers an unwritable --output")
            mounted = True
        with pytest.raises(SystemExit) as err:
            compare.main(["--methods=ista", "--budget_steps=1", f"--workdir={tmp_path / 'w'}",
                          f"--output={locked / 'table'}"])
        assert err.value.code == 2 and "choose a writable --output" in str(err.value)
        assert _error_lines(capsys.readouterr().err) == [str(err.value)]
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(locked)], capture_output=True)
        locked.chmod(0o755)


def test_a_full_disk_while_writing_the_table_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "run_method", lambda name, args, workdir: _fake_row(name))

    def full_disk(rows, settings, prefix):
        raise OSError(errno.ENOSPC, "No space left on device", str(prefix) + ".md")

    monkeypatch.setattr(compare, "write_outputs", full_disk)
    with pytest.raises(SystemExit) as err:
        compare.main(["--methods=srcnn", "--budget_steps=1", f"--workdir={tmp_path}"])
    assert err.value.code == 2
    assert str(err.value).startswith(f"error: cannot write the table {tmp_path / 'compare'}.{{md,json,png}}: No "
                                     f"space left on device ({tmp_path / 'compare'}.md): the disk is full")
    assert [line for line in _error_lines(capsys.readouterr().err) if not line.startswith("[")] == [str(err.value)]


# ------------------------------------------------------------------------------------------- failed rows


def test_failed_rows_are_named_in_the_last_line(tmp_path, monkeypatch, capsys):
    def row(name, args, workdir):
        if name == "espcn":
            raise FloatingPointError("non-finite loss at step 7")
        return _fake_row(name)

    monkeypatch.setattr(compare, "run_method", row)
    result = compare.main(["--methods=srcnn,espcn,ista", "--budget_steps=1", f"--workdir={tmp_path}"])
    assert result["failed"] == ["espcn"] and [r["method"] for r in result["rows"]] == ["srcnn", "espcn", "ista"]
    assert _error_lines(capsys.readouterr().err)[-1] == (
        "1 of 3 rows failed: espcn (FloatingPointError: non-finite loss at step 7); the table marks them failed; "
        "run the same command again to retry them (finished rows are reused)")
    assert "| ESPCN | failed: FloatingPointError" in (tmp_path / "compare.md").read_text()
    monkeypatch.setattr(compare, "run_method", lambda name, args, workdir: _fake_row(name))
    assert compare.main(["--methods=srcnn", "--budget_steps=1", f"--workdir={tmp_path}"])["failed"] == []
    assert "failed" not in capsys.readouterr().err


def test_the_command_exits_1_when_a_row_failed(tmp_path):
    path = tmp_path / "boom.py"
    source = EXAMPLE.read_text()
    assert "        del phi  #" in source
    path.write_text(source.replace("        del phi  #", '        raise RuntimeError("boom")  #'))  # fails in its run
    proc = _compare([f"--methods={path}", "--variant=smoke", "--budget_steps=1", "--evals=1",
                     f"--workdir={tmp_path / 'w'}"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert _error_lines(proc.stderr)[-1].startswith(f"1 of 1 rows failed: {path} (RuntimeError: boom); ")
    assert "| boom | failed: RuntimeError: boom |" in (tmp_path / "w" / "compare.md").read_text()


def test_a_rerun_without_the_data_dir_reuses_the_rows_of_the_first(tmp_path):
    base = ["--methods=ista,srcnn", "--variant=smoke", "--budget_steps=2", "--evals=1",
            f"--workdir={tmp_path / 'runs'}", f"--output={tmp_path / 'table'}"]
    first = compare.main([*base, f"--config.dataset.data_dir={tmp_path / 'tfds'}"])["rows"]
    again = compare.main(base)["rows"]  # the same command without --config.dataset.data_dir
    for a, b in zip(first, again):
        assert not a.get("error") and b["seconds"] == a["seconds"], (a, b)  # reused, not scored again
    saved = json.loads((tmp_path / "runs" / "srcnn" / "config.json").read_text())
    assert saved["dataset"]["data_dir"] == str(tmp_path / "tfds")
