"""xFlickr&CO reader (IGLUE image-text retrieval) and the Flickr30k-style files it shares a format with.

One line per image: `{"sentences": ["..."], "id": "1007129816", "img_path": "1007129816.jpg"}`.
The multilingual test files (`xFlickrCO/annotations/<lang>/test.jsonl`) describe the same 2,000 images
(1,000 Flickr30k + 1,000 COCO) with one sentence each; the English training/test files in the
Flickr30k layout (`flickr30k/annotations/*.jsonl`) carry 5 sentences per image. `id` is a string for
Flickr30k images and a number for COCO ones, so it is kept as a string; the image's feature key is
`img_path`, the full file name (e.g. "COCO_val2014_000000391895.jpg").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rc3.finetune.readers import AnnotationError, Examples, field, iter_jsonl

LANGS: tuple[str, ...] = ("de", "en", "es", "id", "ja", "ru", "tr", "zh")


@dataclass(frozen=True)
class RetrievalExample:
    """One image with its gold captions; `image` is the feature-store key (the released img_path)."""

    id: str
    image: str
    sentences: tuple[str, ...]
    lang: str


@dataclass(frozen=True)
class CaptionTable:
    """Images and captions flattened for retrieval: caption j describes image `caption_image[j]`."""

    images: list[str]
    captions: list[str]
    caption_image: list[int]

    def captions_of(self) -> list[list[int]]:
        """Per image, the indices of its gold captions (the image->text gold sets)."""
        out: list[list[int]] = [[] for _ in self.images]
        for j, i in enumerate(self.caption_image):
            out[i].append(j)
        return out


def xflickrco_path(root: Path | str, lang: str, split: str = "test") -> Path:
    """<root>/annotations/<lang>/<split>.jsonl (root = the xFlickrCO folder)."""
    return Path(root) / "annotations" / lang / f"{split}.jsonl"


def xflickrco_langs(root: Path | str, split: str = "test") -> list[str]:
    """Languages that have `split` under <root>/annotations, sorted."""
    ann = Path(root) / "annotations"
    return sorted(d.name for d in ann.iterdir() if (d / f"{split}.jsonl").is_file()) if ann.is_dir() else []


def read_retrieval(path: Path | str, lang: str) -> Examples[RetrievalExample]:
    """Parse a retrieval jsonl file (any number of sentences per image, at least one)."""
    out: Examples[RetrievalExample] = Examples(source=path)
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        sentences = field(obj, "sentences", where, list)
        if not sentences or not all(isinstance(s, str) for s in sentences):
            raise AnnotationError(f"{where}: 'sentences' must be a non-empty list of strings")
        out.append(RetrievalExample(
            id=str(field(obj, "id", where, (str, int))),
            image=field(obj, "img_path", where),
            sentences=tuple(sentences),
            lang=lang,
        ))
    return out


def caption_table(examples: Sequence[RetrievalExample]) -> CaptionTable:
    """Flatten examples into (images, captions, caption -> image index); images must be unique."""
    images: list[str] = []
    captions: list[str] = []
    caption_image: list[int] = []
    seen: set[str] = set()
    for ex in examples:
        if ex.image in seen:
            # A repeated image would split its gold captions over two candidates and make recall wrong.
            raise AnnotationError(f"image {ex.image!r} appears on more than one line; retrieval needs one line per image")
        seen.add(ex.image)
        for s in ex.sentences:
            captions.append(s)
            caption_image.append(len(images))
        images.append(ex.image)
    return CaptionTable(images=images, captions=captions, caption_image=caption_image)
