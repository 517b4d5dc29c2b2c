"""The evaluation tasks of `rc3-evaluate`: which recipe each runs, its languages, metric and data layout.

Five IGLUE tasks (XVNLI, xGQA, MaRVL, xFlickr&CO; its image->text and text->image recall are two
metrics of one run) plus Multi30K MMT and XM3600 retrieval. Each is a finetuning recipe of
rc3.finetune (its config from `--recipes DIR/<recipe>.yaml`); XM3600 has no training data of its
own and is evaluated zero-shot with the English retrieval model that xFlickr&CO's recipe trains.

`released_langs` are the languages the public release has, so that a language the data folder
lacks is reported as missing rather than left out. Few-shot layouts follow IGLUE's release
(`train_<N>` files per language); `few_shot` holds IGLUE's protocol for the task (shot counts,
learning-rate grid, epochs, batch size), read from e-bug/iglue's experiment scripts
(experiments/few_shot/ctrl_muniter/<task>/<lang>/<N>/train.dtu.sh, commit d8ac1dfb): every shot
count and language is trained for 20 epochs at each learning rate of {1e-4, 5e-5, 1e-5} and the one
with the best dev score is tested.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from rc3.finetune.readers.marvl import LANGS as MARVL_LANGS
from rc3.finetune.readers.marvl import marvl_langs
from rc3.finetune.readers.multi30k import multi30k_langs, split_name
from rc3.finetune.readers.xflickrco import LANGS as XFLICKRCO_LANGS
from rc3.finetune.readers.xflickrco import xflickrco_langs
from rc3.finetune.readers.xgqa import LANGS as XGQA_LANGS
from rc3.finetune.readers.xgqa import xgqa_langs
from rc3.finetune.readers.xvnli import LANGS as XVNLI_LANGS
from rc3.finetune.readers.xvnli import xvnli_langs

# XM3600's 36 caption languages (Thapliyal et al., 2022).
XM3600_LANGS: tuple[str, ...] = (
    "ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr", "he", "hi", "hr", "hu", "id", "it",
    "ja", "ko", "mi", "nl", "no", "pl", "pt", "quz", "ro", "ru", "sv", "sw", "te", "th", "tr", "uk", "vi", "zh")
MMT_TARGETS: tuple[str, ...] = ("de", "fr", "cs")  # Multi30K task 1 target languages (cs: 2016 test only)
IGLUE_FEW_SHOT_SOURCE = ("e-bug/iglue experiments/few_shot/ctrl_muniter/<task>/<lang>/<shots>/train.dtu.sh "
                         "(commit d8ac1dfbac5eb34164fcb451b81e3e84c784e8f0)")


@dataclass(frozen=True)
class FewShot:
    """IGLUE's few-shot protocol for one task and where its splits live (relative to the task's data.root)."""

    shots: tuple[int, ...]
    lrs: tuple[float, ...]
    epochs: int
    batch_size: int
    train: Callable[[Any, str, int], Path]  # (cfg, lang, shots) -> the split's file
    dev: Callable[[Any, str], Optional[Path]]  # (cfg, lang) -> the dev file used to pick the learning rate
    note: str = ""
    # feature stores of the few-shot images, relative to data.test, appended to data.features when present
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalTask:
    name: str
    recipe: str  # rc3.finetune.registry name
    title: str
    metric: str  # the number of the leaderboard (rc3.finetune results row key)
    released_langs: tuple[str, ...]
    splits: tuple[str, ...] = ("test",)
    few_shot: Optional[FewShot] = None
    extra_metrics: tuple[str, ...] = ()  # further columns kept in leaderboard.json
    needs: tuple[str, ...] = field(default=())  # tasks whose English model this one evaluates


def _root(cfg: Any, value: Optional[str]) -> Optional[Path]:
    return cfg.data_path(value)


def available_langs(task: EvalTask, cfg: Any, split: str = "test") -> list[str]:
    """Languages the data folder of `task` has for `split`."""
    test = _root(cfg, cfg.data.test)
    if task.name == "xvnli":
        return xvnli_langs(test, cfg.data.test_split) if test else []
    if task.name == "xgqa":
        return xgqa_langs(test, cfg.data.test_split) if test else []
    if task.name == "marvl":
        found = marvl_langs(test) if test else []
        english = _root(cfg, cfg.data.english_test)
        return (["en"] if english is not None and english.is_file() else []) + found
    if task.name == "xflickrco":
        return xflickrco_langs(test, cfg.data.test_split) if test else []
    if task.name == "mmt":
        root = _root(cfg, cfg.data.test or cfg.data.train)
        if root is None:
            return []
        have = multi30k_langs(root, split_name(split))
        return [lang for lang in MMT_TARGETS if lang in have and cfg.mmt.src_lang in have]
    raise KeyError(task.name)


def _xvnli_train(cfg: Any, lang: str, n: int) -> Path:
    return cfg.data_path(cfg.data.test) / "annotations" / lang / f"train_{n}.jsonl"


def _xgqa_train(cfg: Any, lang: str, n: int) -> Path:
    return cfg.data_path(cfg.data.test) / "annotations" / "few_shot" / lang / f"train_{n}.json"


def _xgqa_dev(cfg: Any, lang: str) -> Path:
    return cfg.data_path(cfg.data.test) / "annotations" / "few_shot" / lang / "dev.json"


def _xflickrco_train(cfg: Any, lang: str, n: int) -> Path:
    return cfg.data_path(cfg.data.test) / "annotations" / lang / f"train_{n}.jsonl"


def _english_dev(cfg: Any, lang: str) -> Optional[Path]:
    return cfg.data_path(cfg.data.dev)


_GRID = (1e-4, 5e-5, 1e-5)
TASKS: dict[str, EvalTask] = {t.name: t for t in (
    EvalTask("xvnli", "xvnli", "XVNLI (accuracy %)", "accuracy", XVNLI_LANGS,
             few_shot=FewShot((1, 5, 10, 20, 25, 48), _GRID, 20, 2, _xvnli_train, _english_dev,
                              "dev: XVNLI/annotations/en/dev.jsonl, as IGLUE")),
    EvalTask("xgqa", "xgqa", "xGQA (accuracy %)", "accuracy", XGQA_LANGS,
             few_shot=FewShot((1, 5, 10, 20, 25, 48), _GRID, 20, 8, _xgqa_train, _xgqa_dev,
                              "dev: xGQA/annotations/few_shot/<lang>/dev.json, as IGLUE", ("features_few_shot.h5",))),
    EvalTask("marvl", "marvl", "MaRVL (accuracy %)", "accuracy", ("en", *MARVL_LANGS)),
    EvalTask("xflickrco", "itr", "xFlickr&CO retrieval (mean R@1 %)", "mean_R@1", XFLICKRCO_LANGS,
             extra_metrics=("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5", "i2t_R@10", "t2i_R@10"),
             few_shot=FewShot((1, 5, 10, 25, 50, 100), _GRID, 20, 1, _xflickrco_train, _english_dev,
                              "dev: flickr30k/annotations/valid_ann.jsonl, as IGLUE",
                              ("features/xflickrco-few_boxes36.lmdb", "features_few_shot.h5"))),
    EvalTask("mmt", "mmt", "Multi30K MMT (BLEU)", "BLEU", MMT_TARGETS,
             splits=("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"), extra_metrics=("BLEU_lc",)),
    EvalTask("xm3600", "itr", "XM3600 retrieval, zero-shot (mean R@1 %)", "mean_R@1", XM3600_LANGS,
             extra_metrics=("i2t_R@1", "t2i_R@1"), needs=("xflickrco",)),
)}
# MaRVL's few-shot files (few_shot/annotations/marvl-<lang>_train<N>.jsonl) are MaRVL records, while the
# recipe trains on NLVR2-format files; MaRVL few-shot is reported as not run.
NO_FEW_SHOT = {"marvl": "the MaRVL recipe trains on NLVR2-format files only",
               "mmt": "IGLUE defines no few-shot protocol for Multi30K",
               "xm3600": "XM3600 has no training splits"}
