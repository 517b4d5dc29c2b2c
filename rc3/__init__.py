"""RC3: Regularized Contrastive Cross-lingual Cross-modal pretraining.

The library: configs, tokenizer, model, losses, objectives, data pipelines, training loop,
retrieval and downstream tasks. Scripts in pretrain/, finetune/ and tools/ are thin layers over it.
"""

__version__ = "0.1.0"

# Model directories hold a config.json with model_type "rc3": make transformers' AutoConfig / AutoModel
# know it in this process (no remote code). See rc3.hf.
from .hf import register as _register_with_transformers  # noqa: E402

_register_with_transformers()
