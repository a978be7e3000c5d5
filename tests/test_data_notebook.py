"""Notebook 01 runs end to end in the smoke profile (bundled data only) and is stored clean."""

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_data_acquisition_and_analysis.ipynb"


def test_notebook_is_stored_without_outputs_and_has_parameters():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "PROFILE" in "".join(tagged[0]["source"])
    assert "Learning objectives" in "".join(nb["cells"][0]["source"])
    assert "Questions" in "".join(nb["cells"][-1]["source"])
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.notebook
@pytest.mark.slow
def test_notebook_smoke_profile_runs(tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"PROFILE": "smoke", "OUTPUT_DIR": str(tmp_path / "o")},
                               kernel_name="python3", cwd=str(NOTEBOOK.parents[1]), progress_bar=False)
    nb = json.loads(out.read_text())
    images = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert images >= 8  # every plot rendered
    assert (tmp_path / "o" / "before_after_summary.csv").exists()
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "flowers102: not found" in text  # the fail-fast message is shown
