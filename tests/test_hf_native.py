"""Model directories as transformers sees them: config.json + Auto classes, the reduced-vocabulary
tokenizer.json, and tools/export_hf.py loading in plain transformers (a process that never imports rc3)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from procs import run_bounded
from tiny import tiny_model_config

from rc3.modeling import RC3Model
from rc3.synthetic.repro.release import real_texts
from rc3.tokenization import IdMap, RC3Tokenizer

REPO = Path(__file__).resolve().parents[1]
LANGS = ("en", "de", "fr", "cs", "ja", "zh", "id", "es", "ru", "tr")  # the order of rc3.synthetic.repro.release.real_texts
PER_LANG = 120


@pytest.fixture(scope="module")
def texts(release_data: Path) -> dict[str, list[str]]:
    flat = real_texts(release_data, per_lang=PER_LANG)
    return {lang: flat[i * PER_LANG:(i + 1) * PER_LANG] for i, lang in enumerate(LANGS)}


@pytest.fixture(scope="module")
def reduced_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer, texts: dict[str, list[str]]) -> Path:
    """A tiny model over a reduced vocabulary: the pieces the test texts use (coverage 1 on them) plus the
    always-kept ids, out of the fixture's 2,000-piece sentencepiece model."""
    from rc3.vocab import always_kept_ids, count_pieces, select_vocabulary

    counts = {lang: count_pieces(tokenizer, lines) for lang, lines in texts.items()}
    unk = int(tokenizer.hf.convert_tokens_to_ids("<unk>"))
    kept = select_vocabulary(counts, 1.0, always_kept_ids(tokenizer), unk)
    id_map = IdMap(kept, len(tokenizer.hf), unk)
    assert len(tokenizer.hf) - len(id_map) >= 50  # really reduced (pieces the texts never use are dropped)
    tok_dir = tmp_path_factory.mktemp("reduced_tok")
    RC3Tokenizer(tokenizer.hf, id_map).save(tok_dir)
    reduced = RC3Tokenizer.from_dir(tok_dir)
    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), reduced.vocab_size, reduced.pad_id, reduced.bos_id, reduced.eos_id)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)  # far from init, so loading is really checked
    return model.save_pretrained(tmp_path_factory.mktemp("reduced") / "model", tokenizer_dir=tok_dir)


def test_auto_config_and_auto_model_load_every_model_directory(reduced_dir: Path) -> None:
    from transformers import AutoConfig, AutoModel

    from rc3.modeling.hf import RC3Config
    from rc3.modeling.model import RC3HFModel

    config = json.loads((reduced_dir / "config.json").read_text())
    assert config["model_type"] == "rc3" and "auto_map" not in config  # nothing for trust_remote_code to run
    assert isinstance(AutoConfig.from_pretrained(reduced_dir), RC3Config)
    hf = AutoModel.from_pretrained(reduced_dir).eval()
    assert isinstance(hf, RC3HFModel)
    ref = RC3Model.from_pretrained(reduced_dir).eval()
    a, b = ref.state_dict(), hf.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert hf.mbart.lm_head.weight.data_ptr() == hf.mbart.model.shared.weight.data_ptr()  # still tied
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (2, 7), generator=g)
    visual = {"roi": torch.randn(2, 36, 2048, generator=g), "boxes": torch.rand(2, 36, 5, generator=g),
              "pixels": torch.randint(0, 256, (2, 3, 224, 224), generator=g, dtype=torch.uint8)}  # normalised inside
    with torch.no_grad():
        out = hf(ids, roi=visual["roi"], boxes=visual["boxes"], visual_mode="roi")
        want = ref.itm_logits(ref.vtr(ids, torch.ones_like(ids, dtype=torch.bool), visual, "roi"))
        torch.testing.assert_close(out.itm_logits, want)
        patch = hf(ids, pixels=visual["pixels"], visual_mode="patch").pooled  # non-persistent constants restored
        torch.testing.assert_close(patch, ref.vtr(ids, torch.ones_like(ids, dtype=torch.bool), visual, "patch"))
        torch.testing.assert_close(hf(ids).pooled, ref.tr(ids, torch.ones_like(ids, dtype=torch.bool)))


AUTO_IN_FRESH_PROCESS = """
import sys
from transformers import AutoConfig, AutoModel
import rc3
d = sys.argv[1]
try:
    AutoConfig.from_pretrained(d)
    print("known before registration")
except (KeyError, ValueError):
    print("unknown before registration")
from rc3.modeling import register_auto_classes
register_auto_classes()
register_auto_classes()  # idempotent
print(type(AutoModel.from_pretrained(d)).__name__)
"""


def test_auto_classes_are_registered_on_demand_not_by_import_rc3(reduced_dir: Path) -> None:
    """`import rc3` leaves transformers alone; `register_auto_classes()` (which loading or saving a model
    calls) makes AutoModel read the directory, and calling it again is harmless."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = run_bounded([sys.executable, "-c", AUTO_IN_FRESH_PROCESS, str(reduced_dir)], timeout=600,
                       waiting_for=f"the process loading {reduced_dir} with AutoModel", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["unknown before registration", "RC3HFModel"], proc.stdout + proc.stderr[-2000:]


def test_finetuned_directories_are_hf_native_too(reduced_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    from rc3.finetune.heads import ClassificationModel

    tok = RC3Tokenizer.from_dir(reduced_dir)
    task = ClassificationModel(RC3Model.from_pretrained(reduced_dir), "roi", "xvnli", 3)
    out = task.save_pretrained(tmp_path / "xvnli", tok)
    assert {"config.json", "tokenizer.json", "task_head.json"} <= {p.name for p in out.iterdir()}
    a, b = task.rc3.state_dict(), AutoModel.from_pretrained(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = RC3Tokenizer.from_dir(out)  # the full segmentation + id map, not the transformers tokenizer.json
    assert again.vocab_size == tok.vocab_size and again.piece_ids("a red dog") == tok.piece_ids("a red dog")


def test_auto_tokenizer_gives_rc3_ids_in_every_language(reduced_dir: Path, texts: dict[str, list[str]],
                                                         tokenizer) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(reduced_dir)
    rc3 = RC3Tokenizer.from_dir(reduced_dir)
    assert len(hf) == rc3.vocab_size < len(tokenizer.hf)
    for lang, lines in texts.items():
        # The reference: mBART-50's segmentation of the full sentencepiece model, mapped through id_map.json.
        full = [tokenizer.hf(t, add_special_tokens=False)["input_ids"] for t in lines]
        want = [rc3.id_map.to_new(ids) for ids in full]
        got = hf(lines, add_special_tokens=False)["input_ids"]
        assert got == want, lang
        assert [rc3.piece_ids(t) for t in lines] == want, lang
        code = {"en": "en_XX", "de": "de_DE", "fr": "fr_XX", "cs": "cs_CZ", "ja": "ja_XX", "zh": "zh_CN",
                "id": "id_ID", "es": "es_XX", "ru": "ru_RU", "tr": "tr_TR"}[lang]
        line = lines[0]
        assert [hf.bos_token_id, *got[0], hf.convert_tokens_to_ids(code)] == rc3.encode(line, lang)
        assert hf.decode(got[0], skip_special_tokens=True).strip() == rc3.decode(got[0])
    assert (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id) == (rc3.pad_id, rc3.eos_id, rc3.unk_id)


EXPORT_CHECK = r"""
import json, sys
import torch
from transformers import AutoTokenizer, MBartForConditionalGeneration
out_dir, cases = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(out_dir)
model = MBartForConditionalGeneration.from_pretrained(out_dir).eval()
for text, src, tgt in cases:
    ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.convert_tokens_to_ids(src)]
    seq = model.generate(input_ids=torch.tensor([ids]), decoder_start_token_id=tok.eos_token_id,
                         forced_bos_token_id=tok.convert_tokens_to_ids(tgt), num_beams=3, max_new_tokens=10)[0]
    print(json.dumps({"ids": ids, "seq": seq.tolist(), "text": tok.decode(seq, skip_special_tokens=True).strip(),
                      "rc3_imported": any(m == "rc3" or m.startswith("rc3.") for m in sys.modules)}))
"""
CODES = {"de": "de_DE", "en": "en_XX", "fr": "fr_XX", "zh": "zh_CN", "ja": "ja_XX"}


@pytest.mark.slow  # starts Python processes that import torch
def test_export_hf_loads_in_plain_transformers_and_generates_rc3s_text(reduced_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")  # this checkout's rc3
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "export_hf.py"), str(reduced_dir), str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    cases = [("Ein Hund läuft über die Wiese.", "de", "en"), ("a dog runs on the grass", "en", "fr"),
             ("一只狗在草地上跑", "zh", "ja")]
    # A process with plain transformers only (cwd outside the repository, so rc3 cannot be imported).
    plain = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(out),
                            json.dumps([(t, CODES[s], CODES[g]) for t, s, g in cases])],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-2000:]
    rows = [json.loads(line) for line in plain.stdout.strip().splitlines()[-len(cases):]]
    rc3 = RC3Model.from_pretrained(reduced_dir).eval()
    tok = RC3Tokenizer.from_dir(reduced_dir)
    for (text, src, tgt), got in zip(cases, rows):
        assert not got["rc3_imported"]
        ids = tok.encode(text, src)
        assert got["ids"] == ids
        seq = rc3.generate(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool), tok.lang_id(tgt),
                           num_beams=3, max_new_tokens=10)[0]
        assert got["seq"] == seq.tolist()
        assert got["text"] == tok.decode(seq.tolist())


def test_reduced_tokenizer_json_keeps_specials_and_rejects_a_broken_map(tokenizer) -> None:
    from rc3.modeling.hf import reduced_tokenizer_json

    full = json.loads(tokenizer.hf.backend_tokenizer.to_str())
    kept = sorted({0, 1, 2, 3, 10, 11, *[t["id"] for t in full["added_tokens"]]})
    reduced = reduced_tokenizer_json(full, kept)
    assert [p for p, _ in reduced["model"]["vocab"]] == [full["model"]["vocab"][i][0] for i in kept]
    assert {t["content"]: t["id"] for t in reduced["added_tokens"]}["de_DE"] == kept.index(
        next(t["id"] for t in full["added_tokens"] if t["content"] == "de_DE"))
    with pytest.raises(ValueError, match="drops <unk>"):
        reduced_tokenizer_json(full, [0, 1, 2, 10])
    with pytest.raises(ValueError, match="Unigram"):
        reduced_tokenizer_json({"model": {"type": "BPE"}}, None)
    assert np.array_equal(np.array(kept), np.sort(kept))


def test_export_loads_in_auto_model_with_no_unexpected_key(reduced_dir: Path, tmp_path: Path) -> None:
    """AutoModel (MBartModel, no LM head) finds no key it does not know: the zero final_logits_bias is left
    out, and MBartForConditionalGeneration rebuilds it as zeros; a nonzero one is kept for generation."""
    from safetensors import safe_open
    from transformers import AutoModel, MBartForConditionalGeneration

    from rc3.tools.export_hf import export

    out = export(reduced_dir, tmp_path / "export")
    base, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert type(base).__name__ == "MBartModel"
    assert not info["unexpected_keys"] and not info["missing_keys"], info
    gen, info = MBartForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"], info
    rc3 = RC3Model.from_pretrained(reduced_dir).eval()
    assert torch.equal(gen.final_logits_bias, rc3.mbart.final_logits_bias) and not rc3.mbart.final_logits_bias.any()

    rc3.mbart.final_logits_bias.normal_()  # a model whose LM head has a bias: kept, loaded as saved
    biased = rc3.save_pretrained(tmp_path / "biased", tokenizer_dir=reduced_dir)
    out = export(biased, tmp_path / "export-biased")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "final_logits_bias" in set(f.keys())
    gen = MBartForConditionalGeneration.from_pretrained(out)
    assert torch.equal(gen.final_logits_bias, rc3.mbart.final_logits_bias)
