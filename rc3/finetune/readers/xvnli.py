"""XVNLI reader: `annotations/<lang>/{train,dev,test,train_48}.jsonl` as released by IGLUE.

Each line is an SNLI-style pair whose premise is replaced by a Flickr30k image:
`{"gold_label", "sentence1", "sentence2", "captionID", "pairID", "Flikr30kID"}` (the field really is
spelled `Flikr30kID`). The model sees the image and `sentence2` (the hypothesis); `sentence1` is kept
only for inspection. Pairs whose gold label is "-" (annotators disagreed) are skipped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rc3.finetune.readers import AnnotationError, Examples, field, iter_jsonl

LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
UNLABELED = "-"
SPLITS: tuple[str, ...] = ("train", "dev", "test", "train_48")
# English is the training language; the others are zero-shot test languages.
LANGS: tuple[str, ...] = ("en", "ar", "es", "fr", "ru")


@dataclass(frozen=True)
class XVNLIExample:
    """One hypothesis about one image; `image` is the Flickr30k numeric id, the feature-store key."""

    pair_id: str
    image: str
    hypothesis: str
    premise: str
    label: int
    lang: str

    @property
    def text(self) -> str:
        return self.hypothesis


def xvnli_path(root: Path | str, lang: str, split: str) -> Path:
    """Path of a released split: <root>/annotations/<lang>/<split>.jsonl (root = the XVNLI folder)."""
    if split not in SPLITS:
        raise ValueError(f"unknown XVNLI split {split!r}; expected one of {SPLITS}")
    return Path(root) / "annotations" / lang / f"{split}.jsonl"


def xvnli_langs(root: Path | str, split: str = "test") -> list[str]:
    """Languages that have `split` under <root>/annotations, sorted."""
    ann = Path(root) / "annotations"
    return sorted(d.name for d in ann.iterdir() if (d / f"{split}.jsonl").is_file()) if ann.is_dir() else []


def read_xvnli(path: Path | str, lang: str) -> Examples[XVNLIExample]:
    """Parse one XVNLI jsonl file; unlabeled ("-") pairs go to `skipped["unlabeled"]`."""
    out: Examples[XVNLIExample] = Examples(source=path)
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        gold = field(obj, "gold_label", where)
        if gold == UNLABELED:
            out.skipped["unlabeled"] += 1
            continue
        if gold not in LABEL_IDS:
            raise AnnotationError(f"{where}: gold_label {gold!r} is not one of {LABELS} or {UNLABELED!r}")
        image = field(obj, "Flikr30kID", where, (str, int))
        out.append(XVNLIExample(
            pair_id=str(field(obj, "pairID", where)),
            image=str(image),
            hypothesis=field(obj, "sentence2", where),
            premise=field(obj, "sentence1", where),
            label=LABEL_IDS[gold],
            lang=lang,
        ))
    return out
