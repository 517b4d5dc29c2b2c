"""The pretraining corpora, each declared once: Ds (strictly aligned), Dw (weakly aligned), Dt (parallel text).

A `Corpus` record holds what every part of the framework needs to know about one corpus: the tar
members of a sample (required and optional), the member that identifies it, how a raw sample is
decoded and checked (never unpickling), which texts it carries, whether collation needs its image,
and the collator that turns its samples into batches. The shard pipeline, the fault counters, the
schema detection of `tools/dataset_stats.py` and the `data.<name>_shards` / `data.<name>_sources`
config keys all derive from `CORPORA`. The paper's three are registered here; the registry imports
every other module of this package too, so a new corpus is one file here (or a module named in the
run config's `plugins:`) that registers a record (tests/test_registries.py adds one from a temporary
package).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rc3.data import schemas
from rc3.data.images import ImageDecodeError, load_image
from rc3.registry import Registry


@dataclass(frozen=True)
class Corpus:
    name: str  # shard prefix and config key (data.<name>_shards)
    description: str
    fields: tuple[str, ...]  # tar members every sample has
    optional: tuple[str, ...]  # members a sample may have
    markers: tuple[str, ...]  # members whose presence identifies this corpus's samples
    decode: Callable[[dict[str, Any], bool, int | None], Any]  # (raw, needs_image, draft_size) -> sample; SampleError
    inspect: Callable[[dict[str, Any]], Any]  # raw -> sample with every member verified (images too): for tools
    texts: Callable[[Any], Iterable[str]]  # the texts of a decoded sample (checked for UTF-8 by the pipeline)
    languages: Callable[[Any], list[str]]  # the languages a decoded sample holds
    needs_image: bool  # whether collation decodes the image by default
    # (RC3Config, tokenizer, seed) -> the collator of a stream that reads this corpus with default options
    collator: Callable[[Any, Any, int], Any]

    @property
    def members(self) -> frozenset[str]:
        """Every tar member the pipeline keeps for this corpus."""
        return frozenset(self.fields + self.optional)


CORPORA: Registry[Corpus] = Registry("corpus", packages=("rc3.data.corpora",))


def image_member(raw: dict[str, Any], draft_size: int | None) -> Any:
    """The sample's `jpg` decoded (RGB), or SampleError("jpg", ...)."""
    if raw.get("jpg") is None:
        raise schemas.SampleError("jpg", "missing", raw["__key__"])
    try:
        return load_image(raw["jpg"], draft_size)
    except ImageDecodeError as exc:
        raise schemas.SampleError("jpg", str(exc), raw["__key__"]) from exc


def detect(raw: dict[str, Any]) -> Corpus:
    """The corpus one of whose marker members the raw sample holds (registration order decides ties)."""
    for corpus in CORPORA:
        if any(m in raw for m in corpus.markers):
            return corpus
    fields = sorted(k for k in raw if not k.startswith("__"))
    raise schemas.SampleError("__key__", f"fields {fields} match no corpus ({', '.join(CORPORA.names())})",
                              raw.get("__key__"))


def decode(raw: dict[str, Any], corpus: str | None = None) -> Any:
    """Decode a raw sample with every member verified (images too), by the named corpus or the detected one."""
    if corpus is not None and corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {', '.join(CORPORA.names())}")
    return (CORPORA.get(corpus) if corpus is not None else detect(raw)).inspect(raw)


# ---- the three corpora of the paper ----------------------------------------------------------

def _decode_ds(raw: dict[str, Any], needs_image: bool, draft_size: int | None) -> schemas.DsSample:
    sample = schemas.decode_ds(raw, with_image=False)
    if needs_image:
        sample.image = image_member(raw, draft_size)
    return sample


def _decode_dw(raw: dict[str, Any], needs_image: bool, draft_size: int | None) -> schemas.DwSample:
    texts = schemas.decode_texts(raw, "texts.json", 2)
    return schemas.DwSample(key=raw["__key__"], image=image_member(raw, draft_size), texts=texts)


def _decode_dt(raw: dict[str, Any], needs_image: bool, draft_size: int | None) -> schemas.DtSample:
    return schemas.decode_dt(raw)


def _ds_collator(cfg: Any, tokenizer: Any, seed: int) -> Any:
    from rc3.data.collate import DsCollator

    d, o = cfg.data, cfg.objectives
    return DsCollator(tokenizer, d.max_text_len, d.max_tgt_len, o.mlm_prob, seed,
                      with_pixels=cfg.model.visual_mode == "combined", langs=d.langs,
                      image_size=cfg.model.image_size, mclm=False)


def _dw_collator(cfg: Any, tokenizer: Any, seed: int) -> Any:
    from rc3.data.collate import DwCollator

    return DwCollator(tokenizer, cfg.data.max_text_len, cfg.model.image_size, seed, langs=cfg.data.langs)


def _dt_collator(cfg: Any, tokenizer: Any, seed: int) -> Any:
    from rc3.data.collate import DtCollator

    return DtCollator(tokenizer, cfg.data.max_text_len, cfg.data.langs, seed)


# Registration order is the detection order: Dt's pair.json, then Dw's texts.json, then Ds's captions / ROIs.
CORPORA.register(Corpus(
    name="dt", description="parallel text pairs (Dt: WikiMatrix, translated captions)",
    fields=schemas.DT_FIELDS, optional=(), markers=("pair.json",), decode=_decode_dt, inspect=schemas.decode_dt,
    texts=lambda s: (s.src, s.tgt), languages=lambda s: [s.src_lang, s.tgt_lang], needs_image=False,
    collator=_dt_collator))
CORPORA.register(Corpus(
    name="dw", description="weakly aligned image-text (Dw: WIT images with texts in >= 2 languages)",
    fields=schemas.DW_FIELDS, optional=(), markers=("texts.json",), decode=_decode_dw, inspect=schemas.decode_dw,
    texts=lambda s: s.texts.values(), languages=lambda s: list(s.texts), needs_image=True,
    collator=_dw_collator))
CORPORA.register(Corpus(
    name="ds", description="strictly aligned image-caption triplets (Ds: CC3M + translations, ROI features)",
    fields=schemas.DS_FIELDS, optional=schemas.DS_OPTIONAL, markers=("captions.json", "roi.npy"), decode=_decode_ds,
    inspect=schemas.decode_ds,
    texts=lambda s: s.captions.values(), languages=lambda s: list(s.captions), needs_image=False,
    collator=_ds_collator))
