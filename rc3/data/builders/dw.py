"""Dw builder: WIT rows grouped by image URL into weakly-aligned multilingual tuples -> shards.

Following the paper (Appendix A), images are indexed by their unique `image_url` and each image is
paired with its texts in the chosen languages (de, en, fr, id, ja, zh); only tuples with texts in
>= 2 languages are kept, one text per language.

Text of a row (`text_source`, `--text-source`; the paper does not say which WIT field it uses, see
FIDELITY.md):
- "reference" (default): `caption_reference_description` (the caption shown on the page, written for
  that language's article); if empty, `caption_alt_text_description`; if still empty,
  `caption_attribution_description`, but only when `attribution_passes_lang_id` is true, because the
  Commons attribution text is often in another language than the row's;
- "alt": `caption_alt_text_description` only (the HTML alt text);
- "context": `context_section_description`, else `context_page_description`: the texts around the
  image, which the paper calls "generally very long" (they are cut to data.max_text_len pieces when
  training).
When several rows give the same image a text in the same language (the image is used on several
pages), the text from the best-ranked field wins, then the first one in file order.

Grouping uses an on-disk SQLite table keyed by (image_url, language), so a multi-GB WIT TSV never
sits in memory; reading it back ordered by URL yields each image's rows together.

Images come from either
- img2dataset output: a directory of `*.tar` shards whose samples hold `jpg` + `json` (with
  `url`); the tars are indexed once (url -> member offset) in the same SQLite file; or
- a plain directory where an image file is named by the SHA-1 hex of its URL (with or without an
  image extension) or by the URL's basename (as is, or percent-decoded).
Non-JPEG files are re-encoded to JPEG; missing or unreadable images are skipped and counted.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import sqlite3
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from rc3.data.builders.common import BuildStats, clean_text, open_text, require_file, require_input, start_progress, to_jpeg_bytes
from rc3.data.builders.parallel import ordered_map
from rc3.data.schemas import encode_dw
from rc3.data.shard_writer import ShardWriter, encode_tar_sample
from rc3.tokenization import LANG_DISPLAY_ORDER

DW_LANGS = ("de", "en", "fr", "id", "ja", "zh")
TABLE5_ORDER = tuple(lang for lang in LANG_DISPLAY_ORDER if lang in DW_LANGS)  # the paper's Table 5 order
# (column, rank) per text source: lower rank wins when an image has several texts in one language.
TEXT_SOURCES: dict[str, tuple[tuple[str, int], ...]] = {
    "reference": (("caption_reference_description", 0), ("caption_alt_text_description", 1),
                  ("caption_attribution_description", 2)),
    "alt": (("caption_alt_text_description", 0),),
    "context": (("context_section_description", 0), ("context_page_description", 1)),
}
TEXT_FIELDS = TEXT_SOURCES["reference"]
REQUIRED_COLUMNS = ("language", "image_url")
_IMAGE_SUFFIXES = ("", ".jpg", ".jpeg", ".png", ".gif", ".webp")
_BATCH = 10_000


def row_text(row: dict[str, str | None], text_source: str = "reference") -> tuple[str, int] | None:
    """(text, rank) for a WIT row by the field preference of `text_source`, or None when it has no text."""
    for column, rank in TEXT_SOURCES[text_source]:
        value = clean_text(row.get(column) or "")
        if not value:
            continue
        if column == "caption_attribution_description" and (row.get("attribution_passes_lang_id") or "").lower() != "true":
            continue
        return value, rank
    return None


def iter_wit_rows(path: Path, text_source: str = "reference") -> Iterator[dict[str, str | None]]:
    """Rows of one WIT TSV (plain or .gz) as dicts; checks the header names the columns needed
    (the key columns and the first text column of `text_source`)."""
    require_file(path, "WIT TSV")
    # WIT context fields can be very long; the csv default (128 KiB) would reject them.
    csv.field_size_limit(2**31 - 1)
    with open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        needed = (*REQUIRED_COLUMNS, TEXT_SOURCES[text_source][0][0])
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"WIT TSV {path}: header lacks column(s) {missing}; is this a WIT release file?")
        yield from reader


def _index_rows(db: sqlite3.Connection, wit_tsvs: Sequence[Path], langs: Sequence[str], stats: BuildStats,
                show_progress: bool, text_source: str = "reference") -> None:
    from tqdm import tqdm

    db.execute("CREATE TABLE wit (url TEXT, lang TEXT, rank INTEGER, text TEXT, PRIMARY KEY (url, lang)) WITHOUT ROWID")
    # Keep the better-ranked text; on a tie the earlier row stays (strict <).
    upsert = (
        "INSERT INTO wit VALUES (?, ?, ?, ?) ON CONFLICT (url, lang) DO UPDATE "
        "SET rank = excluded.rank, text = excluded.text WHERE excluded.rank < wit.rank"
    )
    wanted = set(langs)
    for path in wit_tsvs:
        batch: list[tuple[str, str, int, str]] = []
        for row in tqdm(iter_wit_rows(Path(path), text_source), desc=f"index {Path(path).name}", unit=" rows", disable=not show_progress):
            lang, url = (row.get("language") or "").strip(), (row.get("image_url") or "").strip()
            if None in row or not url:  # extra unnamed fields / truncated row
                stats.skip("malformed_row")
                continue
            if lang not in wanted:
                stats.skip("other_language_row")
                continue
            picked = row_text(row, text_source)
            if picked is None:
                stats.skip("row_without_text")
                continue
            batch.append((url, lang, picked[1], picked[0]))
            if len(batch) >= _BATCH:
                db.executemany(upsert, batch)
                batch = []
        if batch:
            db.executemany(upsert, batch)
    db.commit()


def _grouped(db: sqlite3.Connection, langs: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    rows = db.execute("SELECT url, lang, text FROM wit ORDER BY url, lang")
    order = {lang: i for i, lang in enumerate(langs)}
    for url, group in itertools.groupby(rows, key=lambda r: r[0]):
        texts = {lang: text for _, lang, text in group}
        yield url, dict(sorted(texts.items(), key=lambda kv: order[kv[0]]))


class _TarImages:
    """img2dataset shards: url -> (tar, offset, size), indexed once into SQLite (one tar per task
    when `workers` > 1: reading the tar headers is most of the indexing time)."""

    def __init__(self, root: Path, db: sqlite3.Connection, show_progress: bool, workers: int = 1) -> None:
        from tqdm import tqdm

        self.db = db
        db.execute("CREATE TABLE images (url TEXT PRIMARY KEY, tar TEXT, offset INTEGER, size INTEGER)")
        tars = sorted(root.glob("*.tar"))
        for rows in tqdm(ordered_map(_index_tar, tars, workers, chunk_size=1), total=len(tars), desc="index image tars",
                         unit=" tar", disable=not show_progress):
            db.executemany("INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?)", rows)
        db.commit()

    def get(self, url: str) -> bytes | None:
        return _tar_get(self.db, url)


def _index_tar(tar_path: Path) -> list[tuple[str, str, int, int]]:
    """(url, tar, offset, size) of every image of one img2dataset tar that has a url in its json."""
    from webdataset.tariterators import base_plus_ext  # webdataset imports torch: not at import of the builders

    urls: dict[str, str] = {}
    spans: dict[str, tuple[int, int]] = {}
    with tarfile.open(tar_path, "r:") as tf:
        for member in tf:
            tf.members = []  # type: ignore[attr-defined]  # not in tarfile's stubs; the list is not needed and grows with the tar
            key, ext = base_plus_ext(member.name) if member.isfile() else (None, None)
            if key is None:
                continue
            if ext == "json":
                data = tf.extractfile(member)
                assert data is not None  # a regular file (isfile above)
                try:
                    meta = json.loads(data.read().decode("utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(meta, dict) and isinstance(meta.get("url"), str):
                    urls[key] = meta["url"]
            elif ext == "jpg":
                spans[key] = (member.offset_data, member.size)
    return [(url, str(tar_path), *spans[key]) for key, url in urls.items() if key in spans]


class _TarLookup:
    """Reads images through the url index of _TarImages, from another process (own connection)."""

    def __init__(self, db_path: str) -> None:
        self.db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)

    def get(self, url: str) -> bytes | None:
        return _tar_get(self.db, url)


def _tar_get(db: sqlite3.Connection, url: str) -> bytes | None:
    hit = db.execute("SELECT tar, offset, size FROM images WHERE url = ?", (url,)).fetchone()
    if hit is None:
        return None
    tar, offset, size = hit
    with open(tar, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


class _DirImages:
    """Plain directory: files named sha1(url)[.ext] or by the URL basename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, url: str) -> bytes | None:
        digest = hashlib.sha1(url.encode("utf-8")).hexdigest()
        base = os.path.basename(urlsplit(url).path)
        names = [digest + s for s in _IMAGE_SUFFIXES] + [n for n in dict.fromkeys([base, unquote(base)]) if n]
        for name in names:
            path = self.root / name
            if path.is_file():
                return path.read_bytes()
        return None


def open_images(images: Path, db: sqlite3.Connection, show_progress: bool = True,
                workers: int = 1) -> _TarImages | _DirImages:
    """img2dataset shard dir when it holds `*.tar` files, else a plain image directory."""
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"images {root} is not a directory (expected img2dataset output or an image folder)")
    if any(root.glob("*.tar")):
        return _TarImages(root, db, show_progress, workers)
    return _DirImages(root)


def count_pairs(table: Counter[tuple[str, str]], langs: Sequence[str]) -> None:
    """Add one tuple's languages: diagonal (l, l) and both orientations of every pair."""
    for a in langs:
        table[(a, a)] += 1
    for a, b in itertools.combinations(langs, 2):
        table[(a, b)] += 1
        table[(b, a)] += 1


def format_pair_table(table: dict[tuple[str, str], int], langs: Sequence[str] = TABLE5_ORDER) -> str:
    """Language-pair counts as a square table like the paper's Table 5 (symmetric).

    The diagonal is the number of written tuples holding that language. The paper's diagonal
    (e.g. En 5,157,134) is larger than any row's pairs suggest and probably also counts
    single-language images, which Dw does not keep; those appear here as `single_language_image`
    skips instead."""
    def cell(a: str, b: str) -> str:
        return f"{table.get((a, b), table.get((b, a), 0)):,}"

    names = [lang.capitalize() for lang in langs]
    rows = [[""] + names] + [[names[i]] + [cell(a, b) for b in langs] for i, a in enumerate(langs)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)


def build_dw(
    wit_tsvs: Sequence[Path],
    out_dir: Path,
    images: Path,
    shard_size: int = 1000,
    langs: Sequence[str] = DW_LANGS,
    prefix: str = "dw",
    overwrite: bool = False,
    show_progress: bool = True,
    text_source: str = "reference",
    workers: int = 1,
    resume: bool = False,
) -> BuildStats:
    """Write Dw shards `<out_dir>/<prefix>-%06d.tar`; `stats.pair_table` holds the Table-5 counts.

    text_source: which WIT text becomes the tuple's text (module docstring); workers: processes that
    read and check the images and encode samples (the shards are the same for any count); resume:
    continue an interrupted build, keeping its finished shards."""
    from tqdm import tqdm

    if not wit_tsvs:
        raise ValueError("no WIT TSV files given")
    if text_source not in TEXT_SOURCES:
        raise ValueError(f"text_source {text_source!r} is not one of {', '.join(TEXT_SOURCES)}")
    # the text source is part of what a resumed build must share with the interrupted one
    builder = "dw" if text_source == "reference" else f"dw ({text_source} texts)"
    for path in wit_tsvs:
        require_input(Path(path), "WIT TSV", header=True)
    if not Path(images).is_dir():
        raise FileNotFoundError(f"images {images} is not a directory (expected img2dataset output or an image folder)")
    langs = tuple(langs)
    table: Counter[tuple[str, str]] = Counter()
    stats = BuildStats(pair_table=table)
    consumed = [0]
    writer = ShardWriter(Path(out_dir), prefix, shard_size, overwrite=overwrite, resume=resume,
                         progress=lambda: {"builder": builder, "shard_size": shard_size, "inputs": consumed[0],
                                           "stats": stats.to_json()})
    start, restored = start_progress(writer, builder, shard_size, stats)
    fd, db_name = tempfile.mkstemp(prefix="rc3-wit-", suffix=".sqlite")
    os.close(fd)
    db = sqlite3.connect(db_name)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        # a resumed build has the indexing counts in its restored stats already
        _index_rows(db, [Path(p) for p in wit_tsvs], langs, stats if not start else BuildStats(), show_progress,
                    text_source)
        if start:
            table.update(restored.pair_table or {})
            restored.pair_table = table
            stats.__dict__.update(restored.__dict__)
        source = open_images(Path(images), db, show_progress, workers)
        db.commit()
        n_images = db.execute("SELECT COUNT(DISTINCT url) FROM wit").fetchone()[0]
        init = (str(images), db_name if isinstance(source, _TarImages) else None)
        with writer:
            items = itertools.islice(_grouped(db, langs), start, None)
            results = ordered_map(_dw_item, items, workers, initializer=_dw_init, initargs=init)
            try:
                for i, result in enumerate(tqdm(results, total=n_images - start, desc="dw shards", unit=" img",
                                                disable=not show_progress), start=start):
                    consumed[0] = i + 1
                    if result[0] == "skip":
                        stats.skip(result[1])
                        continue
                    _, sample, tuple_langs = result
                    stats.written += 1  # counted before the write: a shard it completes records it
                    stats.languages.update(tuple_langs)
                    count_pairs(table, tuple_langs)
                    writer.write_encoded(sample)
            finally:
                results.close()  # stops the worker processes now, also on an error
    finally:
        _DW.clear()
        db.close()
        Path(db_name).unlink(missing_ok=True)
    stats.pair_table = dict(table)
    stats.shards = list(writer.shards)
    return stats


# ---- per-item work (in worker processes; see rc3.data.builders.parallel) -----------------------
_DW: dict = {}


def _dw_init(images: str, tar_index: str | None) -> None:
    _DW["source"] = _TarLookup(tar_index) if tar_index else _DirImages(Path(images))


def _dw_item(item: tuple[str, dict[str, str]]) -> tuple:
    """("skip", reason) or ("ok", the sample's tar bytes, languages) for one image and its texts."""
    url, texts = item
    if len(texts) < 2:
        return ("skip", "single_language_image")
    data = _DW["source"].get(url)
    if data is None:
        return ("skip", "no_image")
    try:
        jpg = to_jpeg_bytes(data, url)
    except ValueError:
        return ("skip", "bad_image")
    # serialised here, in the worker, so the writing process only appends bytes
    return ("ok", encode_tar_sample(encode_dw(hashlib.sha1(url.encode("utf-8")).hexdigest(), jpg, texts)), list(texts))
