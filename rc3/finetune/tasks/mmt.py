"""Multimodal machine translation (Multi30K): the decoder generates the target with beam search,
scored by sacreBLEU; its `mmt.*` config section and checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from rc3.config import ConfigError
from rc3.finetune.config import FinetuneConfig, check_lang
from rc3.finetune.registry import DOWNSTREAM, DownstreamTask


@dataclass
class MMTConfig:
    src_lang: str = "en"
    tgt_lang: str = "de"
    use_image: bool = True  # False: text-only translation (the image-free baseline)
    train_split: str = "train"
    dev_split: Optional[str] = "val"
    test_splits: list[str] = field(default_factory=lambda: ["test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"])
    label_smoothing: float = 0.1
    num_beams: int = 5
    max_new_tokens: int = 60


@dataclass
class MMTFinetuneConfig(FinetuneConfig):
    mmt: MMTConfig = field(default_factory=MMTConfig)

    def uses_image(self) -> bool:
        return self.mmt.use_image


def _validate(cfg: Any) -> None:
    c: MMTConfig = cfg.mmt
    d = cfg.data
    if d.test is None and d.train is None:  # MMT needs no data.test of its own; its test splits default to data.train's folder
        raise ConfigError("data.test", "the folder of the Multi30K test splits is required (data.test, or data.train to use the "
                                       "training folder)")
    check_lang("mmt.src_lang", c.src_lang)
    check_lang("mmt.tgt_lang", c.tgt_lang)
    if c.src_lang == c.tgt_lang:
        raise ConfigError("mmt.tgt_lang", f"source and target are both {c.src_lang!r}")
    if d.train_lang != c.src_lang:
        raise ConfigError("data.train_lang", f"MMT trains on mmt.src_lang {c.src_lang!r}; got {d.train_lang!r}")
    if not 0.0 <= c.label_smoothing < 1.0:
        raise ConfigError("mmt.label_smoothing", f"must lie in [0, 1), got {c.label_smoothing}")
    if c.num_beams <= 0 or c.max_new_tokens <= 0:
        raise ConfigError("mmt", "num_beams and max_new_tokens must be positive")
    if not c.test_splits:
        raise ConfigError("mmt.test_splits", "name at least one Multi30K test split")


DOWNSTREAM.register(DownstreamTask(
    "mmt", "Finetune RC3 for multimodal machine translation on Multi30K; evaluate with beam search and sacreBLEU.",
    # MMT: En-De and En-Fr alike
    {"lr": 5e-6, "batch_size": 256, "epochs": 5, "max_text_len": 50}, "rc3.finetune.mmt:main",
    "rc3.finetune.mmt_model:MMTModel", config_class="rc3.finetune.tasks.mmt:MMTFinetuneConfig",
    validate=_validate, needs_test_data=False, primary_metric="BLEU"))
