"""Executes the quickstart notebook end to end (smoke settings: tiny in-memory data, a few steps)."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(REPO / "experiments" / "notebooks" / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("SEQCSIST_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("SEQCSIST_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute()
    outputs = "".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert "test CSO-mAP" in outputs
    assert "trajectory decoding on 2 test trajectories: CSO-mAP" in outputs
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # the data preview and the three evaluation figures
