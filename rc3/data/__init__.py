"""Data: shard schemas, feature stores, shard builders, WebDataset pipelines, collators and the synthetic world."""
