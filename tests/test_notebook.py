"""notebooks/quickstart.ipynb is in sync with its script and runs top to bottom."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
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


def test_notebook_is_committed_with_its_figures():
    """A reader sees the figures without running it: the committed notebook holds the
    outputs of its last run (python notebooks/build_notebook.py --execute), the final
    diagnostics figure included."""
    nb = nbformat.read(str(NOTEBOOKS / "quickstart.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    images = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert len(images) >= 3, "run: python notebooks/build_notebook.py --execute"
    assert images[-1] is code[-1]  # plots.plot_consolidation's figure, shown inline
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_plots_leave_the_matplotlib_backend_alone():
    """Importing and calling the plotting modules keeps the backend a notebook chose (an
    Agg switch made the notebook's last figure vanish)."""
    script = (
        "import matplotlib, numpy as np\n"
        "from experiments import plots\n"
        "from experiments.sweeping import report\n"
        "fig = plots.plot_consolidation({'cosine': np.ones((2, 3, 1))})\n"
        "report.plot_sweep([])\n"
        "print(matplotlib.get_backend(), type(fig).__name__)\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", script], cwd=NOTEBOOKS.parent, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["svg", "Figure"]
