"""One segmentation: `AutoTokenizer` on an RC3 model directory and `RC3Tokenizer` give the same ids on
every text, over a pruned vocabulary where many texts need pieces it dropped.

Strings: 400 real sentences in each of ten languages from the in-repo release excerpt, plus a few
hundred adversarial ones from a seeded generator (dropped pieces glued together, runs of characters
no piece covers, emoji and ZWJ sequences, other scripts, whitespace runs, special-token strings,
empty and very long text)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tiny import tiny_model_config

from rc3.modeling import RC3Model
from rc3.synthetic.repro.release import real_texts
from rc3.tokenization import IdMap, RC3Tokenizer

PER_LANG = 400
COVERAGE = 0.97  # prune hard: a good share of the sentences needs a dropped piece
KNOWN = ["赤い四角", "ñandú über 😀 dog", "赤い四角 ñandú"]
SCRIPTS = [  # (first, last) code points of blocks the fixture's sentencepiece model mostly lacks
    (0x0600, 0x06FF), (0x0900, 0x097F), (0x0E00, 0x0E7F), (0x0400, 0x04FF), (0x0370, 0x03FF), (0xAC00, 0xAC40),
    (0x4E00, 0x4E80), (0x3040, 0x309F), (0x1F600, 0x1F64F), (0x13000, 0x13040), (0x0300, 0x036F), (0xE000, 0xE010),
]
SPACES = [" ", "  ", "\t", "\n", "\u00a0", "\u3000", " \n\t ", "\u2009", "\u200b"]
SPECIALS = ["<s>", "</s>", "<unk>", "<pad>", "<mask>", "de_DE", "en_XX", "▁"]
EMOJI = ["😀", "👍🏽", "👩‍👩‍👧", "🇩🇪", "❤️", "🐕‍🦺"]


def adversarial(pieces: list[str], n: int, seed: int = 0) -> list[str]:
    """`n` strings mixing vocabulary pieces (kept and dropped), foreign characters and whitespace."""
    rng = random.Random(seed)
    out = ["", " ", "   ", "\n\n", "\t", "a" * 3000, "ab " * 2000, "赤" * 500, "😀" * 300,
           " ".join(rng.choice(pieces).replace("▁", "") for _ in range(4000))]
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            if kind < 0.35:
                parts.append(rng.choice(pieces).replace("▁", " " if rng.random() < 0.5 else ""))
            elif kind < 0.6:
                lo, hi = rng.choice(SCRIPTS)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6))))
            elif kind < 0.75:
                parts.append(rng.choice(SPACES))
            elif kind < 0.85:
                parts.append(rng.choice(EMOJI))
            elif kind < 0.92:
                parts.append(rng.choice(SPECIALS))
            else:
                parts.append(chr(rng.randint(0x21, 0x7E)) * rng.randint(1, 4))
        out.append("".join(parts))
    return out


@pytest.fixture(scope="module")
def texts(release_data: Path) -> list[str]:
    return real_texts(release_data, per_lang=PER_LANG)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer, texts: list[str]) -> Path:
    """A tiny model directory over the pieces that cover 97% of the first 100 sentences per language."""
    from rc3.vocab import always_kept_ids, count_pieces, select_vocabulary

    counts = {str(i): count_pieces(tokenizer, texts[i * PER_LANG:i * PER_LANG + 100]) for i in range(10)}
    unk = int(tokenizer.hf.convert_tokens_to_ids("<unk>"))
    kept = select_vocabulary(counts, COVERAGE, always_kept_ids(tokenizer), unk)
    tok_dir = tmp_path_factory.mktemp("pruned_tok")
    RC3Tokenizer(tokenizer.hf, IdMap(kept, len(tokenizer.hf), unk)).save(tok_dir)
    reduced = RC3Tokenizer.from_dir(tok_dir)
    model = RC3Model.from_config(tiny_model_config(), reduced.vocab_size, reduced.pad_id, reduced.bos_id, reduced.eos_id)
    return model.save_pretrained(tmp_path_factory.mktemp("pruned") / "model", tokenizer_dir=tok_dir)


def test_auto_tokenizer_and_rc3_tokenizer_give_the_same_ids_on_every_text(pruned_dir: Path, texts: list[str],
                                                                         tokenizer) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(pruned_dir)
    rc3 = RC3Tokenizer.from_dir(pruned_dir)
    assert rc3.id_map is not None and len(hf) == rc3.vocab_size <= len(tokenizer.hf) - 300  # really pruned
    pieces = [str(p) for p in tokenizer.hf.convert_ids_to_tokens(list(range(3, len(tokenizer.hf))))]
    strings = KNOWN + texts + adversarial(pieces, 1500)
    # The hard case is really exercised: many strings' full segmentation uses a dropped piece.
    kept = set(rc3.id_map.kept.tolist())
    full = tokenizer.hf(strings, add_special_tokens=False)["input_ids"]
    needs_dropped = [s for s, ids in zip(strings, full) if not set(ids) <= kept]
    assert len(needs_dropped) > 500 and sum(1 for s in texts if s in set(needs_dropped)) > 200

    want = hf(strings, add_special_tokens=False)["input_ids"]
    got = [rc3.piece_ids(s) for s in strings]
    diff = [(s, w, g) for s, w, g in zip(strings, want, got) if w != g]
    assert not diff, f"{len(diff)} of {len(strings)} differ, first: {diff[:3]}"
    assert [rc3._map(ids) for ids in rc3.segment(strings)] == want  # the batched path too
    assert [hf.tokenize(s) for s in strings[:300]] == [rc3.pieces(s) for s in strings[:300]]
    for s, w in zip(strings[:200], want[:200]):  # RC3's encoder format around the same pieces
        assert rc3.encode(s, "de") == [hf.bos_token_id, *w, hf.convert_tokens_to_ids("de_DE")]
    # On a text whose full segmentation keeps every piece, both are that segmentation (an independent
    # reference: the full mBART-layout tokenizer, ids mapped through id_map.json).
    covered = [(s, ids) for s, ids in zip(strings, full) if set(ids) <= kept]
    assert len(covered) > 1000
    assert all(rc3.piece_ids(s) == rc3.id_map.to_new(ids) for s, ids in covered)


def test_a_run_of_uncovered_characters_is_one_unk(pruned_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(pruned_dir)
    rc3 = RC3Tokenizer.from_dir(pruned_dir)
    hieroglyphs = "".join(chr(0x13000 + i) for i in range(5))  # no piece of any kind covers these
    ids = rc3.piece_ids(hieroglyphs)
    assert rc3.unk_id in ids and ids.count(rc3.unk_id) == 1
    assert hf(hieroglyphs, add_special_tokens=False)["input_ids"] == ids
    assert rc3.piece_ids("") == [] == hf("", add_special_tokens=False)["input_ids"]


def test_the_full_vocabulary_still_segments_as_mbart50(tokenizer, texts: list[str]) -> None:
    """Without an id map nothing is restricted: ids are the full tokenizer's."""
    assert tokenizer.id_map is None
    sample = texts[::40] + KNOWN
    assert [tokenizer.piece_ids(s) for s in sample] == tokenizer.hf(sample, add_special_tokens=False)["input_ids"]
    assert torch.tensor(tokenizer.encode(sample[0], "en")).numel() >= 3
