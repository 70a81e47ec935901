"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient), on the built-in phantoms."""
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs_top_to_bottom_in_a_kernel(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install -e '.[dev]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install -e '.[dev]')")
    pytest.importorskip("ipykernel", reason="ipykernel not installed (pip install -e '.[dev]')")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=False,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any cell error
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "test accuracy:" in text and "'valid':" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    run = tmp_path / "cxr_fast_quickstart" / "runs" / "quickstart"
    assert (run / "model" / "model.json").is_file() and len(list((tmp_path / "cxr_fast_quickstart" / "gradcam").glob("*.png"))) >= 4
    # the Kaggle reader's paths are in the notebook for them to switch to
    source = NOTEBOOK.read_text()
    assert "/kaggle/input/coronahack-chest-xraydataset" in source and "/kaggle/input/siim-covid19-detection" in source
