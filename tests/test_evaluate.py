"""rc3-evaluate: layout check before training, missing languages listed, XM3600 and few-shot layouts,
resuming a killed evaluation, and one whole run on the synthetic world (every task and language)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from procs import run_bounded

from rc3.evaluate import EvalOptions, LayoutError, evaluate
from rc3.evaluate import runner as eval_runner

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_RECIPES = REPO / "configs" / "finetune" / "synthetic"


def touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def fake_release(root: Path) -> None:
    """Empty files where configs/finetune/synthetic expects them: enough for the layout check."""
    for f in ["features.h5", "XVNLI/annotations/en/train.jsonl", "XVNLI/annotations/en/dev.jsonl",
              "XVNLI/annotations/en/test.jsonl", "XVNLI/annotations/fr/test.jsonl",
              "gqa/annotations/train_balanced_questions.json", "gqa/annotations/testdev_balanced_questions.json",
              "gqa/annotations/trainval_ans2label.json", "xGQA/annotations/few_shot/de/test.json"]:
        touch(root / f)


def no_training(*args: object) -> None:
    raise AssertionError(f"a recipe ran before the layout was checked: {args}")


def test_layout_check_names_the_missing_file_before_any_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eval_runner, "run_recipe", no_training)
    model = tmp_path / "model"
    touch(model / "rc3_config.json", "{}")
    data = tmp_path / "data"
    fake_release(data)
    (data / "gqa/annotations/trainval_ans2label.json").unlink()
    opts = EvalOptions(model, data, tmp_path / "out", SYNTHETIC_RECIPES, tasks=["xvnli", "xgqa"], log=lambda _: None)
    with pytest.raises(LayoutError) as err:
        evaluate(opts)
    lines = str(err.value).splitlines()
    assert lines == [f"xgqa: missing {data / 'gqa/annotations/trainval_ans2label.json'} (data.answer_vocab); "
                     "fix --data or the recipe in --recipes"], lines
    assert not (tmp_path / "out").exists()

    with pytest.raises(LayoutError, match=r"^--data .*nowhere: no such folder"):
        evaluate(EvalOptions(model, tmp_path / "nowhere", tmp_path / "out", SYNTHETIC_RECIPES, log=lambda _: None))

    # XM3600 without its captions: one line naming DATA/xm3600/captions.jsonl
    flickr = ["flickr30k/annotations/train_ann.jsonl", "xFlickrCO/annotations/en/test.jsonl"]
    for f in flickr:
        touch(data / f)
    opts = EvalOptions(model, data, tmp_path / "out", SYNTHETIC_RECIPES, tasks=["xm3600"], log=lambda _: None)
    with pytest.raises(LayoutError, match=r"^xm3600: missing .*xm3600/captions\.jsonl \(XM3600 captions"):
        evaluate(opts)


def test_languages_without_data_are_listed_missing(tmp_path: Path) -> None:
    model = tmp_path / "model"
    touch(model / "rc3_config.json", "{}")
    data = tmp_path / "data"
    fake_release(data)
    ev = eval_runner.Evaluation(EvalOptions(model, data, tmp_path / "out", SYNTHETIC_RECIPES, tasks=["xvnli", "xgqa"],
                                            few_shot=True, log=lambda _: None))
    ev.load_configs()
    ev.check_layout()
    xvnli = ev.plans["xvnli"]
    assert xvnli.langs == {"test": ["en", "fr"]}
    missing = {(m["language"], m["split"]) for m in xvnli.missing}
    # XVNLI's release has ar, es, ru too: listed, not dropped; fr has no few-shot split here
    assert {("ar", "test"), ("es", "test"), ("ru", "test")} <= missing
    assert {("fr", f"few_shot_{n}") for n in (1, 5, 10, 20, 25, 48)} <= missing
    assert ("en", "test") not in missing and ("fr", "test") not in missing
    xgqa_missing = {m["language"] for m in ev.plans["xgqa"].missing if m["split"] == "test"}
    assert xgqa_missing == {"bn", "en", "id", "ko", "pt", "ru", "zh"}
    # --langs asks for a language no XVNLI data has: missing with a reason, never silently dropped
    ev = eval_runner.Evaluation(EvalOptions(model, data, tmp_path / "out", SYNTHETIC_RECIPES, tasks=["xvnli"],
                                            langs=["fr", "ja"], log=lambda _: None))
    ev.load_configs()
    ev.check_layout()
    assert ev.plans["xvnli"].langs["test"] == ["fr"]
    assert [(m["language"], m["reason"]) for m in ev.plans["xvnli"].missing] == [("ja", "not a xvnli language")]


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model"
    touch(model / "rc3_config.json", "{}")
    opts = EvalOptions(model, tmp_path, tmp_path / "out", SYNTHETIC_RECIPES, tasks=["xvnli"],
                       overrides=["trian.epochs=1"], log=lambda _: None)
    with pytest.raises(ValueError, match=r"--set trian\.epochs=1: no selected recipe has a 'trian' section"):
        evaluate(opts)


def test_xm3600_release_to_retrieval_layout(tmp_path: Path) -> None:
    from rc3.evaluate.xm3600 import XM3600Error, caption_langs, read_captions, to_retrieval_layout

    lines = [{"image/key": "000411001ff7dd4f", "image/locale": "id",
              "en": {"caption": ["A dog.", "A brown dog."], "caption/tokenized": ["a dog ."]},
              "de": {"caption": ["Ein Hund."]}},
             {"image/key": "00ab", "image/locale": "en", "en": {"caption": ["Two cats."]}, "de": {"caption": []}}]
    touch(tmp_path / "captions.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    records = read_captions(tmp_path / "captions.jsonl")
    assert caption_langs(records) == ["de", "en"]
    counts = to_retrieval_layout(records, ["de", "en"], tmp_path / "conv")
    assert counts == {"de": 1, "en": 2}
    en = [json.loads(s) for s in (tmp_path / "conv/annotations/en/test.jsonl").read_text().splitlines()]
    assert en == [{"sentences": ["A dog.", "A brown dog."], "id": "000411001ff7dd4f", "img_path": "000411001ff7dd4f.jpg"},
                  {"sentences": ["Two cats."], "id": "00ab", "img_path": "00ab.jpg"}]
    de = [json.loads(s) for s in (tmp_path / "conv/annotations/de/test.jsonl").read_text().splitlines()]
    assert de == [{"sentences": ["Ein Hund."], "id": "000411001ff7dd4f", "img_path": "000411001ff7dd4f.jpg"}]
    touch(tmp_path / "bad.jsonl", json.dumps(lines[0]) + "\n{\"key\": 1}\n")
    with pytest.raises(XM3600Error, match=r"bad\.jsonl:2: no 'image/key'"):
        read_captions(tmp_path / "bad.jsonl")


def test_synthetic_xm3600_and_xgqa_few_shot_layouts(tmp_path: Path) -> None:
    import h5py

    from rc3.synthetic.downstream_eval import write_xgqa_few_shot, write_xm3600
    from rc3.synthetic.render import RoiEncoder
    from rc3.synthetic.world import stream

    enc = RoiEncoder(0)
    info = write_xm3600(tmp_path, enc, stream(0, "xm3600"), 5)
    records = [json.loads(s) for s in (tmp_path / "downstream/xm3600/captions.jsonl").read_text().splitlines()]
    assert len(records) == 5
    with h5py.File(tmp_path / "downstream/xm3600/features.h5") as h5:
        keys = set(h5.keys())
    for r in records:
        key = r["image/key"]
        assert len(key) == 16 and int(key, 16) >= 0
        assert (tmp_path / "downstream/xm3600/images" / f"{key}.jpg").is_file() and f"{key}.jpg" in keys
        assert r["image/locale"] in info["langs"]
        for lang in info["langs"]:
            assert r[lang]["caption"] and r[lang]["caption/tokenized/lowercase"] == [c.lower() for c in r[lang]["caption"]]
    fs = write_xgqa_few_shot(tmp_path, enc, stream(0, "xgqa-few-shot"), shots=(1, 3))
    for lang in fs["langs"]:
        one = json.loads((tmp_path / f"downstream/xGQA/annotations/few_shot/{lang}/train_1.json").read_text())
        three = json.loads((tmp_path / f"downstream/xGQA/annotations/few_shot/{lang}/train_3.json").read_text())
        assert len({q["imageId"] for q in one.values()}) == 1 and len({q["imageId"] for q in three.values()}) == 3
        assert set(one) <= set(three) and len(three) == 12  # nested, 4 questions per image
        assert {q["imageId"] for q in one.values()} == {"f5000000"}  # the first image of the largest split
    with h5py.File(tmp_path / "downstream/xGQA/features_few_shot.h5") as h5:
        assert sorted(h5.keys()) == sorted({q["imageId"] for q in three.values()})


# ---- runs on the synthetic world --------------------------------------------------------------
TINY = ["train.epochs=1", "train.max_steps=1", "train.batch_size=4", "train.micro_batch_size=4", "data.max_train_examples=8",
        "data.max_eval_examples=4", "eval.batch_size=16", "itr.k=10", "mmt.num_beams=1", "mmt.max_new_tokens=4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rc3.synthetic.build import SIZES, make_world

    path = tmp_path_factory.mktemp("world") / "w"
    make_world(path, seed=0, sizes=SIZES["tiny"].scaled(0.05), shards=False, log=lambda _: None)
    return path


@pytest.fixture(scope="module")
def model_dir(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from tiny import tiny_model_config

    from rc3.modeling import RC3Model
    from rc3.tokenization import RC3Tokenizer

    tok = RC3Tokenizer.from_dir(world / "tokenizer")
    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
    out = tmp_path_factory.mktemp("model") / "rc3-tiny"
    model.save_pretrained(out, tokenizer_dir=world / "tokenizer")
    return out


class Interrupted(Exception):
    pass


@pytest.mark.slow(seconds=20)
@pytest.mark.timeout(900)
def test_killed_evaluation_resumes_without_redoing_finished_cells(world: Path, model_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    real = eval_runner.run_recipe
    calls: list[str] = []

    def interrupted_at_second(recipe: str, argv: list[str]) -> dict:
        calls.append(argv[argv.index("--output-dir") + 1])
        if len(calls) == 2:
            raise Interrupted("killed")
        return real(recipe, argv)

    monkeypatch.setattr(eval_runner, "run_recipe", interrupted_at_second)
    opts = EvalOptions(model_dir, world / "downstream", out, SYNTHETIC_RECIPES, tasks=["xvnli"], seeds=2,
                       overrides=[o for o in TINY if not o.startswith(("itr.", "mmt."))], log=lambda _: None)
    with pytest.raises(Interrupted):
        evaluate(opts)
    seed0 = sorted((out / "cells/xvnli/test").glob("*/seed0.json"))
    assert [p.parent.name for p in seed0] == ["ar", "en", "es", "fr", "ru"]
    assert not list((out / "cells").rglob("seed1.json")) and not (out / "leaderboard.json").exists()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in seed0}
    # killed after seed 0's run finished but before its fr cell was written: read back from that run, not rerun
    fr = out / "cells/xvnli/test/fr/seed0.json"
    fr_record = json.loads(before.pop(fr)[1])
    fr.unlink()
    seed0.remove(fr)

    calls.clear()
    monkeypatch.setattr(eval_runner, "run_recipe", lambda recipe, argv: (calls.append(argv[argv.index("--output-dir") + 1]),
                                                                         real(recipe, argv))[1])
    board = evaluate(opts)
    assert calls == [str(out / "runs/xvnli/seed1")]  # seed 0 is not trained or tested again
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in seed0} == before
    assert json.loads(fr.read_text()) == fr_record
    rows = [r for r in board["rows"] if r["metric"] == "accuracy"]
    assert len(rows) == 5 and all(r["seeds"] == [0, 1] and len(r["values"]) == 2 for r in rows)
    calls.clear()
    evaluate(opts)  # everything finished: nothing runs
    assert calls == []


@pytest.mark.slow(seconds=30)
@pytest.mark.timeout(1200)
def test_every_task_and_language_of_the_synthetic_world(world: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rc3.tools.evaluate", str(model_dir), "--data", str(world / "downstream"), "--out", str(out),
           "--recipes", str(SYNTHETIC_RECIPES), "--few-shot", "--shots", "1", "5", "--few-shot-lrs", "5e-4",
           "--few-shot-epochs", "1"]
    for o in TINY:
        cmd += ["--set", o]
    env = {**os.environ, "RC3_NO_PROGRESS": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = run_bounded(cmd, timeout=1100, waiting_for="rc3-evaluate on the synthetic world", cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    board = json.loads((out / "leaderboard.json").read_text())
    world_json = json.loads((world / "world.json").read_text())
    evalsets = json.loads((world / "world_eval.json").read_text())
    down = world_json["downstream"]
    expected = {"xvnli": down["xvnli"]["langs"], "xgqa": down["xgqa"]["langs"],
                "marvl": ["en", *down["marvl"]["langs"]], "xflickrco": down["xflickrco"]["langs"],
                "xm3600": evalsets["xm3600"]["langs"]}
    main = {"xvnli": "accuracy", "xgqa": "accuracy", "marvl": "accuracy", "xflickrco": "mean_R@1", "xm3600": "mean_R@1"}
    for task, langs in expected.items():
        got = {r["language"]: r for r in board["rows"] if r["task"] == task and r["split"] == "test" and r["metric"] == main[task]}
        assert sorted(got) == sorted(langs), (task, sorted(got))
        for row in got.values():
            assert 0.0 <= row["value"] <= 100.0 and row["seeds"] == [0] and row["std"] is None
    # each zero-shot number is the one its recipe run measured (results.json of the English run)
    for task, recipe_dir in (("xvnli", "xvnli"), ("xflickrco", "xflickrco")):
        results = json.loads((out / "runs" / recipe_dir / "seed0" / "results.json").read_text())["results"]
        for r in board["rows"]:
            if r["task"] == task and r["split"] == "test" and r["metric"] == main[task]:
                assert r["values"] == [results[r["language"]][main[task]]]
    # image and text retrieval are both on the board
    assert {r["metric"] for r in board["rows"] if r["task"] == "xflickrco"} >= {"i2t_R@1", "t2i_R@1", "mean_R@1"}
    # MMT: one model per target language, a row per (target, test split) the data has; cs has no 2017 sets
    mmt = {(r["language"], r["split"]) for r in board["rows"] if r["task"] == "mmt" and r["metric"] == "BLEU"}
    assert mmt == {("de", s) for s in ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")} \
        | {("fr", s) for s in ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")} | {("cs", "test_2016_flickr")}
    missing = {(m["task"], m["language"], m["split"]) for m in board["missing"]}
    assert ("mmt", "cs", "test_2017_flickr") in missing
    # XM3600 languages the world has no captions in are listed, not dropped
    assert {("xm3600", lang, "test") for lang in ("bn", "sw", "quz", "fil")} <= missing
    # few-shot: every xGQA language but English at 1 and 5 shots, picked on its dev set
    few = {(r["language"], r["split"]) for r in board["rows"] if r["task"] == "xgqa" and r["split"].startswith("few_shot_")
           and r["metric"] == "accuracy"}
    assert few == {(lang, f"few_shot_{n}") for lang in down["xgqa"]["langs"] if lang != "en" for n in (1, 5)}
    cell = json.loads((out / "cells/xgqa/few_shot_5/de/seed0.json").read_text())
    assert cell["lr"] == 5e-4 and cell["lr_selection"] == "best dev score" and cell["grid"][0]["dev"] is not None
    import yaml

    ran = yaml.safe_load((out / "runs/xgqa/seed0/few_shot/de/5/lr0.0005/finetune_config.yaml").read_text())
    assert ran["optim"]["lr"] == 5e-4 and ran["train"]["epochs"] == 1 and ran["train"]["batch_size"] == 8  # IGLUE's xGQA batch
    assert ran["init"] == str(out / "runs/xgqa/seed0/model")  # continues from the English-finetuned model
    assert ran["data"]["train"].endswith("xGQA/annotations/few_shot/de/train_5.json") and ran["data"]["train_lang"] == "de"
    # IGLUE's warmup: 10 % of the few-shot run's optimizer steps (questions of the split / batch 8, 1 epoch),
    # not the recipe's own warmup_steps, sized for the full English training set
    questions = len(json.loads(Path(ran["data"]["train"]).read_text()))
    assert ran["optim"]["warmup_steps"] == int(0.1 * -(-questions // 8) * 1)
    assert ran["data"]["dev"].endswith("xGQA/annotations/few_shot/de/dev.json") and ran["data"]["test_langs"] == ["de"]
    assert ("xvnli", "ar", "few_shot_1") in missing
    # MaRVL few-shot: the world's languages with IGLUE's splits at 1 shot; it has no 5-shot split (IGLUE's are 1 2 4 10 10x2)
    marvl_few = {(r["language"], r["split"]) for r in board["rows"] if r["task"] == "marvl" and r["split"].startswith("few_shot_")
                 and r["metric"] == "accuracy"}
    assert marvl_few == {(lang, "few_shot_1") for lang in ("id", "tr", "zh")}
    assert {("marvl", lang, "few_shot_5") for lang in ("id", "tr", "zh")} | {("marvl", "sw", "few_shot_1")} <= missing
    # provenance
    import hashlib

    assert board["model"]["files"]["model.safetensors"] == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert board["schema"] == "rc3-leaderboard/1" and board["commit"]
    assert board["recipes"]["xgqa"]["resolved"]["train"]["max_steps"] == 1
    assert board["few_shot_protocol"]["tasks"]["xgqa"]["iglue"]["shots"] == [1, 5, 10, 20, 25, 48]
    md = (out / "leaderboard.md").read_text()
    assert "## xGQA (accuracy %)" in md and "| UC2 |" in md and "Few-shot" in md
    assert sorted(board["charts"]) == ["marvl", "mmt", "xflickrco", "xgqa", "xm3600", "xvnli"]
    for path in board["charts"].values():
        assert (out / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow(seconds=25)
@pytest.mark.timeout(900)
def test_marvl_few_shot_on_the_synthetic_world(world: Path, model_dir: Path, tmp_path: Path) -> None:
    """IGLUE's MaRVL protocol: from the NLVR2-finetuned model, each language's MaRVL-format split with its LMDB
    features, NLVR2 dev picking the learning rate; languages without splits are listed, not dropped."""
    import yaml

    out = tmp_path / "out"
    board = evaluate(EvalOptions(model_dir, world / "downstream", out, SYNTHETIC_RECIPES, tasks=["marvl"], few_shot=True,
                                 shots=[1, "10x2"], few_shot_lrs=[5e-4], few_shot_epochs=1,
                                 overrides=[o for o in TINY if not o.startswith(("itr.", "mmt."))], log=lambda _: None))
    few = {(r["language"], r["split"]): r for r in board["rows"] if r["task"] == "marvl" and r["split"].startswith("few_shot_")
           and r["metric"] == "accuracy"}
    assert sorted(few) == sorted((lang, f"few_shot_{n}") for lang in ("id", "tr", "zh") for n in ("1", "10x2"))
    missing = {(m["language"], m["split"]): m["reason"] for m in board["missing"] if m["task"] == "marvl"}
    for lang in ("sw", "ta"):  # the world has MaRVL tests in these languages, IGLUE no few-shot splits
        for n in ("1", "10x2"):
            assert missing[(lang, f"few_shot_{n}")].endswith(f"marvl/few_shot/annotations/marvl-{lang}_train{n}.jsonl")
    for lang in ("id", "tr", "zh"):
        for n, batch in (("1", 16), ("10x2", 32)):  # IGLUE's batch sizes
            cell = json.loads((out / f"cells/marvl/few_shot_{n}/{lang}/seed0.json").read_text())
            assert [g["lr"] for g in cell["grid"]] == [5e-4] and cell["grid"][0]["dev"] is not None  # scored on NLVR2 dev
            assert cell["lr_selection"] == "best dev score"
            run = out / f"runs/marvl/seed0/few_shot/{lang}/{n}/lr{cell['lr']:g}"
            assert few[(lang, f"few_shot_{n}")]["values"] == [json.loads((run / "results.json").read_text())["results"][lang]["accuracy"]]
            ran = yaml.safe_load((run / "finetune_config.yaml").read_text())
            assert ran["init"] == str(out / "runs/marvl/seed0/model")  # continues from the NLVR2-finetuned model
            assert ran["data"]["train"] == str(world / f"downstream/marvl/few_shot/annotations/marvl-{lang}_train{n}.jsonl")
            assert ran["data"]["train_lang"] == lang and ran["data"]["test_langs"] == [lang]
            assert ran["data"]["dev"] == str(world / "downstream/nlvr2/annotations/dev.jsonl")
            assert ran["data"]["features"] == [str(world / "downstream/features.h5"),
                                               str(world / f"downstream/marvl/few_shot/features/marvl-{lang}_fewshot_boxes36.lmdb")]
            assert ran["train"]["batch_size"] == batch and ran["train"]["epochs"] == 1
    assert board["few_shot_protocol"]["tasks"]["marvl"]["iglue"]["shots"] == [1, 2, 4, 10, "10x2"]
    md = (out / "leaderboard.md").read_text()
    assert "| language | 0 | 1 | 10x2 |" in md
    assert (out / board["charts"]["marvl"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow(seconds=15)
def test_eval_sets_leave_every_other_world_file_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """XM3600 and the few-shot splits only add files: a world built without them has the same bytes in
    every file, except the sentencepiece model, whose training is not deterministic (two builds of the
    same world differ there with or without the eval sets)."""
    import hashlib

    from rc3.synthetic import build

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != "sentencepiece.bpe.model"}

    sizes = build.SIZES["tiny"].scaled(0.05)
    build.make_world(tmp_path / "with", seed=3, sizes=sizes, shards=False, log=lambda _: None)
    monkeypatch.setattr(build, "write_eval_sets", lambda *a, **k: None)
    build.make_world(tmp_path / "without", seed=3, sizes=sizes, shards=False, log=lambda _: None)
    with_sets, without = digests(tmp_path / "with"), digests(tmp_path / "without")
    assert {k: with_sets.get(k) for k in without} == without
    added = sorted(set(with_sets) - set(without))
    assert "world_eval.json" in added and "downstream/xm3600/captions.jsonl" in added
    assert "world_marvl_few_shot.json" in added and "downstream/marvl/few_shot/annotations/marvl-id_train10x2.jsonl" in added
    assert all(a.startswith(("downstream/xm3600/", "downstream/xGQA/", "downstream/images/xgqa_few_shot/", "world_eval.json",
                             "downstream/marvl/few_shot/", "downstream/images/marvl_few_shot/", "world_marvl_few_shot.json"))
               for a in added), added


@pytest.mark.slow(seconds=25)
@pytest.mark.timeout(900)
def test_sigkilled_training_continues_from_its_checkpoint(world: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sets = ["train.epochs=1", "train.max_steps=3", "train.save_every=1", "train.batch_size=4", "train.micro_batch_size=4",
            "data.max_train_examples=12", "data.max_eval_examples=4", "eval.batch_size=16"]
    cmd = [sys.executable, "-m", "rc3.tools.evaluate", str(model_dir), "--data", str(world / "downstream"), "--out", str(out),
           "--recipes", str(SYNTHETIC_RECIPES), "--tasks", "xvnli", "--langs", "en", "fr"]
    for o in sets:
        cmd += ["--set", o]
    env = {**os.environ, "RC3_NO_PROGRESS": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def run(extra_env: dict[str, str]) -> subprocess.CompletedProcess:
        return run_bounded(cmd, timeout=800, waiting_for=f"rc3-evaluate (xvnli) with {extra_env}", cwd=REPO,
                           env={**env, **extra_env})

    killed = run({"RC3_KILL_AT": "3"})  # the recipe's process SIGKILLs itself as optimizer step 3 begins
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    run_dir = out / "runs/xvnli/seed0"
    assert (run_dir / "checkpoints/latest").read_text().strip() == "step_00000002"
    assert not (out / "cells").exists()
    done = run({})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed at step 2" in done.stdout, done.stdout[-3000:]
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["recipe_runs"] == [str(run_dir)]
    assert sorted(r["language"] for r in board["rows"] if r["metric"] == "accuracy") == ["en", "fr"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps[-1] == 3 and 3 not in steps[:-1]  # step 3 trained once, after the resume
