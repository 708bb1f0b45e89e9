"""The notebooks execute top to bottom at a small size (nbclient; any cell error fails the test)."""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SMALL = {"SIMCORE_NB_SIZE": "4000", "SIMCORE_NB_SEEDS": "3", "SIMCORE_NB_STEPS": "60", "SIMCORE_NB_LLM": "0"}


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["counterfactual_lockdown.ipynb", "heuristic_vs_llm.ipynb"])
def test_notebook_executes(name, monkeypatch, tmp_path):
    root = str(NOTEBOOKS.parent)
    for key, value in SMALL.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"{name}: expected figures, got {len(images)}"
