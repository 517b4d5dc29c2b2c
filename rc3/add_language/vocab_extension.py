"""Extending a model's vocabulary for a new language: pieces of a sentencepiece model trained on its text
that hold a character the vocabulary lacks are appended (text of every other language segments exactly
as before), and the embedding rows follow (a new piece starts as the mean of its old tokenisation)."""
from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from rc3.modeling import RC3Model
from rc3.tokenization import ID_MAP_FILE, SEGMENTATION_FILE, SPM_FILE, IdMap, RC3Tokenizer

SPM_PIECE_OFFSET = 1  # mBART-50's ids: sentencepiece id + 1 (fairseq's <s> <pad> </s> <unk> come first)


@dataclass(frozen=True)
class VocabExtension:
    """New pieces appended to a tokenizer: their strings and scores, and where they were inserted."""

    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    insert_at: int  # first full (mBART-50) id of the new pieces; ids at or above it moved up by len(pieces)

    def shift(self, old_full_id: int) -> int:
        return old_full_id + len(self.pieces) if old_full_id >= self.insert_at else old_full_id

    def is_new(self, full_id: int) -> bool:
        return self.insert_at <= full_id < self.insert_at + len(self.pieces)


def _spm_proto(path: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()  # type: ignore[attr-defined]  # generated protobuf module, no stubs
    proto.ParseFromString(path.read_bytes())
    return proto


def known_characters(spm_path: Path) -> set[str]:
    """Characters that occur in some piece of a sentencepiece model (the word-boundary mark excluded)."""
    chars: set[str] = set()
    for p in _spm_proto(spm_path).pieces:
        if p.type in (1, 4):  # NORMAL, USER_DEFINED
            chars.update(p.piece.replace("\u2581", ""))
    return chars


def candidate_pieces(lines: Sequence[str], spm_path: Path, vocab_size: int, max_new: int) -> list[tuple[str, float]]:
    """Pieces of a sentencepiece model trained on `lines` that hold a character the model at `spm_path`
    does not know, most probable first, at most `max_new`."""
    from rc3.tokenization import train_sentencepiece

    known = known_characters(spm_path)
    existing = {p.piece for p in _spm_proto(spm_path).pieces}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            train_sentencepiece(lines, tmp, vocab_size=vocab_size, character_coverage=1.0)
        except RuntimeError as err:  # sentencepiece: too few distinct pieces for vocab_size
            raise ValueError(f"cannot train a {vocab_size}-piece sentencepiece model on {len(lines)} lines "
                             f"({err}); lower the vocabulary size") from None
        proto = _spm_proto(Path(tmp) / SPM_FILE)
    found = [(p.piece, float(p.score)) for p in proto.pieces
             if p.type == 1 and p.piece not in existing and any(c not in known for c in p.piece.replace("\u2581", ""))]
    found.sort(key=lambda ps: -ps[1])
    return found[:max_new]


def extend_tokenizer(old_dir: Path, pieces: Sequence[tuple[str, float]], out_dir: Path) -> VocabExtension:
    """Write into `out_dir` the tokenizer of `old_dir` with `pieces` appended: the sentencepiece model,
    the full segmentation (rc3_segmentation.json) and, when the old one had one, the id map."""
    old = RC3Tokenizer.from_dir(old_dir)
    spm_path = old_dir / SPM_FILE
    proto = _spm_proto(spm_path)
    insert_at = len(proto.pieces) + SPM_PIECE_OFFSET
    full = json.loads(old.hf.backend_tokenizer.to_str())
    vocab = full["model"]["vocab"]
    if full["model"].get("type") != "Unigram" or vocab[insert_at - 1][0] != proto.pieces[-1].piece:
        raise ValueError(f"{old_dir}: the tokenizer is not laid out like mBART-50's (sentencepiece pieces, then "
                         "language codes); cannot append pieces")
    ext = VocabExtension(tuple(p for p, _ in pieces), tuple(s for _, s in pieces), insert_at)
    from sentencepiece import sentencepiece_model_pb2 as pb

    for piece, score in pieces:
        proto.pieces.append(pb.ModelProto.SentencePiece(piece=piece, score=score, type=1))  # type: ignore[attr-defined]
    full["model"]["vocab"] = vocab[:insert_at] + [[p, s] for p, s in pieces] + vocab[insert_at:]
    for tok in full.get("added_tokens", []):
        tok["id"] = ext.shift(tok["id"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPM_FILE).write_bytes(proto.SerializeToString())
    (out_dir / SEGMENTATION_FILE).write_text(json.dumps(full, ensure_ascii=False), encoding="utf-8")
    if old.id_map is not None:
        kept = [ext.shift(int(i)) for i in old.id_map.kept] + list(range(insert_at, insert_at + len(pieces)))
        IdMap(kept, old.id_map.old_vocab_size + len(pieces), old.id_map.unk_old_id).save(out_dir)
    elif (out_dir / ID_MAP_FILE).exists():
        (out_dir / ID_MAP_FILE).unlink()
    return ext


def row_sources(old: RC3Tokenizer, new: RC3Tokenizer, ext: VocabExtension) -> list[int | list[int]]:
    """For every model id of `new`: the model id of `old` it continues, or, for a new piece, the old
    model ids of the old tokenisation of its string (whose mean embedding initialises it)."""
    full_new = new.id_map.kept.tolist() if new.id_map is not None else list(range(new.vocab_size))
    out: list[int | list[int]] = []
    for fid in full_new:
        if ext.is_new(fid):
            text = ext.pieces[fid - ext.insert_at].replace("\u2581", " ")
            out.append(old.piece_ids(text) or [old.unk_id])
        else:
            old_full = fid - len(ext.pieces) if fid >= ext.insert_at else fid
            out.append(old.id_map.to_new([old_full])[0] if old.id_map is not None else old_full)
    return out


def resize_embeddings(model: RC3Model, sources: Sequence[int | list[int]]) -> None:
    """Give `model` one embedding row (and LM bias entry) per entry of `sources`, copied from the old
    row it names or the mean of the old rows it lists; the LM head stays tied to the embeddings."""
    mbart = model.mbart
    old_w = mbart.model.shared.weight.detach().clone()
    old_bias = mbart.final_logits_bias.detach().clone()
    rows, bias = [], []
    for src in sources:
        idx = torch.as_tensor(src if isinstance(src, list) else [src], dtype=torch.long)
        rows.append(old_w.index_select(0, idx).mean(0))
        bias.append(old_bias[0].index_select(0, idx).mean(0))
    # transformers' own resize keeps mBART's embedding class (which scales by sqrt(d_model)) and the bias
    # buffer; the rows are then overwritten in the new order.
    mbart.resize_token_embeddings(len(sources), mean_resizing=False)
    with torch.no_grad():
        mbart.model.shared.weight.copy_(torch.stack(rows))
        mbart.final_logits_bias.copy_(torch.stack(bias).unsqueeze(0))
    model.cfg = dataclasses.replace(model.cfg, vocab_size=len(sources))
    mbart.tie_weights()
