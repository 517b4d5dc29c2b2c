"""Downstream sets of the synthetic world, part 3: caption data (xFlickr&CO retrieval, Multi30K MMT).

- Retrieval: English training data in the Flickr30k layout (`flickr30k/annotations/{train,valid,test}_ann.jsonl`,
  five sentences per image: five caption frames over different object orders, keyed by the
  numeric id) and the xFlickr&CO test set (`xFlickrCO/annotations/<lang>/test.jsonl`, one caption
  per image and language, translations of each other; half Flickr-style images with a string id,
  half COCO-style with an integer id as in the release; keyed by the full file name). The test
  Flickr half also appears in `flickr30k/annotations/test_ann.jsonl`, as in the release.
- MMT: Multi30K task-1 layout `multi30k/raw/<split>.<lang>.gz` (line-aligned translations; en,
  de, fr, cs, but no cs for the 2017 test sets, as released) and `multi30k/image_splits/<split>.txt`
  with the release's image naming: `<id>.jpg` (train, val, test_2016_flickr),
  `<id>_<secret>.jpg` (test_2017_flickr), `COCO_val2014_<n>.jpg#<caption id>` (test_2017_mscoco).
  Feature keys are the file stems.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rc3.synthetic.downstream import ImageBank
from rc3.synthetic.grammar import Captioner
from rc3.synthetic.languages import captioner, languages_with
from rc3.synthetic.world import sample_scene, shuffled
from rc3.synthetic.writer import write_jsonl, write_maybe_gz, write_text

XFLICKRCO_LANGS = ("de", "en", "es", "id", "ja", "ru", "tr", "zh")
MULTI30K_LANGS = ("en", "de", "fr", "cs")
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")


def five_sentences(rng: np.random.Generator, objs: tuple) -> list[str]:
    """Five different English captions of one scene (Flickr30k style)."""
    en = captioner("en")
    return [en.caption(shuffled(rng, objs), style=s) for s in range(en.n_styles)]


def write_retrieval(root: Path, bank: ImageBank, rng: np.random.Generator, n_images: dict[str, int],
                    first_id: int, first_coco: int) -> dict[str, Any]:
    """Flickr30k-layout English train/valid/test + xFlickr&CO multilingual test."""
    langs = tuple(lang for lang in XFLICKRCO_LANGS if lang in languages_with(Captioner))
    f30k = root / "downstream" / "flickr30k" / "annotations"
    xdir = root / "downstream" / "xFlickrCO" / "annotations"
    next_id, next_coco = first_id, first_coco
    counts: dict[str, int] = {}
    for split in ("train", "valid"):
        records = []
        for _ in range(n_images[split]):
            fid = str(next_id)
            next_id += 1
            scene = sample_scene(rng, 1, 3)
            bank.add(fid, scene, f"{fid}.jpg", "flickr30k")
            records.append({"sentences": five_sentences(rng, scene.objects), "id": fid, "img_path": f"{fid}.jpg"})
        write_jsonl(f30k / f"{split}_ann.jsonl", records)
        counts[split] = len(records)
    per_lang: dict[str, list[dict[str, Any]]] = {lang: [] for lang in langs}
    f30k_test = []
    n_test = n_images["test"]
    for i in range(n_test):
        scene = sample_scene(rng, 1, 3)
        rid: str | int  # Flickr ids are strings, COCO ids numbers (as in the real files)
        if i < (n_test + 1) // 2:
            fid = str(next_id)
            next_id += 1
            name, rid = f"{fid}.jpg", fid
            # The Flickr half is also Flickr30k's test split (numeric key) besides xFlickr&CO's (file name key).
            bank.add(fid, scene, name, "flickr30k")
            f30k_test.append({"sentences": five_sentences(rng, scene.objects), "id": fid, "img_path": name})
            bank.add_alias(name, fid, "xflickrco")
        else:
            rid = next_coco
            next_coco += 1
            name = f"COCO_val2014_{rid:012d}.jpg"
            bank.add(name, scene, name, "xflickrco")
        order = shuffled(rng, scene.objects)
        for lang in langs:
            per_lang[lang].append({"sentences": [captioner(lang).caption(order)], "id": rid, "img_path": name})
    for lang, records in per_lang.items():
        write_jsonl(xdir / lang / "test.jsonl", records)
    write_jsonl(f30k / "test_ann.jsonl", f30k_test)
    counts["test"] = n_test
    return {"dir": "downstream/xFlickrCO/annotations", "train": "downstream/flickr30k/annotations/train_ann.jsonl",
            "valid": "downstream/flickr30k/annotations/valid_ann.jsonl", "langs": list(langs), "images": counts,
            "chance": 1 / max(n_test, 1), "chance_metric": "Recall@1 of a random ranking",
            "key": "img_path (full file name); flickr30k train/valid/test: numeric id"}


def _multi30k_name(split: str, n: int, rng: np.random.Generator) -> tuple[str, str]:
    """(line in image_splits, feature key) in the release's naming for `split`."""
    if split == "test_2017_flickr":
        stem = f"{n}_{int(rng.integers(16 ** 10)):010x}"
        return f"{stem}.jpg", stem
    if split == "test_2017_mscoco":
        stem = f"COCO_val2014_{n % 10 ** 6:012d}"
        return f"{stem}.jpg#{int(rng.integers(10 ** 5, 10 ** 6))}", stem
    return f"{n}.jpg", str(n)


def write_multi30k(root: Path, bank: ImageBank, rng: np.random.Generator, n_images: dict[str, int],
                   first_id: int) -> dict[str, Any]:
    """Multi30K task 1: raw/<split>.<lang>.gz + image_splits/<split>.txt for the splits in n_images."""
    base = root / "downstream" / "multi30k"
    next_id = first_id
    counts = {}
    for split, n in n_images.items():
        if split not in MULTI30K_SPLITS:
            raise ValueError(f"unknown Multi30K split {split!r}; known: {MULTI30K_SPLITS}")
        langs = MULTI30K_LANGS if not split.startswith("test_2017") else MULTI30K_LANGS[:3]
        lines: dict[str, list[str]] = {lang: [] for lang in langs}
        images = []
        for _ in range(n):
            line, key = _multi30k_name(split, next_id, rng)
            next_id += 1
            scene = sample_scene(rng, 1, 3)
            bank.add(key, scene, f"{key}.jpg", "multi30k")
            order = shuffled(rng, scene.objects)
            images.append(line)
            for lang in langs:
                lines[lang].append(captioner(lang).caption(order))
        for lang, ls in lines.items():
            write_maybe_gz(base / "raw" / f"{split}.{lang}.gz", "".join(s + "\n" for s in ls))
        write_text(base / "image_splits" / f"{split}.txt", "".join(s + "\n" for s in images))
        counts[split] = n
    return {"dir": "downstream/multi30k", "langs": list(MULTI30K_LANGS), "directions": ["en-de", "en-fr"],
            "sentences": counts, "chance": None,
            "key": "image file stem (image_splits line without .jpg and any #caption id)"}
