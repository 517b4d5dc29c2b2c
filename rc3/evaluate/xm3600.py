"""XM3600 (Crossmodal-3600) in its released layout, read for zero-shot retrieval.

The release is `captions.jsonl`, one line per image: `{"image/key": "000411001ff7dd4f", "image/locale": "id",
"<lang>": {"caption": [...], "caption/tokenized": [...], "caption/tokenized/lowercase": [...]}, ...}` for 36
languages, and the images as `images/<image/key>.jpg`. The retrieval recipe reads the xFlickr&CO layout, so
each language's captions are written as `annotations/<lang>/test.jsonl` (one line per image, every caption
of that language as its gold set, `img_path` = the image file name, which is also the feature key that
`rc3-extract-roi` gives a folder of images).
"""
from __future__ import annotations

import json
from pathlib import Path

from rc3 import atomic


class XM3600Error(ValueError):
    pass


def read_captions(path: Path) -> list[dict]:
    """The records of captions.jsonl; a broken line or a record without image/key names its line."""
    from rc3.finetune.readers import AnnotationError, iter_jsonl

    records = []
    try:
        for lineno, obj in iter_jsonl(path):
            if not isinstance(obj.get("image/key"), str):
                raise XM3600Error(f"{path}:{lineno}: no 'image/key'; is this XM3600's captions.jsonl?")
            records.append(obj)
    except XM3600Error:
        raise
    except AnnotationError as err:
        raise XM3600Error(f"{err}; is this XM3600's captions.jsonl?") from None
    return records


def caption_langs(records: list[dict]) -> list[str]:
    """Languages with at least one caption, sorted."""
    langs = {k for r in records for k, v in r.items() if isinstance(v, dict) and v.get("caption")}
    return sorted(langs)


def to_retrieval_layout(records: list[dict], langs: list[str], out: Path) -> dict[str, int]:
    """Write out/annotations/<lang>/test.jsonl per language (images without a caption in it are left out);
    returns the number of images per language."""
    counts = {}
    for lang in langs:
        lines = []
        for r in records:
            caps = (r.get(lang) or {}).get("caption") or []
            if caps:
                key = r["image/key"]
                lines.append(json.dumps({"sentences": list(caps), "id": key, "img_path": f"{key}.jpg"}, ensure_ascii=False))
        atomic.write_text(out / "annotations" / lang / "test.jsonl", "".join(s + "\n" for s in lines))
        counts[lang] = len(lines)
    return counts
