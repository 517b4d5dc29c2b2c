"""Downstream sets of the synthetic world, part 4: evaluation-only sets added after the tokenizer.

Written after everything else (tokenizer included), with their own random streams, image folders
and feature stores, so that every file the earlier parts write stays byte-identical for a seed:
- XM3600 in its released layout: `xm3600/captions.jsonl`, one line per image
  (`{"image/key": ..., "image/locale": ..., "<lang>": {"caption": [...], "caption/tokenized": [...],
  "caption/tokenized/lowercase": [...]}}` for every caption language of the world), images as
  `xm3600/images/<key>.jpg` (16 hex digits, as released) and their ROI features in
  `xm3600/features.h5` under the image file name (what `rc3-extract-roi` writes for a folder of images).
  The release has 3,600 images; the world has as many as xFlickr&CO's test set.
- xGQA few-shot training splits in the release's layout: `xGQA/annotations/few_shot/<lang>/train_<N>.json`
  for IGLUE's shot counts N (distinct images; each split contains the smaller ones), GQA question
  records as in dev/test. Their images go to `images/xgqa_few_shot/` and `xGQA/features_few_shot.h5`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rc3.synthetic.downstream import XGQA_LANGS, _ask, _gqa_entry, _questions, gqa_answer
from rc3.synthetic.grammar import Asker, Captioner
from rc3.synthetic.languages import captioner, languages_with
from rc3.synthetic.render import RoiEncoder, jpeg_bytes, render
from rc3.synthetic.world import sample_scene, shuffled, stream
from rc3.synthetic.writer import H5FeatureWriter, write_json, write_jsonl

# IGLUE's xGQA few-shot splits (number of distinct images; e-bug/iglue experiments/few_shot/*/xgqa/<lang>/<N>).
XGQA_SHOTS = (1, 5, 10, 20, 25, 48)


def write_xm3600(root: Path, encoder: RoiEncoder, rng: np.random.Generator, n_images: int) -> dict[str, Any]:
    """XM3600 captions.jsonl + images/ + features.h5 (see the module docstring)."""
    langs = tuple(sorted(languages_with(Captioner)))
    base = root / "downstream" / "xm3600"
    images = base / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    with H5FeatureWriter(base / "features.h5") as h5:
        for _ in range(n_images):
            key = f"{int(rng.integers(16 ** 8)):08x}{int(rng.integers(16 ** 8)):08x}"
            scene = sample_scene(rng, 1, 3)
            h5.add(f"{key}.jpg", encoder.encode(scene, rng))
            (images / f"{key}.jpg").write_bytes(jpeg_bytes(render(scene)))
            record: dict[str, Any] = {"image/key": key, "image/locale": langs[int(rng.integers(len(langs)))]}
            for lang in langs:
                # XM3600 has about two captions per image and language, written independently
                caps = [captioner(lang).caption(shuffled(rng, scene.objects)) for _ in range(2)]
                record[lang] = {"caption": caps, "caption/tokenized": caps,
                                "caption/tokenized/lowercase": [c.lower() for c in caps]}
            records.append(record)
    write_jsonl(base / "captions.jsonl", records)
    return {"dir": "downstream/xm3600", "captions": "downstream/xm3600/captions.jsonl", "images": n_images,
            "langs": list(langs), "features": "downstream/xm3600/features.h5", "images_dir": "downstream/xm3600/images",
            "chance": 1 / max(n_images, 1), "key": "<image/key>.jpg (the image file name)"}


def write_xgqa_few_shot(root: Path, encoder: RoiEncoder, rng: np.random.Generator,
                        shots: tuple[int, ...] = XGQA_SHOTS) -> dict[str, Any]:
    """train_<N>.json per xGQA language for each N in `shots` (nested: the first N images of the largest)."""
    langs = tuple(lang for lang in XGQA_LANGS if lang in languages_with(Asker))
    xgqa_dir = root / "downstream" / "xGQA" / "annotations" / "few_shot"
    images = root / "downstream" / "images" / "xgqa_few_shot"
    images.mkdir(parents=True, exist_ok=True)
    per_image: list[dict[str, dict[str, Any]]] = []  # per image: lang -> {qid: entry}
    with H5FeatureWriter(root / "downstream" / "xGQA" / "features_few_shot.h5") as h5:
        for i in range(max(shots)):
            image_id = f"f{5000000 + i}"
            scene = sample_scene(rng, 1, 3)
            h5.add(image_id, encoder.encode(scene, rng))
            (images / f"{image_id}.jpg").write_bytes(jpeg_bytes(render(scene)))
            entries: dict[str, dict[str, Any]] = {lang: {} for lang in langs}
            for j, (kind, arg) in enumerate(_questions(rng, scene)):
                qid = f"{50000000 + 10 * i + j}"
                answer = gqa_answer(scene, kind, arg)
                for lang in langs:
                    entries[lang][qid] = _gqa_entry(qid, image_id, _ask(lang, kind, arg), kind, arg, answer)
            per_image.append(entries)
    for lang in langs:
        for n in shots:
            merged: dict[str, Any] = {}
            for entries in per_image[:n]:
                merged.update(entries[lang])
            write_json(xgqa_dir / lang / f"train_{n}.json", merged)
    return {"dir": "downstream/xGQA/annotations/few_shot", "files": "<lang>/train_<N>.json", "shots": list(shots),
            "langs": list(langs), "features": "downstream/xGQA/features_few_shot.h5",
            "images_dir": "downstream/images/xgqa_few_shot", "questions_per_image": 4}


def write_eval_sets(root: Path, seed: int, encoder: RoiEncoder, n_xm3600: int) -> dict[str, Any]:
    """Both sets, from their own random streams; returns the summary written to world_eval.json."""
    out = {"xm3600": write_xm3600(root, encoder, stream(seed, "xm3600"), n_xm3600),
           "xgqa_few_shot": write_xgqa_few_shot(root, encoder, stream(seed, "xgqa-few-shot"))}
    write_json(root / "world_eval.json", out, indent=1)
    return out
