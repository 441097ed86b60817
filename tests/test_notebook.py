"""notebooks/quickstart.ipynb is in sync with its script and runs top to bottom."""

from __future__ import annotations

import importlib.util
import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebook", NOTEBOOKS / "build_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_matches_its_script():
    built = _builder().script_to_notebook((NOTEBOOKS / "quickstart.py").read_text())
    saved = nbformat.read(str(NOTEBOOKS / "quickstart.ipynb"), as_version=4)
    assert [(c.cell_type, c.source) for c in saved.cells] == [
        (c.cell_type, c.source) for c in built.cells
    ], "quickstart.ipynb is stale: run python notebooks/build_notebook.py"


@pytest.mark.slow  # heavy (subprocesses / training); CI runs it with -m slow
def test_notebook_runs_without_errors(tmp_path):
    nb = nbformat.read(str(NOTEBOOKS / "quickstart.ipynb"), as_version=4)
    # "python3" is ipykernel's own kernel: jupyter_client starts it with this interpreter
    # (sys.executable), with or without an installed kernelspec.
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    t0 = time.time()
    try:
        client.execute()
    except Exception as e:  # CellExecutionError names the cell and the traceback
        pytest.fail(f"notebook failed: {e}")
    wall = time.time() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]  # fmt: skip
    assert not errors, errors
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "max |stream - forward|" in text and "notebook ran in" in text
    print(f"notebook executed in {wall:.0f} s")
