"""The README's python snippets and examples/custom_rule.py run as a new user pastes them."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks() -> list[str]:
    with open(os.path.join(REPO, "README.md")) as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def _run(args, tmp_path, timeout=600):
    # From an empty directory, the package found the way an install finds it.
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_readme_snippets_are_whole_programs():
    blocks = python_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        compile(block, "README.md", "exec")
        assert "sleep_consolidation as sc" in block  # each one imports what it uses
    assert any('jax.jit(sc.forward, static_argnames=("window", "passes"))' in b for b in blocks)


@pytest.mark.slow  # each block in a fresh interpreter: imports and compiles (~30 s each)
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_snippet_runs_as_pasted(index, tmp_path):
    out = _run([sys.executable, "-c", python_blocks()[index]], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow  # trains 40 small steps through sleep (~25 s)
def test_custom_rule_example_trains_and_prints_what_it_learned(tmp_path):
    out = _run([sys.executable, os.path.join(REPO, "examples", "custom_rule.py")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out.stdout)]
    assert len(losses) >= 2 and losses[-1] < losses[0], out.stdout
    learned = re.search(r"learned per-head rates \(theta\['lr'\]\): \[(.*)\]", out.stdout)
    assert learned, out.stdout
    assert [float(x) for x in learned.group(1).split(",")] != [0.5, 0.5]  # theta moved
