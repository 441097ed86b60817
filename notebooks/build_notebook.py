"""Builds a .ipynb from a jupytext-style percent script (`# %%` code cells, `# %% [markdown]`
markdown cells whose lines start with "# "), without jupytext.

    python notebooks/build_notebook.py                     # quickstart.py -> quickstart.ipynb
    python notebooks/build_notebook.py --execute           # ... with its outputs (figures)
    python notebooks/build_notebook.py a.py b.ipynb

--execute runs the notebook (nbclient, from the repository root) and writes it with its
outputs, as it is committed, so that a reader sees the figures without running it.
tests/test_notebook.py checks it is in sync with its script and executes it.
"""

from __future__ import annotations

import pathlib
import sys

import nbformat

HERE = pathlib.Path(__file__).resolve().parent


def script_to_notebook(text: str) -> nbformat.NotebookNode:
    """The notebook of a percent script (anything before the first `# %%` is dropped)."""
    cells = []
    kind, lines = None, []

    def flush():
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in
                             body.splitlines())  # fmt: skip
            cells.append(nbformat.v4.new_markdown_cell(body))
        else:
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # fmt: skip
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids: rebuilding gives the same file
        cell["id"] = f"cell-{i}"
    return nb


def build(src: pathlib.Path, dst: pathlib.Path, execute: bool = False) -> pathlib.Path:
    nb = script_to_notebook(src.read_text())
    if execute:
        from nbclient import NotebookClient

        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE.parent)}}).execute()  # fmt: skip
    nbformat.validate(nb)
    nbformat.write(nb, str(dst))
    return dst


if __name__ == "__main__":
    execute = "--execute" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--execute"]
    src = pathlib.Path(args[0]) if args else HERE / "quickstart.py"
    dst = pathlib.Path(args[1]) if len(args) > 1 else src.with_suffix(".ipynb")
    print("wrote", build(src, dst, execute=execute))
