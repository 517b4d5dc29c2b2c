"""Finetuning recipes end to end on tiny data written in the released formats.

A tiny random RC3 model (saved with save_pretrained) is finetuned for a few steps by each recipe's
`main(argv)` on a few examples per language: XVNLI / MaRVL / xFlickr&CO jsonl, GQA-style JSON with
an answer vocabulary, gzipped Multi30K with image lists, one IGLUE-layout H5 feature store (groups
with features, absolute boxes, img_w, img_h) and small JPEG files. Checks: results.json/results.md
with one row per language and metrics in range, the saved model, k=all retrieval equal to a
brute-force cross-encoder ranking, MMT's sacreBLEU signature, MaRVL's two-image input, config
validation and clear errors for missing images, and `--help` of every script.
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_model_config

from rc3.config import ConfigError
from rc3.finetune.config import load_finetune_config
from rc3.modeling import RC3Model

REPO = Path(__file__).resolve().parents[1]
TASKS = ("xvnli", "xgqa", "marvl", "itr", "mmt")
WORDS = {"en": "a red dog runs on the green grass near two small children",
         "de": "ein roter Hund läuft auf dem grünen Gras neben zwei kleinen Kindern",
         "fr": "un chien rouge court sur l'herbe verte près de deux petits enfants",
         "es": "un perro rojo corre sobre la hierba verde cerca de dos niños",
         "zh": "一只红色的狗在绿色的草地上跑",
         "ja": "赤い犬が緑の草の上を走っている",
         "id": "seekor anjing merah berlari di atas rumput hijau",
         "tr": "kırmızı bir köpek yeşil çimenlerin üzerinde koşuyor"}


def sentence(lang: str, i: int) -> str:
    words = WORDS[lang].split() if lang not in ("zh", "ja") else list(WORDS[lang])
    rot = i % len(words)
    sep = "" if lang in ("zh", "ja") else " "
    return sep.join(words[rot:] + words[:rot])


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


class World:
    """Tiny downstream data: every image key gets an H5 group and a JPEG named `<key>.jpg`."""

    def __init__(self, root: Path) -> None:
        self.root, self.keys = root, []
        self.rng = np.random.default_rng(0)

    def image(self, key: str) -> str:
        self.keys.append(key)
        return key

    def finish(self) -> None:
        img_dir = self.root / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        with h5py.File(self.root / "features.h5", "w") as f:
            for i, key in enumerate(dict.fromkeys(self.keys)):
                n = 4 + i % 3  # stores hold varying box counts; batches pad them
                g = f.create_group(key)
                g.create_dataset("features", data=self.rng.random((n, 2048), dtype=np.float32))
                xy = self.rng.random((n, 2)) * 40
                g.create_dataset("boxes", data=np.concatenate([xy, xy + 20], axis=1).astype(np.float32))
                g.create_dataset("img_w", data=64)
                g.create_dataset("img_h", data=64)
                colour = tuple(int(c) for c in self.rng.integers(0, 255, 3))
                Image.new("RGB", (40, 30), colour).save(img_dir / f"{key}.jpg")


def build_world(root: Path) -> World:
    w = World(root)
    labels = ["entailment", "neutral", "contradiction"]
    for lang, splits in {"en": ("train", "dev", "test"), "fr": ("test",), "es": ("test",)}.items():
        for split in splits:
            rows = []
            for i in range(9 if split == "train" else 6):
                fid = w.image(str(1000 + i))
                rows.append({"gold_label": labels[i % 3], "sentence1": "premise", "sentence2": sentence(lang, i),
                             "captionID": f"{fid}.jpg#0", "pairID": f"{fid}.jpg#0r1{labels[i % 3][0]}", "Flikr30kID": fid})
            rows.append({**rows[0], "gold_label": "-"})  # unlabeled pairs are skipped
            write_jsonl(root / "XVNLI" / "annotations" / lang / f"{split}.jsonl", rows)
    answers = ["yes", "no", "red", "green", "dog", "cat"]
    write_json(root / "gqa" / "annotations" / "trainval_ans2label.json", {a: i for i, a in enumerate(answers)})

    def gqa(lang: str, n: int, start: int) -> dict:
        return {str(start + i): {"question": sentence(lang, i) + "?", "imageId": w.image(f"n{200 + i % 5}"),
                                 "answer": answers[i % len(answers)], "isBalanced": True} for i in range(n)}
    write_json(root / "gqa" / "annotations" / "train_balanced_questions.json", gqa("en", 12, 0))
    for lang in ("en", "de", "zh"):
        write_json(root / "xGQA" / "annotations" / "few_shot" / lang / "test.json", gqa(lang, 6, 500))
    nlvr = lambda split, n: [{"identifier": f"{split}-{i}-0-0", "sentence": sentence("en", i), "label": ["True", "False"][i % 2],
                              "left_url": "", "right_url": ""} for i in range(n)]
    for split, n in (("train", 8), ("test1", 4)):
        rows = nlvr(split, n)
        for r in rows:
            w.image(r["identifier"].rsplit("-", 1)[0] + "-img0")
            w.image(r["identifier"].rsplit("-", 1)[0] + "-img1")
        write_jsonl(root / "nlvr2" / "annotations" / f"{split}.jsonl", rows)
    for lang in ("id", "zh", "tr"):
        write_jsonl(root / "marvl" / "zero_shot" / "annotations" / f"marvl-{lang}.jsonl", [
            {"concept": "1-x", "language": lang, "caption": sentence(lang, i), "left_img": w.image(f"{i}-1") + ".jpg",
             "right_img": w.image(f"{i}-2") + ".jpg", "chapter": "c", "id": f"{lang}-{i}", "label": bool(i % 2)}
            for i in range(4)])
    write_jsonl(root / "flickr30k" / "annotations" / "train_ann.jsonl", [
        {"sentences": [sentence("en", i + j) for j in range(3)], "id": str(3000 + i), "img_path": w.image(f"{3000 + i}.jpg")}
        for i in range(6)])
    for lang in ("en", "de", "ja"):
        write_jsonl(root / "xFlickrCO" / "annotations" / lang / "test.jsonl", [
            {"sentences": [sentence(lang, i)], "id": str(4000 + i), "img_path": w.image(f"{4000 + i}.jpg")} for i in range(12)])
    m30k = root / "multi30k"
    for split, n in (("train", 10), ("val", 3), ("test_2016_flickr", 4)):
        (m30k / "image_splits").mkdir(parents=True, exist_ok=True)
        (m30k / "image_splits" / f"{split}.txt").write_text("".join(f"{w.image(str(5000 + i))}.jpg\n" for i in range(n)))
        for lang in ("en", "de", "fr"):
            (m30k / "raw").mkdir(parents=True, exist_ok=True)
            with gzip.open(m30k / "raw" / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("".join(sentence(lang, i) + "\n" for i in range(n)))
    w.finish()
    return w


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("downstream")
    build_world(root)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer, tokenizer_dir: Path) -> Path:
    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    out = tmp_path_factory.mktemp("init") / "rc3-tiny"
    model.save_pretrained(out, tokenizer_dir=tokenizer_dir)
    return out


COMMON = ["train.batch_size=4", "train.micro_batch_size=2", "train.max_steps=3", "eval.batch_size=4", "data.num_workers=0",
          "train.log_every=1"]
DATA = {
    "xvnli": ["data.train=XVNLI/annotations/en/train.jsonl", "data.dev=XVNLI/annotations/en/dev.jsonl", "data.test=XVNLI"],
    "xgqa": ["data.train=gqa/annotations/train_balanced_questions.json", "data.test=xGQA",
             "data.answer_vocab=gqa/annotations/trainval_ans2label.json"],
    "marvl": ["data.train=nlvr2/annotations/train.jsonl", "data.english_test=nlvr2/annotations/test1.jsonl",
              "data.test=marvl/zero_shot/annotations"],
    "itr": ["data.train=flickr30k/annotations/train_ann.jsonl", "data.test=xFlickrCO"],
    "mmt": ["data.train=multi30k", "mmt.test_splits=[test_2016_flickr]", "mmt.num_beams=2", "mmt.max_new_tokens=6",
            "data.test_langs=[de,fr]"],
}


def run_recipe(task: str, world: Path, model_dir: Path, out: Path, *extra: str) -> dict:
    import importlib

    main = importlib.import_module(f"rc3.finetune.{task}").main
    sets = [*COMMON, f"data.root={world}", "data.features=[features.h5]", "data.images=images", *DATA[task], *extra]
    argv = ["--init", str(model_dir), "--output-dir", str(out)]
    for s in sets:
        argv += [s] if s.startswith("--") else ["--set", s]
    return main(argv)


def read_results(out: Path) -> dict:
    payload = json.loads((out / "results.json").read_text())
    assert (out / "results.md").is_file()
    return payload["results"]


@pytest.mark.parametrize("task,langs,metric", [
    ("xvnli", ["en", "es", "fr"], "accuracy"),
    ("xgqa", ["en", "de", "zh"], "accuracy"),
    ("marvl", ["en", "id", "tr", "zh"], "accuracy"),
])
def test_classification_recipes(task: str, langs: list[str], metric: str, world: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / task
    run_recipe(task, world, model_dir, out)
    results = read_results(out)
    assert list(results) == langs  # English first, then the zero-shot languages
    for row in results.values():
        assert 0.0 <= row[metric] <= 100.0 and row["n"] > 0
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == len(langs) + 1  # header + one row per language
    assert (out / "model" / "task_head.json").is_file() and (out / "model" / "model.safetensors").is_file()
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    if task == "xvnli":
        assert results["en"]["n"] == 6  # the unlabeled "-" row is skipped
        assert any("dev_accuracy" in r for r in log)


def test_freeze_keeps_the_token_table_and_trains_the_rest(world: Path, model_dir: Path, tmp_path: Path) -> None:
    """model.freeze=[token_embeddings]: every row of the (tied) token table is the --init model's, bit for bit,
    while the encoder layers and the head train; without it the English rows move."""
    from safetensors.torch import load_file

    before = load_file(str(model_dir / "model.safetensors"))
    key = next(k for k in before if k.endswith(("shared.weight", "lm_head.weight")))  # one tied table
    layer = next(k for k in before if "encoder.layers.0.fc1.weight" in k)
    run_recipe("xgqa", world, model_dir, tmp_path / "frozen", "model.freeze=[token_embeddings]")
    frozen = load_file(str(tmp_path / "frozen" / "model" / "model.safetensors"))
    assert torch.equal(frozen[key], before[key])
    assert not torch.equal(frozen[layer], before[layer])
    run_recipe("xgqa", world, model_dir, tmp_path / "free")
    free = load_file(str(tmp_path / "free" / "model" / "model.safetensors"))
    assert not torch.equal(free[key], before[key])


def test_saved_classifier_reloads_and_evaluates_identically(world: Path, model_dir: Path, tmp_path: Path) -> None:
    first = run_recipe("xvnli", world, model_dir, tmp_path / "a")
    again = run_recipe("xvnli", world, tmp_path / "a" / "model", tmp_path / "b", "train.epochs=0")
    assert again == first  # the head is restored from task_head.safetensors


def test_marvl_feeds_two_images(world: Path, model_dir: Path) -> None:
    from rc3.finetune.config import finetune_config_from_dict
    from rc3.finetune.datasets import TextCollator, VisualTextDataset
    from rc3.finetune.marvl import MaRVLTask
    from rc3.modeling.visual_inputs import VisualSource
    from rc3.tokenization import RC3Tokenizer

    cfg = finetune_config_from_dict({}, "marvl", [f"data.root={world}", *DATA["marvl"], "data.features=[features.h5]"])
    items = MaRVLTask(cfg).test_sets()["zh"]
    tok = RC3Tokenizer.from_dir(model_dir)
    ds = VisualTextDataset(items, tok, VisualSource("roi", [world / "features.h5"]), 80)
    batch = TextCollator(tok.pad_id)([ds[0], ds[1]])
    assert {"roi", "boxes", "roi_mask", "roi2", "boxes2", "roi_mask2"} <= set(batch)
    model = RC3Model.from_pretrained(model_dir)
    enc = model.encode(batch["input_ids"], batch["attention_mask"], {k: batch[k] for k in batch if k.startswith(("roi", "boxes"))})
    # [CLS] image1 [SEP'] image2 [BOS] text [LANG]
    assert enc.text_start == 1 + batch["roi"].shape[1] + 1 + batch["roi2"].shape[1]
    assert not torch.equal(batch["roi"], batch["roi2"])


def test_itr_k_all_equals_brute_force(world: Path, model_dir: Path, tmp_path: Path) -> None:
    from rc3.finetune.itr import RetrievalEvaluator, read_table
    from rc3.finetune.itr_model import ITRModel
    from rc3.finetune.metrics import gold_ranks, recall_at_k
    from rc3.finetune.readers.xflickrco import xflickrco_path
    from rc3.modeling.visual_inputs import VisualSource

    out = tmp_path / "itr_all"
    run_recipe("itr", world, model_dir, out, "itr.k=all")
    results = read_results(out)
    assert list(results) == ["en", "de", "ja"]
    for row in results.values():
        assert all(0.0 <= row[m] <= 100.0 for m in ("i2t_R@1", "t2i_R@10", "mean_R@1"))
        assert row["i2t_R@1"] <= row["i2t_R@5"] <= row["i2t_R@10"]

    # Brute force: every (image, caption) ITM score of the finetuned model, ranked with numpy.
    model = ITRModel(RC3Model.from_pretrained(out / "model"), "roi")
    model.eval()

    class Run:  # the evaluator only needs the accelerator's device/autocast, the tokenizer and the config
        from accelerate import Accelerator
        accelerator = Accelerator(cpu=True)
        from rc3.tokenization import RC3Tokenizer
        tokenizer = RC3Tokenizer.from_dir(out / "model")
        from rc3.finetune.config import finetune_config_from_dict
        cfg = finetune_config_from_dict({}, "itr", [f"data.root={world}", *DATA["itr"], "data.features=[features.h5]",
                                                    "eval.batch_size=4"])
        is_main = True
    table = read_table(xflickrco_path(world / "xFlickrCO", "de"), "de", None)
    ev = RetrievalEvaluator(model, table, "de", Run, VisualSource("roi", [world / "features.h5"]))
    n_i, n_t = len(table.images), len(table.captions)
    # One query per call, as the recipe's k=all pass makes them, so the scores are bit-identical
    # (other groupings pad differently and may perturb near-ties in the last float bits).
    i2t_scores = np.stack([ev.pair_scores(torch.full((1, n_t), i), torch.arange(n_t)[None])[0].numpy() for i in range(n_i)])
    t2i_scores = np.stack([ev.pair_scores(torch.arange(n_i)[None], torch.full((1, n_i), j))[0].numpy() for j in range(n_t)])
    np.testing.assert_allclose(i2t_scores, t2i_scores.T, rtol=1e-4, atol=1e-5)
    i2t = np.argsort(-i2t_scores, axis=1, kind="stable")
    t2i = np.argsort(-t2i_scores, axis=1, kind="stable")
    r_i2t = recall_at_k(gold_ranks(i2t, table.captions_of()))
    r_t2i = recall_at_k(gold_ranks(t2i, [[i] for i in table.caption_image]))
    for k in ("R@1", "R@5", "R@10"):
        assert results["de"][f"i2t_{k}"] == pytest.approx(r_i2t[k])
        assert results["de"][f"t2i_{k}"] == pytest.approx(r_t2i[k])
    # Candidate search + re-ranking with k = 10 < 12 images goes through FAISS and stays a valid recall.
    scores = ev.recall(10, "faiss", dual=True)
    assert scores["i2t_R@10"] <= 100.0 and scores["t2i_R@1"] <= scores["t2i_R@10"]
    # The dual encoder's own recall is the brute-force ranking by embedding similarity.
    image_emb, text_emb = (e.numpy() for e in ev.embeddings())
    sim = image_emb @ text_emb.T
    d_i2t = recall_at_k(gold_ranks(np.argsort(-sim, axis=1, kind="stable"), table.captions_of()))
    d_t2i = recall_at_k(gold_ranks(np.argsort(-sim.T, axis=1, kind="stable"), [[i] for i in table.caption_image]))
    for k in ("R@1", "R@5", "R@10"):
        assert scores[f"dual_i2t_{k}"] == pytest.approx(d_i2t[k])
        assert scores[f"dual_t2i_{k}"] == pytest.approx(d_t2i[k])
    assert results["de"]["dual_mean_R@1"] == pytest.approx((d_i2t["R@1"] + d_t2i["R@1"]) / 2)


@pytest.mark.slow  # starts Python processes that import torch
def test_bench_retrieval_model_compares_rerank_with_brute_force(world: Path, model_dir: Path, tmp_path: Path) -> None:
    """benchmarks/bench_retrieval_model.py on a finetuned model: pair counts, and its brute force is the
    recipe's own k=all ranking."""
    import importlib.util

    out = tmp_path / "itr"
    run_recipe("itr", world, model_dir, out, "itr.k=all", "data.test_langs=[de]")
    spec = importlib.util.spec_from_file_location("bench_retrieval_model", REPO / "benchmarks" / "bench_retrieval_model.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--model", str(out / "model"), "--root", str(world), "--ann", "xFlickrCO/annotations/de/test.jsonl",
            "--k", "10", "--batch", "5", "--json", str(tmp_path / "bench.json"), "--output-dir", str(tmp_path / "b"),
            "--set", "data.features=[features.h5]", "--set", "data.images=images"]
    figures = bench.main(argv)
    n = 12  # images, one caption each
    assert figures["images"] == figures["captions"] == n
    assert figures["brute_force"]["pairs"] == n * n  # every pair once
    assert figures["rerank"]["pairs"] == 2 * n * 10  # k candidates per query, both directions
    want = read_results(out)["de"]
    for key in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@10", "mean_R@1"):
        assert figures["brute_force"][key] == pytest.approx(want[key])
    assert json.loads((tmp_path / "bench.json").read_text())["speedup"] == pytest.approx(figures["speedup"])
    with pytest.raises(SystemExit, match="no ITR head"):
        bench.main([*argv[:1], str(model_dir), *argv[2:]])


def test_mmt_bleu_signature_and_rows(world: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "mmt"
    run_recipe("mmt", world, model_dir, out)
    printed = capsys.readouterr().out
    assert "sacreBLEU signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in printed
    results = read_results(out)
    assert list(results) == ["de:test_2016_flickr", "fr:test_2016_flickr"]
    for row in results.values():
        assert 0.0 <= row["BLEU"] <= 100.0 and 0.0 <= row["BLEU_lc"] <= 100.0 and row["n"] == 4
        assert row["signature"].startswith("nrefs:1|case:mixed") and "case:lc" in row["signature_lc"]


def test_patch_mode_and_text_only_mmt(world: Path, model_dir: Path, tmp_path: Path) -> None:
    run_recipe("xvnli", world, model_dir, tmp_path / "patch", "model.visual_mode=patch", "data.features=[]",
               "train.max_steps=1", "data.max_eval_examples=3", "--no-save")
    assert read_results(tmp_path / "patch")["fr"]["n"] == 3
    assert not (tmp_path / "patch" / "model").exists()
    run_recipe("marvl", world, model_dir, tmp_path / "combined", "model.visual_mode=combined", "train.max_steps=1",
               "--no-save")
    assert read_results(tmp_path / "combined")["zh"]["n"] == 4
    run_recipe("mmt", world, model_dir, tmp_path / "text", "mmt.use_image=false", "train.max_steps=1",
               "data.test_langs=[de]")
    assert list(read_results(tmp_path / "text")) == ["de:test_2016_flickr"]


def test_missing_image_names_id_and_store(world: Path, model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad_train.jsonl"
    write_jsonl(bad, [{"gold_label": "neutral", "sentence1": "p", "sentence2": "h", "captionID": "x", "pairID": "x",
                       "Flikr30kID": "999999"}])
    with pytest.raises(KeyError) as err:
        run_recipe("xvnli", world, model_dir, tmp_path / "o", f"data.train={bad}")
    assert "'999999'" in str(err.value) and "features.h5" in str(err.value) and "bad_train.jsonl" in str(err.value)
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        run_recipe("xvnli", world, model_dir, tmp_path / "o", "data.train=XVNLI/none.jsonl")
    with pytest.raises(FileNotFoundError, match=r"\['ko'\]"):
        run_recipe("xvnli", world, model_dir, tmp_path / "o", "data.test_langs=[en,ko]")


def test_config_defaults_and_validation() -> None:
    from rc3.finetune.config import finetune_config_from_dict, load_finetune_config

    # The paper's Appendix B, Table 6: learning rate, batch size, epochs, input length
    table6 = {"xvnli": (4e-5, 128, 10, 80), "xgqa": (4e-5, 256, 5, 40), "marvl": (4e-5, 64, 40, 80),
              "itr": (1e-5, 64, 10, 80), "mmt": (5e-6, 256, 5, 50)}
    for task in TASKS:
        cfg = load_finetune_config(REPO / "configs" / "finetune" / f"{task}.yaml", task)
        assert (cfg.optim.lr, cfg.train.batch_size, cfg.train.epochs, cfg.data.max_text_len) == table6[task]
        load_finetune_config(REPO / "configs" / "finetune" / "synthetic" / f"{task}.yaml", task)
    base = ["data.test=x", "data.train=y", "data.features=[f.h5]"]
    assert finetune_config_from_dict({}, "itr", base + ["itr.k=all"]).itr.rerank_k == "all"
    assert finetune_config_from_dict({}, "itr", base + ["itr.k=32"]).itr.rerank_k == 32
    assert finetune_config_from_dict({}, "itr", base + ["itr.uniform_negative_share=0.5"]).itr.uniform_negative_share == 0.5
    bad = {"itr.k=5": "itr.k", "itr.k=many": "itr.k", "train.micro_batch_size=48": "train.batch_size",
           "data.test_langs=[xx]": r"data.test_langs\[0\]", "model.visual_mode=patch": "data.images",
           "model.visual_mode=grid": "model.visual_mode", "train.bogus=1": "train.bogus", "mmt.num_beams=2": "mmt",
           "itr.uniform_negative_share=1.5": "itr.uniform_negative_share", "train.save_every=-1": "train.save_every",
           "train.keep_checkpoints=0": "train.keep_checkpoints", "eval.select=worst": "eval.select",
           "model.freeze=[encoder]": r"model.freeze\[0\]"}
    for override, key in bad.items():
        with pytest.raises(ConfigError, match=key):
            finetune_config_from_dict({}, "itr", base + [override])
    with pytest.raises(ConfigError, match="recipe is 'xvnli'"):
        finetune_config_from_dict({"task": "xgqa"}, "xvnli", base)
    with pytest.raises(ConfigError, match="answer_vocab"):
        finetune_config_from_dict({}, "xgqa", base)
    # one warmup convention (optimizer steps) in every loop: the older spelling stops in one line, by name
    assert finetune_config_from_dict({}, "itr", base + ["optim.warmup_steps=7"]).optim.warmup_steps == 7
    for given in ({"optim": {"warmup_ratio": 0.1}}, {}):
        overrides = base + ([] if given else ["optim.warmup_ratio=0.1"])
        with pytest.raises(ConfigError) as err:
            finetune_config_from_dict(given, "itr", overrides)
        assert str(err.value) == ("config error: optim.warmup_ratio: warmup is counted in optimizer steps in every RC3 "
                                  "loop; write optim.warmup_steps instead (e.g. 10% of the run's optimizer steps, which "
                                  "the run prints as it starts)")
    with pytest.raises(ConfigError, match="optim.warmup_steps: must be >= 0"):
        finetune_config_from_dict({}, "itr", base + ["optim.warmup_steps=-1"])
    # MMT reads its test splits from data.test, else from data.train's folder: with neither it stops up front, by name
    mmt_eval = ["train.epochs=0", "data.features=[f.h5]"]
    with pytest.raises(ConfigError, match="data.test: the folder of the Multi30K test splits is required"):
        finetune_config_from_dict({}, "mmt", mmt_eval)
    assert finetune_config_from_dict({}, "mmt", mmt_eval + ["data.train=m30k"]).data.test is None
    assert finetune_config_from_dict({}, "mmt", mmt_eval + ["data.test=m30k"]).data.train is None


@pytest.mark.slow  # a process per task importing rc3 (transformers)
@pytest.mark.parametrize("task", TASKS)
def test_script_help(task: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "finetune" / f"{task}.py"), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--init" in proc.stdout and "--set" in proc.stdout and "--no-save" in proc.stdout


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(world: Path, model_dir: Path, tmp_path: Path) -> None:
    """DDP over 2 CPU processes (gloo): one run, sharded evaluation gathered back to every example."""
    out = tmp_path / "ddp"
    sets = [*COMMON, f"data.root={world}", "data.features=[features.h5]", *DATA["xvnli"]]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29731",
           str(REPO / "finetune" / "xvnli.py"), "--init", str(model_dir), "--output-dir", str(out), "--no-save"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("[xvnli] results:") == 1
    results = read_results(out)
    assert list(results) == ["en", "es", "fr"] and all(row["n"] == 6 for row in results.values())


def test_itr_paper_protocol_is_a_cross_encoder_over_every_pair(world: Path, model_dir: Path, tmp_path: Path) -> None:
    """configs/finetune/itr-paper.yaml: IGLUE's protocol (ITM only, random negatives, every pair scored)."""
    cfg = load_finetune_config(REPO / "configs" / "finetune" / "itr-paper.yaml", "itr")
    mine = load_finetune_config(REPO / "configs" / "finetune" / "itr.yaml", "itr")
    assert (cfg.itr.rerank_k, cfg.itr.contrastive_weight, cfg.itr.itm_weight, cfg.itr.hard_negatives) == \
        ("all", 0.0, 1.0, False)
    assert cfg.data == mine.data and cfg.optim == mine.optim and cfg.output_dir == "runs/finetune/itr-paper"
    out = tmp_path / "itr_paper"
    run_recipe("itr", world, model_dir, out, "itr.k=all", "itr.contrastive_weight=0", "itr.hard_negatives=false")
    results = read_results(out)
    assert list(results) == ["en", "de", "ja"] and all(0.0 <= r["mean_R@1"] <= 100.0 for r in results.values())


def test_init_at_a_run_directory_says_to_run_zero_to_safetensors(tmp_path: Path) -> None:
    """A pretraining run directory (or one of its DeepSpeed checkpoints) given as --init is named as such, with
    the command that makes a model directory of it, before anything loads."""
    from rc3.finetune.cli import parse_cli
    from rc3.inference import load

    run = tmp_path / "runs" / "rc3"
    tag = run / "checkpoints" / "step_00000100"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    (tag / "COMPLETE").write_text("")
    config = str(REPO / "configs" / "finetune" / "xvnli.yaml")
    with pytest.raises(ConfigError, match=r"--init: .* training run directory .* rc3-zero-to-safetensors "
                                          + str(run) + " MODEL_DIR"):
        parse_cli("xvnli", ["--config", config, "--init", str(run)])
    with pytest.raises(ConfigError, match=f"rc3-zero-to-safetensors {run} MODEL_DIR --tag step_00000100"):
        parse_cli("xvnli", ["--config", config, "--init", str(tag)])
    with pytest.raises(FileNotFoundError, match="zero-to-safetensors"):
        load(run)
    cfg, _ = parse_cli("xvnli", ["--config", config, "--init", str(tmp_path)])  # not a run: checked later, on load
    assert cfg.init == str(tmp_path)
