"""Plots of the library's diagnostics (the library computes; this module draws).

recall = diagnostics.recall_of_evicted_window(params, tokens, window=L, passes=N)
fig = plot_consolidation(recall, "consolidation.png")   # a notebook shows `fig`

Figures are built with matplotlib's object API, not pyplot: importing or calling this
module never switches the backend, so a notebook keeps its inline figures.
"""

from __future__ import annotations

import numpy as np


def plot_consolidation(results: dict, path: str | None = None):
    """Recall cosine vs pass index per layer (left) and the relative fast-weight change per
    sleep pass per layer (right), each averaged over windows with the min-max range over
    windows shaded.

    Args:
      results: a dict with "cosine" [W, N, n_ssm] (`recall_of_evicted_window`) and/or
        "change" [W, N-1, n_ssm] (`fast_weight_change_per_pass` or the recall dict).
      path: a PNG file to write too (None: none).

    Returns:
      The matplotlib Figure.
    """
    from matplotlib.figure import Figure

    panels = [
        (key, title, ylabel, first)
        for key, title, ylabel, first in (
            ("cosine", "recall of the evicted window", "cosine(S^T k, v)", 1),
            ("change", "fast-weight change per sleep pass", "||dS||_F / ||S||_F", 2),
        )
        if key in results
    ]
    if not panels:
        raise ValueError("results must hold 'cosine' and/or 'change'")
    fig = Figure(figsize=(5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (key, title, ylabel, first) in zip(axes[0], panels):
        arr = np.asarray(results[key], np.float64)  # [W, P, n_ssm]
        x = np.arange(first, first + arr.shape[1])
        for j in range(arr.shape[2]):
            mean = arr[:, :, j].mean(axis=0)
            ax.plot(x, mean, marker="o", label=f"ssm layer {j}")
            ax.fill_between(x, arr[:, :, j].min(axis=0), arr[:, :, j].max(axis=0), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("pass")
        ax.set_ylabel(ylabel)
        if len(x):
            ax.set_xticks(x)
        if arr.shape[2]:
            ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
