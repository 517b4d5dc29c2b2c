"""xGQA (IGLUE): question answering over GQA's answer vocabulary, trained on English GQA."""
from __future__ import annotations

from typing import Any

from rc3.config import ConfigError
from rc3.finetune.registry import DOWNSTREAM, DownstreamTask


def _answers(cfg: Any) -> None:
    if cfg.data.answer_vocab is None:
        raise ConfigError("data.answer_vocab", "xGQA classifies over GQA's answer vocabulary (trainval_ans2label.json)")


DOWNSTREAM.register(DownstreamTask(
    "xgqa", "Finetune RC3 on GQA (English) and evaluate zero-shot on every xGQA test language.",
    {"lr": 4e-5, "batch_size": 256, "epochs": 5, "max_text_len": 40}, "rc3.finetune.xgqa:main",
    "rc3.finetune.heads:ClassificationModel", validate=_answers))
