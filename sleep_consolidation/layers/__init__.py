"""The layers a block is built from: windowed attention, the fast-weight mixer, the
linear maps with their CPU-friendly gradients, RMS norm, and the scan helper they share."""
