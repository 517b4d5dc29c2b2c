"""RC3: Regularized Contrastive Cross-lingual Cross-modal pretraining.

The library, by workflow:

* `rc3.modeling`: the encoder-decoder, its visual front ends, HF-native model directories, FLOPs;
* `rc3.data`: corpora, shard schemas and pipelines, feature stores, shard builders;
* `rc3.pretrain`: objectives and losses, task streams, the DeepSpeed loop, checkpoints;
* `rc3.finetune`: the downstream recipes (XVNLI, xGQA, MaRVL, ITR, MMT), readers, metrics, retrieval;
* `rc3.vision`: ROI feature extraction (BUTD Faster R-CNN) for a user's own images;
* `rc3.inference`: using a trained model; `rc3.synthetic`: the synthetic world and reproduction jobs.

Scripts in pretrain/, finetune/ and tools/ are thin layers over it.
"""

__version__ = "0.1.0"

from rc3.heap import collector_paused as _collector_paused  # noqa: E402

# torch, transformers and mBART are imported with the cyclic garbage collector paused and their
# objects frozen: a third of every RC3 process's start and exit went to collecting them (rc3.heap).
# RC3_GC_FREEZE=0 keeps Python's default.
with _collector_paused():
    # Model directories hold a config.json with model_type "rc3": make transformers' AutoConfig /
    # AutoModel know it in this process (no remote code). See rc3.modeling.hf.
    from rc3.modeling.hf import register as _register_with_transformers

    _register_with_transformers()
