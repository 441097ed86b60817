"""Analysis: consolidation diagnostics, the no-learning capacity reference and adaptive
sleep (sleep while the window's own recall improves)."""
