"""xGQA / GQA reader: a JSON dict keyed by question id, plus GQA's answer vocabulary.

Question files (GQA's `*_balanced_questions.json`, IGLUE's `xGQA/annotations/few_shot/<lang>/{dev,test}.json`)
map a question id to `{"question", "imageId", "answer", ...}`; the extra GQA fields (semantic program,
groups, types) are not needed for classification and are dropped. Answers are classified over GQA's
`trainval_ans2label.json` (1,842 answers). An answer outside the vocabulary cannot be predicted:
for evaluation it is kept with label -1 (so it counts as wrong, keeping the released denominator);
for training it is skipped. Counted in `Examples.flagged` / `Examples.skipped` respectively.
Scoring is exact string match (`rc3.finetune.metrics.exact_match`), never substring match.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from rc3.finetune.metrics import exact_match
from rc3.finetune.readers import AnnotationError, Examples, field, load_json

LANGS: tuple[str, ...] = ("bn", "de", "en", "id", "ko", "pt", "ru", "zh")
N_ANSWERS = 1842  # size of GQA's trainval answer vocabulary
OOV_LABEL = -1


@dataclass(frozen=True)
class XGQAExample:
    """One question; `image` is the GQA imageId (the feature-store key), `label` -1 if out of vocabulary."""

    question_id: str
    image: str
    question: str
    answer: str
    label: int
    lang: str

    @property
    def text(self) -> str:
        return self.question


def load_answer_vocab(path: Path | str) -> dict[str, int]:
    """Read GQA's answer vocabulary as answer -> label.

    Accepts `trainval_ans2label.json` (dict answer -> id) or `trainval_label2ans.json` (list); the ids
    must be exactly 0..n-1 so they can index a classifier's logits.
    """
    data = load_json(path, "GQA answer vocabulary")
    if isinstance(data, list):
        ans2label = {str(a): i for i, a in enumerate(data)}
        if len(ans2label) != len(data):
            raise AnnotationError(f"{path}: label2ans list has duplicate answers")
    elif isinstance(data, dict):
        ans2label = {str(a): int(i) for a, i in data.items()}
    else:
        raise AnnotationError(f"{path}: expected a dict answer->label or a list of answers, got {type(data).__name__}")
    if sorted(ans2label.values()) != list(range(len(ans2label))):
        raise AnnotationError(f"{path}: answer labels are not exactly 0..{len(ans2label) - 1}")
    return ans2label


def label_to_answer(ans2label: Mapping[str, int]) -> list[str]:
    """Inverse of `load_answer_vocab`: list indexed by label."""
    out = [""] * len(ans2label)
    for answer, label in ans2label.items():
        out[label] = answer
    return out


def xgqa_path(root: Path | str, lang: str, split: str = "test", setting: str = "few_shot") -> Path:
    """IGLUE layout: <root>/annotations/<setting>/<lang>/<split>.json (root = the xGQA folder)."""
    return Path(root) / "annotations" / setting / lang / f"{split}.json"


def xgqa_langs(root: Path | str, split: str = "test", setting: str = "few_shot") -> list[str]:
    """Languages that have `split` under <root>/annotations/<setting>, sorted."""
    base = Path(root) / "annotations" / setting
    return sorted(d.name for d in base.iterdir() if (d / f"{split}.json").is_file()) if base.is_dir() else []


def read_xgqa(path: Path | str, ans2label: Mapping[str, int], lang: str,
              training: bool = False) -> Examples[XGQAExample]:
    """Parse a GQA-style question file.

    Out-of-vocabulary answers: `training=True` skips them (`skipped["answer_not_in_vocab"]`);
    otherwise they are kept with label -1 and counted in `flagged["answer_not_in_vocab"]`.
    """
    data = load_json(path, "xGQA question file")
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object keyed by question id, got {type(data).__name__}")
    out: Examples[XGQAExample] = Examples(source=path)
    for qid, entry in data.items():
        where = f"{path}:question {qid}"
        if not isinstance(entry, dict):
            raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
        answer = field(entry, "answer", where)
        label = ans2label.get(answer, OOV_LABEL)
        if label == OOV_LABEL:
            if training:
                out.skipped["answer_not_in_vocab"] += 1
                continue
            out.flagged["answer_not_in_vocab"] += 1
        out.append(XGQAExample(
            question_id=str(qid),
            image=str(field(entry, "imageId", where, (str, int))),
            question=field(entry, "question", where),
            answer=answer,
            label=label,
            lang=lang,
        ))
    return out


def xgqa_accuracy(predicted_answers: Mapping[str, str], examples: Sequence[XGQAExample]) -> float:
    """Exact-match accuracy (%) of answers predicted per question id; a missing prediction is wrong."""
    missing = [e.question_id for e in examples if e.question_id not in predicted_answers]
    if len(missing) == len(examples) and examples:
        raise ValueError(f"no prediction matches any of the {len(examples)} question ids (e.g. {examples[0].question_id!r}); "
                         "key predictions by question_id")
    preds = [predicted_answers.get(e.question_id) for e in examples]
    return exact_match(preds, [e.answer for e in examples])
