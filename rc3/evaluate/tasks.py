"""The evaluation tasks of `rc3-evaluate`: which recipe each runs, its languages, metric and data layout.

Five IGLUE tasks (XVNLI, xGQA, MaRVL, xFlickr&CO; its image->text and text->image recall are two
metrics of one run) plus Multi30K MMT and XM3600 retrieval. Each is a finetuning recipe of
rc3.finetune (its config from `--recipes DIR/<recipe>.yaml`); XM3600 has no training data of its
own and is evaluated zero-shot with the English retrieval model that xFlickr&CO's recipe trains.

`released_langs` are the languages the public release has, so that a language the data folder
lacks is reported as missing rather than left out. Few-shot layouts follow IGLUE's release
(`train_<N>` files per language; MaRVL's `few_shot/annotations/marvl-<lang>_train<N>.jsonl` with one
feature store per language, `few_shot/features/marvl-<lang>_fewshot_boxes36.lmdb`); `few_shot` holds
IGLUE's protocol for the task (shot counts, learning-rate grid, epochs, batch size), read from
e-bug/iglue's experiment scripts (experiments/few_shot/ctrl_muniter/<task>/<lang>/<N>/train.dtu.sh,
commit d8ac1dfb): every shot count and language is trained for 20 epochs at each learning rate of
{1e-4, 5e-5, 1e-5} and the one with the best dev score is tested. A MaRVL shot counts concepts (four
image pairs sharing one caption each); its `10x2` split holds the ten concepts of `train10` with a
second caption each, trained at batch size 32 (IGLUE reports it beside 1, 2, 4 and 10:
results/marvl/MaRVL_10x2.csv).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

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


# A few-shot split's label: a shot count, or IGLUE's "<N>x<C>" (N concepts with C captions each: MaRVL's 10x2).
Shot = Union[int, str]
_CONCEPTS_X_CAPTIONS = re.compile(r"^([1-9][0-9]*)x([1-9][0-9]*)$")


def shot_order(shot: Shot) -> tuple[int, int]:
    """Sort key and chart position of a shot label: 5 -> (5, 1), "10x2" -> (10, 2)."""
    if isinstance(shot, int):
        return shot, 1
    m = _CONCEPTS_X_CAPTIONS.match(shot)
    if m is None:
        return int(shot), 1
    return int(m.group(1)), int(m.group(2))


def parse_shot(text: str) -> Shot:
    """`--shots` value: a positive count ("5" -> 5) or "<N>x<C>" ("10x2"); ValueError otherwise."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    if _CONCEPTS_X_CAPTIONS.match(text):
        return text
    raise ValueError(f"shot {text!r}: give a positive count (e.g. 5) or <concepts>x<captions> (e.g. 10x2)")


def _no_features(cfg: Any, lang: str) -> list[Path]:
    return []


@dataclass(frozen=True)
class FewShot:
    """IGLUE's few-shot protocol for one task and where its splits live (relative to the task's data.root)."""

    shots: tuple[Shot, ...]
    lrs: tuple[float, ...]
    epochs: int
    batch_size: int
    train: Callable[[Any, str, Shot], Path]  # (cfg, lang, shots) -> the split's file
    dev: Callable[[Any, str], Optional[Path]]  # (cfg, lang) -> the dev file used to pick the learning rate
    note: str = ""
    # (cfg, lang) -> feature stores of the few-shot images; those present are appended to data.features
    features: Callable[[Any, str], list[Path]] = _no_features
    batch_sizes: tuple[tuple[Shot, int], ...] = ()  # shots trained at another batch size than `batch_size`

    def batch_size_of(self, shot: Shot) -> int:
        return dict(self.batch_sizes).get(shot, self.batch_size)


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


def _xvnli_train(cfg: Any, lang: str, n: Shot) -> Path:
    return cfg.data_path(cfg.data.test) / "annotations" / lang / f"train_{n}.jsonl"


def _xgqa_train(cfg: Any, lang: str, n: Shot) -> Path:
    return cfg.data_path(cfg.data.test) / "annotations" / "few_shot" / lang / f"train_{n}.json"


def _xgqa_dev(cfg: Any, lang: str) -> Path:
    return cfg.data_path(cfg.data.test) / "annotations" / "few_shot" / lang / "dev.json"


def _xflickrco_train(cfg: Any, lang: str, n: Shot) -> Path:
    return cfg.data_path(cfg.data.test) / "annotations" / lang / f"train_{n}.jsonl"


def _english_dev(cfg: Any, lang: str) -> Optional[Path]:
    return cfg.data_path(cfg.data.dev)


def _under_test(*names: str) -> Callable[[Any, str], list[Path]]:
    """Feature stores at fixed paths under data.test (xGQA's, xFlickr&CO's few-shot stores)."""
    def stores(cfg: Any, lang: str) -> list[Path]:
        test = cfg.data_path(cfg.data.test)
        return [test / name for name in names] if test is not None else []
    return stores


def _marvl_few_shot(cfg: Any) -> Path:
    # data.test is marvl/zero_shot/annotations; the release keeps the few-shot splits in marvl/few_shot
    return cfg.data_path(cfg.data.test).parent.parent / "few_shot"


def _marvl_train(cfg: Any, lang: str, n: Shot) -> Path:
    return _marvl_few_shot(cfg) / "annotations" / f"marvl-{lang}_train{n}.jsonl"


def _marvl_features(cfg: Any, lang: str) -> list[Path]:
    return [_marvl_few_shot(cfg) / "features" / f"marvl-{lang}_fewshot_boxes36.lmdb"]


_GRID = (1e-4, 5e-5, 1e-5)
TASKS: dict[str, EvalTask] = {t.name: t for t in (
    EvalTask("xvnli", "xvnli", "XVNLI (accuracy %)", "accuracy", XVNLI_LANGS,
             few_shot=FewShot((1, 5, 10, 20, 25, 48), _GRID, 20, 2, _xvnli_train, _english_dev,
                              "dev: XVNLI/annotations/en/dev.jsonl, as IGLUE")),
    EvalTask("xgqa", "xgqa", "xGQA (accuracy %)", "accuracy", XGQA_LANGS,
             few_shot=FewShot((1, 5, 10, 20, 25, 48), _GRID, 20, 8, _xgqa_train, _xgqa_dev,
                              "dev: xGQA/annotations/few_shot/<lang>/dev.json, as IGLUE", _under_test("features_few_shot.h5"))),
    EvalTask("marvl", "marvl", "MaRVL (accuracy %)", "accuracy", ("en", *MARVL_LANGS),
             few_shot=FewShot((1, 2, 4, 10, "10x2"), _GRID, 20, 16, _marvl_train, _english_dev,
                              "dev: nlvr2/annotations/dev.json (NLVR2), as IGLUE; shots count concepts; 10x2 = the 10 "
                              "concepts of train10 with a second caption each, batch size 32", _marvl_features,
                              batch_sizes=(("10x2", 32),))),
    EvalTask("xflickrco", "itr", "xFlickr&CO retrieval (mean R@1 %)", "mean_R@1", XFLICKRCO_LANGS,
             extra_metrics=("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5", "i2t_R@10", "t2i_R@10"),
             few_shot=FewShot((1, 5, 10, 25, 50, 100), _GRID, 20, 1, _xflickrco_train, _english_dev,
                              "dev: flickr30k/annotations/valid_ann.jsonl, as IGLUE",
                              _under_test("features/xflickrco-few_boxes36.lmdb", "features_few_shot.h5"))),
    EvalTask("mmt", "mmt", "Multi30K MMT (BLEU)", "BLEU", MMT_TARGETS,
             splits=("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"), extra_metrics=("BLEU_lc",)),
    EvalTask("xm3600", "itr", "XM3600 retrieval, zero-shot (mean R@1 %)", "mean_R@1", XM3600_LANGS,
             extra_metrics=("i2t_R@1", "t2i_R@1"), needs=("xflickrco",)),
)}
NO_FEW_SHOT = {"mmt": "IGLUE defines no few-shot protocol for Multi30K",
               "xm3600": "XM3600 has no training splits"}
