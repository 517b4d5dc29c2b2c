"""The synthetic world: a small learnable image-text universe written in the real corpus formats."""
