"""Raw pretraining corpora of the synthetic world, in the released formats (under DIR/raw).

- Ds (CC3M + UC2 translations): `raw/ds/train.<lang>.tsv` (`image_id<TAB>caption`, en cs de fr
  ja zh, strictly aligned: every language realises the same object list), `raw/ds/images/<id>.jpg`
  and the IGLUE H5 `raw/ds_features.h5` keyed by image id.
- Dw (WIT): `raw/dw/wit_v1.train.all-00000-of-00001.tsv.gz` with WIT's 17 columns, one row per
  (image, language), plus the images as img2dataset output (`raw/dw/images/00000.tar` holding
  `<key>.jpg` + `<key>.json` with the `url`, and `00000_stats.json`). Texts of one image are
  weakly aligned: all mention a shared subset of round(overlap * k) of its k objects; each other
  object goes to at most one language (or none), and a text left empty names an object that is
  not in the image. Like the release, some images have one language only, some rows are in other
  languages, and some downloads failed (no jpg in the shard); the builder skips and counts these.
- Dt (WikiMatrix + Multi30K-style): `raw/dt/WikiMatrix.<a>-<b>.tsv.gz` (score, sentence a,
  sentence b; sorted by score, with a tail of misaligned pairs below the 1.04 margin threshold)
  for all pairs of the 7 pretraining languages, and line-aligned `raw/dt/multi30k/train.<lang>.gz`.
  WikiMatrix is mined from Wikipedia, general-domain text: besides descriptions it holds statements
  and questions. So do its synthetic pairs (`GENERAL_SHARE` of them, where both languages' grammars
  can say them): claims ("The circle is red."), questions ("Where is the circle?") and statements
  about two pictures. Without them the world's pretraining never shows a question word or a copula
  in any language but English, and zero-shot transfer of a task posed in those forms (xGQA, XVNLI,
  MaRVL) has nothing to transfer through (REPRODUCTION.md, "Cross-lingual transfer"). Multi30K-style
  lines stay captions, as Multi30K is.
Ground truth for analysis (scenes, mentioned objects) goes to DIR/meta/*.jsonl.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rc3.synthetic.grammar import Asker, Claimer, PairStater
from rc3.synthetic.languages import asker, captioner, claimer, languages_with, pair_stater
from rc3.synthetic.render import RoiEncoder, jpeg_bytes, render
from rc3.synthetic.world import (
    COLOURS,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    Obj,
    Scene,
    distractor,
    pick,
    sample_scene,
    shuffled,
    stream,
)
from rc3.synthetic.writer import H5FeatureWriter, TarWriter, tsv_text, write_json, write_jsonl, write_maybe_gz, write_text
from rc3.tokenization import PRETRAIN_LANGS

DS_LANGS = ("en", "cs", "de", "fr", "ja", "zh")
DW_LANGS = ("de", "en", "fr", "id", "ja", "zh")
# Chance of a language having a text for a Dw image, shaped like the paper's Table 5 diagonal.
DW_LANG_PROB = {"en": 0.8, "de": 0.55, "fr": 0.5, "ja": 0.3, "zh": 0.28, "id": 0.18}
WIT_COLUMNS = (
    "language", "page_url", "image_url", "page_title", "section_title", "hierarchical_section_title",
    "caption_reference_description", "caption_attribution_description", "caption_alt_text_description",
    "mime_type", "original_height", "original_width", "is_main_image", "attribution_passes_lang_id",
    "page_changed_recently", "context_page_description", "context_section_description",
)
WIKIMATRIX_MIN_SCORE = 1.04  # the margin threshold the WikiMatrix authors recommend
DT_M30K_LANGS = ("en", "de", "fr", "cs")
# Share of a WikiMatrix pair's sentences that are not descriptions (claims, questions, statements about
# two pictures), where both languages can say one of those kinds; the rest are captions.
GENERAL_SHARE = 0.5
# How many times more WikiMatrix pairs an English pair (en-X) holds than a pair of two other languages.
# Real WikiMatrix is English-centric: en-de has 6.2M mined pairs, de-id 0.1M (Schwenk et al., 2021,
# Table 2); 1 gives every language pair the same size.
ENGLISH_WEIGHT = 1.0


def _general_kinds(a: str, b: str) -> list[str]:
    """The non-caption sentence kinds both languages' grammars realise."""
    kinds = []
    for kind, cls in (("claim", Claimer), ("question", Asker), ("pair", PairStater)):
        if a in languages_with(cls) and b in languages_with(cls):
            kinds.append(kind)
    return kinds


def general_sentence(rng: np.random.Generator, kind: str, langs: tuple[str, ...]) -> dict[str, str]:
    """One sentence of `kind` (claim | question | pair) with random content, realised in each of `langs`."""
    shape, colour, position = pick(rng, SHAPES), pick(rng, COLOURS), pick(rng, POSITIONS)
    side = "left" if rng.random() < 0.5 else "right"
    form = int(rng.integers(4 if kind == "question" else 3 if kind == "pair" else 2))
    out = {}
    for lang in langs:
        if kind == "claim":
            c = claimer(lang)
            out[lang] = c.claim_colour(shape, colour) if form == 0 else c.claim_position(shape, position)
        elif kind == "question":
            q = asker(lang)
            out[lang] = (q.ask_colour(shape), q.ask_position(shape), q.ask_shape(position),
                         q.ask_exists(colour, shape))[form]
        elif kind == "pair":
            p = pair_stater(lang)
            out[lang] = (p.pair_more(side), p.pair_contains(side, colour, shape), p.pair_both(shape))[form]
        else:
            raise ValueError(f"unknown sentence kind {kind!r}")
    return out


def caption_all(objs: list[Obj], langs: tuple[str, ...]) -> dict[str, str]:
    return {lang: captioner(lang).caption(objs) for lang in langs}


def write_ds(root: Path, seed: int, n_images: int, encoder: RoiEncoder) -> dict[str, Any]:
    """Ds: captions per language, images and ROI features for n_images scenes."""
    rng, frng = stream(seed, "ds"), stream(seed, "ds-roi")
    rows: dict[str, list[tuple[str, str]]] = {lang: [] for lang in DS_LANGS}
    meta = []
    img_dir = root / "raw" / "ds" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    with H5FeatureWriter(root / "raw" / "ds_features.h5") as h5:
        for i in range(n_images):
            image_id = f"{1000000 + i:07d}"
            scene = sample_scene(rng, 1, 3)
            order = shuffled(rng, scene.objects)
            for lang, text in caption_all(order, DS_LANGS).items():
                rows[lang].append((image_id, text))
            (img_dir / f"{image_id}.jpg").write_bytes(jpeg_bytes(render(scene)))
            h5.add(image_id, encoder.encode(scene, frng))
            meta.append({"image_id": image_id, "scene": scene.as_dict(), "order": [o.as_dict() for o in order]})
    files = {lang: write_text(root / "raw" / "ds" / f"train.{lang}.tsv", tsv_text(r)) for lang, r in rows.items()}
    write_jsonl(root / "meta" / "ds_scenes.jsonl", meta)
    return {"images": n_images, "langs": list(DS_LANGS), "captions": {k: _rel(root, v) for k, v in files.items()},
            "features": "raw/ds_features.h5", "images_dir": "raw/ds/images"}


def _dw_langs(rng: np.random.Generator) -> list[str]:
    while True:
        langs = [lang for lang in DW_LANGS if rng.random() < DW_LANG_PROB[lang]]
        if len(langs) >= 2:
            return langs


def shared_count(k: int, overlap: float) -> int:
    """Objects every text of a k-object image mentions: round(overlap * k), at least 1 when overlap > 0."""
    m = int(math.floor(overlap * k + 0.5))
    return min(k, max(m, 1 if overlap > 0 else 0))


def weak_mentions(rng: np.random.Generator, scene: Scene, langs: list[str], overlap: float) -> tuple[list[Obj], dict[str, list[Obj]]]:
    """(shared objects, {lang: objects its text mentions, in mention order}) for one Dw image."""
    objs = shuffled(rng, scene.objects)
    m = shared_count(len(objs), overlap)
    shared, rest = objs[:m], objs[m:]
    own: dict[str, list[Obj]] = {lang: [] for lang in langs}
    for o in rest:  # each non-shared object is told in one language at most
        if rng.random() < 0.75:
            own[langs[int(rng.integers(len(langs)))]].append(o)
    mentions = {}
    for lang in langs:
        told = shared + own[lang]
        if not told:  # nothing in common and nothing of its own: the text is about something else
            told = [distractor(rng, scene)]
        mentions[lang] = shuffled(rng, told)
    return shared, mentions


def _wit_row(lang: str, url: str, title: str, text: str, main: bool) -> list[str]:
    page = f"https://{lang}.wikipedia.org/wiki/{title}"
    return [lang, page, url, title, "", title, text, "", "", "image/jpeg", str(IMAGE_SIZE), str(IMAGE_SIZE),
            str(main), "False", "False", "", ""]


def write_dw(root: Path, seed: int, n_tuples: int, overlap: float) -> dict[str, Any]:
    """Dw: WIT TSV rows + img2dataset image shard; n_tuples multilingual images are downloadable."""
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"--weak-overlap must lie in [0, 1], got {overlap}")
    rng = stream(seed, "dw")
    rows: list[list[str]] = []
    meta: list[dict[str, Any]] = []
    n_single, n_failed = max(1, n_tuples // 10), max(1, n_tuples // 50)
    img_dir = root / "raw" / "dw" / "images"
    kind_plan = ["tuple"] * n_tuples + ["single"] * n_single + ["failed"] * n_failed
    kinds = [kind_plan[int(i)] for i in rng.permutation(len(kind_plan))]
    with TarWriter(img_dir / "00000.tar") as tar:
        for i, kind in enumerate(kinds):
            scene = sample_scene(rng, 2, 4)
            name = f"Synthetic_shapes_{i:06d}.jpg"
            h = hashlib.md5(name.encode()).hexdigest()
            url = f"https://upload.wikimedia.org/wikipedia/commons/{h[0]}/{h[:2]}/{name}"
            langs = [DW_LANGS[int(rng.integers(len(DW_LANGS)))]] if kind == "single" else _dw_langs(rng)
            shared, mentions = weak_mentions(rng, scene, langs, overlap)
            for lang in langs:
                text = captioner(lang).caption(mentions[lang])
                rows.append(_wit_row(lang, url, f"Shapes_{i:06d}", text, main=bool(rng.random() < 0.3)))
            if kind == "tuple" and rng.random() < 0.2:  # an extra row in a language outside Dw
                es = captioner("es").caption(shuffled(rng, scene.objects))
                rows.append(_wit_row("es", url, f"Shapes_{i:06d}", es, main=False))
            key = f"{i:09d}"
            info: dict[str, Any] = {"url": url, "key": key, "status": "success", "error_message": None,
                                    "width": IMAGE_SIZE, "height": IMAGE_SIZE, "original_width": IMAGE_SIZE,
                                    "original_height": IMAGE_SIZE, "exif": "{}", "sha256": None}
            if kind == "failed":
                info.update(status="failed_to_download", error_message="HTTP Error 404: Not Found", width=None,
                            height=None, original_width=None, original_height=None)
            else:
                jpg = jpeg_bytes(render(scene))
                info["sha256"] = hashlib.sha256(jpg).hexdigest()
                tar.add(f"{key}.jpg", jpg)
            tar.add(f"{key}.json", json.dumps(info).encode("utf-8"))
            meta.append({"image_url": url, "kind": kind, "scene": scene.as_dict(),
                         "shared": [o.as_dict() for o in shared],
                         "mentions": {lang: [o.as_dict() for o in objs] for lang, objs in mentions.items()}})
    ok = sum(k != "failed" for k in kinds)
    write_json(img_dir / "00000_stats.json", {"count": len(kinds), "successes": ok, "failed_to_download": n_failed,
                                              "failed_to_resize": 0, "status_dict": {"success": ok}})
    tsv = write_maybe_gz(root / "raw" / "dw" / "wit_v1.train.all-00000-of-00001.tsv.gz", tsv_text(rows, WIT_COLUMNS))
    write_jsonl(root / "meta" / "dw_tuples.jsonl", meta)
    return {"tuples": n_tuples, "single_language_images": n_single, "failed_downloads": n_failed,
            "wit_tsv": _rel(root, tsv), "images": "raw/dw/images", "langs": list(DW_LANGS), "weak_overlap": overlap}


def write_dt(root: Path, seed: int, n_pairs: int, n_m30k: int, general_share: float = GENERAL_SHARE,
             english_weight: float = ENGLISH_WEIGHT) -> dict[str, Any]:
    """Dt: WikiMatrix TSVs for every pair of the pretraining languages + Multi30K-style line-aligned text.

    `general_share` of each WikiMatrix pair's sentences are claims, questions or pair statements
    (where both languages can say one; see the module docstring), the rest captions."""
    rng, grng = stream(seed, "dt"), stream(seed, "dt-general")
    pairs = list(itertools.combinations(sorted(PRETRAIN_LANGS), 2))
    files = {}
    for (a, b), n in zip(pairs, _pair_sizes(pairs, n_pairs, english_weight)):
        kinds = _general_kinds(a, b)
        good = []
        for _ in range(n):
            if kinds and grng.random() < general_share:
                texts = general_sentence(grng, kinds[int(grng.integers(len(kinds)))], (a, b))
                good.append((round(float(grng.uniform(WIKIMATRIX_MIN_SCORE, 1.25)), 6), texts[a], texts[b]))
                continue
            objs = shuffled(rng, sample_scene(rng, 1, 3).objects)
            good.append((round(float(rng.uniform(WIKIMATRIX_MIN_SCORE, 1.25)), 6),
                         captioner(a).caption(objs), captioner(b).caption(objs)))
        bad = []  # mined pairs below the margin threshold are not translations of each other
        for _ in range(max(1, n // 20)):
            oa, ob = sample_scene(rng, 1, 3).objects, sample_scene(rng, 1, 3).objects
            bad.append((round(float(rng.uniform(1.0, WIKIMATRIX_MIN_SCORE - 0.001)), 6),
                        captioner(a).caption(list(oa)), captioner(b).caption(list(ob))))
        ranked = sorted(good + bad, key=lambda r: -r[0])
        files[f"{a}-{b}"] = _rel(root, write_maybe_gz(root / "raw" / "dt" / f"WikiMatrix.{a}-{b}.tsv.gz",
                                                      tsv_text((f"{s:.6f}", x, y) for s, x, y in ranked)))
    lines: dict[str, list[str]] = {lang: [] for lang in DT_M30K_LANGS}
    for _ in range(n_m30k):
        objs = shuffled(rng, sample_scene(rng, 1, 3).objects)
        for lang in DT_M30K_LANGS:
            lines[lang].append(captioner(lang).caption(objs))
    m30k = {lang: _rel(root, write_maybe_gz(root / "raw" / "dt" / "multi30k" / f"train.{lang}.gz",
                                            "".join(s + "\n" for s in ls))) for lang, ls in lines.items()}
    return {"wikimatrix": files, "wikimatrix_min_score": WIKIMATRIX_MIN_SCORE, "wikimatrix_pairs": n_pairs,
            "wikimatrix_general_share": general_share, "wikimatrix_english_weight": english_weight,
            "multi30k_style": m30k, "multi30k_style_lines": n_m30k}


def _pair_sizes(pairs: list[tuple[str, str]], n_pairs: int, english_weight: float) -> list[int]:
    """How many of the n_pairs WikiMatrix sentences each language pair holds: English pairs weigh
    `english_weight`, the others 1; the remainder goes to the first pairs (so weight 1 = equal split)."""
    w = [english_weight if "en" in pair else 1.0 for pair in pairs]
    sizes = [int(n_pairs * x / sum(w)) for x in w]
    for p in range(n_pairs - sum(sizes)):
        sizes[p % len(sizes)] += 1
    return sizes


def _rel(root: Path, path: Path) -> str:
    return str(Path(path).relative_to(root))
