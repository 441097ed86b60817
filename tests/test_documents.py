"""The project's documents are well formed: every markdown table's rows have its header's
number of cells (a row pasted from another table shows up here), and every relative link
points at a file that exists."""

from __future__ import annotations

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = sorted(
    os.path.relpath(p, REPO)
    for pattern in ("*.md", "results/**/*.md", "docs/**/*.md")
    for p in glob.glob(os.path.join(REPO, pattern), recursive=True)
)


def _cells(row: str) -> int:
    """The number of cells of a table row as GitHub splits it: on every `|` not escaped
    (one inside a code span splits the cell too)."""
    text = row.strip().replace(r"\|", "")
    return len(text.strip("|").split("|"))


def _tables(text: str):
    """(line number, rows) of each table outside fenced code blocks."""
    table, start, fenced = [], 0, False
    for number, line in enumerate(text.splitlines() + [""], start=1):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("|"):
            table, start = table + [line], start or number
            continue
        if len(table) >= 2:
            yield start, table
        table, start = [], 0


@pytest.mark.parametrize("path", DOCUMENTS)
def test_every_table_row_has_its_headers_cells(path):
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    bad = [
        f"{path}:{start + i}: {_cells(row)} cells, header {_cells(rows[0])}"
        for start, rows in _tables(text)
        for i, row in enumerate(rows)
        if _cells(row) != _cells(rows[0])
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", DOCUMENTS)
def test_every_relative_link_exists(path):
    with open(os.path.join(REPO, path)) as f:
        text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)
    here = os.path.dirname(os.path.join(REPO, path))
    missing = [
        target
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not re.match(r"[a-z]+:|#", target)
        and not os.path.exists(os.path.join(here, target.split("#")[0]))
    ]
    assert not missing, f"{path} links to files that do not exist: {missing}"
