"""Downstream readers: every released annotation file parses to its size (the published size with
RC3_DATA set to the full release, the excerpt's size on tests/data), and hand-written files cover the
edge cases (unlabeled rows, vocabulary misses, malformed lines)."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from rc3.finetune.readers import (
    AnnotationError,
    Examples,
    marvl,  # Released sizes (IGLUE paper / Multi30K README), checked against the files themselves.
    multi30k,
    xflickrco,
    xgqa,
    xvnli,
)

# "full": the published release (IGLUE paper, Multi30K README), counted in the files themselves.
# "excerpt": tests/data/release-excerpt.tar.gz (the lines tools/make_test_excerpt.py keeps), counted
# with grep and json.loads on the unpacked files, not with these readers.
EXPECTED = {
    "full": dict(
        xvnli_lines={"test": 1164, "train_48": 168}, xvnli_unlabeled={"test": 14, "train_48": 5},
        xvnli_labels={"entailment": 394, "neutral": 381, "contradiction": 375}, xvnli_images=357,
        xgqa_questions=1422, xgqa_images=50,
        marvl_sizes={"id": 1128, "sw": 1108, "ta": 1242, "tr": 1180, "zh": 1012}, marvl_zh_labels={0: 508, 1: 504},
        nlvr2_size=6967, nlvr2_labels={1: 3558, 0: 3409},  # NLVR2 Test-P
        xflickrco_size=2000, xflickrco_coco=1000, flickr30k_images=1000,
        multi30k_sizes={"train": 29000, "val": 1014, "test_2016_flickr": 1000, "test_2017_flickr": 1000,
                        "test_2017_mscoco": 461},
        # Files under iglue/ that belong to no task read here (WIT retrieval is not one of the paper's tasks).
        not_read_here={"IGLUE-README.md", "LICENSE", "wit/annotations/test_en.jsonl",
                       "wit/annotations/test_id.jsonl", "wit/annotations/test_ja.jsonl"}),
    "excerpt": dict(
        xvnli_lines={"test": 200, "train_48": 100}, xvnli_unlabeled={"test": 2, "train_48": 4},
        xvnli_labels={"entailment": 68, "neutral": 62, "contradiction": 68}, xvnli_images=63,
        xgqa_questions=86, xgqa_images=3,
        marvl_sizes={"id": 150, "sw": 150, "ta": 150, "tr": 150, "zh": 150}, marvl_zh_labels={0: 74, 1: 76},
        nlvr2_size=200, nlvr2_labels={1: 104, 0: 96},
        xflickrco_size=650, xflickrco_coco=100, flickr30k_images=100,
        multi30k_sizes={"train": 1500, "val": 300, "test_2016_flickr": 1000, "test_2017_flickr": 200,
                        "test_2017_mscoco": 200},
        not_read_here={"LICENSE"}),
}


def _lines(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


@pytest.fixture(scope="module")
def iglue(release_data: Path) -> Path:
    return release_data / "iglue"


@pytest.fixture(scope="module")
def want(is_full_release: bool) -> dict:
    return EXPECTED["full" if is_full_release else "excerpt"]


def test_every_iglue_file_is_covered(iglue: Path, want: dict) -> None:
    covered = {p.relative_to(iglue).as_posix() for pattern in (
        "XVNLI/annotations/*/*.jsonl", "xGQA/annotations/*/*/*.json", "gqa/annotations/*.json",
        "marvl/zero_shot/annotations/marvl-*.jsonl", "nlvr2/annotations/*.jsonl",
        "xFlickrCO/annotations/*/*.jsonl", "flickr30k/annotations/*.jsonl") for p in iglue.glob(pattern)}
    every = {p.relative_to(iglue).as_posix() for p in iglue.rglob("*") if p.is_file()}
    assert every - covered == want["not_read_here"]


def test_xvnli_real_files(iglue: Path, want: dict) -> None:
    root = iglue / "XVNLI"
    assert xvnli.xvnli_langs(root, "test") == ["ar", "en", "es", "fr", "ru"]
    for lang in xvnli.LANGS:
        for split in ("test", "train_48"):
            path = xvnli.xvnli_path(root, lang, split)
            ex = xvnli.read_xvnli(path, lang)
            assert _lines(path) == want["xvnli_lines"][split]
            assert ex.skipped == Counter(unlabeled=want["xvnli_unlabeled"][split])
            assert len(ex) == want["xvnli_lines"][split] - want["xvnli_unlabeled"][split]
            assert all(e.image.isdigit() and e.lang == lang and e.text == e.hypothesis for e in ex)
        test = xvnli.read_xvnli(xvnli.xvnli_path(root, lang, "test"), lang)
        assert Counter(xvnli.LABELS[e.label] for e in test) == want["xvnli_labels"]
        assert len({e.image for e in test}) == want["xvnli_images"]
    # The translations are line-aligned with English: same pairs, same images, same labels.
    en = xvnli.read_xvnli(xvnli.xvnli_path(root, "en", "test"), "en")
    fr = xvnli.read_xvnli(xvnli.xvnli_path(root, "fr", "test"), "fr")
    assert [(e.pair_id, e.image, e.label) for e in en] == [(e.pair_id, e.image, e.label) for e in fr]
    assert en[0].image == "759822302"


def test_xgqa_real_files(iglue: Path, want: dict) -> None:
    vocab = xgqa.load_answer_vocab(iglue / "gqa/annotations/trainval_ans2label.json")
    assert len(vocab) == xgqa.N_ANSWERS == 1842
    assert xgqa.load_answer_vocab(iglue / "gqa/annotations/trainval_label2ans.json") == vocab
    assert xgqa.label_to_answer(vocab)[vocab["puddle"]] == "puddle"
    root = iglue / "xGQA"
    assert xgqa.xgqa_langs(root, "dev") == sorted(xgqa.LANGS)
    by_lang = {}
    for lang in xgqa.LANGS:
        ex = xgqa.read_xgqa(xgqa.xgqa_path(root, lang, "dev"), vocab, lang)
        assert len(ex) == want["xgqa_questions"] and ex.n_skipped == 0 and not ex.flagged
        assert len({e.image for e in ex}) == want["xgqa_images"]
        assert all(0 <= e.label < 1842 and e.answer in vocab for e in ex)
        by_lang[lang] = ex
    # Questions are translated, answers and images are not.
    assert [(e.question_id, e.image, e.answer) for e in by_lang["de"]] == \
           [(e.question_id, e.image, e.answer) for e in by_lang["en"]]
    assert by_lang["de"][0].question != by_lang["en"][0].question
    assert xgqa.xgqa_accuracy({e.question_id: e.answer for e in by_lang["en"]}, by_lang["en"]) == 100.0


def test_marvl_and_nlvr2_real_files(iglue: Path, want: dict) -> None:
    root = iglue / "marvl/zero_shot/annotations"
    assert marvl.marvl_langs(root) == sorted(marvl.LANGS)
    for lang, size in want["marvl_sizes"].items():
        ex = marvl.read_marvl(marvl.marvl_path(root, lang))
        assert len(ex) == size == _lines(marvl.marvl_path(root, lang))
        assert all(e.lang == lang and e.label in (0, 1) for e in ex)
        assert all("." not in e.left_image and "." not in e.right_image for e in ex)
    zh = marvl.read_marvl(marvl.marvl_path(root, "zh"), "zh")
    assert (zh[0].left_image, zh[0].right_image, zh[0].label, zh[0].concept) == ("82-6", "82-1", 0, "82-铅笔")
    assert Counter(e.label for e in zh) == want["marvl_zh_labels"]

    nlvr2 = marvl.read_nlvr2(iglue / "nlvr2/annotations/test.jsonl")
    assert len(nlvr2) == want["nlvr2_size"]
    assert Counter(e.label for e in nlvr2) == want["nlvr2_labels"]
    first = nlvr2[0]
    assert (first.id, first.left_image, first.right_image) == ("test1-0-1-0", "test1-0-1-img0", "test1-0-1-img1")


def test_xflickrco_real_files(iglue: Path, want: dict) -> None:
    root = iglue / "xFlickrCO"
    assert xflickrco.xflickrco_langs(root) == sorted(xflickrco.LANGS)
    images = None
    for lang in xflickrco.LANGS:
        ex = xflickrco.read_retrieval(xflickrco.xflickrco_path(root, lang), lang)
        table = xflickrco.caption_table(ex)
        n = want["xflickrco_size"]
        assert len(ex) == len(table.images) == len(table.captions) == n
        assert sum(i.startswith("COCO_val2014_") for i in table.images) == want["xflickrco_coco"]
        assert table.captions_of() == [[j] for j in range(n)]
        images = images or table.images
        assert table.images == images  # the same images in every language, same order
    en = xflickrco.read_retrieval(xflickrco.xflickrco_path(root, "en"), "en")
    coco = next(e for e in en if e.image.startswith("COCO"))
    assert isinstance(coco.id, str) and coco.image == f"COCO_val2014_{int(coco.id):012d}.jpg"
    # Flickr30k English layout: 5 sentences per image, same reader.
    f30k = xflickrco.read_retrieval(iglue / "flickr30k/annotations/test_ann.jsonl", "en")
    table = xflickrco.caption_table(f30k)
    assert len(f30k) == want["flickr30k_images"] and len(table.captions) == 5 * want["flickr30k_images"]
    assert all(len(c) == 5 for c in table.captions_of())


def test_multi30k_real_files(release_data: Path, want: dict) -> None:
    root = release_data / "multi30k"
    for split, size in want["multi30k_sizes"].items():
        langs = multi30k.multi30k_langs(root, split)
        assert langs == (["en", "de", "fr", "cs"] if split in ("train", "val", "test_2016_flickr") else ["en", "de", "fr"])
        ex = multi30k.read_multi30k(root, split)
        assert len(ex) == size
        assert all(e.image and e.image.endswith(".jpg") and set(e.texts) == set(langs) for e in ex)
        assert all(all(t for t in e.texts.values()) for e in ex)
    test16 = multi30k.read_multi30k(root, "test2016", ["en", "de"])
    assert test16[0].image == "1007129816.jpg"
    assert test16[0].texts["de"] == "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."
    coco = multi30k.read_multi30k(root, "test_2017_mscoco", ["en"])
    assert coco[0].image == "COCO_train2014_000000117071.jpg"  # '#<caption id>' dropped


# ---- hand-written files: edge cases ----

def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _vnli(label: str, hyp: str = "A dog runs.", image: str = "123") -> dict:
    return {"gold_label": label, "sentence1": "p", "sentence2": hyp, "captionID": f"{image}.jpg#0",
            "pairID": f"{image}.jpg#0r1{label[:1]}", "Flikr30kID": image}


def test_xvnli_skips_unlabeled_and_rejects_bad_rows(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "annotations/en/dev.jsonl",
                        [_vnli("entailment"), _vnli("-"), "", _vnli("contradiction", image="9"), _vnli("-")])
    ex = xvnli.read_xvnli(xvnli.xvnli_path(tmp_path, "en", "dev"), "en")
    assert isinstance(ex, Examples) and ex.source == path
    assert [(e.label, e.image) for e in ex] == [(0, "123"), (2, "9")]
    assert ex.skipped == {"unlabeled": 2} and ex.n_skipped == 2
    assert xvnli.LABELS == ("entailment", "neutral", "contradiction")

    bad = _write_jsonl(tmp_path / "bad.jsonl", [_vnli("neutral"), '{"gold_label": "neutral", "sentence2": '])
    with pytest.raises(AnnotationError, match=rf"{bad}:2: not valid JSON"):
        xvnli.read_xvnli(bad, "en")
    with pytest.raises(AnnotationError, match=r"bad2.jsonl:1: gold_label 'maybe'"):
        xvnli.read_xvnli(_write_jsonl(tmp_path / "bad2.jsonl", [_vnli("maybe")]), "en")
    row = _vnli("neutral")
    del row["Flikr30kID"]
    with pytest.raises(AnnotationError, match=r"bad3.jsonl:1: missing field 'Flikr30kID'"):
        xvnli.read_xvnli(_write_jsonl(tmp_path / "bad3.jsonl", [row]), "en")
    with pytest.raises(AnnotationError, match=r"bad4.jsonl:1: expected a JSON object"):
        xvnli.read_xvnli(_write_jsonl(tmp_path / "bad4.jsonl", ["[1, 2]"]), "en")
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        xvnli.read_xvnli(tmp_path / "missing.jsonl", "en")
    with pytest.raises(ValueError, match="unknown XVNLI split"):
        xvnli.xvnli_path(tmp_path, "en", "validation")


def test_xgqa_out_of_vocab_answers(tmp_path: Path) -> None:
    vocab_path = tmp_path / "ans2label.json"
    vocab_path.write_text(json.dumps({"yes": 0, "no": 1, "red": 2}))
    vocab = xgqa.load_answer_vocab(vocab_path)
    qs = {"q1": {"question": "Is it red?", "imageId": "n1", "answer": "yes", "fullAnswer": "Yes."},
          "q2": {"question": "What color?", "imageId": "n1", "answer": "chartreuse"},
          "q3": {"question": "Is it?", "imageId": 2375, "answer": "no"}}
    path = tmp_path / "test.json"
    path.write_text(json.dumps(qs))
    ev = xgqa.read_xgqa(path, vocab, "de")
    assert [(e.question_id, e.label) for e in ev] == [("q1", 0), ("q2", -1), ("q3", 1)]
    assert ev.flagged == {"answer_not_in_vocab": 1} and ev.n_skipped == 0
    assert ev[2].image == "2375"
    train = xgqa.read_xgqa(path, vocab, "en", training=True)
    assert [e.question_id for e in train] == ["q1", "q3"] and train.skipped == {"answer_not_in_vocab": 1}
    # The OOV question stays in the denominator: at best 2 of 3 right.
    preds = {"q1": "yes", "q2": "red", "q3": "no"}
    assert xgqa.xgqa_accuracy(preds, ev) == pytest.approx(200 / 3)
    # Exact match, not substring: "no" is not "not" and "red" is not "reddish".
    assert xgqa.xgqa_accuracy({"q1": "yes ", "q3": "not"}, ev) == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="key predictions by question_id"):
        xgqa.xgqa_accuracy({"x": "yes"}, ev)

    (tmp_path / "gap.json").write_text(json.dumps({"yes": 0, "no": 2}))
    with pytest.raises(AnnotationError, match="not exactly 0..1"):
        xgqa.load_answer_vocab(tmp_path / "gap.json")
    (tmp_path / "broken.json").write_text('{"q1": {"question": "a",\n "answer": }')
    with pytest.raises(AnnotationError, match=r"broken.json:2: not valid JSON"):
        xgqa.read_xgqa(tmp_path / "broken.json", vocab, "en")
    (tmp_path / "noimg.json").write_text(json.dumps({"q9": {"question": "a", "answer": "yes"}}))
    with pytest.raises(AnnotationError, match=r"noimg.json:question q9: missing field 'imageId'"):
        xgqa.read_xgqa(tmp_path / "noimg.json", vocab, "en")


def test_marvl_nlvr2_keys_and_labels(tmp_path: Path) -> None:
    assert marvl.image_key("82-6.jpg") == "82-6"
    assert marvl.image_key("images/zh/82-6.jpg") == "82-6"
    assert marvl.nlvr2_image_keys("dev-850-0-3") == ("dev-850-0-img0", "dev-850-0-img1")
    path = _write_jsonl(tmp_path / "marvl-sw.jsonl", [
        {"concept": "1-x", "language": "sw", "caption": "c", "left_img": "1-2.jpg", "right_img": "1-3.png",
         "id": "sw-0", "label": True},
        {"concept": "1-x", "language": "sw", "caption": "d", "left_img": "1-4.jpg", "right_img": "1-5.jpg",
         "id": "sw-1", "label": False}])
    ex = marvl.read_marvl(path)
    assert [(e.left_image, e.right_image, e.label, e.lang) for e in ex] == [("1-2", "1-3", 1, "sw"), ("1-4", "1-5", 0, "sw")]
    nl = _write_jsonl(tmp_path / "train.jsonl", [
        {"identifier": "train-10171-0-0", "sentence": "s", "label": "True"},
        {"identifier": "train-10171-0-1", "sentence": "t", "label": "False"}])
    assert [(e.left_image, e.label) for e in marvl.read_nlvr2(nl)] == [("train-10171-0-img0", 1), ("train-10171-0-img0", 0)]
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"identifier": "a-b-0", "sentence": "s", "label": "yes"}])
    with pytest.raises(AnnotationError, match=r"bad.jsonl:1: label 'yes'"):
        marvl.read_nlvr2(bad)
    bad_int = _write_jsonl(tmp_path / "bad_int.jsonl", [
        {"language": "sw", "caption": "c", "left_img": "a.jpg", "right_img": "b.jpg", "id": "x", "label": 1}])
    with pytest.raises(AnnotationError, match=r"bad_int.jsonl:1: field 'label' should be bool/str"):
        marvl.read_marvl(bad_int)


def test_retrieval_file_edge_cases(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "train.jsonl", [
        {"sentences": ["a", "b", "c"], "id": 7, "img_path": "COCO_val2014_000000000007.jpg"},
        {"sentences": ["d"], "id": "12", "img_path": "12.jpg"}])
    ex = xflickrco.read_retrieval(path, "en")
    table = xflickrco.caption_table(ex)
    assert ex[0].id == "7" and table.caption_image == [0, 0, 0, 1] and table.captions_of() == [[0, 1, 2], [3]]
    dup = _write_jsonl(tmp_path / "dup.jsonl", [{"sentences": ["a"], "id": "1", "img_path": "1.jpg"}] * 2)
    with pytest.raises(AnnotationError, match="appears on more than one line"):
        xflickrco.caption_table(xflickrco.read_retrieval(dup, "en"))
    empty = _write_jsonl(tmp_path / "empty.jsonl", [{"sentences": [], "id": "1", "img_path": "1.jpg"}])
    with pytest.raises(AnnotationError, match=r"empty.jsonl:1: 'sentences' must be a non-empty list"):
        xflickrco.read_retrieval(empty, "en")


def _gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def test_multi30k_alignment_and_missing_images(tmp_path: Path) -> None:
    _gz(tmp_path / "raw/val.en.gz", ["a dog", "a cat"])
    _gz(tmp_path / "raw/val.de.gz", ["ein Hund", "eine Katze"])
    with pytest.raises(FileNotFoundError, match="allow_missing_images=True"):
        multi30k.read_multi30k(tmp_path, "valid")
    ex = multi30k.read_multi30k(tmp_path, "valid", allow_missing_images=True)
    assert [(e.index, e.image, dict(e.texts)) for e in ex] == [
        (0, None, {"en": "a dog", "de": "ein Hund"}), (1, None, {"en": "a cat", "de": "eine Katze"})]
    (tmp_path / "image_splits").mkdir()
    (tmp_path / "image_splits/val.txt").write_text("1.jpg#5\n2.jpg\n")
    assert [e.image for e in multi30k.read_multi30k(tmp_path, "val", ["de"])] == ["1.jpg", "2.jpg"]
    _gz(tmp_path / "raw/val.fr.gz", ["un chien"])
    with pytest.raises(AnnotationError, match=r"val.fr.gz:2: ends after 1 lines"):
        multi30k.read_multi30k(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match=r"val.cs.gz not found"):
        multi30k.read_multi30k(tmp_path, "val", ["cs"])
    with pytest.raises(ValueError, match="unknown Multi30K split"):
        multi30k.read_multi30k(tmp_path, "test2018")
