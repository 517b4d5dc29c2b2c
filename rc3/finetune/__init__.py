"""Downstream tasks: readers for the released annotation files, heads and metrics."""
