"""Sweep orchestration: grids of runs, launching (submitit), progress, locks and reports.

Lives under `experiments/` because it starts processes and writes reports; the library
(`sleep_consolidation`) does neither.
"""
