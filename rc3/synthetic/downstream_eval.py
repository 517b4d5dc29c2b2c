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
- MaRVL few-shot training splits in the release's layout, for the world's languages that IGLUE has
  them for (id, tr, zh): `marvl/few_shot/annotations/marvl-<lang>_train<N>.jsonl`, MaRVL records as in
  zero_shot/. A shot is a concept: four distinct pairs of a concept's four images, two statements true and
  two false; `10x2` adds a second group of four pairs to each of the ten concepts of `train10`. Splits
  are nested (each is the first rows of `train10x2`, as released). Images are `<concept id>-n-<j>.jpg`
  (concept ids 100 and up, disjoint from zero-shot's), written to `images/marvl_few_shot/`, their ROI
  features to one volta LMDB per language, `marvl/few_shot/features/marvl-<lang>_fewshot_boxes36.lmdb`
  (the release ships them so). Its summary is `world_marvl_few_shot.json`, so that `world_eval.json`
  keeps its bytes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rc3.data.volta_lmdb import write_volta_lmdb
from rc3.evaluate.tasks import Shot, shot_order
from rc3.synthetic.downstream import XGQA_LANGS, _ask, _gqa_entry, _questions, gqa_answer
from rc3.synthetic.downstream_pairs import MARVL_LANGS, make_statement, realise
from rc3.synthetic.grammar import Asker, Captioner, PairStater
from rc3.synthetic.languages import captioner, languages_with, pair_stater
from rc3.synthetic.render import RoiEncoder, jpeg_bytes, render
from rc3.synthetic.world import SHAPES, sample_scene, shuffled, stream
from rc3.synthetic.writer import H5FeatureWriter, write_json, write_jsonl

# IGLUE's xGQA few-shot splits (number of distinct images; e-bug/iglue experiments/few_shot/*/xgqa/<lang>/<N>).
XGQA_SHOTS = (1, 5, 10, 20, 25, 48)
# IGLUE's MaRVL few-shot splits (concepts; "10x2": ten concepts, two captions each) and their languages
# (e-bug/iglue datasets/marvl/few_shot/annotations/marvl-<lang>_train<N>.jsonl).
MARVL_SHOTS: tuple[Shot, ...] = (1, 2, 4, 10, "10x2")
MARVL_FEW_SHOT_LANGS = ("id", "tr", "zh")
# images per concept (the release has about eight; four keep the uncompressed LMDB stores at ~12 MB a language)
MARVL_FEW_SHOT_IMAGES = 4


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


def _concept_groups(rng: np.random.Generator, lang: str, scenes: list[Any], groups: int) -> list[list[dict[str, Any]]]:
    """`groups` groups of four statements about distinct (left, right) pairs of a concept's images, two
    true and two false (MaRVL's balance), each phrased in `lang`."""
    ordered = [(a, b) for a in range(len(scenes)) for b in range(len(scenes)) if a != b]
    out = []
    for _ in range(groups):
        pairs = [ordered[int(i)] for i in rng.choice(len(ordered), size=4, replace=False)]
        wants = [bool(w) for w in rng.permutation([True, True, False, False])]
        rows = []
        for (a, b), want in zip(pairs, wants):
            made = make_statement(rng, scenes[a], scenes[b], want)
            if made is None:  # "contains" can always take either truth value: never reached
                raise RuntimeError(f"no statement of truth {want} for a pair of {lang} few-shot images")
            rows.append({"a": a, "b": b, "caption": realise(lang, *made), "label": want})
        out.append(rows)
    return out


def write_marvl_few_shot(root: Path, encoder: RoiEncoder, rng: np.random.Generator,
                         shots: tuple[Shot, ...] = MARVL_SHOTS) -> dict[str, Any]:
    """marvl-<lang>_train<N>.jsonl and marvl-<lang>_fewshot_boxes36.lmdb per language (module docstring)."""
    langs = tuple(lang for lang in MARVL_FEW_SHOT_LANGS if lang in MARVL_LANGS and lang in languages_with(PairStater))
    n_concepts = max(shot_order(n)[0] for n in shots)
    n_groups = max(shot_order(n)[1] for n in shots)
    base = root / "downstream" / "marvl" / "few_shot"
    images = root / "downstream" / "images" / "marvl_few_shot"
    images.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for lang in langs:
        fields: dict[str, dict[str, Any]] = {}
        concepts = []  # per concept: (name, image keys, groups of statements)
        for k in range(n_concepts):
            cid = 100 * (MARVL_LANGS.index(lang) + 1) + k
            shape = SHAPES[k % len(SHAPES)]
            scenes, keys = [], []
            for j in range(MARVL_FEW_SHOT_IMAGES):
                key = f"{cid}-n-{j}"
                scene = sample_scene(rng, 1, 3, must=shape)
                fields[key] = encoder.encode(scene, rng)
                (images / f"{key}.jpg").write_bytes(jpeg_bytes(render(scene)))
                scenes.append(scene)
                keys.append(key)
            concepts.append((f"{cid}-{pair_stater(lang).noun(shape)}", keys, _concept_groups(rng, lang, scenes, n_groups)))
        # the largest split, group by group over the concepts (as train10x2 is train10 then the second captions)
        records: list[tuple[tuple[int, int], dict[str, Any]]] = []
        for g in range(n_groups):
            for k, (concept, keys, groups) in enumerate(concepts):
                for st in groups[g]:
                    records.append(((k, g), {
                        "concept": concept, "language": lang, "caption": st["caption"],
                        "left_img": f"{concept}/{keys[st['a']]}.jpg", "right_img": f"{concept}/{keys[st['b']]}.jpg",
                        "annotator_info": {"annotator_id": f"{lang}_01", "country_of_birth": "synthetic",
                                           "country_of_residence": "synthetic", "gender": "n/a", "age": 0},
                        "chapter": "Shapes", "id": f"{lang}-{len(records)}", "label": st["label"]}))
        counts[lang] = {}
        for n in shots:
            concepts_n, groups_n = shot_order(n)
            rows = [r for (k, g), r in records if k < concepts_n and g < groups_n]
            write_jsonl(base / "annotations" / f"marvl-{lang}_train{n}.jsonl", rows)
            counts[lang][str(n)] = len(rows)
        size = sum(np.asarray(v).nbytes for f in fields.values() for v in f.values())
        write_volta_lmdb(base / "features" / f"marvl-{lang}_fewshot_boxes36.lmdb", sorted(fields.items()),
                         map_size=2 * size + (1 << 22))
    return {"dir": "downstream/marvl/few_shot/annotations", "files": "marvl-<lang>_train<N>.jsonl",
            "shots": [str(n) for n in shots], "langs": list(langs), "statements": counts,
            "features": "downstream/marvl/few_shot/features/marvl-<lang>_fewshot_boxes36.lmdb",
            "images_dir": "downstream/images/marvl_few_shot", "key": "image file stem (e.g. 100-n-3)"}


def write_eval_sets(root: Path, seed: int, encoder: RoiEncoder, n_xm3600: int) -> dict[str, Any]:
    """The sets above, each from its own random stream; returns the summaries written to world_eval.json
    (XM3600, xGQA few-shot) and world_marvl_few_shot.json."""
    out = {"xm3600": write_xm3600(root, encoder, stream(seed, "xm3600"), n_xm3600),
           "xgqa_few_shot": write_xgqa_few_shot(root, encoder, stream(seed, "xgqa-few-shot"))}
    write_json(root / "world_eval.json", out, indent=1)
    marvl = write_marvl_few_shot(root, encoder, stream(seed, "marvl-few-shot"))
    write_json(root / "world_marvl_few_shot.json", marvl, indent=1)
    return {**out, "marvl_few_shot": marvl}
