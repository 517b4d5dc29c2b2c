"""MaRVL (IGLUE): is the statement true of the two images; trained on English NLVR2."""
from __future__ import annotations

from rc3.finetune.registry import DOWNSTREAM, DownstreamTask

DOWNSTREAM.register(DownstreamTask(
    "marvl", "Finetune RC3 on NLVR2 (English, two images per example) and evaluate zero-shot on MaRVL.",
    {"lr": 4e-5, "batch_size": 64, "epochs": 40, "max_text_len": 80}, "rc3.finetune.marvl:main",
    "rc3.finetune.heads:ClassificationModel", labels=("false", "true")))
