"""rc3.add_language and the rc3-add-language command (rc3.tools.add_language) on a tiny model and text made here.

The tokenizer is trained on English, German and French only; Russian (Cyrillic) is the new language.
Checks: clear errors for unaligned / empty / malformed parallel text and unknown language codes; the
vocabulary extension keeps the segmentation of every other language's text, piece for piece, and the
model's TR of it (before training), with a reduced vocabulary (id map) and without; new rows start as
the mean of the old tokenisation's rows; the distillation loss against its equation; training pulls
the Russian TR onto the teacher's English TR; each `trainable` switch trains what it names and nothing
else; a run killed mid-way and resumed ends with the same weights as an uninterrupted one; the output
is a new model directory that rc3.inference loads, and the input directory is left untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch
from pickle_payload import tamper
from procs import run_bounded

from rc3.add_language import (
    AddLanguageOptions,
    ParallelTextError,
    add_language,
    candidate_pieces,
    distillation_loss,
    extend_tokenizer,
    read_parallel,
    resize_embeddings,
    row_sources,
)
from rc3.data.collate import pad_batch
from rc3.modeling import RC3Model
from rc3.tokenization import IdMap, RC3Tokenizer, train_sentencepiece

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"en": ["red", "blue", "green", "black"], "de": ["rote", "blaue", "grüne", "schwarze"],
           "fr": ["rouge", "bleu", "vert", "noir"], "ru": ["красный", "синий", "зелёный", "чёрный"]}
SHAPES = {"en": ["circle", "square", "star", "triangle"], "de": ["Kreis", "Quadrat", "Stern", "Dreieck"],
          "fr": ["cercle", "carré", "étoile", "triangle"], "ru": ["круг", "квадрат", "звезда", "треугольник"]}
PLACES = {"en": ["on the left", "on the right", "at the top"], "de": ["links", "rechts", "oben"],
          "fr": ["à gauche", "à droite", "en haut"], "ru": ["слева", "справа", "сверху"]}


def sentence(lang: str, i: int) -> str:
    c, s, p = COLOURS[lang][i % 4], SHAPES[lang][(i // 4) % 4], PLACES[lang][(i // 16) % 3]
    return {"en": f"a {c} {s} {p}", "de": f"der {c} {s} ist {p}", "fr": f"le {s} {c} est {p}",
            "ru": f"{c} {s} {p}"}[lang]


TEXTS = {lang: [sentence(lang, i) for i in range(48)] for lang in COLOURS}


def sha(directory: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tokenizer on en/de/fr (full and with a reduced id map) and a tiny model for each."""
    from tiny import tiny_model_config

    root = tmp_path_factory.mktemp("addlang")
    train_sentencepiece([t for lang in ("en", "de", "fr") for t in TEXTS[lang]] * 4, root / "tok", vocab_size=90,
                        character_coverage=1.0)
    full = RC3Tokenizer.from_dir(root / "tok")
    # A reduced vocabulary: drop a few pieces nobody needs for this text (as tools/convert_mbart50.py does).
    used = {i for lang in ("en", "de", "fr") for ids in full.segment(TEXTS[lang]) for i in ids}
    specials = {full.hf.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")}
    langs = {int(full.hf.convert_tokens_to_ids(c)) for c in full.hf.added_tokens_encoder if c.endswith(("_XX", "_DE", "_RU",
             "_CZ", "_ID", "_CN", "_AR", "_IN", "_KR", "_KE", "_TR"))}
    kept = sorted(used | specials | langs | set(range(4, 20)))
    assert len(kept) < len(full.hf)
    RC3Tokenizer(full.hf, IdMap(kept, len(full.hf), full.hf.convert_tokens_to_ids("<unk>"))).save(root / "tok-reduced")
    out = {}
    for name, tok_dir in (("full", root / "tok"), ("reduced", root / "tok-reduced")):
        tok = RC3Tokenizer.from_dir(tok_dir)
        torch.manual_seed(0)
        model = RC3Model.from_config(tiny_model_config(), tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
        model.save_pretrained(root / f"model-{name}", tokenizer_dir=tok_dir)
        out[name] = root / f"model-{name}"
    return out


# ---- parallel text ------------------------------------------------------------------------------
def test_parallel_text_errors(tmp_path: Path) -> None:
    en, ru = tmp_path / "a.en", tmp_path / "a.ru"
    en.write_text("one\ntwo\nthree\n")
    ru.write_text("один\nдва\n")
    with pytest.raises(ParallelTextError, match=r"not line-aligned: .*a.en has 3 lines, .*a.ru has 2"):
        read_parallel(en, ru)
    ru.write_text("один\n\nтри\n")
    with pytest.raises(ParallelTextError, match=r"a.ru: line 2 is empty"):
        read_parallel(en, ru)
    tsv = tmp_path / "p.tsv"
    tsv.write_text("one\tодин\ntwo без tab\n")
    with pytest.raises(ParallelTextError, match=r"p.tsv:2: expected 2 tab-separated columns"):
        read_parallel(tsv)
    tsv.write_text("one\tодин\n \tдва\n")
    with pytest.raises(ParallelTextError, match=r"column 1\): line 2 is empty"):
        read_parallel(tsv)
    ru.write_text("один\nдва\nтри\n")
    assert read_parallel(en, ru) == [("one", "один"), ("two", "два"), ("three", "три")]
    tsv.write_text("one\tодин\ntwo\tдва\n")
    assert read_parallel(tsv) == [("one", "один"), ("two", "два")]


def test_unknown_language_and_bad_options(base: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown language 'xx'; supported: .*ru"):
        AddLanguageOptions(lang="xx").check()
    with pytest.raises(ValueError, match="cannot be English"):
        AddLanguageOptions(lang="en").check()
    with pytest.raises(ValueError, match="trainable 'all'"):
        AddLanguageOptions(lang="ru", trainable="all").check()
    tsv = tmp_path / "p.tsv"
    tsv.write_text("a red circle\tкрасный круг\n")
    r = run_bounded([sys.executable, "-m", "rc3.tools.add_language", "--model", str(base["full"]), "--lang", "klingon",
                     "--parallel", str(tsv), "--out", str(tmp_path / "o")], timeout=300,
                    waiting_for="add_language refusing an unknown language", cwd=REPO,
                    env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode != 0 and "unknown language 'klingon'" in r.stderr and not (tmp_path / "o").exists()


# ---- vocabulary --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["full", "reduced"])
def test_extension_keeps_every_other_language_and_initialises_rows(base: dict[str, Path], kind: str, tmp_path: Path) -> None:
    src = base[kind]
    old = RC3Tokenizer.from_dir(src)
    pieces = candidate_pieces(TEXTS["ru"], src / "sentencepiece.bpe.model", vocab_size=60, max_new=40)
    assert pieces and all(any("\u0400" <= ch <= "\u04ff" for ch in p) for p, _ in pieces)  # Cyrillic only
    ext = extend_tokenizer(src, pieces, tmp_path / "tok")
    new = RC3Tokenizer.from_dir(tmp_path / "tok")
    assert new.vocab_size == old.vocab_size + len(pieces)
    for lang in ("en", "de", "fr"):
        for text in TEXTS[lang]:
            assert new.pieces(text) == old.pieces(text)
            assert new.piece_ids(text) == old.piece_ids(text)  # the same ids: new pieces come after every old piece
    # The sentencepiece file and the full segmentation agree: a directory without the latter segments alike.
    spm_only = tmp_path / "spm-only"
    spm_only.mkdir()
    for f in ("sentencepiece.bpe.model", "id_map.json"):
        if (tmp_path / "tok" / f).exists():
            (spm_only / f).write_bytes((tmp_path / "tok" / f).read_bytes())
    alone = RC3Tokenizer.from_dir(spm_only)
    for text in TEXTS["ru"] + TEXTS["en"]:
        assert alone.encode(text, "ru") == new.encode(text, "ru")
    unk_before = sum(i == old.unk_id for t in TEXTS["ru"] for i in old.piece_ids(t))
    unk_after = sum(i == new.unk_id for t in TEXTS["ru"] for i in new.piece_ids(t))
    assert unk_before > 0 and unk_after < unk_before / 4
    # The model: same TR of the other languages' text, new rows = mean of the old tokenisation's rows.
    model = RC3Model.from_pretrained(src).eval()
    old_w = model.mbart.model.shared.weight.detach().clone()
    resize_embeddings(model, row_sources(old, new, ext))
    before = RC3Model.from_pretrained(src).eval()
    for lang in ("en", "de", "fr"):
        a = before.tr(*pad_batch([old.encode(t, lang) for t in TEXTS[lang]], old.pad_id))
        b = model.tr(*pad_batch([new.encode(t, lang) for t in TEXTS[lang]], new.pad_id))
        assert torch.equal(a, b)
    w = model.mbart.model.shared.weight
    assert model.mbart.lm_head.weight.data_ptr() == w.data_ptr() and model.mbart.config.vocab_size == new.vocab_size
    for piece, _ in pieces:
        full_id = new.hf.convert_tokens_to_ids(piece)
        new_id = new.id_map.to_new([full_id])[0] if new.id_map is not None else full_id
        assert new_id != new.unk_id
        old_ids = old.piece_ids(piece.replace("\u2581", " "))  # how the old vocabulary spelled the piece
        assert torch.allclose(w[new_id], old_w[old_ids].mean(0))
    assert torch.equal(w[new.lang_id("de")], old_w[old.lang_id("de")])


def test_no_new_pieces_when_the_script_is_known(base: dict[str, Path]) -> None:
    assert candidate_pieces(TEXTS["fr"], base["full"] / "sentencepiece.bpe.model", 60, 40) == []


# ---- distillation ------------------------------------------------------------------------------
def test_distillation_loss_is_reimers_gurevych_eq1() -> None:
    g = torch.Generator().manual_seed(0)
    s_en, s_x, t_en = (torch.randn(5, 7, generator=g) for _ in range(3))
    total, en, x = distillation_loss(s_en, s_x, t_en)
    want_en = sum(float(((s_en[i] - t_en[i]) ** 2).sum()) for i in range(5)) / 35
    want_x = sum(float(((s_x[i] - t_en[i]) ** 2).sum()) for i in range(5)) / 35
    assert en.item() == pytest.approx(want_en, rel=1e-6) and x.item() == pytest.approx(want_x, rel=1e-6)
    assert total.item() == pytest.approx(want_en + want_x, rel=1e-6)


def tr_gap(model_dir: Path, teacher_dir: Path, lang: str = "ru", texts: Optional[list[str]] = None) -> float:
    """Mean squared distance of the model's TR of `texts` (default: the Russian ones) in `lang` from the
    teacher's English TR, over the pairs."""
    s, t = RC3Model.from_pretrained(model_dir).eval(), RC3Model.from_pretrained(teacher_dir).eval()
    ts, tt = RC3Tokenizer.from_dir(model_dir), RC3Tokenizer.from_dir(teacher_dir)
    with torch.no_grad():
        x = s.tr(*pad_batch([ts.encode(r, lang) for r in (TEXTS[lang] if texts is None else texts)], ts.pad_id))
        e = t.tr(*pad_batch([tt.encode(r, "en") for r in TEXTS["en"]], tt.pad_id))
    return float(((x - e) ** 2).mean())


def weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


@pytest.mark.parametrize("trainable", ["embeddings", "encoder", "lora"])
def test_trainable_switch_trains_what_it_names(base: dict[str, Path], trainable: str, tmp_path: Path) -> None:
    if trainable == "lora":
        pytest.importorskip("peft")
    src = base["reduced"]
    before = sha(src)
    pairs = list(zip(TEXTS["en"], TEXTS["ru"]))
    opts = AddLanguageOptions(lang="ru", trainable=trainable, extend_vocab=True, new_vocab_size=60, steps=40, warmup_steps=2,
                              batch_size=16, lr=3e-3, save_every=0)
    out = add_language(src, pairs, tmp_path / "out", opts, progress=False, log=lambda s: None)
    assert sha(src) == before  # the input model directory is untouched
    assert not (tmp_path / ".out.add_language").exists()  # checkpoints removed once the model is written
    assert tr_gap(out, src) < 0.5 * tr_gap(src, src)  # Russian moved onto English
    a, b = weights(src), weights(out)
    assert a.keys() == b.keys()  # LoRA adapters are merged away: the same tensors as the input
    vocab = "mbart.lm_head.weight"  # the tied embeddings, saved once under the LM head's name
    assert b[vocab].shape[0] > a[vocab].shape[0]
    changed = {k for k in a if k != vocab and k != "mbart.final_logits_bias" and not torch.equal(a[k], b[k])}
    encoder = {k for k in a if k.startswith("mbart.model.encoder.")}  # never the decoder, ITM head or visual front end
    if trainable == "embeddings":
        assert changed == set()
    elif trainable == "encoder":
        assert changed and changed <= encoder
    else:  # LoRA touches only the projections it adapts
        assert changed and all(k.startswith("mbart.model.encoder.layers.") and k.endswith(".weight") for k in changed)
    from rc3.inference import load

    m = load(out, device="cpu")
    emb = m.embed_texts([TEXTS["en"][0], TEXTS["ru"][0]], lang=["en", "ru"])
    assert emb.shape[0] == 2
    info = (out / "add_language.json").read_text()
    assert '"lang": "ru"' in info and f'"trainable": "{trainable}"' in info


def test_existing_output_is_refused_and_same_input_rejected(base: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    opts = AddLanguageOptions(lang="ru", steps=1, save_every=0)
    with pytest.raises(FileExistsError, match="--overwrite"):
        add_language(base["full"], [("a", "б")], tmp_path / "out", opts, progress=False)
    with pytest.raises(ValueError, match="is the input model directory"):
        add_language(base["full"], [("a", "б")], base["full"], opts, progress=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_result(base: dict[str, Path], tmp_path: Path) -> None:
    tsv = tmp_path / "p.tsv"
    tsv.write_text("".join(f"{a}\t{b}\n" for a, b in zip(TEXTS["en"], TEXTS["ru"])))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def run(out: Path, *extra: str, kill: str | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "rc3.tools.add_language", "--model", str(base["full"]), "--lang", "ru", "--parallel",
               str(tsv), "--out", str(out), "--extend-vocab", "--new-vocab-size", "60", "--steps", "12",
               "--batch-size", "8", "--save-every", "4", "--trainable", "encoder", "--no-progress", *extra]
        return run_bounded(cmd, timeout=600, waiting_for=f"add_language --extend-vocab (kill at {kill})",
                           cwd=REPO, env={**env, **({"RC3_KILL_AT": kill} if kill else {})})

    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    killed = run(tmp_path / "resumed", kill="7")  # dies as step 7 begins: the step-4 checkpoint exists
    assert killed.returncode != 0 and not (tmp_path / "resumed").exists()  # nothing half-written
    resumed = run(tmp_path / "resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 4" in resumed.stdout
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = run(tmp_path / "other", "--resume")
    assert fresh.returncode != 0 and "no checkpoint" in fresh.stderr


def test_world_parallel_text_is_translations_of_one_meaning() -> None:
    from rc3.synthetic.languages import language
    from rc3.synthetic.repro.add_language import world_parallel
    from rc3.synthetic.world import COLOURS, SHAPES

    pairs = world_parallel("ru", 200, seed=0)
    assert len(pairs) == 200 and pairs == world_parallel("ru", 200, seed=0) and pairs != world_parallel("ru", 200, seed=1)
    ru, es = language("ru"), language("es")
    kinds = {"caption": 0, "claim": 0, "question": 0}
    for en_text, ru_text in pairs:
        low = en_text.lower()
        # every shape and colour the English sentence names is named in the Russian one too
        for shape in SHAPES:
            if shape in low:
                assert ru.noun(shape).lower() in ru_text.lower(), (en_text, ru_text)
        for colour in COLOURS:
            if f" {colour} " in f" {low} ".replace(".", " "):
                assert any(f in ru_text.lower() for f in ru.COLOURS[colour]), (en_text, ru_text)
        kinds["question" if en_text.endswith("?") else "claim" if en_text.startswith("The ") else "caption"] += 1
    assert all(n > 20 for n in kinds.values())  # ru has caption, claim and question grammars
    assert all(not e.endswith("?") for e, _ in world_parallel("tr", 50))  # tr: captions only
    assert es.noun("circle") in " ".join(x for _, x in world_parallel("es", 100))


def test_new_rows_only_keeps_every_other_language_bit_identical(base: dict[str, Path], tmp_path: Path) -> None:
    src = base["full"]
    pairs = list(zip(TEXTS["en"], TEXTS["ru"]))
    opts = AddLanguageOptions(lang="ru", trainable="embeddings", embedding_rows="new", extend_vocab=True,
                              new_vocab_size=60, steps=40, warmup_steps=2, batch_size=16, lr=3e-3, save_every=0)
    out = add_language(src, pairs, tmp_path / "out", opts, progress=False, log=lambda s: None)
    assert tr_gap(out, src) < 0.5 * tr_gap(src, src)
    old, new = RC3Model.from_pretrained(src).eval(), RC3Model.from_pretrained(out).eval()
    to, tn = RC3Tokenizer.from_dir(src), RC3Tokenizer.from_dir(out)
    with torch.no_grad():
        for lang in ("en", "de", "fr"):
            a = old.tr(*pad_batch([to.encode(t, lang) for t in TEXTS[lang]], to.pad_id))
            b = new.tr(*pad_batch([tn.encode(t, lang) for t in TEXTS[lang]], tn.pad_id))
            assert torch.equal(a, b), lang


def tr_drift(src: Path, out: Path, lang: str) -> float:
    """Mean squared change of the TR of TEXTS[lang] from model `src` to model `out`."""
    old, new = RC3Model.from_pretrained(src).eval(), RC3Model.from_pretrained(out).eval()
    to, tn = RC3Tokenizer.from_dir(src), RC3Tokenizer.from_dir(out)
    with torch.no_grad():
        a = old.tr(*pad_batch([to.encode(t, lang) for t in TEXTS[lang]], to.pad_id))
        b = new.tr(*pad_batch([tn.encode(t, lang) for t in TEXTS[lang]], tn.pad_id))
    return float(((a - b) ** 2).mean())


def test_kept_languages_stay_where_they_were(base: dict[str, Path], tmp_path: Path) -> None:
    """--keep: the TR of the kept languages' sentences is pulled back onto the input model's, so German
    and French (sharing Latin pieces and <s> with the Russian being added) drift far less than without."""
    from rc3.add_language import read_keep

    src = base["full"]
    pairs = list(zip(TEXTS["en"], TEXTS["ru"]))
    opts = AddLanguageOptions(lang="ru", trainable="embeddings", steps=40, warmup_steps=2, batch_size=16, lr=3e-3, save_every=0)
    keep_files = []
    for lang in ("de", "fr"):
        path = tmp_path / f"{lang}.txt"
        path.write_text("\n".join(TEXTS[lang][::2]) + "\n\n", encoding="utf-8")  # half the sentences; a blank line
        keep_files.append(f"{lang}={path}")
    keep = read_keep(keep_files)
    assert len(keep) == 48 and keep[0] == ("de", TEXTS["de"][0]) and keep[-1] == ("fr", TEXTS["fr"][46])
    plain = add_language(src, pairs, tmp_path / "plain", opts, progress=False, log=lambda s: None)
    kept = add_language(src, pairs, tmp_path / "kept", opts, progress=False, log=lambda s: None, keep=keep)
    for lang in ("de", "fr"):  # measured on every sentence, half of them never seen in the keep set
        assert tr_drift(src, kept, lang) < 0.5 * tr_drift(src, plain, lang), lang
    assert tr_gap(kept, src) < 0.75 * tr_gap(src, src)  # Russian still moves onto English
    info = json.loads((kept / "add_language.json").read_text())
    assert info["keep"] == {"de": 24, "fr": 24}
    with pytest.raises(ParallelTextError, match="LANG=FILE"):
        read_keep(["de.txt"])
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        read_keep([f"xx={tmp_path / 'de.txt'}"])
    with pytest.raises(ParallelTextError, match="cannot read"):
        read_keep([f"de={tmp_path / 'missing.txt'}"])
    with pytest.raises(ValueError, match="the language being added"):
        add_language(src, pairs, tmp_path / "bad", opts, progress=False, log=lambda s: None, keep=[("ru", "x")])


ES = {"c": ["rojo", "azul", "verde", "negro"], "s": ["círculo", "cuadrado", "estrella", "triángulo"],
      "p": ["a la izquierda", "a la derecha", "arriba"]}
ES_TEXTS = [f"el {ES['s'][(i // 4) % 4]} {ES['c'][i % 4]} está {ES['p'][(i // 16) % 3]}" for i in range(48)]


def test_new_rows_with_keep_hold_the_kept_languages_exactly(base: dict[str, Path], tmp_path: Path) -> None:
    """Spanish shares Latin pieces with German and French that English does not use: --embedding-rows new
    alone moves those rows (German/French drift), with --keep it leaves every row a kept sentence uses
    alone, so German and French keep their TR bit for bit while Spanish still moves onto English."""
    from rc3.add_language import read_keep

    src = base["full"]
    tok = RC3Tokenizer.from_dir(src)
    pieces = lambda texts: {p for t in texts for p in tok.hf.tokenize(t)}  # noqa: E731
    shared = (pieces(ES_TEXTS) & (pieces(TEXTS["de"]) | pieces(TEXTS["fr"]))) - pieces(TEXTS["en"])
    assert shared, "the test needs Spanish pieces shared with German/French but not English"
    pairs = list(zip(TEXTS["en"], ES_TEXTS))
    opts = AddLanguageOptions(lang="es", trainable="embeddings", embedding_rows="new", steps=40, warmup_steps=2, batch_size=16,
                              lr=3e-3, save_every=0)
    keep_files = []
    for lang in ("de", "fr"):
        path = tmp_path / f"{lang}.txt"
        path.write_text("\n".join(TEXTS[lang][::3]) + "\n", encoding="utf-8")  # every word, a third of the sentences
        keep_files.append(f"{lang}={path}")
        assert pieces(TEXTS[lang][::3]) == pieces(TEXTS[lang])
    english_only = add_language(src, pairs, tmp_path / "en-only", opts, progress=False, log=lambda s: None)
    kept = add_language(src, pairs, tmp_path / "kept", opts, progress=False, log=lambda s: None,
                        keep=read_keep(keep_files))
    assert max(tr_drift(src, english_only, lang) for lang in ("de", "fr")) > 0
    for lang in ("en", "de", "fr"):  # every sentence, two thirds of them not in the keep files
        assert tr_drift(src, kept, lang) == 0.0, lang
    assert tr_gap(kept, src, "es", ES_TEXTS) < 0.75 * tr_gap(src, src, "es", ES_TEXTS)
    rows = json.loads((kept / "add_language.json").read_text())["training"]["trainable_embedding_rows"]
    assert 0 < rows < json.loads((english_only / "add_language.json").read_text())["training"]["trainable_embedding_rows"]


class Stopped(Exception):
    """Raised in place of the SIGKILL of RC3_KILL_AT, so that the run stops in this process."""


def decays(name: str, p: torch.Tensor) -> bool:
    """The weight-decay rule every loop states (matrices decay; biases, norms do not), written out here."""
    return p.ndim >= 2 and "norm" not in name.lower()


def test_stopped_run_resumes_from_the_shared_checkpoint_directory(base: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Stopped as step 4 of 4 begins, a run has checkpoints 2 and 3 (safetensors and JSON, sealed by COMPLETE
    with a manifest, no pickle). Resumed from step 3, from step 2 when step 3's state was changed after the
    save (a warning names the file), and from the state.pt an older version wrote (one optimizer group), it
    ends with the uninterrupted run's weights. A state.pt carrying a pickled payload is refused naming the
    file, and the payload never runs."""
    import dataclasses

    from tiny import tiny_model_config

    import rc3.add_language.distill as al

    # dropout on: each step draws from the RNG, so a resume must restore its state too
    tok = RC3Tokenizer.from_dir(base["full"])
    torch.manual_seed(0)
    model = RC3Model.from_config(dataclasses.replace(tiny_model_config(), dropout=0.1), tok.vocab_size, tok.pad_id,
                                 tok.bos_id, tok.eos_id)
    src = model.save_pretrained(tmp_path / "model-dropout", tokenizer_dir=base["full"])
    pairs = list(zip(TEXTS["en"][:8], TEXTS["ru"][:8]))
    opts = AddLanguageOptions(lang="ru", trainable="encoder", steps=4, warmup_steps=1, batch_size=4, save_every=1)
    whole = weights(add_language(src, pairs, tmp_path / "whole", opts, progress=False, log=lambda s: None))

    def stopped(work: Path) -> Path:
        def kill(step: int, rank: int) -> None:
            if step == 4:
                raise Stopped()

        with monkeypatch.context() as m:
            m.setattr(al.fault_injection, "maybe_kill", kill)
            with pytest.raises(Stopped):
                add_language(src, pairs, tmp_path / "out", opts, work_dir=work, progress=False,
                             log=lambda s: None)
        ckpt = work / "checkpoints"
        assert sorted(p.name for p in ckpt.glob("step_*")) == ["step_00000002", "step_00000003"]
        files = {p.name for p in (ckpt / "step_00000003").iterdir()}
        assert files == {"COMPLETE", "state.safetensors", "rng.safetensors", "run_state.json"}
        assert set(json.loads((ckpt / "step_00000003" / "COMPLETE").read_text())["files"]) == files - {"COMPLETE"}
        return ckpt

    def resumed(work: Path, out: str) -> tuple[dict[str, torch.Tensor], list[str]]:
        logs: list[str] = []
        done = add_language(src, pairs, tmp_path / out, opts, work_dir=work, resume=True, progress=False,
                            log=logs.append)
        return weights(done), logs

    def same(got: dict[str, torch.Tensor]) -> bool:
        return got.keys() == whole.keys() and all(torch.equal(got[k], whole[k]) for k in whole)

    stopped(tmp_path / "w1")
    got, logs = resumed(tmp_path / "w1", "r1")
    assert any("resumed at step 3 of 4" in line for line in logs), logs
    assert same(got)

    ckpt = stopped(tmp_path / "w2")
    state = ckpt / "step_00000003" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0x01
    state.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="rc3.checkpoint"):
        got, logs = resumed(tmp_path / "w2", "r2")
    assert any(f"checkpoint {ckpt / 'step_00000003'} is damaged: state.safetensors has other contents" in r.message
               and "falling back to step_00000002" in r.message for r in caplog.records), caplog.text
    assert any("resumed at step 2 of 4" in line for line in logs), logs
    assert same(got)

    # the single checkpoint an older version wrote: work/checkpoint/state.pt, every trained parameter in one
    # optimizer group in the model's order, the torch RNG state
    work = tmp_path / "w3"
    ckpt = stopped(work)
    from safetensors.torch import load_file

    from rc3.checkpoints import tensor_state
    tag = ckpt / "step_00000003"
    tensors, run = tensor_state.load(tag / "state.safetensors"), json.loads((tag / "run_state.json").read_text())
    names = list(tensors["params"])
    grouped = [n for n in names if decays(n, tensors["params"][n])] + [n for n in names if not decays(n, tensors["params"][n])]
    optim = tensors["optimizer"]
    group = {k: v for k, v in optim["param_groups"][0].items() if k != "params"}
    legacy_optim = {"state": {names.index(n): optim["state"][j] for j, n in enumerate(grouped)},
                    "param_groups": [{**group, "weight_decay": opts.weight_decay, "params": list(range(len(names)))}]}
    # it stated warmup as a fraction of the run: 0.25 of 4 steps is the 1 step this run warms up over
    legacy_options = {**{k: v for k, v in run["options"].items() if k != "warmup_steps"}, "warmup_ratio": 0.25}
    legacy = work / "checkpoint" / "state.pt"
    legacy.parent.mkdir()
    torch.save({"params": tensors["params"], "optimizer": legacy_optim, "scheduler": tensors["scheduler"],
                "rng": load_file(str(tag / "rng.safetensors"))["torch_cpu"], "step": run["step"], "record": run["record"],
                "options": legacy_options, "pairs": run["pairs"], "keep": run["keep"]}, legacy)
    import shutil
    shutil.rmtree(ckpt)
    intact = legacy.read_bytes()
    with pytest.raises(ValueError, match=rf"^resume: {legacy} warmed up over 1 of its 4 steps; resume it with "
                                         r"--warmup-steps 1$"):
        add_language(src, pairs, tmp_path / "r3", dataclasses.replace(opts, warmup_steps=2), work_dir=work,
                     resume=True, progress=False, log=lambda s: None)
    got, logs = resumed(work, "r3")
    assert any("resumed at step 3 of 4" in line for line in logs), logs
    assert same(got)

    work.mkdir()
    legacy.parent.mkdir()
    legacy.write_bytes(intact)
    marker = tmp_path / "ran"
    tamper(legacy, marker)
    with pytest.raises(ValueError, match=rf"^{legacy}: refuses to unpickle posix\.system \(not a tensor/allowed "
                                         r"type\); this file may have been tampered with — use an intact checkpoint$"):
        add_language(src, pairs, tmp_path / "r4", opts, work_dir=work, resume=True, progress=False,
                     log=lambda s: None)
    assert not marker.exists()


def test_precision_follows_the_rule_of_every_loop(base: dict[str, Path], tmp_path: Path) -> None:
    """`precision` as pretraining and finetuning read it (rc3.optim.use_bf16): on this CPU "auto" is fp32, so
    it gives the fp32 run bit for bit, and "bf16" computes under bf16 autocast (other losses, a trained model)."""
    pairs = list(zip(TEXTS["en"], TEXTS["ru"]))[:32]
    runs = {}
    for precision in ("auto", "fp32", "bf16"):
        opts = AddLanguageOptions(lang="ru", steps=6, warmup_steps=1, batch_size=16, lr=3e-3, save_every=0,
                                  log_every=1, precision=precision)
        out = add_language(base["full"], pairs, tmp_path / precision, opts, progress=False, log=lambda s: None)
        info = json.loads((out / "add_language.json").read_text())
        runs[precision] = [row["loss"] for row in info["training"]["log"]]
    assert runs["auto"] == runs["fp32"]
    assert len(runs["bf16"]) == len(runs["fp32"]) and runs["bf16"] != runs["fp32"]
    assert all(abs(a - b) < 0.1 * abs(b) + 1e-3 for a, b in zip(runs["bf16"], runs["fp32"]))  # the same run, rounded
    with pytest.raises(ValueError, match="precision 'fp16' is not one of auto, fp32, bf16"):
        AddLanguageOptions(lang="ru", precision="fp16").check()
