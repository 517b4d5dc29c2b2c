"""Vocabulary reduction (rc3.vocab, tools/convert_mbart50.py) and the plain-HF export (tools/export_hf.py).

A tiny HF mBART with the test sentencepiece model stands in for mBART-50; the corpora are real Multi30K
lines. The reduced model must agree with the source model on every kept id.
"""
from __future__ import annotations

import gzip
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import MBartConfig, MBartForConditionalGeneration

from rc3.modeling import RC3Model, build_model, load_tokenizer
from rc3.modeling.config import ModelConfig
from rc3.tokenization import IdMap, RC3Tokenizer
from rc3.vocab import (
    always_kept_ids,
    count_pieces,
    coverage_of,
    iter_lines,
    parse_corpus_spec,
    select_vocabulary,
    slice_vocab_tensors,
    smallest_covering_set,
)

REPO = Path(__file__).resolve().parents[1]
COVERAGE = 0.999
CORPUS_LINES = 1500


def run_tool(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / script), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def load_tool(script: str):
    """A tools/ script as a module, to call its main(argv) in this process."""
    return importlib.import_module(f"rc3.tools.{Path(script).stem}")  # what tools/<script> runs


@pytest.fixture(scope="module")
def mbart_dir(tmp_path_factory, tokenizer_dir: Path, tokenizer: RC3Tokenizer) -> Path:
    """A tiny HF mBART in mBART-50's layout (random weights, a non-zero final_logits_bias)."""
    out = tmp_path_factory.mktemp("mbart")
    torch.manual_seed(0)
    cfg = MBartConfig(vocab_size=tokenizer.vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      max_position_embeddings=128, scale_embedding=True, pad_token_id=tokenizer.pad_id,
                      bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                      decoder_start_token_id=tokenizer.eos_id, forced_eos_token_id=tokenizer.eos_id)
    model = MBartForConditionalGeneration(cfg)
    with torch.no_grad():
        model.final_logits_bias.normal_()
    model.save_pretrained(str(out))
    shutil.copy(tokenizer_dir / "sentencepiece.bpe.model", out)
    return out


@pytest.fixture(scope="module")
def corpora(release_data: Path, tmp_path_factory) -> dict[str, tuple[str, list[str]]]:
    """Multi30K lines per language, written in the three accepted namings: suffix, suffix + gz, FILE:lang."""
    out = tmp_path_factory.mktemp("corpora")
    raw = release_data / "multi30k" / "raw"
    specs: dict[str, tuple[str, list[str]]] = {}
    for lang, name in (("en", "m30k.en"), ("de", "m30k.de.gz"), ("fr", "french_lines.txt")):
        with gzip.open(raw / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = [next(f).strip() for _ in range(CORPUS_LINES)]
        path = out / name
        text = "\n".join(lines) + "\n\n"  # a trailing blank line is ignored
        if name.endswith(".gz"):
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            path.write_text(text, encoding="utf-8")
        specs[lang] = (f"{path}:fr" if lang == "fr" else str(path), lines)
    return specs


@pytest.fixture(scope="module")
def converted(mbart_dir: Path, corpora, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("rc3") / "model"
    res = run_tool("convert_mbart50.py", "--mbart", str(mbart_dir), "--coverage", str(COVERAGE), "--out", str(out),
                   "--corpus", *(spec for spec, _ in corpora.values()))
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


# ------------------------------------------------------------------------------------- rc3.vocab units

def test_parse_corpus_spec(tmp_path: Path) -> None:
    for name in ("a.de", "b.de.gz", "c.txt"):
        (tmp_path / name).write_text("x\n")
    assert parse_corpus_spec(str(tmp_path / "a.de")).lang == "de"
    assert parse_corpus_spec(str(tmp_path / "b.de.gz")).lang == "de"
    assert parse_corpus_spec(f"{tmp_path / 'c.txt'}:ja").lang == "ja"
    with pytest.raises(ValueError, match="cannot tell its language"):
        parse_corpus_spec(str(tmp_path / "c.txt"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        parse_corpus_spec(str(tmp_path / "missing.en"))


def test_iter_lines_reads_gzip_by_content(tmp_path: Path) -> None:
    path = tmp_path / "plain_name.en"  # gzipped although the name does not say so
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("one\n\n  two  \nthree\n")
    assert list(iter_lines(path)) == ["one", "two", "three"]
    assert list(iter_lines(path, max_lines=2)) == ["one", "two"]


def test_smallest_covering_set_by_hand() -> None:
    counts = np.array([0, 0, 0, 5, 50, 30, 10, 5, 0])  # id 3 is <unk>: covered for free
    # total 100; 0.5 -> id 4 alone (5 + 50 >= 50)
    assert smallest_covering_set(counts, 0.5, unk_id=3).tolist() == [4]
    assert smallest_covering_set(counts, 0.85, unk_id=3).tolist() == [4, 5]  # 5 + 80 = 85
    assert smallest_covering_set(counts, 0.86, unk_id=3).tolist() == [4, 5, 6]
    # A tie at the boundary (ids 6 and 7 are not tied; make one): the lower id wins.
    tied = np.array([0, 0, 0, 0, 10, 10, 10])
    assert smallest_covering_set(tied, 0.5, unk_id=3).tolist() == [4, 5]
    assert smallest_covering_set(counts, 1.0, unk_id=3).tolist() == [4, 5, 6, 7]
    # 0.9999 of 10000 is 9999 exactly, not lost to floating point.
    big = np.array([0, 0, 0, 0, 9999, 1])
    assert smallest_covering_set(big, 0.9999, unk_id=3).tolist() == [4]
    with pytest.raises(ValueError, match="coverage"):
        smallest_covering_set(counts, 0.0, unk_id=3)


def test_select_vocabulary_covers_every_language() -> None:
    en = np.array([0, 0, 0, 0, 90, 10, 0, 0])
    ja = np.array([0, 0, 0, 0, 0, 0, 99, 1])
    kept = select_vocabulary({"en": en, "ja": ja}, 0.95, always_keep=[0, 1, 2], unk_id=3)
    assert kept.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert coverage_of(en, kept, 3) == 1.0 and coverage_of(ja, kept, 3) == 0.99
    # Union {4,5,6} for en and {4,7,8} for de; 6 and 8 turn out redundant once both are in.
    en = np.array([0, 0, 0, 0, 90, 3, 3, 2, 2])
    de = np.array([0, 0, 0, 0, 90, 1, 1, 4, 4])
    kept = select_vocabulary({"en": en, "de": de}, 0.95, always_keep=[0], unk_id=3)
    assert kept.tolist() == [0, 3, 4, 5, 7]
    assert coverage_of(en, kept, 3) == coverage_of(de, kept, 3) == 0.95
    with pytest.raises(ValueError, match="language de"):
        select_vocabulary({"de": np.zeros(8, dtype=np.int64)}, 0.9, [], unk_id=3)


def test_slice_vocab_tensors_checks_ties() -> None:
    emb = torch.arange(12.0).reshape(6, 2)
    state = {"model.shared.weight": emb, "lm_head.weight": emb.clone(), "final_logits_bias": torch.arange(6.0)[None],
             "other": torch.ones(3)}
    out = slice_vocab_tensors(state, np.array([0, 2, 5]), old_vocab=6)
    assert out["model.shared.weight"].tolist() == [[0, 1], [4, 5], [10, 11]]
    assert out["lm_head.weight"] is out["model.shared.weight"]
    assert out["final_logits_bias"].tolist() == [[0, 2, 5]] and out["other"] is state["other"]
    state["lm_head.weight"] = emb + 1
    with pytest.raises(ValueError, match="untied"):
        slice_vocab_tensors(state, np.array([0, 2]), old_vocab=6)
    with pytest.raises(ValueError, match="rows"):
        slice_vocab_tensors({"model.shared.weight": emb}, np.array([0]), old_vocab=7)


def test_always_kept_ids_include_specials_and_all_language_codes(tokenizer: RC3Tokenizer) -> None:
    kept = set(always_kept_ids(tokenizer))
    assert {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id, tokenizer.mask_id} <= kept
    assert set(tokenizer.hf.lang_code_to_id.values()) <= kept and len(tokenizer.hf.lang_code_to_id) == 52


# --------------------------------------------------------------------------------- convert_mbart50.py

def test_convert_keeps_source_rows(converted, mbart_dir: Path, tokenizer: RC3Tokenizer) -> None:
    out, res = converted
    id_map = IdMap.load(out)
    kept = torch.as_tensor(id_map.kept)
    source = load_file(str(mbart_dir / "model.safetensors"))
    model = RC3Model.from_pretrained(out)
    mbart = model.mbart
    assert torch.equal(mbart.model.shared.weight, source["model.shared.weight"][kept])
    assert torch.equal(mbart.final_logits_bias, source["final_logits_bias"][:, kept])
    assert mbart.lm_head.weight is mbart.model.shared.weight
    assert mbart.model.encoder.embed_tokens.weight is mbart.model.shared.weight
    rest = {k: v for k, v in source.items() if "embed_tokens" not in k and "shared" not in k and k != "final_logits_bias"}
    state = mbart.state_dict()
    assert all(torch.equal(state[k], v) for k, v in rest.items())
    # Parameters shrink by exactly the dropped embedding rows; the tool says so.
    assert mbart.config.vocab_size == len(id_map) < tokenizer.vocab_size
    report = json.loads((out / "vocab_report.json").read_text())
    dropped = (tokenizer.vocab_size - len(id_map)) * 32
    assert report["parameters_before"] - report["parameters_after"] == dropped
    assert report["parameters_after"] == model.num_parameters()
    assert "parameters (RC3 model" in res.stdout and "M ->" in res.stdout


def test_convert_reaches_coverage_on_the_corpus(converted, corpora, tokenizer: RC3Tokenizer) -> None:
    out, res = converted
    id_map = IdMap.load(out)
    kept = set(id_map.kept.tolist())
    report = json.loads((out / "vocab_report.json").read_text())
    for lang, (_, lines) in corpora.items():
        ids = [i for row in tokenizer.hf(lines, add_special_tokens=False)["input_ids"] for i in row]
        covered = sum(i in kept or i == tokenizer.unk_id for i in ids) / len(ids)
        assert covered >= COVERAGE, lang
        assert report["languages"][lang]["coverage"] == pytest.approx(covered)
        assert f"\n{lang} " in res.stdout
    # The corpora are en/de/fr only: pieces that only other scripts use are gone.
    ja_ids = tokenizer.piece_ids("犬が浜辺を走っています。")
    assert any(i not in kept for i in ja_ids)
    # No piece is spare: dropping any kept piece that is no special token takes some language below.
    specials = set(always_kept_ids(tokenizer))
    pieces = np.array([i for i in id_map.kept.tolist() if i not in specials])
    needed = np.zeros(len(pieces), dtype=bool)
    for _, lines in corpora.values():
        counts = count_pieces(tokenizer, lines)
        slack = coverage_of(counts, id_map.kept, tokenizer.unk_id) * counts.sum() - COVERAGE * counts.sum()
        needed |= counts[pieces] > slack + 1e-6
    assert needed.all() and len(pieces) > 100


def test_reduced_tokenizer_round_trips_text(converted, corpora, tokenizer: RC3Tokenizer) -> None:
    out, _ = converted
    reduced = RC3Tokenizer.from_dir(out)
    assert reduced.vocab_size == len(IdMap.load(out))
    for lang, (_, lines) in corpora.items():
        text = lines[7]
        ids = reduced.encode(text, lang)
        assert reduced.unk_id not in ids
        assert reduced.decode(ids) == tokenizer.decode(tokenizer.encode(text, lang)) == text
        assert ids[-1] == reduced.lang_id(lang) and ids[0] == reduced.bos_id
    # Every language code survives, including languages without a corpus; unkept pieces become <unk>.
    assert reduced.decode([reduced.lang_id("zh")], skip_special_tokens=False) == "zh_CN"
    assert reduced.unk_id in reduced.encode("犬が浜辺を走っています。", "ja")


def test_converted_model_computes_what_the_source_computes(converted, mbart_dir: Path, tokenizer: RC3Tokenizer) -> None:
    out, _ = converted
    cfg = ModelConfig(init_from=str(out))
    reduced_tok = load_tokenizer(cfg)
    model = build_model(cfg, reduced_tok).eval()
    source = MBartForConditionalGeneration.from_pretrained(str(mbart_dir)).eval()
    text = "Two young men are playing football in a park."
    old = torch.tensor([tokenizer.encode(text, "en")])
    new = torch.tensor([reduced_tok.encode(text, "en")])
    assert torch.equal(torch.as_tensor(IdMap.load(out).to_old(new[0].tolist())), old[0])
    with torch.no_grad():
        ref = source.model.encoder(input_ids=old).last_hidden_state
        enc = model.encode(new, torch.ones_like(new, dtype=torch.bool))
        assert torch.allclose(enc.hidden, ref, atol=1e-6)
        ref_logits = source.lm_head(ref) + source.final_logits_bias
        assert torch.allclose(model.lm_logits(enc.hidden), ref_logits[..., IdMap.load(out).kept], atol=1e-5)


@pytest.mark.slow  # starts Python processes that import torch
def test_convert_refuses_bad_input(converted, mbart_dir: Path, corpora, tmp_path: Path) -> None:
    convert = load_tool("convert_mbart50.py")
    out, _ = converted
    spec = corpora["en"][0]
    o = str(tmp_path / "o")

    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as info:
            convert.main(list(argv))
        assert info.value.code != 0
        return str(info.value.code)

    assert "--overwrite" in refused("--mbart", str(mbart_dir), "--corpus", spec, "--out", str(out))
    assert "no such file" in refused("--mbart", str(mbart_dir), "--corpus", str(tmp_path / "x.en"), "--out", o)
    (tmp_path / "x.txt").write_text("hello\n")
    assert "FILE:lang" in refused("--mbart", str(mbart_dir), "--corpus", str(tmp_path / "x.txt"), "--out", o)
    assert "already has a reduced vocabulary" in refused("--mbart", str(out), "--corpus", spec, "--out", o)
    assert "no config.json" in refused("--mbart", str(tmp_path), "--corpus", spec, "--out", o)
    assert "--langs de" in refused("--mbart", str(mbart_dir), "--corpus", spec, "--langs", "de", "--out", o)
    (tmp_path / "bad.en").write_bytes(b"caf\xe9\n")
    assert "not UTF-8" in refused("--mbart", str(mbart_dir), "--corpus", str(tmp_path / "bad.en"), "--out", o)
    refused("--mbart", str(mbart_dir), "--corpus", spec, "--coverage", "1.5", "--out", o)  # argparse: exit 2
    assert not (tmp_path / "o").exists()
    assert "--coverage" in run_tool("convert_mbart50.py", "--help").stdout


@pytest.mark.slow  # starts Python processes that import torch
def test_convert_overwrite_with_fewer_languages(converted, mbart_dir: Path, corpora, tmp_path: Path) -> None:
    out = tmp_path / "again"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    res = run_tool("convert_mbart50.py", "--mbart", str(mbart_dir), "--corpus", *(s for s, _ in corpora.values()),
                   "--langs", "en", "--coverage", "0.99", "--out", str(out), "--overwrite")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "skipping" in res.stdout and not (out / "stale.txt").exists()
    assert len(IdMap.load(out)) < len(IdMap.load(converted[0]))
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temp dirs left behind


# -------------------------------------------------------------------------------------- export_hf.py

@pytest.mark.slow  # starts Python processes that import torch
def test_export_hf_loads_with_plain_transformers(converted, tmp_path: Path) -> None:
    src, _ = converted
    out = tmp_path / "hf"
    res = run_tool("export_hf.py", str(src), str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    hf = MBartForConditionalGeneration.from_pretrained(str(out)).eval()
    model = RC3Model.from_pretrained(src).eval()
    tok = RC3Tokenizer.from_dir(out)  # the exported tokenizer files give the model's ids
    rows = [tok.encode(t, "de") for t in ("Ein Hund rennt am Strand.", "Zwei Männer spielen Fußball im Park.")]
    width = max(map(len, rows))
    ids = torch.full((2, width), tok.pad_id)
    mask = torch.zeros(2, width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), True
    with torch.no_grad():
        ours = model.encode(ids, mask).hidden
        theirs = hf.model.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert torch.allclose(ours[mask], theirs[mask], atol=1e-6)
    # Visual modules and the ITM head travel beside the backbone under their RC3 names, with the config.
    from safetensors import safe_open

    with safe_open(str(out / "rc3_visual.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert json.loads(f.metadata()["rc3_config"]) == json.loads((src / "rc3_config.json").read_text())
        expected = {k for k in model.state_dict() if not k.startswith("mbart.")}
        assert keys == expected and "itm_head.weight" in keys and "visual.special" in keys
        assert all(torch.equal(f.get_tensor(k), model.state_dict()[k]) for k in keys)
    assert (out / "id_map.json").is_file() and (out / "sentencepiece.bpe.model").is_file()
    assert not (out / "rc3_config.json").exists()
    export = load_tool("export_hf.py")
    with pytest.raises(SystemExit, match="--overwrite"):
        export.main([str(src), str(out)])
    with pytest.raises(SystemExit, match="rc3_config.json"):
        export.main([str(tmp_path), str(tmp_path / "x")])
    export.main([str(src), str(out), "--overwrite"])
    assert MBartForConditionalGeneration.from_pretrained(str(out)).config.vocab_size == hf.config.vocab_size


def test_weights_load_from_bin_and_sharded_safetensors(mbart_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    convert = load_tool("convert_mbart50.py")
    reference = load_file(str(mbart_dir / "model.safetensors"))
    model = MBartForConditionalGeneration.from_pretrained(str(mbart_dir))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # tied tensors share storage, as in mBART-50's
    from_bin = convert.load_mbart_state(tmp_path)
    assert all(torch.equal(from_bin[k], v) for k, v in reference.items())
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = sorted(reference)
    halves = {"part-1.safetensors": keys[: len(keys) // 2], "part-2.safetensors": keys[len(keys) // 2:]}
    for name, part in halves.items():
        save_file({k: reference[k] for k in part}, str(sharded / name))
    weight_map = {k: name for name, part in halves.items() for k in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    from_shards = convert.load_mbart_state(sharded)
    assert from_shards.keys() == reference.keys()
    assert all(torch.equal(from_shards[k], v) for k, v in reference.items())
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        convert.load_mbart_state(mbart_dir.parent)
