"""RC3: Regularized Contrastive Cross-lingual Cross-modal pretraining.

The library, by workflow:

* `rc3.modeling`: the encoder-decoder, its visual front ends, HF-native model directories, FLOPs;
* `rc3.data`: corpora, shard schemas and pipelines, feature stores, shard builders;
* `rc3.pretrain`: objectives and losses, their streams, the DeepSpeed loop, checkpoints;
* `rc3.finetune`: the downstream recipes (XVNLI, xGQA, MaRVL, ITR, MMT), readers, metrics, retrieval;
* `rc3.vision`: ROI feature extraction (BUTD Faster R-CNN) for a user's own images;
* `rc3.inference`: using a trained model; `rc3.synthetic`: the synthetic world and reproduction jobs.

Scripts in pretrain/, finetune/ and tools/ are thin layers over it.

`import rc3` (and `import rc3.config`) imports neither torch nor transformers: a command's `--help` or a
tool that never builds a model starts in a fraction of a second. Model directories carry a transformers
`config.json` (model_type "rc3"); transformers' AutoConfig / AutoModel know that type once
`rc3.modeling.register_auto_classes()` has run in the process, which loading or saving a model
(`RC3Model.from_pretrained` / `save_pretrained`) does.
"""

__version__ = "0.1.0"
