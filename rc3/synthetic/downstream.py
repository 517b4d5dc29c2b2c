"""Downstream sets of the synthetic world, part 1: the shared image bank, XVNLI and xGQA.

All downstream images go to DIR/downstream/images/ and one IGLUE H5 file,
DIR/downstream/features.h5, under each data set's key convention (FORMATS.md): Flickr-style
numeric ids for XVNLI and Multi30K, the full file name for xFlickr&CO, the file stem for MaRVL and
NLVR2, GQA image ids for xGQA.

Labels are functions of (scene, text) by design:
- XVNLI hypotheses talk about one shape with a definite description ("The circle is red."):
  entailment when the scene's circle has that colour/position, contradiction when the circle has
  another one, neutral when the scene has no circle (the premise says nothing about it). Each
  image gets one hypothesis per label, so chance is exactly 1/3.
- xGQA questions ask the colour or position of a present shape, the shape at an occupied
  position, or whether a colour+shape exists (yes/no balanced); answers are English words from a
  17-label vocabulary, as xGQA keeps GQA's English answers in every language.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from rc3.synthetic.grammar import Asker, Claimer
from rc3.synthetic.langs_latin import English
from rc3.synthetic.languages import asker, captioner, claimer, language, languages_with
from rc3.synthetic.render import RoiEncoder, jpeg_bytes, render
from rc3.synthetic.world import COLOURS, POSITIONS, SHAPES, Obj, Scene, absent_shape, other, pick, sample_scene, shuffled
from rc3.synthetic.writer import H5FeatureWriter, write_json, write_jsonl

XVNLI_LANGS = ("en", "ar", "es", "fr", "ru")
XGQA_LANGS = ("bn", "de", "en", "id", "ko", "pt", "ru", "zh")
NLI_LABELS = ("entailment", "neutral", "contradiction")
GQA_ANSWERS: tuple[str, ...] = ("no", "yes") + COLOURS + SHAPES + POSITIONS


class ImageBank:
    """Renders downstream scenes once: JPEG under images/, ROI fields in features.h5, scene in meta."""

    def __init__(self, root: Path, encoder: RoiEncoder, rng: np.random.Generator) -> None:
        self.images = root / "downstream" / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.h5 = H5FeatureWriter(root / "downstream" / "features.h5")
        self.encoder = encoder
        self.rng = rng
        self.scenes: dict[str, dict[str, Any]] = {}
        self.meta: list[dict[str, Any]] = []

    def add(self, key: str, scene: Scene, file_name: str, dataset: str) -> None:
        """Store one image under feature key `key` and image file `file_name`."""
        self.h5.add(key, self.encoder.encode(scene, self.rng))
        path = self.images / file_name
        if not path.exists():
            path.write_bytes(jpeg_bytes(render(scene)))
        self.scenes[key] = scene.as_dict()
        self.meta.append({"key": key, "file": file_name, "dataset": dataset, "scene": scene.as_dict()})

    def add_alias(self, key: str, existing: str, dataset: str) -> None:
        """Store the image already stored under `existing` under a second key (same features)."""
        self.h5.add(key, self.h5.get(existing))
        first = next(m for m in self.meta if m["key"] == existing)
        self.scenes[key] = self.scenes[existing]
        self.meta.append({**first, "key": key, "dataset": dataset})

    def close(self, root: Path) -> None:
        self.h5.close()
        write_jsonl(root / "meta" / "downstream_scenes.jsonl", self.meta)


def nli_label(scene: Scene, shape: str, attribute: str, value: str) -> str:
    """The gold label of 'The <shape> is <value>' (attribute: colour | position) for a scene."""
    o = scene.find(shape)
    if o is None:
        return "neutral"
    return "entailment" if getattr(o, attribute) == value else "contradiction"


def _hypothesis(rng: np.random.Generator, scene: Scene, label: str) -> tuple[str, str, str]:
    """(shape, attribute, value) whose label for `scene` is `label`."""
    attribute = "colour" if rng.random() < 0.5 else "position"
    values = COLOURS if attribute == "colour" else POSITIONS
    if label == "neutral":
        shape = absent_shape(rng, scene)
        if shape is None:
            raise ValueError("a neutral XVNLI hypothesis needs a shape the scene lacks (scenes have <= 3 objects)")
        return shape, attribute, pick(rng, values)
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    true_value = getattr(o, attribute)
    return o.shape, attribute, true_value if label == "entailment" else other(rng, values, true_value)


def write_xvnli(root: Path, bank: ImageBank, rng: np.random.Generator, n_images: dict[str, int],
                first_id: int) -> dict[str, Any]:
    """XVNLI annotations/<lang>/{train,dev,test}.jsonl for the XVNLI languages; returns the summary."""
    langs = tuple(lang for lang in XVNLI_LANGS if lang in languages_with(Claimer))
    out = root / "downstream" / "XVNLI" / "annotations"
    counts = {}
    next_id = first_id
    for split, n in n_images.items():
        records: dict[str, list[dict[str, str]]] = {lang: [] for lang in langs}
        for _ in range(n):
            fid = str(next_id)
            next_id += 1
            scene = sample_scene(rng, 1, 3)
            bank.add(fid, scene, f"{fid}.jpg", "xvnli")
            order = shuffled(rng, scene.objects)
            cap_idx = int(rng.integers(5))  # Flickr30k has five captions per image: "#0".."#4"
            for label in [NLI_LABELS[int(i)] for i in rng.permutation(3)]:
                shape, attribute, value = _hypothesis(rng, scene, label)
                assert nli_label(scene, shape, attribute, value) == label
                for lang in langs:
                    c = claimer(lang)
                    hyp = c.claim_colour(shape, value) if attribute == "colour" else c.claim_position(shape, value)
                    records[lang].append({
                        "gold_label": label, "sentence1": captioner(lang).caption(order), "sentence2": hyp,
                        "captionID": f"{fid}.jpg#{cap_idx}", "pairID": f"{fid}.jpg#{cap_idx}r1{label[0]}",
                        "Flikr30kID": fid,
                    })
        for lang, recs in records.items():
            write_jsonl(out / lang / f"{split}.jsonl", recs)
        counts[split] = len(records["en"])
    return {"dir": "downstream/XVNLI/annotations", "langs": list(langs), "pairs": counts, "labels": list(NLI_LABELS),
            "chance": 1 / 3, "key": "Flikr30kID (numeric Flickr id)"}


def gqa_answer(scene: Scene, kind: str, arg: tuple[str, ...]) -> str:
    """The answer of a question of `kind` with arguments `arg` about `scene`."""
    if kind == "colour":
        return _asked_about(scene.find(arg[0])).colour
    if kind == "position":
        return _asked_about(scene.find(arg[0])).position
    if kind == "shape":
        return _asked_about(scene.at(arg[0])).shape
    if kind == "exists":
        return "yes" if scene.has(arg[0], arg[1]) else "no"
    raise ValueError(f"unknown question kind {kind!r}")


def _asked_about(obj: Obj | None) -> Obj:
    assert obj is not None  # questions other than "exists" are drawn about objects of the scene (_questions)
    return obj


def _questions(rng: np.random.Generator, scene: Scene) -> list[tuple[str, tuple[str, ...]]]:
    """One question of each kind for a scene; existence is yes or no with equal chance."""
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    o2 = scene.objects[int(rng.integers(len(scene.objects)))]
    o3 = scene.objects[int(rng.integers(len(scene.objects)))]
    if rng.random() < 0.5:
        exists: tuple[str, ...] = (o3.colour, o3.shape)
    else:
        missing = absent_shape(rng, scene)
        exists = (pick(rng, COLOURS), missing) if missing and rng.random() < 0.5 else (other(rng, COLOURS, o3.colour), o3.shape)
    return [("colour", (o.shape,)), ("position", (o2.shape,)), ("shape", (o3.position,)), ("exists", exists)]


def _ask(lang: str, kind: str, arg: tuple[str, ...]) -> str:
    a = asker(lang)
    ask: dict[str, Callable[..., str]] = {"colour": a.ask_colour, "position": a.ask_position, "shape": a.ask_shape,
                                          "exists": a.ask_exists}
    return ask[kind](*arg)


def _gqa_entry(qid: str, image_id: str, question: str, kind: str, arg: tuple[str, ...], answer: str) -> dict[str, Any]:
    """A GQA question record with GQA's field set; the program mirrors how the answer is derived."""
    en = language("en")
    assert isinstance(en, English)  # the English grammar: its claims and position phrases name GQA's programs
    if kind == "colour":
        sem = [("select", [], f"{arg[0]} (0)"), ("query", [0], "color")]
        types, full = ("directOf", "attr", "query"), f"The {arg[0]} is {answer}."
    elif kind == "position":
        sem = [("select", [], f"{arg[0]} (0)"), ("query", [0], "position")]
        types, full = ("positionQuery", "attr", "query"), en.claim_position(arg[0], answer)
    elif kind == "shape":
        sem = [("select", [], "shape (0)"), ("filter position", [0], arg[0]), ("query", [1], "name")]
        types, full = ("categoryThat", "cat", "query"), f"The shape {en.POS[arg[0]]} is a {answer}."
    else:
        sem = [("select", [], f"{arg[1]} (0)"), ("filter color", [0], arg[0]), ("exist", [1], "?")]
        types = ("existAttr", "obj", "verify")
        full = f"Yes, there is a {arg[0]} {arg[1]}." if answer == "yes" else f"No, there is no {arg[0]} {arg[1]}."
    semantic = [{"operation": op, "dependencies": deps, "argument": argument} for op, deps, argument in sem]
    sem_str = "->".join(f"{op}: {argument}" + (f" [{', '.join(map(str, deps))}]" if deps else "") for op, deps, argument in sem)
    return {
        "semantic": semantic, "entailed": [], "equivalent": [qid], "question": question, "imageId": image_id,
        "isBalanced": True, "groups": {"global": None if kind != "shape" else "shape", "local": f"{kind}-{'_'.join(arg)}"},
        "answer": answer, "semanticStr": sem_str, "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "types": {"detailed": types[0], "semantic": types[1], "structural": types[2]}, "fullAnswer": full,
    }


def write_xgqa(root: Path, bank: ImageBank, rng: np.random.Generator, n_images: dict[str, int],
               first_id: int) -> dict[str, Any]:
    """English GQA-style train/testdev + xGQA few_shot/<lang>/{dev,test}.json + the answer vocabulary."""
    langs = tuple(lang for lang in XGQA_LANGS if lang in languages_with(Asker))
    gqa_dir = root / "downstream" / "gqa" / "annotations"
    xgqa_dir = root / "downstream" / "xGQA" / "annotations" / "few_shot"
    files = {"train": "train_balanced_questions.json", "testdev": "testdev_balanced_questions.json"}
    next_img, next_q = first_id, first_id * 10
    counts: dict[str, int] = {}
    answers: dict[str, list[str]] = {}
    for split, n in n_images.items():
        per_lang: dict[str, dict[str, Any]] = {lang: {} for lang in (("en",) if split in files else langs)}
        for _ in range(n):
            image_id = f"n{next_img}"
            next_img += 1
            scene = sample_scene(rng, 1, 3)
            bank.add(image_id, scene, f"{image_id}.jpg", "xgqa")
            for kind, arg in _questions(rng, scene):
                qid = str(next_q)
                next_q += 1
                answer = gqa_answer(scene, kind, arg)
                answers.setdefault(split, []).append(answer)
                for lang in per_lang:
                    per_lang[lang][qid] = _gqa_entry(qid, image_id, _ask(lang, kind, arg), kind, arg, answer)
        for lang, entries in per_lang.items():
            if split in files:
                write_json(gqa_dir / files[split], entries)
            else:
                write_json(xgqa_dir / lang / f"{split}.json", entries)
        counts[split] = len(answers.get(split, []))
    write_json(gqa_dir / "trainval_ans2label.json", {a: i for i, a in enumerate(GQA_ANSWERS)})
    write_json(gqa_dir / "trainval_label2ans.json", list(GQA_ANSWERS))
    test = answers.get("test", [])
    majority = max((test.count(a) for a in set(test)), default=0) / max(len(test), 1)
    return {"dir": "downstream/xGQA/annotations/few_shot", "train": f"downstream/gqa/annotations/{files['train']}",
            "testdev": f"downstream/gqa/annotations/{files['testdev']}", "ans2label": "downstream/gqa/annotations/trainval_ans2label.json",
            "label2ans": "downstream/gqa/annotations/trainval_label2ans.json", "langs": list(langs), "questions": counts,
            "answers": len(GQA_ANSWERS), "chance": 1 / len(GQA_ANSWERS), "majority_answer_rate_test": majority,
            "key": "imageId (GQA-style id)"}
