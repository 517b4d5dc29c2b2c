"""Tokenizer: mBART-50 segmentation through transformers, RC3 formats, language codes, reduced vocabulary."""
import pytest
import sentencepiece as spm

from rc3.tokenization import LANG_CODES, PRETRAIN_LANGS, IdMap, RC3Tokenizer

DOWNSTREAM = {"ar", "es", "fr", "ru", "bn", "de", "id", "ko", "pt", "zh", "sw", "ta", "tr", "ja", "en"}


def test_every_language_has_its_own_code(tokenizer):
    assert set(PRETRAIN_LANGS) | DOWNSTREAM <= set(LANG_CODES)
    ids = {tokenizer.lang_id(lang) for lang in LANG_CODES}
    assert len(ids) == len(LANG_CODES)
    assert all(i >= tokenizer.vocab_size - 60 for i in ids)  # mBART-50 puts the codes after the pieces


def test_unknown_language_is_named(tokenizer):
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        tokenizer.encode("hello", "xx")


def test_encoder_and_decoder_formats(tokenizer):
    ids = tokenizer.encode("A man is sleeping.", "en")
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.lang_id("en")
    tgt = tokenizer.encode_target("Ein Mann schläft.", "de")
    assert tgt[0] == tokenizer.lang_id("de") and tgt[-1] == tokenizer.eos_id
    assert ids[1:-1] == tokenizer.piece_ids("A man is sleeping.")
    assert tokenizer.decode(tgt) == "Ein Mann schläft."


def test_segmentation_is_the_sentencepiece_models(tokenizer, tokenizer_dir):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "sentencepiece.bpe.model"))
    for text in ["Zwei Hunde spielen im Schnee.", "Un homme fait du vélo.", "男人在骑自行车。"]:
        assert tokenizer.pieces(text) == sp.encode(text, out_type=str)


def test_truncation_keeps_both_ends(tokenizer):
    ids = tokenizer.encode("a very long sentence " * 20, "en", max_length=8)
    assert len(ids) == 8 and ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.lang_id("en")


def test_word_ids_for_masking(tokenizer):
    ids, words = tokenizer.encode_words("Two dogs play in the snow.", "en")
    assert len(ids) == len(words) and words[0] == -1 and words[-1] == -1
    assert max(words) + 1 == 6  # six space-separated words ("snow." is one word)
    ids, words = tokenizer.encode_words("两只狗在雪地里玩。", "zh")
    assert words[1:-1] == list(range(len(ids) - 2))  # unsegmented: every piece is a word


def test_reduced_vocabulary_maps_back_to_the_same_text(tokenizer):
    text = "Ein Mann schläft."
    used = set(tokenizer.piece_ids(text))
    specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id, tokenizer.mask_id}
    specials |= {tokenizer.lang_id(lang) for lang in LANG_CODES}
    id_map = IdMap(sorted(used | specials), tokenizer.vocab_size, tokenizer.unk_id)
    small = RC3Tokenizer(tokenizer.hf, id_map)
    assert small.vocab_size == len(used | specials)
    assert small.decode(small.encode(text, "de")) == text
    assert max(small.encode(text, "de")) < small.vocab_size
    # a piece that was not kept becomes <unk>
    other = small.encode("Zebras", "en")
    assert small.unk_id in other


def test_id_map_must_keep_specials(tokenizer):
    id_map = IdMap([tokenizer.unk_id, 10, 11], tokenizer.vocab_size, tokenizer.unk_id)
    with pytest.raises(ValueError, match="drops special tokens"):
        RC3Tokenizer(tokenizer.hf, id_map)


def test_save_and_reload_with_id_map(tokenizer, tmp_path):
    keep = list(range(0, 400)) + list(range(tokenizer.vocab_size - 60, tokenizer.vocab_size))
    small = RC3Tokenizer(tokenizer.hf, IdMap(keep, tokenizer.vocab_size, tokenizer.unk_id))
    small.save(tmp_path)
    again = RC3Tokenizer.from_dir(tmp_path)
    assert again.vocab_size == small.vocab_size
    assert again.encode("A dog runs.", "en") == small.encode("A dog runs.", "en")


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sentencepiece.bpe.model"):
        RC3Tokenizer.from_dir(tmp_path)
