"""Dt builder: parallel text pairs (WikiMatrix TSV, line-aligned corpora, Ds captions) -> shards.

Each sample is one pair (`pair.json`). Sources:
- `WikiMatrixSource`: the WikiMatrix release TSV (`score<TAB>sentence A<TAB>sentence B`, .tsv or
  .tsv.gz), with the two languages given and an optional minimum margin score.
- `LineAlignedSource`: two line-aligned files (plain or .gz), e.g. Multi30K
  `raw/<split>.<lang>.gz`; differing line counts are an error (checked before writing).
- `CaptionPairsSource`: the Ds caption files (one per language, TSV/JSONL) joined by image id;
  each image yields one pair per requested language pair, by default the driver language
  (English) with every other language, which is how the captions are parallel (translations of
  the English one).
Pairs with an empty side are skipped and counted. Sources are written one after another; the
pretraining pipeline shuffles shards and samples.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rc3.data.builders.common import BuildStats, CaptionJoin, SkipCounter, clean_text, open_text, require_input, start_progress
from rc3.data.schemas import encode_dt
from rc3.data.shard_writer import ShardWriter

Pair = tuple[str, str, str, str]  # src_lang, tgt_lang, src, tgt


@dataclass(frozen=True)
class DtSource:
    """Base of the Dt sources: `check()` validates inputs early, `pairs()` streams pairs."""

    def describe(self) -> str:
        raise NotImplementedError

    def check(self) -> None:
        raise NotImplementedError

    def pairs(self, stats: SkipCounter) -> Iterator[Pair]:
        raise NotImplementedError


def _check_langs(src_lang: str, tgt_lang: str, what: str) -> None:
    if not src_lang or not tgt_lang or src_lang == tgt_lang:
        raise ValueError(f"{what}: need two different language codes, got {src_lang!r} and {tgt_lang!r}")


@dataclass(frozen=True)
class WikiMatrixSource(DtSource):
    path: Path
    src_lang: str  # language of the second column (sentence A)
    tgt_lang: str  # language of the third column (sentence B)
    min_score: float | None = None

    def describe(self) -> str:
        return f"WikiMatrix {self.src_lang}-{self.tgt_lang} {self.path}"

    def check(self) -> None:
        require_input(Path(self.path), "WikiMatrix TSV")
        _check_langs(self.src_lang, self.tgt_lang, self.describe())

    def pairs(self, stats: SkipCounter) -> Iterator[Pair]:
        with open_text(Path(self.path)) as fh:
            for line in fh:
                # Plain split, no csv quoting: sentences may contain quote characters verbatim.
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 3:
                    stats.skip("wikimatrix_malformed_line")
                    continue
                try:
                    score = float(parts[0])
                except ValueError:
                    stats.skip("wikimatrix_malformed_line")
                    continue
                if self.min_score is not None and score < self.min_score:
                    stats.skip("wikimatrix_below_min_score")
                    continue
                yield self.src_lang, self.tgt_lang, clean_text(parts[1]), clean_text(parts[2])


@dataclass(frozen=True)
class LineAlignedSource(DtSource):
    src_path: Path
    tgt_path: Path
    src_lang: str
    tgt_lang: str

    def describe(self) -> str:
        return f"line-aligned {self.src_lang}-{self.tgt_lang} {self.src_path} / {self.tgt_path}"

    def check(self) -> None:
        _check_langs(self.src_lang, self.tgt_lang, self.describe())
        counts = []
        for path in (self.src_path, self.tgt_path):
            require_input(Path(path), "line-aligned text file")
            with open_text(Path(path)) as fh:
                counts.append(sum(1 for _ in fh))
        if counts[0] != counts[1]:
            raise ValueError(
                f"line-aligned files differ in length: {self.src_path} has {counts[0]} lines, "
                f"{self.tgt_path} has {counts[1]}; they must be aligned line by line"
            )

    def pairs(self, stats: SkipCounter) -> Iterator[Pair]:
        with open_text(Path(self.src_path)) as fa, open_text(Path(self.tgt_path)) as fb:
            for a, b in zip(fa, fb, strict=True):
                yield self.src_lang, self.tgt_lang, clean_text(a), clean_text(b)


@dataclass(frozen=True)
class CaptionPairsSource(DtSource):
    captions: dict[str, Path]
    # Language pairs (src, tgt) to emit per image; None = driver language with each other one.
    lang_pairs: Sequence[tuple[str, str]] | None = None
    tmp_dir: Path | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"Ds captions {sorted(self.captions)}"

    def _pairs_wanted(self) -> list[tuple[str, str]]:
        if self.lang_pairs is not None:
            return [(a, b) for a, b in self.lang_pairs]
        driver = "en" if "en" in self.captions else next(iter(self.captions))
        return [(driver, lang) for lang in self.captions if lang != driver]

    def check(self) -> None:
        if len(self.captions) < 2:
            raise ValueError(f"{self.describe()}: need caption files in >= 2 languages")
        for lang, path in self.captions.items():
            require_input(Path(path), f"caption file for {lang!r}")
        for a, b in self._pairs_wanted():
            _check_langs(a, b, self.describe())
            if a not in self.captions or b not in self.captions:
                raise ValueError(f"{self.describe()}: pair {a}-{b} needs caption files for both languages")

    def pairs(self, stats: SkipCounter) -> Iterator[Pair]:
        wanted = self._pairs_wanted()
        with CaptionJoin({k: Path(v) for k, v in self.captions.items()}, stats, self.tmp_dir, show_progress=False) as join:
            for _, caps in join:
                for a, b in wanted:
                    if a in caps and b in caps:
                        yield a, b, caps[a], caps[b]
                    else:
                        stats.skip("caption_pair_missing_language")


class _GatedStats:
    """Skip counts of a source being replayed on resume: dropped until the replay reaches the
    position of the last finished shard (its progress record holds the counts up to there)."""

    def __init__(self, stats: BuildStats) -> None:
        self.stats, self.open = stats, False

    def skip(self, reason: str, n: int = 1) -> None:
        if self.open:
            self.stats.skip(reason, n)


def build_dt(
    sources: Sequence[DtSource],
    out_dir: Path,
    shard_size: int = 1000,
    prefix: str = "dt",
    overwrite: bool = False,
    show_progress: bool = True,
    resume: bool = False,
) -> BuildStats:
    """Write Dt shards `<out_dir>/<prefix>-%06d.tar`, one parallel pair per sample.

    resume: continue an interrupted build, keeping its finished shards (the sources are read again
    up to where the last finished shard ended)."""
    from tqdm import tqdm

    if not sources:
        raise ValueError("no Dt sources given")
    for source in sources:
        source.check()  # every input is validated before the first shard is written
    stats = BuildStats()
    pair_counts: dict[tuple[str, str], int] = {}
    position = [0]  # input pairs read so far, over all sources in order
    writer = ShardWriter(Path(out_dir), prefix, shard_size, overwrite=overwrite, resume=resume,
                         progress=lambda: {"builder": "dt", "shard_size": shard_size, "inputs": position[0],
                                           "stats": {**stats.to_json(), "pair_table": [
                                               [a, b, n] for (a, b), n in sorted(pair_counts.items())]}})
    start, restored = start_progress(writer, "dt", shard_size, stats)
    if start:
        stats.__dict__.update(restored.__dict__)
        pair_counts.update(restored.pair_table or {})
        stats.pair_table = None
    with writer:
        for si, source in enumerate(sources):
            gate = _GatedStats(stats)
            gate.open = position[0] >= start
            for i, (a, b, src, tgt) in enumerate(
                tqdm(source.pairs(gate), desc=source.describe()[:60], unit=" pairs", disable=not show_progress)
            ):
                position[0] += 1
                if position[0] <= start:  # written (or counted) before the interruption
                    gate.open = position[0] == start
                    continue
                gate.open = True
                if not src or not tgt:
                    stats.skip("empty_side")
                    continue
                stats.written += 1  # counted before the write: a shard it completes records it
                stats.languages.update((a, b))
                pair_counts[(a, b)] = pair_counts.get((a, b), 0) + 1
                writer.write(encode_dt(f"{si:02d}_{i:010d}", a, b, src, tgt))
    stats.pair_table = pair_counts
    stats.shards = list(writer.shards)
    return stats
