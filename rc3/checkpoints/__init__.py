"""Checkpoints of every training loop (pretraining, finetuning, add_language).

- `store`: the checkpoint directory of a run: tag names, the COMPLETE marker with its file manifest,
  `latest`, pruning and the choice of the newest complete, intact tag a resume reads.
- `manifest`: each file of a tag with its size and SHA-256, and its verification.
- `tensor_state`: a nested state (optimizer, scheduler, trained parameters) as one safetensors file,
  never a pickle.

What each loop puts inside a tag: DeepSpeed's engine files (rc3.pretrain.checkpoints), Accelerate's
state read weights-only (rc3.finetune.trainer), tensor states and JSON (rc3.add_language).
"""
from rc3.checkpoints.store import COMPLETE, LATEST, TAG_RE, CheckpointError, CheckpointStore, step_of, tag_for

__all__ = ["COMPLETE", "LATEST", "TAG_RE", "CheckpointError", "CheckpointStore", "step_of", "tag_for"]
