"""Data: shard schemas, feature stores, shard builders, WebDataset pipelines and collators."""
