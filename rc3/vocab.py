"""Reduced vocabulary: piece counts over corpora, coverage-based selection, and embedding-row slicing.

RC3 keeps mBART-50's segmentation but only the pieces its languages use (paper Sec. 3.2: a vocabulary
"achieving a cover rate of over 99.99%" on the pretraining languages). Here:

* :func:`count_pieces` counts mBART-50 piece ids (the *old* ids) over the lines of a corpus;
* :func:`select_vocabulary` takes, for every language, the smallest set of its most frequent pieces
  whose occurrences reach the coverage, unites them, drops the pieces no language needs after all
  (rarest first), and adds the tokens that must always exist (``<s> <pad> </s> <unk> <mask>`` and
  every language code);
* :func:`slice_vocab_tensors` cuts the embedding rows (and ``final_logits_bias``) of an HF mBART
  state dict down to the kept ids, in the order of :class:`rc3.tokenization.IdMap`.

Coverage of a language = share of its piece occurrences whose id survives the reduction. Pieces the
tokenizer already maps to ``<unk>`` count as covered: the reduction does not change them.
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Optional

import numpy as np

from rc3.tokenization import LANG_CODES, RC3Tokenizer, check_lang

if TYPE_CHECKING:  # torch is imported by the one function that slices tensors (a tool's --help stays light)
    import torch

# HF MBartForConditionalGeneration tensors with one row per vocabulary id (all tied to `model.shared`).
EMBEDDING_KEYS = ("model.shared.weight", "model.encoder.embed_tokens.weight",
                  "model.decoder.embed_tokens.weight", "lm_head.weight")
BIAS_KEY = "final_logits_bias"  # [1, V]: sliced along its last dimension


@dataclass(frozen=True)
class CorpusFile:
    """One text corpus: plain text (optionally gzipped), one sentence a line, in one language."""

    path: Path
    lang: str


def parse_corpus_spec(spec: str) -> CorpusFile:
    """`FILE:lang`, or `FILE` whose name ends in `.<lang>` (before an optional `.gz`), e.g. `train.de.gz`."""
    path_text, sep, lang = spec.rpartition(":")
    if sep and lang in LANG_CODES:
        path = Path(path_text)
    else:
        path = Path(spec)
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        lang = Path(name).suffix.lstrip(".")
        if lang not in LANG_CODES:
            raise ValueError(f"corpus {spec}: cannot tell its language; write it as FILE:lang "
                             f"(one of {', '.join(sorted(LANG_CODES))}) or name the file like train.<lang>[.gz]")
    check_lang(lang)
    if not path.is_file():
        raise FileNotFoundError(f"corpus {spec}: no such file {path}")
    return CorpusFile(path, lang)


def iter_lines(path: str | Path, max_lines: Optional[int] = None) -> Iterator[str]:
    """Non-empty stripped lines of a UTF-8 text file, gzipped or not (told apart by content, not name)."""
    path = Path(path)
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    n = 0
    with opener(path, "rb") as f:
        for raw_line in io.TextIOWrapper(f, encoding="utf-8", errors="strict"):
            line = raw_line.strip()
            if not line:
                continue
            yield line
            n += 1
            if max_lines is not None and n >= max_lines:
                return


def count_pieces(tokenizer: RC3Tokenizer, lines: Iterable[str], batch_size: int = 512,
                 progress=None) -> np.ndarray:
    """Occurrences of every mBART-50 (old) id in the segmentation of `lines`: int64 [old vocabulary size].

    Segmentation is the tokenizer's own (no special tokens); `progress` is an optional tqdm bar updated
    by lines."""
    if tokenizer.id_map is not None:
        raise ValueError("count_pieces needs the full mBART-50 tokenizer, not one with a reduced vocabulary")
    vocab = len(tokenizer.hf)
    counts = np.zeros(vocab, dtype=np.int64)
    batch: list[str] = []

    def flush() -> None:
        ids = tokenizer.hf(batch, add_special_tokens=False)["input_ids"]
        flat = np.fromiter((i for row in ids for i in row), dtype=np.int64)
        if flat.size:
            counts[:] += np.bincount(flat, minlength=vocab)[:vocab]
        if progress is not None:
            progress.update(len(batch))
        batch.clear()

    for line in lines:
        batch.append(line)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return counts


def always_kept_ids(tokenizer: RC3Tokenizer) -> list[int]:
    """Old ids that every reduced vocabulary keeps: the special tokens and every language code."""
    hf = tokenizer.hf
    ids = {int(hf.convert_tokens_to_ids(t)) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")}
    ids.update(int(i) for i in getattr(hf, "lang_code_to_id", {}).values())
    ids.update(int(i) for i in getattr(hf, "added_tokens_decoder", {}))  # language codes and <mask> are added tokens
    ids.update(int(hf.convert_tokens_to_ids(code)) for code in LANG_CODES.values())
    return sorted(ids)


def smallest_covering_set(counts: np.ndarray, coverage: float, unk_id: int) -> np.ndarray:
    """Old ids of the fewest most-frequent pieces whose occurrences reach `coverage` of all occurrences.

    Ties in count are broken by the lower id, so the result is deterministic."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    free = int(counts[unk_id])  # already <unk>: covered whatever is kept
    order = np.lexsort((np.arange(len(counts)), -counts))
    order = order[(counts[order] > 0) & (order != unk_id)]
    covered = free + np.cumsum(counts[order])
    # Compare integers (need = ceil(coverage * total)) so 0.9999 on a small corpus is not lost to rounding.
    need = int(np.ceil(coverage * total - 1e-9 * total))
    n = int(np.searchsorted(covered, need, side="left")) + 1 if free < need else 0
    return np.sort(order[:n])


def select_vocabulary(counts_by_lang: Mapping[str, np.ndarray], coverage: float, always_keep: Iterable[int],
                      unk_id: int) -> np.ndarray:
    """Sorted old ids to keep so that every language reaches `coverage`, plus `always_keep`.

    Start from the union of each language's smallest most-frequent covering set, then drop, rarest first
    (by frequency relative to each language's corpus size), every piece whose removal keeps all languages
    at the coverage. Each kept piece other than `always_keep` is then needed by some language."""
    if not counts_by_lang:
        raise ValueError("select_vocabulary: no corpus counts given")
    langs = list(counts_by_lang)
    for lang in langs:
        if counts_by_lang[lang].sum() == 0:
            raise ValueError(f"language {lang}: its corpora hold no tokens; give non-empty text or drop the language")
    fixed = set(int(i) for i in always_keep) | {int(unk_id)}
    union: set[int] = set()
    for lang in langs:
        union.update(smallest_covering_set(counts_by_lang[lang], coverage, unk_id).tolist())
    candidates = np.asarray(sorted(union - fixed), dtype=np.int64)
    if candidates.size:
        table = np.stack([counts_by_lang[lang][candidates] for lang in langs])  # [L, C]
        totals = np.array([int(counts_by_lang[lang].sum()) for lang in langs])
        need = np.ceil(coverage * totals - 1e-9 * totals).astype(np.int64)
        covered = table.sum(axis=1) + np.array([int(counts_by_lang[lang][unk_id]) for lang in langs])
        slack = (covered - need).tolist()
        relative = (table / totals[:, None]).sum(axis=0)
        order = np.lexsort((-candidates, relative))  # rarest first; ties: higher id first
        columns = table.T.tolist()
        keep = np.ones(candidates.size, dtype=bool)
        for j in order.tolist():
            col = columns[j]
            if all(s >= c for s, c in zip(slack, col)):
                slack = [s - c for s, c in zip(slack, col)]
                keep[j] = False
        union = set(candidates[keep].tolist())
    return np.asarray(sorted(union | fixed), dtype=np.int64)


def coverage_of(counts: np.ndarray, kept: np.ndarray, unk_id: int) -> float:
    """Share of the occurrences in `counts` whose old id is in `kept` (or is already `<unk>`)."""
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    mask = np.zeros(len(counts), dtype=bool)
    mask[kept] = True
    mask[unk_id] = True
    return float(counts[mask].sum()) / total


def slice_vocab_tensors(state: Mapping[str, torch.Tensor], kept: np.ndarray, old_vocab: int,
                        prefix: str = "") -> dict[str, torch.Tensor]:
    """A copy of an HF mBART state dict with the vocabulary rows reduced to `kept` (old ids, sorted).

    The embedding matrices are all tied to `model.shared` in mBART-50; they are checked to be equal
    and then sliced once, so the result keeps them as one tensor. `final_logits_bias` is sliced too.
    Every other tensor is passed through."""
    import torch

    index = torch.as_tensor(np.asarray(kept, dtype=np.int64))
    if index.numel() == 0 or int(index.max()) >= old_vocab or bool((index[1:] <= index[:-1]).any()):
        raise ValueError("kept ids must be sorted, unique and inside the old vocabulary")
    keys = [prefix + k for k in EMBEDDING_KEYS if prefix + k in state]
    if not keys:
        raise ValueError(f"no embedding matrix among {', '.join(prefix + k for k in EMBEDDING_KEYS)}; "
                         "is this an mBART checkpoint?")
    source = state[keys[0]]
    for key in keys:
        tensor = state[key]
        if tensor.shape[0] != old_vocab:
            raise ValueError(f"{key} has {tensor.shape[0]} rows but the tokenizer has {old_vocab} ids")
        if tensor is not source and not torch.equal(tensor, source):
            raise ValueError(f"{key} differs from {keys[0]}: untied embeddings are not supported "
                             "(RC3 ties the input embeddings and the LM head)")
    rows = source.index_select(0, index).contiguous()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in keys:
            out[key] = rows
        elif key == prefix + BIAS_KEY:
            if tensor.shape[-1] != old_vocab:
                raise ValueError(f"{key} has {tensor.shape[-1]} entries but the tokenizer has {old_vocab} ids")
            out[key] = tensor.index_select(tensor.dim() - 1, index).contiguous()
        else:
            out[key] = tensor
    return out
