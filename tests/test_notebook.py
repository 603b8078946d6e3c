"""The quickstart notebook: its install cell, and an end-to-end run of its smoke path (tiny data, a few steps)."""

import importlib.util
import os
import pathlib
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "notebooks" / "quickstart.ipynb"
_FIND_SPEC = importlib.util.find_spec


def _code_cells():
    return [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]


def _run_install_cell(monkeypatch, installed: bool) -> tuple[list[list[str]], dict]:
    """Executes the first code cell with pip stubbed out; returns the commands it would have run."""
    calls = []

    def find_spec(name, *args, **kwargs):
        if name == "seqcsist_jax" and not installed:
            return None
        return _FIND_SPEC(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kwargs: calls.append(cmd))
    namespace = {}
    exec(_code_cells()[0].source, namespace)  # noqa: S102  (our own notebook)
    assert isinstance(namespace["PROGRESS"], bool)
    return calls, namespace


def test_first_cell_installs_from_source_only_when_missing(monkeypatch):
    calls, namespace = _run_install_cell(monkeypatch, installed=False)
    source = namespace["SOURCE"]
    assert source.startswith("git+https://github.com/") and "<" not in source  # a usable URL, no placeholder
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "install"]
    assert calls[0][-1] == f"seqcsist-jax @ {source}"
    calls, _ = _run_install_cell(monkeypatch, installed=True)
    assert calls == []


def test_notebook_is_generated_from_its_script():
    """quickstart.ipynb is written by make_quickstart.py: the committed notebook matches the script's cells."""
    spec = importlib.util.spec_from_file_location("make_quickstart", NOTEBOOK.with_name("make_quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert [(c.cell_type, c.source) for c in notebook.cells] == [(c.cell_type, c.source) for c in module.CELLS]
    assert module.SOURCE in notebook.cells[1].source


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("SEQCSIST_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("SEQCSIST_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    outputs = "".join(o.get("text", "") for cell in code for o in cell.get("outputs", []))
    assert "test CSO-mAP" in outputs
    assert "trajectory decoding on 2 test trajectories: CSO-mAP" in outputs
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # the data preview and the three evaluation figures
    # No progress-bar warnings, and no cell floods the notebook with one output per refresh.
    stderr = "".join(o.get("text", "") for cell in code for o in cell.get("outputs", [])
                     if o.get("name") == "stderr")
    assert "TqdmWarning" not in stderr and "IProgress" not in stderr, stderr[-2000:]
    counts = [len(cell.get("outputs", [])) for cell in code]
    assert max(counts) <= 12, counts
