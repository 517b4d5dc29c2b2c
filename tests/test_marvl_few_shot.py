"""MaRVL few-shot: the MaRVL recipe trains on MaRVL-format files (IGLUE's few-shot splits) as well as NLVR2,
rc3-evaluate plans IGLUE's MaRVL shots (1, 2, 4, 10, 10x2) from the released layout, and the synthetic
world writes those splits and their per-language LMDB feature stores."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rc3.finetune.config import finetune_config_from_dict
from rc3.finetune.readers import AnnotationError

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_RECIPES = REPO / "configs" / "finetune" / "synthetic"

# Two rows as released (e-bug/iglue datasets/marvl/few_shot/annotations/marvl-id_train1.jsonl, captions shortened)
MARVL_ROWS = [
    '{"concept": "39-Panci", "language": "id", "caption": "Terdapat tutup panci pada gambar sebelah kanan", '
    '"left_img": "39-Panci/39-n-5.jpg", "right_img": "39-Panci/39-n-2.jpg", "annotator_info": {"annotator_id": "id_01"}, '
    '"chapter": "Basic actions and technology", "id": "id-0", "label": true}',
    '{"concept": "39-Panci", "language": "id", "caption": "Ada panci tanpa tutup", "left_img": "39-Panci/39-10.jpg", '
    '"right_img": "39-Panci/39-n-6.jpg", "chapter": "Basic actions and technology", "id": "id-2", "label": false}',
]
NLVR2_ROWS = [
    '{"identifier": "dev-850-0-1", "sentence": "There are two dogs.", "label": "False", "left_url": "x", "right_url": "y", '
    '"synset": "dog"}',
]


def _cfg(root: Path, train: str, dev: str | None, train_lang: str) -> object:
    return finetune_config_from_dict({}, "marvl", [f"data.root={root}", f"data.train={train}",
                                                    f"data.dev={dev if dev else 'null'}", f"data.train_lang={train_lang}",
                                                    "data.test=marvl/zero_shot/annotations", "data.features=[features.h5]"])


def test_recipe_trains_on_marvl_format_files_and_keeps_nlvr2_dev(tmp_path: Path) -> None:
    from rc3.finetune.marvl import MaRVLTask

    (tmp_path / "few").mkdir()
    (tmp_path / "few" / "marvl-id_train1.jsonl").write_text("\n".join(MARVL_ROWS) + "\n", encoding="utf-8")
    (tmp_path / "dev.jsonl").write_text("\n".join(NLVR2_ROWS) + "\n", encoding="utf-8")
    task = MaRVLTask(_cfg(tmp_path, "few/marvl-id_train1.jsonl", "dev.jsonl", "id"))  # type: ignore[arg-type]
    train = task.train_items()
    # reference from the raw lines: the feature key of "39-Panci/39-n-5.jpg" is the file stem "39-n-5"
    assert [(t.uid, t.text, t.images, t.label, t.lang) for t in train] == [
        ("id-0", "Terdapat tutup panci pada gambar sebelah kanan", ("39-n-5", "39-n-2"), 1, "id"),
        ("id-2", "Ada panci tanpa tutup", ("39-10", "39-n-6"), 0, "id")]
    dev = task.dev_items()
    assert dev is not None and [(t.uid, t.images, t.label) for t in dev] == [("dev-850-0-1", ("dev-850-0-img0", "dev-850-0-img1"), 0)]
    # NLVR2 training data still reads as before
    nlvr2 = MaRVLTask(_cfg(tmp_path, "dev.jsonl", None, "en")).train_items()  # type: ignore[arg-type]
    assert [(t.uid, t.text, t.images, t.lang) for t in nlvr2] == [("dev-850-0-1", "There are two dogs.",
                                                                  ("dev-850-0-img0", "dev-850-0-img1"), "en")]


def test_few_shot_language_tests_on_marvl_not_on_the_english_nlvr2_test(tmp_path: Path) -> None:
    """A few-shot run sets data.train_lang to its language; the NLVR2 Test-P stays the "en" row."""
    from rc3.finetune.marvl import MaRVLTask

    test = tmp_path / "marvl/zero_shot/annotations/marvl-id.jsonl"
    test.parent.mkdir(parents=True)
    test.write_text("\n".join(MARVL_ROWS) + "\n", encoding="utf-8")
    (tmp_path / "test1.jsonl").write_text("\n".join(NLVR2_ROWS) + "\n", encoding="utf-8")
    for langs, want in ((["id"], {"id": ["id-0", "id-2"]}), (["en", "id"], {"en": ["dev-850-0-1"], "id": ["id-0", "id-2"]})):
        cfg = finetune_config_from_dict({}, "marvl", [f"data.root={tmp_path}", "data.train=x.jsonl", "data.train_lang=id",
                                                      "data.english_test=test1.jsonl", "data.test=marvl/zero_shot/annotations",
                                                      "data.features=[features.h5]", f"data.test_langs=[{','.join(langs)}]"])
        sets = MaRVLTask(cfg).test_sets()  # type: ignore[arg-type]
        assert {lang: [t.uid for t in items] for lang, items in sets.items()} == want


def test_a_row_of_neither_format_is_one_line_naming_the_file(tmp_path: Path) -> None:
    from rc3.finetune.marvl import MaRVLTask

    bad = tmp_path / "bad.jsonl"
    bad.write_text('\n{"question": "Is it?", "imageId": "n1", "answer": "yes"}\n', encoding="utf-8")
    with pytest.raises(AnnotationError) as err:
        MaRVLTask(_cfg(tmp_path, "bad.jsonl", None, "id")).train_items()  # type: ignore[arg-type]
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}:2: neither an NLVR2 row (identifier, sentence) nor a MaRVL row")


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_evaluation_plans_iglue_marvl_shots_and_lists_languages_without_splits(tmp_path: Path) -> None:
    from rc3.evaluate import runner

    data, model = tmp_path / "data", tmp_path / "model"
    _touch(model / "rc3_config.json", "{}")
    for f in ["features.h5", "nlvr2/annotations/train.jsonl", "nlvr2/annotations/dev.jsonl", "nlvr2/annotations/test.jsonl",
              *[f"marvl/zero_shot/annotations/marvl-{lang}.jsonl" for lang in ("id", "sw", "tr", "zh")]]:
        _touch(data / f)
    few = data / "marvl/few_shot"
    for n in ("1", "2", "4", "10", "10x2"):  # the released file names
        _touch(few / f"annotations/marvl-id_train{n}.jsonl")
    _touch(few / "annotations/marvl-zh_train1.jsonl")
    (few / "features/marvl-id_fewshot_boxes36.lmdb").mkdir(parents=True)
    ev = runner.Evaluation(runner.EvalOptions(model, data, tmp_path / "out", SYNTHETIC_RECIPES, tasks=["marvl"],
                                              few_shot=True, log=lambda _: None))
    ev.load_configs()
    ev.check_layout()
    plan = ev.plans["marvl"]
    assert plan.few_shot == {"id": [1, 2, 4, 10, "10x2"], "zh": [1]}
    missing = {(m["language"], m["split"]) for m in plan.missing}
    assert {(lang, f"few_shot_{n}") for lang in ("sw", "tr") for n in (1, 2, 4, 10, "10x2")} <= missing
    assert {("zh", f"few_shot_{n}") for n in (2, 4, 10, "10x2")} <= missing and ("zh", "few_shot_1") not in missing
    assert not any(m["split"].startswith("few_shot") for m in plan.missing if m["language"] in ("id", "en"))
    # the English row (NLVR2 Test-P) trains no few-shot model
    assert "en" in plan.langs["test"] and "en" not in plan.few_shot
    from rc3.evaluate.runner import _few_shot_features
    from rc3.evaluate.tasks import TASKS

    fs = TASKS["marvl"].few_shot
    assert fs is not None and fs.batch_size_of(10) == 16 and fs.batch_size_of("10x2") == 32
    # the language's released LMDB store follows the recipe's own stores; a language without one adds none
    assert _few_shot_features(plan.cfg, fs, "id") == [str(data / "features.h5"),
                                                      str(few / "features/marvl-id_fewshot_boxes36.lmdb")]
    assert _few_shot_features(plan.cfg, fs, "zh") == [str(data / "features.h5")]


def test_shot_labels() -> None:
    from rc3.evaluate.tasks import parse_shot, shot_order
    from rc3.tools.evaluate import build_parser

    assert [parse_shot(s) for s in ("1", "48", "10x2")] == [1, 48, "10x2"]
    for bad in ("0", "x2", "10x", "ten", "-1"):
        with pytest.raises(ValueError, match="give a positive count"):
            parse_shot(bad)
    assert sorted(["10x2", 4, 10, 1], key=shot_order) == [1, 4, 10, "10x2"]
    args = build_parser().parse_args(["m", "--data", "d", "--out", "o", "--shots", "1", "10x2"])
    assert args.shots == [1, "10x2"]


def test_synthetic_world_writes_marvl_few_shot_splits_in_the_released_layout(tmp_path: Path) -> None:
    from rc3.data.features_open import open_feature_store
    from rc3.synthetic.downstream_eval import write_marvl_few_shot
    from rc3.synthetic.render import RoiEncoder
    from rc3.synthetic.world import stream

    info = write_marvl_few_shot(tmp_path, RoiEncoder(0), stream(0, "marvl-few-shot"), shots=(1, 2, "2x2"))
    assert info["langs"] == ["id", "tr", "zh"]  # the world's MaRVL languages that IGLUE has few-shot splits for
    few = tmp_path / "downstream/marvl/few_shot"
    assert sorted(p.name for p in (few / "annotations").iterdir()) == sorted(
        f"marvl-{lang}_train{n}.jsonl" for lang in ("id", "tr", "zh") for n in ("1", "2", "2x2"))
    for lang in info["langs"]:
        rows = {n: [json.loads(s) for s in (few / f"annotations/marvl-{lang}_train{n}.jsonl").read_text(encoding="utf-8").splitlines()]
                for n in ("1", "2", "2x2")}
        # a shot is a concept of four statements (two true); 2x2 adds a second group of four to each concept
        assert [len(rows[n]) for n in ("1", "2", "2x2")] == [4, 8, 16]
        assert rows["2"][:4] == rows["1"] and rows["2x2"][:8] == rows["2"]  # nested, as released
        assert len({r["concept"] for r in rows["1"]}) == 1 and len({r["concept"] for r in rows["2x2"]}) == 2
        assert [r["id"] for r in rows["2x2"]] == [f"{lang}-{i}" for i in range(16)]
        for i in range(0, 16, 4):
            assert sorted(r["label"] for r in rows["2x2"][i:i + 4]) == [False, False, True, True]
        for r in rows["2x2"]:
            assert set(r) >= {"concept", "language", "caption", "left_img", "right_img", "chapter", "id", "label"}
            assert r["language"] == lang and r["left_img"].startswith(r["concept"] + "/") and r["left_img"] != r["right_img"]
        wanted = {r[side].split("/")[-1][:-len(".jpg")] for r in rows["2x2"] for side in ("left_img", "right_img")}
        store = open_feature_store(few / f"features/marvl-{lang}_fewshot_boxes36.lmdb")
        assert wanted <= set(store.keys_list())
        feats, boxes = store[sorted(wanted)[0]]
        assert feats.shape == (36, 2048) and boxes.shape == (36, 5)
        for key in wanted:
            assert (tmp_path / "downstream/images/marvl_few_shot" / f"{key}.jpg").is_file()
            assert int(key.split("-")[0]) >= 100  # disjoint from the zero-shot concepts' images


def test_few_shot_warmup_is_a_tenth_of_the_runs_steps_counted_from_the_split_file(tmp_path: Path) -> None:
    """IGLUE's --warmup_proportion 0.1, in optimizer steps, from the raw split files of each layout."""
    from rc3.evaluate.runner import few_shot_warmup

    marvl = tmp_path / "marvl-id_train10.jsonl"  # 40 MaRVL statements, one per line
    marvl.write_text("".join(json.dumps({"caption": f"c{i}", "label": True}) + "\n" for i in range(40)))
    assert few_shot_warmup(marvl, 16, 20) == int(0.1 * 3 * 20)  # ceil(40 / 16) = 3 steps an epoch
    xgqa = tmp_path / "train_48.json"  # questions by id
    xgqa.write_text(json.dumps({str(i): {"question": "q"} for i in range(192)}))
    assert few_shot_warmup(xgqa, 8, 20) == int(0.1 * 24 * 20)
    flickr = tmp_path / "train_5.jsonl"  # xFlickr&CO: an image a line, its captions in `sentences`
    flickr.write_text("".join(json.dumps({"img_path": f"{i}.jpg", "sentences": ["a", "b"]}) + "\n" for i in range(5)))
    assert few_shot_warmup(flickr, 4, 20) == int(0.1 * 3 * 20)  # 10 captions: ceil(10 / 4) = 3
