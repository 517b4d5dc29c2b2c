"""Downstream sets of the synthetic world, part 2: two-image reasoning (NLVR2-format English, MaRVL).

A statement about an image pair is one of
- more(side): "The left image has more shapes than the right image." (true iff strictly more objects),
- contains(side, colour, shape): "The left image contains a red circle.",
- both(shape): "Both images contain a circle.".
For every statement the target truth value is drawn first (50/50) and the arguments are then
chosen to make it so, so the label is a function of the two scenes and the text and chance is
1/2. MaRVL images are grouped by concept (one concept per shape and language, every image of a
concept contains that shape) and named `<concept id>-<index>.jpg`; concept ids are disjoint
across languages so one feature file can hold them all. NLVR2 image keys follow the release:
`<split>-<set>-<pair>-img0/1` for the statement `<split>-<set>-<pair>-<sentence>`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rc3.synthetic.downstream import ImageBank
from rc3.synthetic.grammar import PairStater, other_side
from rc3.synthetic.languages import languages_with, pair_stater
from rc3.synthetic.world import COLOURS, SHAPES, Scene, pick, sample_scene
from rc3.synthetic.writer import write_jsonl

MARVL_LANGS = ("id", "sw", "ta", "tr", "zh")
TEMPLATES = ("more", "contains", "both")


def pair_label(left: Scene, right: Scene, template: str, arg: tuple[str, ...]) -> bool:
    """The truth of a statement about (left, right)."""
    scenes = {"left": left, "right": right}
    if template == "more":
        side = arg[0]
        return len(scenes[side].objects) > len(scenes[other_side(side)].objects)
    if template == "contains":
        return scenes[arg[0]].has(arg[1], arg[2])
    if template == "both":
        return left.find(arg[0]) is not None and right.find(arg[0]) is not None
    raise ValueError(f"unknown statement template {template!r}")


def make_statement(rng: np.random.Generator, left: Scene, right: Scene, want: bool) -> tuple[str, tuple[str, ...]] | None:
    """(template, arguments) with truth value `want` for the pair, or None if no template can give it."""
    for t in [TEMPLATES[int(i)] for i in rng.permutation(len(TEMPLATES))]:
        if t == "more":
            sides = [s for s in ("left", "right") if pair_label(left, right, t, (s,)) == want]
            if sides:
                return t, (pick(rng, sides),)
        elif t == "contains":
            side = pick(rng, ("left", "right"))
            scene = left if side == "left" else right
            if want:
                o = scene.objects[int(rng.integers(len(scene.objects)))]
                return t, (side, o.colour, o.shape)
            while True:
                colour, shape = pick(rng, COLOURS), pick(rng, SHAPES)
                if not scene.has(colour, shape):
                    return t, (side, colour, shape)
        else:
            shapes = [s for s in SHAPES if pair_label(left, right, t, (s,)) == want]
            if shapes:
                return t, (pick(rng, shapes),)
    return None


def realise(lang: str, template: str, arg: tuple[str, ...]) -> str:
    p = pair_stater(lang)
    if template == "more":
        return p.pair_more(*arg)
    if template == "contains":
        return p.pair_contains(*arg)
    return p.pair_both(*arg)


def write_nlvr2(root: Path, bank: ImageBank, rng: np.random.Generator, n_pairs: dict[str, int],
                per_pair: int = 3) -> dict[str, Any]:
    """NLVR2-format English statements: annotations/{train,dev,test}.jsonl (split names train/dev/test1)."""
    out = root / "downstream" / "nlvr2" / "annotations"
    counts, trues = {}, 0
    for split, n in n_pairs.items():
        tag = "test1" if split == "test" else split
        records = []
        for i in range(n):
            base = f"{tag}-{i // 2}-{i % 2}"
            left, right = sample_scene(rng, 1, 3), sample_scene(rng, 1, 3)
            for side, scene in (("img0", left), ("img1", right)):
                bank.add(f"{base}-{side}", scene, f"{base}-{side}.jpg", "nlvr2")
            for s in range(per_pair):
                want = bool(rng.random() < 0.5)
                made = make_statement(rng, left, right, want)
                if made is None:  # only when no template can take this truth value for the pair
                    continue
                label = "True" if want else "False"
                trues += want
                records.append({
                    "validation": {str(int(rng.integers(100))): label}, "sentence": realise("en", *made),
                    "left_url": f"https://synthetic.invalid/nlvr2/{base}-img0.jpg", "writer": str(int(rng.integers(100))),
                    "label": label, "right_url": f"https://synthetic.invalid/nlvr2/{base}-img1.jpg",
                    "synset": "shape", "query": "synthetic shapes", "identifier": f"{base}-{s}", "extra_validations": {},
                })
        write_jsonl(out / f"{split}.jsonl", records)
        counts[split] = len(records)
    return {"dir": "downstream/nlvr2/annotations", "statements": counts, "chance": 0.5,
            "true_fraction": trues / max(sum(counts.values()), 1), "key": "<identifier without sentence>-img0/img1"}


def write_marvl(root: Path, bank: ImageBank, rng: np.random.Generator, images_per_concept: int,
                statements: int) -> dict[str, Any]:
    """MaRVL zero_shot/annotations/marvl-<lang>.jsonl, one concept per shape and language."""
    langs = tuple(lang for lang in MARVL_LANGS if lang in languages_with(PairStater))
    out = root / "downstream" / "marvl" / "zero_shot" / "annotations"
    counts, trues, total = {}, 0, 0
    for li, lang in enumerate(langs):
        concepts = []
        for si, shape in enumerate(SHAPES):
            cid = 10 * (li + 1) + si + 1
            scenes = []
            for j in range(images_per_concept):
                scene = sample_scene(rng, 1, 3, must=shape)
                bank.add(f"{cid}-{j}", scene, f"{cid}-{j}.jpg", "marvl")
                scenes.append(scene)
            concepts.append((cid, pair_stater(lang).noun(shape), scenes))
        records: list[dict[str, Any]] = []
        while len(records) < statements:
            cid, noun, scenes = concepts[int(rng.integers(len(concepts)))]
            a, b = (int(x) for x in rng.choice(len(scenes), size=2, replace=False))
            want = bool(rng.random() < 0.5)
            made = make_statement(rng, scenes[a], scenes[b], want)
            if made is None:
                continue
            trues += want
            records.append({
                "concept": f"{cid}-{noun}", "language": lang, "caption": realise(lang, *made),
                "left_img": f"{cid}-{a}.jpg", "right_img": f"{cid}-{b}.jpg",
                "annotator_info": {"annotator_id": f"{lang}_01", "country_of_birth": "synthetic",
                                   "country_of_residence": "synthetic", "gender": "n/a", "age": 0},
                "chapter": "Shapes", "id": f"{lang}-{len(records)}", "label": want,
            })
        write_jsonl(out / f"marvl-{lang}.jsonl", records)
        counts[lang] = len(records)
        total += len(records)
    return {"dir": "downstream/marvl/zero_shot/annotations", "langs": list(langs), "statements": counts,
            "chance": 0.5, "true_fraction": trues / max(total, 1), "key": "image file stem (e.g. 11-3)"}
