"""rc3.synthetic.repro.transfer (tools/transfer_diagnostics.py): the measures pair each English xGQA question
with its own translation (checked with embeddings made from the raw annotation files), and a random init
shows the collapsed VtR that the diagnosis in REPRODUCTION.md reports."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rc3.synthetic.build import SIZES, make_world
from rc3.synthetic.repro import transfer
from rc3.tokenization import RC3Tokenizer

LANGS = ["de", "id", "zh"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    make_world(out, sizes=SIZES["tiny"].scaled(0.25), shards=False, log=lambda _: None)
    return out


def _meaning(world: Path) -> dict[tuple[str, str], str]:
    """(language, question text) -> the qid's English question, read from the raw files."""
    base = world / "downstream" / "xGQA" / "annotations" / "few_shot"
    raw = {lang: json.loads((base / lang / "test.json").read_text(encoding="utf-8")) for lang in ["en", *LANGS]}
    return {(lang, q["question"]): raw["en"][qid]["question"] for lang in raw for qid, q in raw[lang].items()}


def test_questions_are_compared_with_their_own_translations(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meaning = _meaning(world)
    vocab = sorted(set(meaning.values()))

    def one_hot(texts: list[str], lang: str, images: list[str] | None = None) -> torch.Tensor:
        rows = torch.zeros(len(texts), len(vocab) + 64)
        for i, t in enumerate(texts):
            rows[i, vocab.index(meaning[(lang, t)])] = 1.0
            if images is not None:  # the image moves every question of it alike
                rows[i, len(vocab) + hash(images[i]) % 64] = 1.0
        return rows

    monkeypatch.setattr(transfer, "embed_texts", lambda model, tok, texts, lang: one_hot(list(texts), lang))
    monkeypatch.setattr(transfer, "embed_pairs", lambda model, tok, vis, texts, images, lang: torch.nn.functional.normalize(
        one_hot(list(texts), lang, list(images)), dim=-1))
    model = type("M", (), {"cfg": type("C", (), {"image_size": 96})()})()
    out = transfer.xgqa_alignment(model, None, world, LANGS)  # type: ignore[arg-type]
    for lang in LANGS:
        assert out[lang]["tr_acc"] == 100.0 and out[lang]["vtr_same_image_acc"] == 100.0, (lang, out[lang])
        assert out[lang]["vtr_cos_match"] == pytest.approx(1.0)
        assert out[lang]["vtr_cos_other_question"] == pytest.approx(0.5)  # only the image part is shared
    assert out["distinct_questions"] < out["questions"]


def test_random_init_vtr_is_collapsed(world: Path, tmp_path: Path) -> None:
    from rc3.modeling import build_model, load_tokenizer
    from rc3.pretrain.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "synthetic-tiny.yaml",
                      [f"model.tokenizer={world / 'tokenizer'}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, load_tokenizer(cfg.model))
    out = transfer.xgqa_alignment(model, RC3Tokenizer.from_dir(world / "tokenizer"), world, LANGS)
    assert out["vtr_mean_cos"] > 0.95  # every input maps to (nearly) one direction before training
    for lang in LANGS:
        assert 0.0 <= out[lang]["tr_acc"] <= 100.0 and 0.0 <= out[lang]["vtr_same_image_acc"] <= 100.0


def _raw_questions(world: Path) -> dict[str, dict[str, dict]]:
    base = world / "downstream"
    out = {"train": json.loads((base / "gqa/annotations/train_balanced_questions.json").read_text(encoding="utf-8"))}
    for lang in ["en", *LANGS]:
        out[lang] = json.loads((base / "xGQA/annotations/few_shot" / lang / "test.json").read_text(encoding="utf-8"))
    return out


def test_probe_reads_what_the_features_carry(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Features made from the raw files: a language-independent one-hot of the English question's type
    transfers to every language (type probe 100 %); a one-hot of the question string (English words only)
    does not. The probe must see English training questions and each language's own test questions."""
    raw = _raw_questions(world)
    type_of = {q["question"]: q["types"]["detailed"] for q in raw["train"].values()}
    for lang in ["en", *LANGS]:  # the English meaning of every test question, by qid
        for qid, q in raw[lang].items():
            type_of[q["question"]] = raw["en"][qid]["types"]["detailed"]
    kinds = sorted(set(type_of.values()))
    strings = sorted(type_of)
    lang_of = {q["question"]: lang for lang in ["en", *LANGS] for q in raw[lang].values()}
    lang_of.update({q["question"]: "en" for q in raw["train"].values()})
    seen: list[tuple[str, int]] = []

    def features(model, tok, visual, questions, lang):  # noqa: ANN001
        assert all(lang_of[q["question"]] == lang for q in questions), f"questions of another language given as {lang}"
        seen.append((lang, len(questions)))
        kind = torch.zeros(len(questions), len(kinds))
        word = torch.zeros(len(questions), len(strings))
        for i, q in enumerate(questions):
            kind[i, kinds.index(type_of[q["question"]])] = 1.0
            if lang == "en":
                word[i, strings.index(q["question"])] = 1.0
        return {"cls": kind, "text_mean": word}

    monkeypatch.setattr(transfer, "question_features", features)
    model = type("M", (), {"cfg": type("C", (), {"image_size": 96})()})()
    out = transfer.xgqa_probe(model, None, world, LANGS)  # type: ignore[arg-type]
    assert seen[0] == ("en", len(raw["train"])) and {lang for lang, _ in seen[1:]} == {"en", *LANGS}
    assert out["types"] == kinds and len(kinds) == 4
    for lang in ["en", *LANGS]:
        assert out["cls/type"][lang] == 100.0, out["cls/type"]
    # English test questions whose string the training set holds are typed right; the others are unseen strings
    seen_share = sum(q["question"] in {t["question"] for t in raw["train"].values()} for q in raw["en"].values()) / len(raw["en"])
    assert 0.5 < seen_share < 1.0 and out["text_mean/type"]["en"] >= 100.0 * seen_share
    for lang in LANGS:  # English strings only: nothing for a German question to be read by
        assert out["text_mean/type"][lang] < 50.0, out["text_mean/type"]
    # The answer needs the image: a type one-hot answers each type with one label, at most the type prior.
    assert out["cls/answer"]["en"] < 60.0
