"""XVNLI (IGLUE): 3-way visual entailment, trained on English, tested zero-shot per language."""
from __future__ import annotations

from rc3.finetune.readers.xvnli import LABELS
from rc3.finetune.registry import DOWNSTREAM, DownstreamTask

DOWNSTREAM.register(DownstreamTask(
    "xvnli", "Finetune RC3 on XVNLI (English) and evaluate zero-shot on every test language.",
    {"lr": 4e-5, "batch_size": 128, "epochs": 10, "max_text_len": 80}, "rc3.finetune.xvnli:main",
    "rc3.finetune.heads:ClassificationModel", labels=LABELS))
