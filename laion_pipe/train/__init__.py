"""Training stage: the data feed, the loop, checkpoints and launchers."""
