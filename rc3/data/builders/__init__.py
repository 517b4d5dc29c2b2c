"""Shard builders: turn the released corpora (CC3M + translations, WIT, WikiMatrix, Multi30K) into WebDataset shards."""
