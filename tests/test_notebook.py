"""notebooks/subset_statistics.ipynb runs top to bottom against a run directory.

The run is given by LAION_PIPE_RUN; when it is not set the test builds the hand-made run of
test_stats.py, so the notebook's numbers can be checked exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from test_stats import DISPLAYED, build_run

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "subset_statistics.ipynb"


def _outputs(nb) -> tuple[str, int]:
    """All text/HTML the notebook showed, and how many PNG images."""
    texts, pngs = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                texts.append("ERROR " + out.get("ename", ""))
            if "text" in out:
                texts.append(out["text"])
            data = out.get("data", {})
            texts += [data.get("text/html", ""), data.get("text/plain", ""), data.get("text/markdown", "")]
            pngs += "image/png" in data
    return "\n".join(texts), pngs


@pytest.mark.slow
def test_notebook_runs_on_a_run_dir(tmp_path, monkeypatch):
    run = os.environ.get("LAION_PIPE_RUN")
    given = bool(run)
    if not given:
        run = str(build_run(tmp_path / "run"))
        monkeypatch.setenv("LAION_PIPE_RUN", run)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text, pngs = _outputs(nb)
    assert "ERROR" not in text
    assert (Path(run) / "stats" / "report.html").is_file()  # the stats stage ran (or was up to date)
    assert pngs >= 4  # similarity, sizes, text length, funnel (+ languages, domains)
    if not given:
        for row in DISPLAYED.values():
            for value in row[1:]:
                assert f">{value}<" in text, value  # a cell of an HTML table
        assert "low_similarity 3, unsafe 1" in text and "beispiel.de" in text and "a red cat" in text
