"""Build the whole synthetic world into a directory: raw corpora, shards, downstream sets, tokenizer.

`make_world(out, seed, sizes, weak_overlap)` writes into a staging directory next to `out` and
renames it into place at the end, so `out` is either absent, the previous world, or complete.
Layout (all paths relative to `out`, also listed in `world.json`):
  raw/         Ds/Dw/Dt in the released formats (see corpora.py)
  shards/      ds/, dw/, dt/ WebDataset shards made by rc3.data.builders
  downstream/  XVNLI, gqa + xGQA, nlvr2 + marvl, flickr30k + xFlickrCO, multi30k; features.h5; images/
  tokenizer/   sentencepiece.bpe.model trained on every sentence of the world
  dictionaries/ en-<lang>.txt: MUSE-format bilingual dictionaries from the lexicons (code-switching)
  meta/        ground truth: scenes of every image, the objects each Dw text mentions
  world.json   sizes, languages, seed, weak overlap, build statistics, chance level of each task
  world_eval.json  the evaluation-only sets written after the tokenizer (downstream_eval.py): XM3600
               (downstream/xm3600/) and xGQA's few-shot training splits; every file above is unchanged by them
  world_marvl_few_shot.json  MaRVL's few-shot training splits and their LMDB features (downstream/marvl/few_shot/),
               written after those, in its own summary file so that world_eval.json keeps its bytes
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rc3 import atomic
from rc3.synthetic.corpora import DS_LANGS, ENGLISH_WEIGHT, GENERAL_SHARE, WIKIMATRIX_MIN_SCORE, write_ds, write_dt, write_dw
from rc3.synthetic.dictionaries import write_muse_dictionaries
from rc3.synthetic.downstream import ImageBank, write_xgqa, write_xvnli
from rc3.synthetic.downstream_captions import write_multi30k, write_retrieval
from rc3.synthetic.downstream_eval import write_eval_sets
from rc3.synthetic.downstream_pairs import write_marvl, write_nlvr2
from rc3.synthetic.grammar import Asker, Captioner, Claimer, PairStater
from rc3.synthetic.languages import languages_with
from rc3.synthetic.render import RoiEncoder
from rc3.synthetic.texts import world_texts
from rc3.synthetic.world import COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, stream
from rc3.synthetic.writer import write_json
from rc3.tokenization import PRETRAIN_LANGS, RC3Tokenizer, train_sentencepiece

TOKENIZER_VOCAB = 2000


@dataclass(frozen=True)
class Sizes:
    """How much of everything to make; the default is `tiny` (tests, demo)."""

    ds_images: int = 400
    dw_tuples: int = 300
    dt_pairs: int = 2000
    dt_multi30k_lines: int = 500
    xvnli_images: tuple[int, int, int] = (200, 30, 50)  # train, dev, test; 3 hypotheses each
    gqa_images: tuple[int, int] = (150, 30)  # English train, testdev; 4 questions each
    xgqa_images: tuple[int, int] = (20, 40)  # few_shot dev, test per language
    nlvr2_pairs: tuple[int, int, int] = (120, 20, 40)  # 3 statements each (write_nlvr2 per_pair)
    marvl_images_per_concept: int = 8
    marvl_statements: int = 150
    retrieval_images: tuple[int, int, int] = (300, 50, 100)  # flickr30k train, valid; xFlickr&CO test
    # train, val, test_2016_flickr, test_2017_flickr, test_2017_mscoco
    multi30k_images: tuple[int, int, int, int, int] = (400, 50, 100, 50, 30)
    shard_size: int = 100

    def scaled(self, factor: float) -> Sizes:
        """Every count times `factor` (at least 1; at least 2 images per MaRVL concept)."""
        def s(v: Any) -> Any:
            if isinstance(v, tuple):
                return tuple(s(x) for x in v)
            return max(1, int(round(v * factor)))

        out = {f.name: s(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["marvl_images_per_concept"] = max(2, out["marvl_images_per_concept"])
        return Sizes(**out)


SIZES: dict[str, Sizes] = {"tiny": Sizes(), "small": Sizes().scaled(10)}


def _build_shards(root: Path, ds: dict[str, Any], dw: dict[str, Any], dt: dict[str, Any], shard_size: int) -> dict[str, Any]:
    from rc3.data.builders.ds import build_ds
    from rc3.data.builders.dt import CaptionPairsSource, DtSource, LineAlignedSource, WikiMatrixSource, build_dt
    from rc3.data.builders.dw import build_dw

    stats = {}
    s = build_ds({lang: root / p for lang, p in ds["captions"].items()}, root / ds["features"], root / "shards" / "ds",
                 shard_size=shard_size, images_dir=root / ds["images_dir"], show_progress=False)
    stats["ds"] = s
    s = build_dw([root / dw["wit_tsv"]], root / "shards" / "dw", images=root / dw["images"], shard_size=shard_size,
                 show_progress=False)
    stats["dw"] = s
    sources: list[DtSource] = []
    for pair, p in dt["wikimatrix"].items():
        src_lang, tgt_lang = pair.split("-")  # "<a>-<b>", written by rc3.synthetic.corpora
        sources.append(WikiMatrixSource(root / p, src_lang, tgt_lang, min_score=WIKIMATRIX_MIN_SCORE))
    m30k = dt["multi30k_style"]
    sources += [LineAlignedSource(root / m30k["en"], root / m30k[lang], "en", lang) for lang in m30k if lang != "en"]
    sources.append(CaptionPairsSource({lang: root / p for lang, p in ds["captions"].items()}))
    stats["dt"] = build_dt(sources, root / "shards" / "dt", shard_size=shard_size * 5, show_progress=False)
    out = {}
    for name, st in stats.items():
        out[name] = {"dir": f"shards/{name}", "pattern": f"shards/{name}/{name}-*.tar", "samples": st.written,
                     "shards": len(st.shards), "skipped": dict(sorted(st.skipped.items()))}
    pair_table = stats["dw"].pair_table or {}
    out["dw"]["pair_table"] = {f"{a}-{b}": n for (a, b), n in sorted(pair_table.items())}
    return out


def _downstream(root: Path, seed: int, sizes: Sizes, encoder: RoiEncoder) -> dict[str, Any]:
    bank = ImageBank(root, encoder, stream(seed, "downstream-roi"))
    tasks: dict[str, Any] = {}
    tr, dv, te = sizes.xvnli_images
    tasks["xvnli"] = write_xvnli(root, bank, stream(seed, "xvnli"), {"train": tr, "dev": dv, "test": te}, 2000000000)
    (gtr, gval), (xdev, xtest) = sizes.gqa_images, sizes.xgqa_images
    tasks["xgqa"] = write_xgqa(root, bank, stream(seed, "xgqa"),
                               {"train": gtr, "testdev": gval, "dev": xdev, "test": xtest}, 1000000)
    ntr, ndv, nte = sizes.nlvr2_pairs
    tasks["nlvr2"] = write_nlvr2(root, bank, stream(seed, "nlvr2"), {"train": ntr, "dev": ndv, "test": nte},
                                 per_pair=4)
    tasks["marvl"] = write_marvl(root, bank, stream(seed, "marvl"), sizes.marvl_images_per_concept, sizes.marvl_statements)
    rtr, rdv, rte = sizes.retrieval_images
    tasks["xflickrco"] = write_retrieval(root, bank, stream(seed, "retrieval"), {"train": rtr, "valid": rdv, "test": rte},
                                         4000000000, 100000)
    splits = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")
    tasks["multi30k"] = write_multi30k(root, bank, stream(seed, "multi30k"), dict(zip(splits, sizes.multi30k_images)),
                                       3000000000)
    bank.close(root)
    tasks["features"] = "downstream/features.h5"
    tasks["images_dir"] = "downstream/images"
    tasks["n_feature_keys"] = len(bank.h5.keys)
    return tasks


def _tokenizer(root: Path) -> dict[str, Any]:
    texts = list(world_texts(root))
    train_sentencepiece(texts, root / "tokenizer", vocab_size=TOKENIZER_VOCAB, character_coverage=1.0)
    tok = RC3Tokenizer.from_dir(root / "tokenizer")  # the world is unusable if this fails, so check it here
    return {"dir": "tokenizer", "vocab_size": tok.vocab_size, "sentences": len(texts)}


def make_world(out: Path, seed: int = 0, sizes: Sizes | None = None, weak_overlap: float = 0.5, force: bool = False,
               shards: bool = True, log: Callable[[str], None] = print,
               general_share: float = GENERAL_SHARE, english_weight: float = ENGLISH_WEIGHT) -> dict[str, Any]:
    """Write the synthetic world to `out`; returns the content of world.json.

    `general_share`: the share of WikiMatrix-style Dt pairs that are claims, questions or pair
    statements rather than captions (rc3.synthetic.corpora; 0 = captions only). `english_weight`: how
    many times more pairs an en-X WikiMatrix file holds than an X-Y one (1 = all the same size)."""
    if not 0.0 <= general_share <= 1.0:
        raise ValueError(f"general_share must lie in [0, 1], got {general_share}")
    if not english_weight > 0:
        raise ValueError(f"english_weight must be > 0, got {english_weight}")
    sizes = sizes or SIZES["tiny"]
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass force=True (--force) to replace it")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    timings: dict[str, float] = {}
    try:
        encoder = RoiEncoder(seed)
        t = time.perf_counter()
        ds = write_ds(staging, seed, sizes.ds_images, encoder)
        dw = write_dw(staging, seed, sizes.dw_tuples, weak_overlap)
        dt = write_dt(staging, seed, sizes.dt_pairs, sizes.dt_multi30k_lines, general_share, english_weight)
        timings["raw"] = time.perf_counter() - t
        t = time.perf_counter()
        downstream = _downstream(staging, seed, sizes, encoder)
        dictionaries = write_muse_dictionaries(staging / "dictionaries")
        timings["downstream"] = time.perf_counter() - t
        t = time.perf_counter()
        built = _build_shards(staging, ds, dw, dt, sizes.shard_size) if shards else {}
        timings["shards"] = time.perf_counter() - t
        t = time.perf_counter()
        tokenizer = _tokenizer(staging)
        timings["tokenizer"] = time.perf_counter() - t
        t = time.perf_counter()
        # After the tokenizer and from their own streams: the files above stay byte-identical for a seed.
        write_eval_sets(staging, seed, encoder, n_xm3600=sizes.retrieval_images[2])
        timings["eval_sets"] = time.perf_counter() - t
        world = {
            "seed": seed, "weak_overlap": weak_overlap, "sizes": dataclasses.asdict(sizes),
            "image_size": IMAGE_SIZE, "shapes": list(SHAPES), "colours": list(COLOURS), "positions": list(POSITIONS),
            "languages": {
                "pretraining": list(PRETRAIN_LANGS), "ds": list(DS_LANGS), "dw": dw["langs"],
                "captions": list(languages_with(Captioner)), "xvnli_hypotheses": list(languages_with(Claimer)),
                "xgqa_questions": list(languages_with(Asker)), "two_image_statements": list(languages_with(PairStater)),
            },
            "raw": {"ds": ds, "dw": dw, "dt": dt},
            "shards": built,
            "downstream": downstream,
            "chance": {"xvnli": downstream["xvnli"]["chance"], "xgqa": downstream["xgqa"]["chance"],
                       "xgqa_majority_answer": downstream["xgqa"]["majority_answer_rate_test"],
                       "marvl": downstream["marvl"]["chance"], "nlvr2": downstream["nlvr2"]["chance"],
                       "xflickrco_recall_at_1": downstream["xflickrco"]["chance"], "multi30k_bleu": None},
            "tokenizer": tokenizer,
            "dictionaries": dictionaries,
        }
        write_json(staging / "world.json", world, indent=1)
        atomic.replace(staging, out)  # an older world stays whole until the new one is in place
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log("synthetic world written to " + str(out) + ": " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return world
