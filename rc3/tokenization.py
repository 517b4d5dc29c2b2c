"""mBART-50 tokenizer for RC3: language codes, the RC3 text formats and the reduced-vocabulary id map.

Segmentation is mBART-50's sentencepiece (Unigram) model, loaded through HF transformers
(`MBart50Tokenizer`). RC3 changes two things on top of it:

* the formats: encoder text is ``[BOS] pieces [LANG]`` (paper Fig. 2) and decoder labels are
  ``[LANG] pieces [EOS]`` (the language tag first, as in mBART-50 generation);
* the ids: an optional :class:`IdMap` remaps mBART-50's 250k ids onto a reduced vocabulary
  (coverage >= 99.99% on the pretraining languages). The model's embedding rows are sliced with the
  same map, so model and tokenizer always agree. With an id map, texts are segmented by the Unigram
  model restricted to the kept pieces (`reduced_tokenizer_json`), the very model a model
  directory's `tokenizer.json` holds for `AutoTokenizer`: the best segmentation into kept pieces,
  a run of characters no kept piece covers becoming one ``<unk>``. One model for both is what makes
  their ids equal on every text; mapping the full segmentation's dropped pieces to ``<unk>`` instead
  cannot be written as a tokenizers model (it has no "known piece, unknown id"). On text whose full
  segmentation uses only kept pieces (>= 99.99% of the selection corpora) both rules give the same
  pieces: the full model's best path is a path of the restricted one and nothing scores higher.

Loaders tokenise a whole batch with one call (`segment`, then `encoder_ids` / `target_ids` per
text): the same Rust backend the per-text call uses, without its per-call Python, and the same ids
(tests/test_fast_paths.py compares the two on real text in seven languages).
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from rc3 import atomic

# Short code -> mBART-50 language code, for the 7 pretraining languages and every downstream test language.
LANG_CODES: dict[str, str] = {
    "en": "en_XX", "cs": "cs_CZ", "de": "de_DE", "fr": "fr_XX", "id": "id_ID", "ja": "ja_XX", "zh": "zh_CN",
    "ar": "ar_AR", "es": "es_XX", "ru": "ru_RU", "bn": "bn_IN", "ko": "ko_KR", "pt": "pt_XX", "sw": "sw_KE",
    "ta": "ta_IN", "tr": "tr_TR",
}
PRETRAIN_LANGS: tuple[str, ...] = ("en", "cs", "de", "fr", "id", "ja", "zh")
# The order languages are shown in, in every table and report (dataset_stats, the Dw builder's pair
# table): the paper's Table 5 (en, de, fr, ja, zh, id), then Czech (Ds only); see `display_order`.
LANG_DISPLAY_ORDER: tuple[str, ...] = ("en", "de", "fr", "ja", "zh", "id", "cs")
# Languages written without spaces between words: every sentencepiece piece counts as a word for masking.
UNSEGMENTED_LANGS = frozenset({"ja", "zh"})
SPM_FILE = "sentencepiece.bpe.model"
ID_MAP_FILE = "id_map.json"
SEGMENTATION_FILE = "rc3_segmentation.json"  # mBART-50's full tokenizer.json in a model directory (rc3.modeling.hf)


def display_order(langs: Iterable[str]) -> list[str]:
    """`langs` in LANG_DISPLAY_ORDER, any others after them alphabetically."""
    rank = {lang: i for i, lang in enumerate(LANG_DISPLAY_ORDER)}
    return sorted(set(langs), key=lambda lang: (rank.get(lang, len(rank)), lang))


def check_lang(lang: str) -> str:
    """Return the mBART-50 code of a short language code, or raise naming the supported ones."""
    try:
        return LANG_CODES[lang]
    except KeyError:
        raise ValueError(f"unknown language {lang!r}; supported: {', '.join(sorted(LANG_CODES))}") from None


class IdMap:
    """Old (mBART-50) id -> new (reduced) id. New ids are the positions of `kept` (sorted old ids).

    Special tokens and language codes must be among the kept ids; anything else not kept maps to
    the new id of ``<unk>``.
    """

    def __init__(self, kept_old_ids: Iterable[int], old_vocab_size: int, unk_old_id: int) -> None:
        kept = np.asarray(sorted(set(int(i) for i in kept_old_ids)), dtype=np.int64)
        if len(kept) == 0 or kept[-1] >= old_vocab_size or kept[0] < 0:
            raise ValueError("IdMap: kept ids must be non-empty and inside the old vocabulary")
        if unk_old_id not in set(kept.tolist()):
            raise ValueError("IdMap: <unk> must be kept")
        self.kept = kept
        self.old_vocab_size = int(old_vocab_size)
        self.unk_old_id = int(unk_old_id)
        table = np.full(old_vocab_size, -1, dtype=np.int64)
        table[kept] = np.arange(len(kept))
        self._unk_new = int(table[unk_old_id])
        table[table < 0] = self._unk_new
        self._old_to_new = table

    def __len__(self) -> int:
        return len(self.kept)

    def to_new(self, old_ids: Iterable[int]) -> list[int]:
        return self._old_to_new[np.asarray(list(old_ids), dtype=np.int64)].tolist()

    def to_old(self, new_ids: Iterable[int]) -> list[int]:
        return self.kept[np.asarray(list(new_ids), dtype=np.int64)].tolist()

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / ID_MAP_FILE
        payload = {"old_vocab_size": self.old_vocab_size, "unk_old_id": self.unk_old_id, "kept": self.kept.tolist()}
        atomic.write_text(path, json.dumps(payload))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> IdMap:
        path = Path(directory) / ID_MAP_FILE
        try:
            payload = json.loads(path.read_text())
            return cls(payload["kept"], payload["old_vocab_size"], payload["unk_old_id"])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"cannot read the id map {path}: {err}") from err


def reduced_tokenizer_json(full: dict, kept_old_ids: Optional[Sequence[int]]) -> dict:
    """The tokenizer.json of the kept pieces, their ids renumbered 0..K-1 in the order of `kept_old_ids`.

    `full` is the tokenizer.json transformers writes for mBART-50 (Unigram model; special tokens and
    language codes as added tokens). `kept_old_ids` None keeps every piece (ids unchanged). Both
    `RC3Tokenizer` (with an id map) and a model directory's `tokenizer.json` segment with this model."""
    out = copy.deepcopy(full)
    model = out.get("model", {})
    if model.get("type") != "Unigram":
        raise ValueError(f"expected mBART-50's Unigram tokenizer.json, got a {model.get('type')!r} model")
    vocab = model["vocab"]
    kept = list(range(len(vocab))) if kept_old_ids is None else [int(i) for i in kept_old_ids]
    new_of = {old: new for new, old in enumerate(kept)}
    if max(kept) >= len(vocab):
        raise ValueError(f"the id map keeps id {max(kept)} but the tokenizer has {len(vocab)} pieces")
    model["vocab"] = [vocab[old] for old in kept]
    if model.get("unk_id") not in new_of:
        raise ValueError("the id map drops <unk>")
    model["unk_id"] = new_of[model["unk_id"]]
    added = []
    for tok in out.get("added_tokens", []):
        if tok["id"] in new_of:  # a dropped language code / special token no longer exists
            added.append({**tok, "id": new_of[tok["id"]]})
    out["added_tokens"] = added
    # RC3's formats differ from mBART-50's `[lang] text </s>` template; callers add the tokens (rc3.modeling.hf).
    out["post_processor"] = None
    out["truncation"], out["padding"] = None, None
    return out


class RC3Tokenizer:
    """mBART-50 sentencepiece segmentation with RC3's formats and an optional reduced vocabulary."""

    def __init__(self, hf_tokenizer, id_map: IdMap | None = None) -> None:
        self.hf = hf_tokenizer
        self.id_map = id_map
        self._lang_old = {short: int(hf_tokenizer.convert_tokens_to_ids(code)) for short, code in LANG_CODES.items()}
        for short, old in self._lang_old.items():
            if old == hf_tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no language code {LANG_CODES[short]} (is this mBART-50's?)")
        # By token string: transformers' MBart50Tokenizer leaves bos_token unset (its cls token is <s>).
        self._special_old = {name: int(hf_tokenizer.convert_tokens_to_ids(tok)) for name, tok in
                             (("pad", "<pad>"), ("bos", "<s>"), ("eos", "</s>"), ("unk", "<unk>"), ("mask", "<mask>"))}
        if id_map is not None:
            missing = [n for n, i in {**self._special_old, **self._lang_old}.items()
                       if id_map.to_new([i])[0] == id_map.to_new([id_map.unk_old_id])[0] and n != "unk"]
            if missing:
                raise ValueError(f"the id map drops special tokens or language codes: {missing}")
            if id_map.old_vocab_size != len(hf_tokenizer):
                raise ValueError(f"the id map was built for a vocabulary of {id_map.old_vocab_size} ids, "
                                 f"this tokenizer has {len(hf_tokenizer)}")
        new = self._map
        self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.mask_id = (
            new([self._special_old[n]])[0] for n in ("pad", "bos", "eos", "unk", "mask"))
        self._lang_new = {short: new([old])[0] for short, old in self._lang_old.items()}
        self._word_start: dict[int, bool] = {}  # old id -> its piece opens a word (filled on use)
        self._restricted: Any = None  # the Unigram model of the kept pieces (built on first use)

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> RC3Tokenizer:
        """Load from a directory holding mBART-50's `sentencepiece.bpe.model` (and optionally `id_map.json`)."""
        from transformers import MBart50Tokenizer

        directory = Path(path)
        if not (directory / SPM_FILE).is_file():
            raise FileNotFoundError(f"{directory}: no {SPM_FILE}; point at a local mBART-50 (or RC3 model) directory")
        kwargs: dict[str, Any] = {}
        if (directory / SEGMENTATION_FILE).is_file():
            # A model directory's tokenizer.json is the transformers-facing one of the reduced vocabulary
            # (rc3.modeling.hf); mBART-50's full segmentation, which id_map.json applies to, is kept beside it.
            kwargs["tokenizer_file"] = str(directory / SEGMENTATION_FILE)
        hf = MBart50Tokenizer.from_pretrained(str(directory), src_lang="en_XX", **kwargs)
        id_map = IdMap.load(directory) if (directory / ID_MAP_FILE).is_file() else None
        return cls(hf, id_map)

    def save(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer files (sentencepiece model, HF tokenizer files, id map) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(directory))
        spm_src = Path(getattr(self.hf, "vocab_file", "") or "")
        if not (directory / SPM_FILE).is_file():
            if not spm_src.is_file():
                raise FileNotFoundError("the sentencepiece model of this tokenizer is not on disk; cannot save it")
            (directory / SPM_FILE).write_bytes(spm_src.read_bytes())
        if self.id_map is not None:
            self.id_map.save(directory)

    # ---- ids ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.id_map) if self.id_map is not None else len(self.hf)

    def _map(self, old_ids: Sequence[int]) -> list[int]:
        return self.id_map.to_new(old_ids) if self.id_map is not None else list(old_ids)

    def lang_id(self, lang: str) -> int:
        check_lang(lang)
        return self._lang_new[lang]

    def pieces(self, text: str) -> list[str]:
        """The piece strings of `text` (the segmentation `segment` gives; `tokenize` of transformers)."""
        if self.id_map is not None:
            return list(self._restricted_backend().encode(text, add_special_tokens=False).tokens)
        return self.hf.tokenize(text)

    def piece_ids(self, text: str) -> list[int]:
        """Ids of the sentencepiece pieces of `text`, no special tokens."""
        return self._map(self.segment([text])[0])

    # ---- segmentation, one backend call per list ---------------------------------------------
    def segment(self, texts: Sequence[str]) -> list[list[int]]:
        """mBART-50 (not remapped) piece ids of each text, no special tokens, for a whole list in one
        call. Without an id map: what ``hf(text, add_special_tokens=False)["input_ids"]`` gives; with
        one: the restricted model's segmentation (see the module docstring), as old ids.

        transformers' tokenizer call spends ~45 us per text in Python around ~15 us in the Rust
        backend (argument checks, language-code post-processor switch, BatchEncoding); collators segment
        a batch's texts together through the backend directly, where its state is the one the
        plain call would use (no truncation, no padding, special tokens matched in the text).
        Any other state, or a tokenizer without a Rust backend, takes the plain per-text call.
        """
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"segment() takes strings, got {type(t).__name__}: {t!r}")
        if self.id_map is not None:
            restricted = self._restricted_backend()
            return [self.id_map.to_old(e.ids) for e in restricted.encode_batch_fast(texts, add_special_tokens=False)]
        backend = self._plain_backend()
        if backend is None:
            return [list(self.hf(t, add_special_tokens=False)["input_ids"]) for t in texts]
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # _fast: no offsets
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def _restricted_backend(self) -> Any:
        """A tokenizers.Tokenizer of `reduced_tokenizer_json` over the id map's kept pieces."""
        if self._restricted is None:
            from tokenizers import Tokenizer

            assert self.id_map is not None
            backend = getattr(self.hf, "backend_tokenizer", None)
            if backend is None:
                raise ValueError("a reduced vocabulary needs the fast (tokenizers) mBART-50 tokenizer; "
                                 "install the tokenizers package")
            full = json.loads(backend.to_str())
            self._restricted = Tokenizer.from_str(json.dumps(reduced_tokenizer_json(full, self.id_map.kept.tolist())))
        return self._restricted

    def _plain_backend(self):
        backend = getattr(self.hf, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch"):
            return None
        if backend.truncation is not None or backend.padding is not None:
            return None
        if bool(backend.encode_special_tokens) != bool(getattr(self.hf, "split_special_tokens", False)):
            return None
        return backend

    def _starts_word(self, old_id: int) -> bool:
        """Whether the piece of `old_id` opens a word (its token begins with U+2581); cached per id."""
        hit = self._word_start.get(old_id)
        if hit is None:
            token = self.hf.convert_ids_to_tokens([old_id])[0]
            hit = self._word_start[old_id] = token.startswith("\u2581")
        return hit

    def encoder_ids(self, old_ids: Sequence[int], lang: str, max_length: int | None = None
                    ) -> tuple[list[int], list[int]]:
        """Encoder format `[BOS] pieces [LANG]` of segmented text (`segment`), plus a word index per
        id (-1 for BOS and the language tag) for whole-word masking; truncated keeping both ends."""
        lang_id = self.lang_id(lang)
        if lang in UNSEGMENTED_LANGS:
            words = list(range(len(old_ids)))
        else:
            words, w = [], -1
            for i, old in enumerate(old_ids):
                if i == 0 or self._starts_word(old):
                    w += 1
                words.append(w)
        ids = self._map(old_ids)
        if max_length is not None:
            if max_length < 3:
                raise ValueError("max_length must leave room for [BOS], a piece and [LANG] (>= 3)")
            ids, words = ids[: max_length - 2], words[: max_length - 2]
        return [self.bos_id, *ids, lang_id], [-1, *words, -1]

    def target_ids(self, old_ids: Sequence[int], lang: str, max_length: int | None = None) -> list[int]:
        """Decoder labels `[LANG] pieces [EOS]` of segmented text (`segment`)."""
        ids = self._map(old_ids)
        if max_length is not None:
            ids = ids[: max(max_length - 2, 1)]
        return [self.lang_id(lang), *ids, self.eos_id]

    # ---- formats -----------------------------------------------------------------------------
    def encode(self, text: str, lang: str, max_length: int | None = None) -> list[int]:
        """Encoder format `[BOS] pieces [LANG]`, truncated to `max_length` keeping both ends."""
        return self.encode_words(text, lang, max_length)[0]

    def encode_words(self, text: str, lang: str, max_length: int | None = None) -> tuple[list[int], list[int]]:
        """Encoder ids plus a word index per id (-1 for BOS and the language tag) for whole-word masking."""
        self.lang_id(lang)  # an unknown language is named before any work
        return self.encoder_ids(self.segment([text])[0], lang, max_length)

    def encode_target(self, text: str, lang: str, max_length: int | None = None) -> list[int]:
        """Decoder labels `[LANG] pieces [EOS]`: the target language tag comes first."""
        return self.target_ids(self.segment([text])[0], lang, max_length)

    def encode_many(self, texts: Sequence[str], langs: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """`encode` of each (text, lang) pair, segmented in one backend call."""
        if len(texts) != len(langs):
            raise ValueError(f"encode_many: {len(texts)} texts but {len(langs)} languages")
        return [self.encoder_ids(o, lang, max_length)[0] for o, lang in zip(self.segment(texts), langs)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        old = self.id_map.to_old(ids) if self.id_map is not None else list(ids)
        return self.hf.decode(old, skip_special_tokens=skip_special_tokens).strip()


def train_sentencepiece(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 1000,
                        character_coverage: float = 0.9995) -> Path:
    """Train a unigram sentencepiece model laid out like mBART-50's (unk=0, bos=1, eos=2, no pad).

    Used for tests and the synthetic world, where no real mBART-50 model is available; the file is
    written as `out_dir/sentencepiece.bpe.model` so :meth:`RC3Tokenizer.from_dir` loads it unchanged.
    """
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        n = 0
        with corpus.open("w", encoding="utf-8") as f:
            for line in texts:
                line = line.strip()
                if line:
                    f.write(line + "\n")
                    n += 1
        if n == 0:
            raise ValueError("train_sentencepiece: no text given")
        prefix = Path(tmp) / "spm"
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
            character_coverage=character_coverage, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            hard_vocab_limit=False, minloglevel=2, num_threads=2)
        atomic.write_bytes(out / SPM_FILE, Path(f"{prefix}.model").read_bytes())
    return out / SPM_FILE
