"""RC3: Regularized Contrastive Cross-lingual Cross-modal pretraining.

The library: configs, tokenizer, model, losses, objectives, data pipelines, training loop,
retrieval and downstream tasks. Scripts in pretrain/, finetune/ and tools/ are thin layers over it.
"""

__version__ = "0.1.0"
