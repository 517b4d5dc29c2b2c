"""Image-text retrieval (xFlickr&CO): a dual encoder for candidates, re-ranked by the ITM head; its
`itr.*` config section and checks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rc3.config import ConfigError
from rc3.finetune.config import FinetuneConfig
from rc3.finetune.registry import DOWNSTREAM, DownstreamTask


@dataclass
class ITRConfig:
    k: str = "16"  # candidates re-ranked by the ITM head per query; "all" = brute-force cross-encoder
    index: Literal["faiss", "torch"] = "faiss"
    embed_dim: int = 256  # dual-encoder projection size
    temperature: float = 0.07  # InfoNCE temperature (initial value when learned)
    learn_temperature: bool = True
    contrastive_weight: float = 1.0
    itm_weight: float = 1.0
    hard_negatives: bool = True  # ITM negatives drawn by softmax(similarity / temperature) (else uniformly)
    # Share of the hard-negative draw made uniformly instead: hard negatives alone teach the ITM head to
    # order close candidates but leave its scores for unrelated pairs untrained (brute-force ranking).
    uniform_negative_share: float = 0.0

    @property
    def rerank_k(self) -> int | Literal["all"]:
        return "all" if self.k == "all" else int(self.k)


@dataclass
class ITRFinetuneConfig(FinetuneConfig):
    itr: ITRConfig = field(default_factory=ITRConfig)


def _validate(cfg: Any) -> None:
    c: ITRConfig = cfg.itr
    if c.k != "all":
        try:
            k = int(c.k)
        except ValueError:
            raise ConfigError("itr.k", f"must be a positive integer or 'all', got {c.k!r}") from None
        if k < 10:
            raise ConfigError("itr.k", f"R@10 needs at least 10 re-ranked candidates; got {k} (or use 'all')")
    if c.embed_dim <= 0 or c.temperature <= 0:
        raise ConfigError("itr", "embed_dim and temperature must be positive")
    if not 0.0 <= c.uniform_negative_share <= 1.0:
        raise ConfigError("itr.uniform_negative_share", f"must be within [0, 1], got {c.uniform_negative_share}")
    if c.contrastive_weight < 0 or c.itm_weight < 0 or c.contrastive_weight + c.itm_weight == 0:
        raise ConfigError("itr", "contrastive_weight and itm_weight must be >= 0 and not both 0")


def _prepare(merged: dict) -> dict:
    itr = merged.get("itr")
    if isinstance(itr, dict) and isinstance(itr.get("k"), int) and not isinstance(itr.get("k"), bool):
        itr["k"] = str(itr["k"])  # k is an int or "all"; kept as text so both fit one typed field
    return merged


DOWNSTREAM.register(DownstreamTask(
    "itr", ("Finetune RC3 for image-text retrieval on English captions; evaluate on every xFlickr&CO "
            "language with FAISS candidates re-ranked by the ITM head."),
    {"lr": 1e-5, "batch_size": 64, "epochs": 10, "max_text_len": 80}, "rc3.finetune.itr:main",
    "rc3.finetune.itr_model:ITRModel", config_class="rc3.finetune.tasks.itr:ITRFinetuneConfig",
    validate=_validate, prepare=_prepare, primary_metric="mean_R@1"))
