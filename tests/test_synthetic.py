"""The synthetic world: determinism, real-format field sets, H5 layout, aligned translations,
weak alignment, labels that follow from (scene, text), learnability from ROI features, shards, tokenizer."""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from rc3.data.features_open import open_feature_store
from rc3.data.schemas import decode_ds, decode_dt, decode_dw
from rc3.synthetic.build import SIZES, make_world
from rc3.synthetic.corpora import WIT_COLUMNS, shared_count, weak_mentions
from rc3.synthetic.downstream import gqa_answer, nli_label
from rc3.synthetic.downstream_pairs import pair_label
from rc3.synthetic.grammar import Asker, Captioner, Claimer, PairStater
from rc3.synthetic.languages import captioner, language, languages_with
from rc3.synthetic.world import CENTRES, COLOURS, POSITIONS, SHAPES, Obj, Scene, sample_scene, stream
from rc3.tokenization import RC3Tokenizer

REPO = Path(__file__).resolve().parents[1]

SCALE = 0.25  # a quarter of `tiny`: every part present, built in a few seconds


def _build(path: Path, seed: int = 0, overlap: float = 0.5) -> Path:
    make_world(path, seed=seed, sizes=SIZES["tiny"].scaled(SCALE), weak_overlap=overlap, log=lambda _: None)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("world") / "w")


@pytest.fixture(scope="module")
def info(world: Path) -> dict:
    return json.loads((world / "world.json").read_text(encoding="utf-8"))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _scenes(world: Path, name: str = "downstream_scenes.jsonl", key: str = "key") -> dict[str, Scene]:
    out = {}
    for rec in _jsonl(world / "meta" / name):
        objs = tuple(Obj(**o) for o in rec["scene"]["objects"])
        out[rec[key]] = Scene(objects=objs, background=rec["scene"]["background"])
    return out


def _h5_arrays(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with h5py.File(path, "r") as f:
        return {k: {n: f[k][n][()] for n in f[k]} for k in f}


# ---------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_bytes(world: Path, tmp_path: Path) -> None:
    again = _build(tmp_path / "again")
    files = sorted(p.relative_to(world) for p in world.rglob("*")
                   if p.is_file() and p.parts[len(world.parts)] in ("raw", "downstream", "meta"))
    assert len(files) > 100
    for rel in files:
        if rel.suffix == ".h5":
            a, b = _h5_arrays(world / rel), _h5_arrays(again / rel)
            assert a.keys() == b.keys()
            for key in a:
                for name in a[key]:
                    np.testing.assert_array_equal(a[key][name], b[key][name], err_msg=f"{rel}:{key}/{name}")
        else:
            assert (world / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (world / "world.json").read_bytes() == (again / "world.json").read_bytes()
    # The model file also records the trainer's temporary input path, so compare what it contains.
    toks = [RC3Tokenizer.from_dir(w / "tokenizer") for w in (world, again)]
    pieces = [[t.hf.convert_ids_to_tokens(i) for i in range(t.vocab_size)] for t in toks]
    assert pieces[0] == pieces[1]


def test_other_seed_other_world(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "s1"
    make_world(out, seed=1, sizes=SIZES["tiny"].scaled(0.05), shards=False, log=lambda _: None)
    assert (out / "raw/ds/train.en.tsv").read_text() != (world / "raw/ds/train.en.tsv").read_text()
    assert not (out / "shards").exists() or not any((out / "shards").iterdir())


# ---------------------------------------------------------------------------------------------
# formats: field sets of the released files


def _first(path: Path) -> dict:
    with path.open(encoding="utf-8") as fh:
        return json.loads(fh.readline())


def test_annotation_field_sets_match_real_files(world: Path, release_data: Path) -> None:
    real, ours = release_data / "iglue", world / "downstream"
    for lang in ("en", "ar", "es", "fr", "ru"):
        assert _first(ours / f"XVNLI/annotations/{lang}/test.jsonl").keys() == _first(real / f"XVNLI/annotations/{lang}/test.jsonl").keys()
        for split in ("train", "dev"):
            assert (ours / f"XVNLI/annotations/{lang}/{split}.jsonl").is_file()
    for lang in ("de", "en", "es", "id", "ja", "ru", "tr", "zh"):
        recs, real_recs = _jsonl(ours / f"xFlickrCO/annotations/{lang}/test.jsonl"), _jsonl(real / f"xFlickrCO/annotations/{lang}/test.jsonl")
        assert recs[0].keys() == real_recs[0].keys() and all(len(r["sentences"]) == 1 for r in recs)
        # The release gives Flickr ids as strings and COCO ids as integers (the excerpt keeps both); so do we.
        for r in recs + real_recs:
            assert isinstance(r["id"], int) == r["img_path"].startswith("COCO_"), r
        assert {isinstance(r["id"], int) for r in real_recs} == {True, False}
    for name in ("train_ann", "valid_ann", "test_ann"):
        recs = _jsonl(ours / f"flickr30k/annotations/{name}.jsonl")
        assert recs[0].keys() == _first(real / "flickr30k/annotations/test_ann.jsonl").keys()
        assert all(len(r["sentences"]) == 5 and len(set(r["sentences"])) == 5 for r in recs)
    for lang in ("id", "sw", "ta", "tr", "zh"):
        ours_m = _first(ours / f"marvl/zero_shot/annotations/marvl-{lang}.jsonl")
        real_m = _first(real / f"marvl/zero_shot/annotations/marvl-{lang}.jsonl")
        assert ours_m.keys() == real_m.keys() and ours_m["annotator_info"].keys() == real_m["annotator_info"].keys()
        assert isinstance(ours_m["label"], bool) and ours_m["language"] == lang
    for split in ("train", "dev", "test"):
        rec = _first(ours / f"nlvr2/annotations/{split}.jsonl")
        assert rec.keys() == _first(real / "nlvr2/annotations/test.jsonl").keys() and rec["label"] in ("True", "False")
    real_q = next(iter(json.loads((real / "xGQA/annotations/few_shot/en/dev.json").read_text()).values()))
    for path in [ours / "gqa/annotations/train_balanced_questions.json", ours / "gqa/annotations/testdev_balanced_questions.json",
                 *sorted((ours / "xGQA").rglob("*.json"))]:
        q = next(iter(json.loads(path.read_text()).values()))
        assert q.keys() == real_q.keys() and q["types"].keys() == real_q["types"].keys(), path
        assert q["semantic"][0].keys() == real_q["semantic"][0].keys()
    assert {p.parent.name for p in (ours / "xGQA/annotations/few_shot").glob("*/test.json")} == {
        "bn", "de", "en", "id", "ko", "pt", "ru", "zh"}
    a2l = json.loads((ours / "gqa/annotations/trainval_ans2label.json").read_text())
    l2a = json.loads((ours / "gqa/annotations/trainval_label2ans.json").read_text())
    assert type(a2l) is type(json.loads((real / "gqa/annotations/trainval_ans2label.json").read_text()))
    assert [l2a[i] for i in a2l.values()] == list(a2l)


def test_multi30k_layout_matches_real(world: Path, release_data: Path) -> None:
    real, ours = release_data / "multi30k", world / "downstream" / "multi30k"
    # The same split x language files as the release (no cs for the 2017 test sets).
    assert {p.name for p in (ours / "raw").iterdir()} == {p.name for p in (real / "raw").iterdir()}
    assert {p.name for p in (ours / "image_splits").iterdir()} == {p.name for p in (real / "image_splits").iterdir()}
    patterns = {"test_2017_flickr": r"\d+_[0-9a-f]{10}\.jpg", "test_2017_mscoco": r"COCO_(?:train|val)2014_\d{12}\.jpg#\d+"}
    for split_file in (ours / "image_splits").iterdir():
        images = split_file.read_text().splitlines()
        pattern = patterns.get(split_file.stem, r"\d+\.jpg")
        real_names = (real / "image_splits" / split_file.name).read_text().splitlines()
        assert all(re.fullmatch(pattern, n) for n in real_names + images), split_file.name
        for gz in (ours / "raw").glob(split_file.stem + ".*.gz"):
            with gzip.open(gz, "rt", encoding="utf-8") as fh:
                assert len(fh.read().splitlines()) == len(images)


def test_raw_corpora_formats(world: Path, info: dict) -> None:
    with gzip.open(world / info["raw"]["dw"]["wit_tsv"], "rt", encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in fh]
    assert tuple(header) == WIT_COLUMNS and all(len(r) == len(header) for r in rows)
    for rel in info["raw"]["ds"]["captions"].values():
        lines = (world / rel).read_text(encoding="utf-8").splitlines()
        assert len(lines) == info["sizes"]["ds_images"] and all(len(line.split("\t")) == 2 for line in lines)
    with tarfile.open(world / info["raw"]["dw"]["images"] / "00000.tar") as tf:
        names = tf.getnames()
        meta = [json.loads(tf.extractfile(n).read()) for n in names if n.endswith(".json")]
    assert all("url" in m for m in meta) and any(n.endswith(".jpg") for n in names)
    for rel in info["raw"]["dt"]["wikimatrix"].values():
        with gzip.open(world / rel, "rt", encoding="utf-8") as fh:
            scores = [float(line.split("\t")[0]) for line in fh]
        assert scores == sorted(scores, reverse=True)  # WikiMatrix files are sorted by margin score


# ---------------------------------------------------------------------------------------------
# H5 features and key conventions


def test_h5_layout_and_keys(world: Path, info: dict) -> None:
    for rel in (info["raw"]["ds"]["features"], info["downstream"]["features"]):
        with h5py.File(world / rel, "r") as f:
            for key in list(f)[:50]:
                g = f[key]
                assert set(g) == {"features", "boxes", "obj_id", "obj_conf", "attr_id", "attr_conf", "img_w", "img_h"}
                assert g["features"].shape == (36, 2048) and g["features"].dtype == np.float32
                assert g["boxes"].shape == (36, 4) and g["obj_conf"].shape == (36,)
                boxes, w, h = g["boxes"][()], int(g["img_w"][()]), int(g["img_h"][()])
                assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
                assert (g["features"][()] >= 0).all() and (np.diff(g["obj_conf"][()]) <= 0).all()
    store = open_feature_store(world / info["downstream"]["features"])
    down = world / "downstream"
    keys = set(store.keys_list())
    wanted = {r["Flikr30kID"] for r in _jsonl(down / "XVNLI/annotations/en/test.jsonl")}
    wanted |= {r["img_path"] for r in _jsonl(down / "xFlickrCO/annotations/en/test.jsonl")}
    wanted |= {r["id"] for r in _jsonl(down / "flickr30k/annotations/train_ann.jsonl")}
    for r in _jsonl(down / "marvl/zero_shot/annotations/marvl-sw.jsonl"):
        wanted |= {r["left_img"].rsplit(".", 1)[0], r["right_img"].rsplit(".", 1)[0]}
    for r in _jsonl(down / "nlvr2/annotations/test.jsonl"):
        base = r["identifier"].rsplit("-", 1)[0]
        wanted |= {f"{base}-img0", f"{base}-img1"}
    wanted |= {q["imageId"] for q in json.loads((down / "xGQA/annotations/few_shot/ko/test.json").read_text()).values()}
    for split in ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"):
        lines = (down / f"multi30k/image_splits/{split}.txt").read_text().splitlines()
        wanted |= {n.split("#")[0].rsplit(".", 1)[0] for n in lines}
    assert wanted <= keys, sorted(wanted - keys)[:5]
    assert all((down / "images" / (k if k.endswith(".jpg") else k + ".jpg")).is_file() for k in wanted)
    feats, boxes = store[next(iter(wanted))]
    assert feats.shape == (36, 2048) and boxes.shape == (36, 5) and (boxes[:, :4] <= 1).all()


# ---------------------------------------------------------------------------------------------
# text: grammar, aligned translations, weak alignment


def test_every_language_realises_every_template() -> None:
    objs = [Obj("star", "red", "left"), Obj("square", "white", "middle"), Obj("circle", "green", "top")]
    for code in languages_with(Captioner):
        for style in range(captioner(code).n_styles):
            text = captioner(code).caption(objs, style)
            assert text and "{" not in text and "  " not in text
    for code in languages_with(Claimer) + languages_with(Asker) + languages_with(PairStater):
        lang = language(code)
        for shape in SHAPES:
            outs = []
            if isinstance(lang, Claimer):
                outs += [lang.claim_colour(shape, c) for c in COLOURS] + [lang.claim_position(shape, p) for p in POSITIONS]
            if isinstance(lang, Asker):
                outs += [lang.ask_colour(shape), lang.ask_position(shape)] + [lang.ask_exists(c, shape) for c in COLOURS]
                outs += [lang.ask_shape(p) for p in POSITIONS]
            if isinstance(lang, PairStater):
                outs += [lang.pair_both(shape), lang.pair_more("left")] + [lang.pair_contains("right", c, shape) for c in COLOURS]
            assert outs and all(o.strip() for o in outs)
    # agreement spot checks
    assert captioner("de").caption([Obj("square", "red", "left")]) == "Ein rotes Quadrat links."
    assert language("de").ask_exists("red", "circle") == "Gibt es einen roten Kreis?"
    assert captioner("fr").caption([Obj("star", "green", "top")]) == "Une étoile verte en haut."
    assert captioner("ru").caption([Obj("star", "red", "top")]) == "Красная звезда сверху."
    assert captioner("cs").caption([Obj("star", "white", "top")]) == "Bílá hvězda nahoře."
    assert captioner("es").caption([Obj("star", "white", "middle")]) == "Una estrella blanca en el centro."
    assert language("ar").claim_colour("circle", "red") == "الدائرة حمراء."
    assert language("ko").ask_colour("star") == "별은 무슨 색입니까?"


# Words naming each shape / colour per Ds language (all inflected forms), to read captions back.
_SHAPE_WORDS = {
    "en": {s: [s] for s in SHAPES},
    "cs": {"circle": ["kruh"], "square": ["čtverec"], "triangle": ["trojúhelník"], "star": ["hvězda"]},
    "de": {"circle": ["Kreis"], "square": ["Quadrat"], "triangle": ["Dreieck"], "star": ["Stern"]},
    "fr": {"circle": ["cercle"], "square": ["carré"], "triangle": ["triangle"], "star": ["étoile"]},
    "ja": {"circle": ["円"], "square": ["正方形"], "triangle": ["三角形"], "star": ["星"]},
    "zh": {"circle": ["圆形"], "square": ["正方形"], "triangle": ["三角形"], "star": ["星形"]},
}
_COLOUR_WORDS = {
    "en": {c: [c] for c in COLOURS},
    "cs": {"red": ["červen"], "green": ["zelen"], "blue": ["modr"], "yellow": ["žlut"], "black": ["čern"], "white": ["bíl"]},
    "de": {"red": ["rot"], "green": ["grün"], "blue": ["blau"], "yellow": ["gelb"], "black": ["schwarz"], "white": ["weiß"]},
    "fr": {"red": ["rouge"], "green": ["vert"], "blue": ["bleu"], "yellow": ["jaune"], "black": ["noir"], "white": ["blanc"]},
    "ja": {"red": ["赤い"], "green": ["緑の"], "blue": ["青い"], "yellow": ["黄色い"], "black": ["黒い"], "white": ["白い"]},
    "zh": {"red": ["红色"], "green": ["绿色"], "blue": ["蓝色"], "yellow": ["黄色"], "black": ["黑色"], "white": ["白色"]},
}


def _read_back(text: str, lang: str) -> tuple[Counter, Counter]:
    text = text.lower()
    shapes = Counter({s: sum(text.count(w.lower()) for w in ws) for s, ws in _SHAPE_WORDS[lang].items()})
    colours = Counter({c: sum(text.count(w) for w in ws) for c, ws in _COLOUR_WORDS[lang].items()})
    return +shapes, +colours


def test_ds_translations_name_the_same_objects(world: Path, info: dict) -> None:
    scenes = _scenes(world, "ds_scenes.jsonl", "image_id")
    caps = {lang: dict(line.split("\t") for line in (world / rel).read_text(encoding="utf-8").splitlines())
            for lang, rel in info["raw"]["ds"]["captions"].items()}
    assert set(caps) == {"en", "cs", "de", "fr", "ja", "zh"}
    for image_id, scene in scenes.items():
        truth = (Counter(o.shape for o in scene.objects), Counter(o.colour for o in scene.objects))
        for lang in caps:
            assert _read_back(caps[lang][image_id], lang) == truth, (lang, caps[lang][image_id])


def test_weak_alignment_degree(world: Path, info: dict) -> None:
    overlap = info["weak_overlap"]
    tuples = [t for t in _jsonl(world / "meta" / "dw_tuples.jsonl") if t["kind"] == "tuple"]
    assert len(tuples) == info["sizes"]["dw_tuples"]
    with gzip.open(world / info["raw"]["dw"]["wit_tsv"], "rt", encoding="utf-8") as fh:
        rows = [dict(zip(WIT_COLUMNS, line.rstrip("\n").split("\t"))) for line in list(fh)[1:]]
    texts = {(r["image_url"], r["language"]): r["caption_reference_description"] for r in rows}
    degrees, differs = [], []
    for t in tuples:
        scene = [tuple(o.values()) for o in t["scene"]["objects"]]
        told = {lang: {tuple(o.values()) for o in objs} for lang, objs in t["mentions"].items()}
        in_all = set.intersection(*told.values()) & set(scene)
        assert in_all == {tuple(o.values()) for o in t["shared"]}
        assert len(in_all) == shared_count(len(scene), overlap)
        differs.append(any(told[a] != told[b] for a in told for b in told))
        for lang, objs in t["mentions"].items():
            assert texts[(t["image_url"], lang)] == captioner(lang).caption([Obj(**o) for o in objs])
        degrees.append(len(in_all) / len(scene))
    assert abs(np.mean(degrees) - overlap) < 0.15
    assert np.mean(differs) > 0.3  # texts of one image usually tell different things: weakly aligned


@pytest.mark.parametrize("overlap", [0.0, 1.0])
def test_weak_overlap_extremes(overlap: float) -> None:
    rng = stream(0, "test")
    for _ in range(50):
        scene = sample_scene(rng, 2, 4)
        shared, mentions = weak_mentions(rng, scene, ["de", "en", "ja"], overlap)
        assert len(shared) == (len(scene.objects) if overlap == 1.0 else 0)
        assert all(m for m in mentions.values())
        if overlap == 1.0:
            assert all(set(m) == set(scene.objects) for m in mentions.values())


# ---------------------------------------------------------------------------------------------
# learnability: labels follow from (scene, text); ROI features carry the scene


def _en_pos(phrase: str) -> str:
    inverse = {v: k for k, v in language("en").POS.items()}  # type: ignore[attr-defined]
    return inverse[phrase]


def test_labels_are_functions_of_scene_and_text(world: Path) -> None:
    scenes, down = _scenes(world), world / "downstream"
    for split in ("train", "test"):
        recs = _jsonl(down / f"XVNLI/annotations/en/{split}.jsonl")
        for r in recs:
            shape, value = re.fullmatch(r"The (\w+) is (.+)\.", r["sentence2"]).groups()
            attr, value = ("colour", value) if value in COLOURS else ("position", _en_pos(value))
            assert nli_label(scenes[r["Flikr30kID"]], shape, attr, value) == r["gold_label"]
        assert Counter(r["gold_label"] for r in recs) == {k: len(recs) // 3 for k in ("entailment", "neutral", "contradiction")}
        for lang in ("ar", "es", "fr", "ru"):
            assert [r["gold_label"] for r in _jsonl(down / f"XVNLI/annotations/{lang}/{split}.jsonl")] == [r["gold_label"] for r in recs]
    patterns = [("colour", r"What color is the (\w+)\?"), ("position", r"Where is the (\w+)\?"),
                ("shape", r"Which shape is (.+)\?"), ("exists", r"Is there a (\w+) (\w+)\?")]
    for q in json.loads((down / "xGQA/annotations/few_shot/en/test.json").read_text()).values():
        kind, m = next((k, re.fullmatch(p, q["question"])) for k, p in patterns if re.fullmatch(p, q["question"]))
        arg = (_en_pos(m.group(1)),) if kind == "shape" else m.groups()
        assert gqa_answer(scenes[q["imageId"]], kind, arg) == q["answer"]
    statements = [("more", r"The (left|right) image has more shapes than the (?:left|right) image\."),
                  ("contains", r"The (left|right) image contains a (\w+) (\w+)\."), ("both", r"Both images contain a (\w+)\.")]
    recs = _jsonl(down / "nlvr2/annotations/train.jsonl")
    for r in recs:
        kind, m = next((k, re.fullmatch(p, r["sentence"])) for k, p in statements if re.fullmatch(p, r["sentence"]))
        base = r["identifier"].rsplit("-", 1)[0]
        truth = pair_label(scenes[f"{base}-img0"], scenes[f"{base}-img1"], kind, m.groups())
        assert str(truth) == r["label"]
    assert 0.35 < np.mean([r["label"] == "True" for r in recs]) < 0.65


def test_roi_features_make_xvnli_learnable(world: Path, info: dict) -> None:
    """Nearest-centroid region classifiers fit on training images read test scenes from features + boxes
    alone; with the parsed hypothesis they label XVNLI test far above chance (1/3)."""
    store = open_feature_store(world / info["downstream"]["features"])
    scenes, down = _scenes(world), world / "downstream"
    centre = {p: np.array(c) / 96 for p, c in CENTRES.items()}

    def region_objects(key: str):  # (feature, box centre) of each region
        feats, boxes = store[key]
        return feats, (boxes[:, :2] + boxes[:, 2:4]) / 2

    sums: dict[str, list[np.ndarray]] = {}
    for key in sorted({r["Flikr30kID"] for r in _jsonl(down / "XVNLI/annotations/en/train.jsonl")}):
        feats, centres = region_objects(key)
        taken = set()
        for o in scenes[key].objects:
            i = int(np.argmin([np.linalg.norm(c - centre[o.position]) + (9 if j in taken else 0) for j, c in enumerate(centres)]))
            taken.add(i)
            sums.setdefault("shape:" + o.shape, []).append(feats[i])
            sums.setdefault("colour:" + o.colour, []).append(feats[i])
        sums.setdefault("shape:background", []).extend(feats[j] for j in range(len(feats)) if j not in taken)
    cent = {k: np.mean(v, 0) / np.linalg.norm(np.mean(v, 0)) for k, v in sums.items()}

    def read_scene(key: str) -> Scene:
        feats, centres = region_objects(key)
        objs = []
        for f, c in zip(feats, centres):
            f = f / (np.linalg.norm(f) + 1e-8)
            shape = max((k for k in cent if k.startswith("shape:")), key=lambda k: cent[k] @ f)[6:]
            if shape != "background":
                colour = max((k for k in cent if k.startswith("colour:")), key=lambda k: cent[k] @ f)[7:]
                pos = min(POSITIONS, key=lambda p: np.linalg.norm(c - centre[p]))
                objs.append(Obj(shape, colour, pos))
        return Scene(objects=tuple(objs))

    recs = _jsonl(down / "XVNLI/annotations/en/test.jsonl")
    read = {r["Flikr30kID"]: read_scene(r["Flikr30kID"]) for r in recs}
    correct = 0
    for r in recs:
        shape, value = re.fullmatch(r"The (\w+) is (.+)\.", r["sentence2"]).groups()
        attr, value = ("colour", value) if value in COLOURS else ("position", _en_pos(value))
        correct += nli_label(read[r["Flikr30kID"]], shape, attr, value) == r["gold_label"]
    assert correct / len(recs) > 0.9, correct / len(recs)


def test_chance_levels_recorded(info: dict) -> None:
    chance = info["chance"]
    assert chance["xvnli"] == pytest.approx(1 / 3) and chance["marvl"] == 0.5 and chance["nlvr2"] == 0.5
    assert 0 < chance["xgqa_majority_answer"] < 0.5
    assert 0.3 < info["downstream"]["marvl"]["true_fraction"] < 0.7


# ---------------------------------------------------------------------------------------------
# shards, tokenizer, CLI


def _samples(pattern_dir: Path) -> list[dict]:
    out = []
    for tar_path in sorted(pattern_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tf:
            groups: dict[str, dict] = {}
            for m in tf.getmembers():
                key, field = m.name.split(".", 1)
                groups.setdefault(key, {"__key__": key})[field] = tf.extractfile(m).read()
            out.extend(groups.values())
    return out


def test_shards_exist_and_read_back(world: Path, info: dict) -> None:
    shards = info["shards"]
    ds = [decode_ds(s) for s in _samples(world / shards["ds"]["dir"])]
    assert len(ds) == shards["ds"]["samples"] == info["sizes"]["ds_images"]
    assert all(set(s.captions) == {"en", "cs", "de", "fr", "ja", "zh"} and s.roi.shape == (36, 2048) for s in ds)
    dw = [decode_dw(s) for s in _samples(world / shards["dw"]["dir"])]
    assert len(dw) == shards["dw"]["samples"] == info["sizes"]["dw_tuples"]
    assert all(len(s.texts) >= 2 for s in dw)
    dt = [decode_dt(s) for s in _samples(world / shards["dt"]["dir"])]
    assert len(dt) == shards["dt"]["samples"] > info["sizes"]["dt_pairs"]
    assert shards["dt"]["skipped"].get("wikimatrix_below_min_score", 0) > 0  # misaligned tail filtered


def test_tokenizer_covers_every_language(world: Path) -> None:
    tok = RC3Tokenizer.from_dir(world / "tokenizer")
    objs = [Obj("triangle", "yellow", "bottom")]
    for code in languages_with(Captioner):
        ids = tok.encode(captioner(code).caption(objs), code)
        assert tok.unk_id not in ids, code
    assert tok.unk_id not in tok.encode(language("ta").pair_both("star"), "ta")  # type: ignore[attr-defined]


def _cli_main():
    from rc3.tools.make_synthetic import main  # what tools/make_synthetic.py runs

    return main


def test_cli_refuses_bad_input(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli_main = _cli_main()
    assert cli_main(["--out", str(world)]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--out", str(tmp_path / "x"), "--weak-overlap", "1.5"])
    assert not (tmp_path / "x").exists()


def test_cli_gqa_train_images_sets_the_english_gqa_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--gqa-train-images N` (make demo's 1,000) changes the English GQA training images and nothing else."""
    import rc3.tools.make_synthetic as cli

    seen: list = []
    written = {"shards": {}, "downstream": {"n_feature_keys": 0}, "tokenizer": {"vocab_size": 0}}
    monkeypatch.setattr(cli, "make_world", lambda out, sizes, **kw: seen.append(sizes) or written)
    assert cli.main(["--out", str(tmp_path / "w"), "--gqa-train-images", "1000"]) == 0
    tiny = SIZES["tiny"]
    assert seen == [dataclasses.replace(tiny, gqa_images=(1000, tiny.gqa_images[1]))]
    with pytest.raises(SystemExit):
        cli.main(["--out", str(tmp_path / "x"), "--gqa-train-images", "0"])
    assert len(seen) == 1


def test_world_writes_muse_dictionaries(world: Path, info: dict) -> None:
    from rc3.finetune.code_switch import read_muse

    files = info["dictionaries"]["files"]
    assert {"de", "es", "ru", "tr", "ko", "bn", "pt"} <= set(files)
    ru = read_muse(world / info["dictionaries"]["dir"] / files["ru"])
    assert ru["circle"] == ["круг"] and "красный" in ru["red"]


def _general_pairs_by_kind(a: str, b: str) -> dict[str, set[tuple[str, str]]]:
    """Every claim, question and two-image statement both grammars can say, as (a, b) translations by kind:
    enumerated over the whole vocabulary of the world, independently of how the corpus draws them."""
    out: dict[str, set[tuple[str, str]]] = {}
    la, lb = language(a), language(b)
    if isinstance(la, Claimer) and isinstance(lb, Claimer):
        out["claim"] = {(la.claim_colour(s, c), lb.claim_colour(s, c)) for s in SHAPES for c in COLOURS}
        out["claim"] |= {(la.claim_position(s, p), lb.claim_position(s, p)) for s in SHAPES for p in POSITIONS}
    if isinstance(la, Asker) and isinstance(lb, Asker):
        q = {(la.ask_colour(s), lb.ask_colour(s)) for s in SHAPES} | {(la.ask_position(s), lb.ask_position(s)) for s in SHAPES}
        q |= {(la.ask_exists(c, s), lb.ask_exists(c, s)) for c in COLOURS for s in SHAPES}
        out["question"] = q | {(la.ask_shape(p), lb.ask_shape(p)) for p in POSITIONS}
    if isinstance(la, PairStater) and isinstance(lb, PairStater):
        p2 = {(la.pair_more(side), lb.pair_more(side)) for side in ("left", "right")}
        p2 |= {(la.pair_contains(side, c, s), lb.pair_contains(side, c, s))
               for side in ("left", "right") for c in COLOURS for s in SHAPES}
        out["pair"] = p2 | {(la.pair_both(s), lb.pair_both(s)) for s in SHAPES}
    return out


def _all_general_pairs(a: str, b: str) -> set[tuple[str, str]]:
    return set().union(*_general_pairs_by_kind(a, b).values())


def _wikimatrix(world: Path, pair: str) -> list[tuple[float, str, str]]:
    with gzip.open(world / "raw" / "dt" / f"WikiMatrix.{pair}.tsv.gz", "rt", encoding="utf-8") as fh:
        return [(float(s), x, y) for s, x, y in (line.rstrip("\n").split("\t") for line in fh)]


def test_wikimatrix_holds_general_domain_translations(world: Path, info: dict) -> None:
    """WikiMatrix-style Dt pairs are not only descriptions: where both languages can say them, they hold
    questions (de-en, en-id, en-zh...), claims (en-fr) and two-image statements (en-id, en-zh), each a
    translation of the other side; pairs of languages that share no such kind stay captions."""
    assert info["raw"]["dt"]["wikimatrix_general_share"] == 0.5
    min_score = info["raw"]["dt"]["wikimatrix_min_score"]
    for pair, kinds in (("de-en", {"question"}), ("en-fr", {"claim"}), ("en-id", {"question", "pair"}),
                        ("en-zh", {"question", "pair"})):
        a, b = pair.split("-")
        by_kind = _general_pairs_by_kind(a, b)
        assert set(by_kind) == kinds, pair
        general = _all_general_pairs(a, b)
        rows = [(x, y) for s, x, y in _wikimatrix(world, pair) if s >= min_score]
        found = [(x, y) for x, y in rows if (x, y) in general]
        assert len(found) >= 0.25 * len(rows), (pair, len(found), len(rows))
        assert all(any(r in by_kind[k] for r in found) for k in kinds), pair
        # every general sentence on one side is paired with its own translation, never with another sentence
        sides = {x for x, _ in general}
        assert all((x, y) in general for x, y in rows if x in sides), pair
    # cs has none of those grammars: its pairs are descriptions only
    assert not any(x.endswith("?") or y.endswith("?") for _, x, y in _wikimatrix(world, "cs-de"))


def test_general_share_zero_keeps_captions_only(tmp_path: Path) -> None:
    out = make_world(tmp_path / "w", sizes=SIZES["tiny"].scaled(0.1), shards=False, log=lambda _: None,
                     general_share=0.0)
    assert out["raw"]["dt"]["wikimatrix_general_share"] == 0.0
    general = _all_general_pairs("de", "en")
    rows = _wikimatrix(tmp_path / "w", "de-en")
    assert rows and not any((x, y) in general for _, x, y in rows)
    with pytest.raises(ValueError, match="general_share"):
        make_world(tmp_path / "w2", sizes=SIZES["tiny"].scaled(0.1), shards=False, log=lambda _: None, general_share=1.5)


def test_english_weight_makes_wikimatrix_english_centric(tmp_path: Path) -> None:
    """Real WikiMatrix holds far more en-X than X-Y pairs; `english_weight` W gives every en-X file W
    times the translations of an X-Y file (counted in the raw TSVs, above the margin threshold)."""
    sizes = SIZES["tiny"].scaled(0.1)
    out = make_world(tmp_path / "w", sizes=sizes, shards=False, log=lambda _: None, english_weight=4.0)
    dt = out["raw"]["dt"]
    assert dt["wikimatrix_english_weight"] == 4.0
    good = {pair: sum(s >= dt["wikimatrix_min_score"] for s, _, _ in _wikimatrix(tmp_path / "w", pair))
            for pair in dt["wikimatrix"]}
    en = [n for pair, n in good.items() if "en" in pair.split("-")]
    other = [n for pair, n in good.items() if "en" not in pair.split("-")]
    assert len(en) == 6 and len(other) == 15 and sum(good.values()) == sizes.dt_pairs
    assert min(en) >= 4 * max(other) - 4 and max(en) <= 4 * min(other) + 4, (en, other)
    with pytest.raises(ValueError, match="english_weight"):
        make_world(tmp_path / "w2", sizes=sizes, shards=False, log=lambda _: None, english_weight=0.0)
