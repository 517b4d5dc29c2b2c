"""Shared pieces of the shard builders: build statistics, text/caption readers, the on-disk caption
join, JPEG normalisation and shard-key derivation.

Caption files follow the UC2 release style: one file per language, either TSV lines
`image_id<TAB>caption` or JSONL objects {"image_id", "caption"}; the format is chosen by the
extension (.tsv / .jsonl, optionally followed by .gz).

The multilingual join goes through a temporary SQLite file instead of Python dicts: memory stays
bounded whatever the corpus size (CC3M has 2.8M images x 6 languages), and the per-image lookup
is an index probe.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rc3.data.shard_writer import ShardWriter

from PIL import Image

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_SPACES = re.compile(r"\s+")
# Batch size for SQLite inserts: large enough to amortise statement overhead, small in memory.
_INSERT_BATCH = 10_000


class SkipCounter(Protocol):
    """Where skips are counted: BuildStats, or a wrapper that drops them while a resume replays a source."""

    def skip(self, reason: str, n: int = 1) -> None: ...


@dataclass
class BuildStats:
    """What a builder did: samples written, skips by reason, shards, and (Dw) the pair table."""

    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    shards: list[Path] = field(default_factory=list)
    languages: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)  # written-but-noteworthy, e.g. padded_rois
    pair_table: dict[tuple[str, str], int] | None = None

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def to_json(self) -> dict:
        """The counts (not the shard list), for a resumable build's progress record."""
        out: dict = {"written": self.written, "skipped": dict(self.skipped), "languages": dict(self.languages),
                     "notes": dict(self.notes)}
        if self.pair_table is not None:
            out["pair_table"] = [[a, b, n] for (a, b), n in sorted(self.pair_table.items())]
        return out

    @classmethod
    def from_json(cls, data: dict) -> BuildStats:
        table = data.get("pair_table")
        return cls(written=int(data["written"]), skipped=Counter(data["skipped"]), languages=Counter(data["languages"]),
                   notes=Counter(data["notes"]),
                   pair_table=None if table is None else {(a, b): int(n) for a, b, n in table})

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        lines = [f"written: {self.written} samples in {len(self.shards)} shard(s)"]
        if self.languages:
            lines.append("languages: " + ", ".join(f"{k}={v}" for k, v in sorted(self.languages.items())))
        if self.skipped:
            lines.append(f"skipped: {self.total_skipped}")
            lines.extend(f"  {reason}: {n}" for reason, n in sorted(self.skipped.items()))
        else:
            lines.append("skipped: 0")
        lines.extend(f"note: {reason}: {n}" for reason, n in sorted(self.notes.items()))
        return "\n".join(lines)


def require_file(path: Path, what: str) -> Path:
    """Fail early, naming the input, rather than after minutes of building."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist or is not a file")
    return p


def require_input(path: Path, what: str, header: bool = False) -> Path:
    """`require_file`, and the file must hold a line with text (after a header line when `header`).

    An empty input (a failed download, a wrong glob, a file truncated to nothing) otherwise builds
    "0 samples in 0 shard(s)" and exits 0, and the run that reads those shards fails far from the cause.
    Reads only up to the first such line (through gzip for *.gz)."""
    p = require_file(path, what)
    try:
        with open_text(p) as fh:
            lines = (line for line in fh if line.strip())
            if header:
                next(lines, None)
            if next(lines, None) is not None:
                return p
    except (OSError, UnicodeDecodeError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{what} {p} cannot be read as UTF-8 text ({type(exc).__name__}: {exc})") from None
    rows = "no row after its header line" if header else "no line with text"
    raise ValueError(f"{what} {p} is empty ({rows}): there is nothing to build shards from; check the path "
                     "or fetch the file again")


def open_text(path: Path) -> IO[str]:
    """Open a UTF-8 text file, transparently gunzipping `*.gz`."""
    p = Path(path)
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
    return open(p, encoding="utf-8", newline="")


def clean_text(text: str) -> str:
    """Collapse whitespace (tabs/newlines inside captions would break line formats downstream)."""
    return _SPACES.sub(" ", text).strip()


def caption_format(path: Path) -> str:
    """'tsv' or 'jsonl' from the file extension (a trailing .gz is ignored)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".jsonl"):
        return "jsonl"
    raise ValueError(f"caption file {path}: unknown format; expected a .tsv (image_id<TAB>caption) or .jsonl file")


def iter_captions(path: Path, stats: SkipCounter | None = None, lang: str = "") -> Iterator[tuple[str, str]]:
    """Stream (image_id, caption) from a caption file; malformed lines are skipped and counted."""
    fmt = caption_format(require_file(path, f"caption file ({lang})" if lang else "caption file"))
    tag = f"{lang}_" if lang else ""
    with open_text(path) as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if fmt == "tsv":
                parts = line.split("\t")
                if len(parts) < 2:
                    if stats is not None:
                        stats.skip(f"{tag}malformed_line")
                    continue
                image_id, caption = parts[0].strip(), "\t".join(parts[1:])
            else:
                try:
                    obj = json.loads(line)
                    image_id, caption = str(obj["image_id"]).strip(), obj["caption"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    if stats is not None:
                        stats.skip(f"{tag}malformed_line")
                    continue
            caption = clean_text(caption) if isinstance(caption, str) else ""
            if not image_id or not caption:
                if stats is not None:
                    stats.skip(f"{tag}empty_caption")
                continue
            yield image_id, caption


def start_progress(writer: ShardWriter, builder: str, shard_size: int, stats: BuildStats) -> tuple[int, BuildStats]:
    """On a resumed build: (input items already consumed, the counts so far) from the writer's last
    progress record, checked against this build; (0, stats) for a fresh one."""
    rec = writer.resumed
    if rec is None:
        return 0, stats
    if rec.get("builder") != builder or rec.get("shard_size") != shard_size:
        raise ValueError(f"cannot resume in {writer.out_dir}: its shards were written by builder "
                         f"{rec.get('builder')!r} with shard size {rec.get('shard_size')}, not {builder!r} with "
                         f"{shard_size}; use the same settings, or --overwrite")
    return int(rec["inputs"]), BuildStats.from_json(rec["stats"])


class CaptionJoin:
    """Multilingual captions joined by image id in a temporary SQLite file.

    The driver language (English when present) keeps its file order and decides which images
    exist; other languages are looked up per image. The first caption of a duplicated id wins.
    """

    def __init__(self, captions: dict[str, Path], stats: SkipCounter, tmp_dir: Path | None = None, show_progress: bool = True) -> None:
        if not captions:
            raise ValueError("no caption files given; pass at least one {lang: path}")
        for lang, path in captions.items():
            require_input(path, f"caption file for {lang!r}")
            caption_format(path)
        self.langs = list(captions)
        self.driver = "en" if "en" in captions else self.langs[0]
        fd, name = tempfile.mkstemp(prefix="rc3-captions-", suffix=".sqlite", dir=tmp_dir)
        os.close(fd)
        self._db_path = Path(name)
        self._db = sqlite3.connect(name)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE driver (line INTEGER PRIMARY KEY, image_id TEXT UNIQUE, caption TEXT)")
        self._db.execute("CREATE TABLE other (image_id TEXT, lang TEXT, caption TEXT, PRIMARY KEY (image_id, lang)) WITHOUT ROWID")
        self._load(captions, stats, show_progress)

    def _load(self, captions: dict[str, Path], stats: SkipCounter, show_progress: bool) -> None:
        from tqdm import tqdm

        for lang, path in captions.items():
            table = "driver" if lang == self.driver else "other"
            rows = iter_captions(Path(path), stats, lang)
            before = self._db.total_changes
            n_read = 0
            for batch in _batched(tqdm(rows, desc=f"index {lang} captions", unit=" lines", disable=not show_progress)):
                n_read += len(batch)
                if table == "driver":
                    self._db.executemany("INSERT OR IGNORE INTO driver (image_id, caption) VALUES (?, ?)", batch)
                else:
                    self._db.executemany(
                        "INSERT OR IGNORE INTO other (image_id, lang, caption) VALUES (?, ?, ?)",
                        [(i, lang, c) for i, c in batch],
                    )
            duplicates = n_read - (self._db.total_changes - before)
            if duplicates:
                stats.skip(f"{lang}_duplicate_id", duplicates)
        self._db.commit()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM driver").fetchone()[0])

    def __iter__(self) -> Iterator[tuple[str, dict[str, str]]]:
        """(image_id, {lang: caption}) in driver-file order; languages in the order given."""
        cursor = self._db.cursor()  # a separate cursor for the lookups below
        for image_id, caption in self._db.execute("SELECT image_id, caption FROM driver ORDER BY line"):
            found = {self.driver: caption}
            for lang, text in cursor.execute("SELECT lang, caption FROM other WHERE image_id = ?", (image_id,)):
                found[lang] = text
            yield image_id, {lang: found[lang] for lang in self.langs if lang in found}

    def close(self) -> None:
        self._db.close()
        self._db_path.unlink(missing_ok=True)

    def __enter__(self) -> CaptionJoin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _batched(rows: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    batch: list[tuple[str, str]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= _INSERT_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def safe_key(raw_id: str) -> str:
    """A WebDataset key for an id: unchanged when already safe, else sanitised + a hash suffix.

    Keys may not contain '.' or '/' (tar member names are split at the first dot), so e.g.
    "1007129816.jpg" becomes "1007129816_jpg_<8 hex of sha1>"; the hash keeps distinct ids distinct.
    """
    if raw_id and not _KEY_UNSAFE.search(raw_id):
        return raw_id
    digest = hashlib.sha1(raw_id.encode("utf-8")).hexdigest()[:8]
    return f"{_KEY_UNSAFE.sub('_', raw_id)[:80]}_{digest}"


def to_jpeg_bytes(data: bytes, what: str) -> bytes:
    """Return JPEG bytes for an image: JPEG input is kept byte-for-byte (verified); other formats
    (PNG, GIF, WebP...) are converted to RGB and re-encoded at quality 95. Raises ValueError."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
            probe.verify()
        if fmt == "JPEG":
            return data
        with Image.open(io.BytesIO(data)) as img:
            out = io.BytesIO()
            img.convert("RGB").save(out, format="JPEG", quality=95)
            return out.getvalue()
    except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise ValueError(f"{what}: not a decodable image ({type(exc).__name__}: {exc})") from exc
