"""Broken input in the shard pipelines: the sample check stage, skip reasons, counters, the skip budget.

Broken input is never fatal one item at a time and never silent: every skipped shard or sample is
counted under a reason and logged with the shard it came from. `check_samples` decodes each raw
sample safely (rc3.data.schemas: no unpickling) and decides whether it is usable. Counting happens inside DataLoader
workers, so a worker's :class:`FaultTracker` hands out its counts as increments attached to the
batches it produces; the main process adds them into one :class:`SkipCounter`, which therefore
covers all workers exactly once.

Reasons:
  shard_error     a shard could not be opened or read to its end (missing, empty, not a tar,
                  truncated); samples read before the fault are kept, the rest of the shard is lost
  shard_fetch_error  a remote shard (URL or pipe: command) kept failing to arrive after the
                  retries (connection dropped, command failed); as shard_error otherwise
  empty_shard     a shard is a valid tar that holds no sample (no member, or none named as a sample's
                  field); counted each time it is read, logged the first time a worker reads it
  missing_field   a field of the corpus schema is absent
  duplicate_field a sample holds the same field twice
  bad_array       an npy field is not a finite float array of the schema's shape (or holds pickles)
  bad_image       the image does not decode
  bad_json        a JSON field is valid UTF-8 but not valid JSON of the expected shape
  non_utf8        a text field is not valid UTF-8 (including escaped lone surrogates)
  empty_text      a caption / text / pair side is empty or whitespace
  too_few_langs   fewer than two usable languages for a cross-lingual sample
  bad_pair        a Dt pair with an unknown language or the same language twice
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rc3.data import schemas
from rc3.data.corpora import CORPORA

log = logging.getLogger("rc3.data")

SAMPLE_REASONS = ("missing_field", "duplicate_field", "bad_array", "bad_image", "bad_json", "non_utf8",
                  "empty_text", "too_few_langs", "bad_pair")
SHARD_REASONS = ("shard_error", "shard_fetch_error", "empty_shard")
ALL_REASONS = SAMPLE_REASONS + SHARD_REASONS
# Per reason, the first few skips are logged in full, then one line per this many (a corpus with
# a systematic fault would otherwise flood the log with millions of identical lines).
LOG_FIRST = 10
LOG_EVERY = 1000


class DataPipelineError(RuntimeError):
    """The data cannot feed training: nothing usable, or more broken input than allowed."""


class NoUsableData(DataPipelineError):
    """Every shard a worker can fall back to is unreadable, empty, or holds only broken samples."""


class SkipBudgetExceeded(DataPipelineError):
    """A worker dropped a larger fraction of its samples than the skip budget allows."""


class SkipCounter:
    """Counts of skipped items by reason; add increments from any number of workers."""

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._counts: dict[str, int] = {}
        if counts:
            self.update(counts)

    def add(self, reason: str, n: int = 1) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + int(n)

    def update(self, other: Mapping[str, int] | SkipCounter) -> None:
        items = other.as_dict() if isinstance(other, SkipCounter) else other
        for reason, n in items.items():
            self.add(reason, n)

    def take(self) -> dict[str, int]:
        """Return the counts and reset to zero (a worker's increments since its last batch)."""
        out, self._counts = self._counts, {}
        return out

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    @property
    def samples(self) -> int:
        """Skipped samples (shard-level faults excluded)."""
        return sum(n for r, n in self._counts.items() if r not in SHARD_REASONS)

    def __getitem__(self, reason: str) -> int:
        return self._counts.get(reason, 0)

    def __bool__(self) -> bool:
        return any(self._counts.values())

    def __add__(self, other: SkipCounter) -> SkipCounter:
        out = SkipCounter(self._counts)
        out.update(other)
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SkipCounter):
            return self.as_dict() == other.as_dict()
        if isinstance(other, Mapping):
            return self.as_dict() == {k: v for k, v in sorted(other.items()) if v}
        return NotImplemented

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


class FaultTracker:
    """One worker's view of its stream: counts, logs, and enforces the skip budget.

    `skip_budget` is the largest fraction of checked samples the worker may drop; `skip_grace`
    samples are allowed on top so that the first broken sample of a stream does not already
    exceed any fraction. Shard-level faults are counted and logged but do not use the budget
    (how many samples a truncated shard lost is unknown); a stream made only of unreadable
    shards is caught by the barren-pass rule of the pipeline instead.
    """

    def __init__(self, where: str, skip_budget: float, skip_grace: int) -> None:
        if not 0.0 <= skip_budget <= 1.0:
            raise ValueError(f"skip_budget is a fraction in [0, 1], got {skip_budget}")
        if skip_grace < 0:
            raise ValueError(f"skip_grace must be >= 0, got {skip_grace}")
        self.where = where
        self.skip_budget = skip_budget
        self.skip_grace = skip_grace
        self.pending = SkipCounter()  # increments not yet attached to a batch
        self.totals = SkipCounter()  # everything this worker skipped, for error messages
        self.checked = 0  # samples that reached the decode/check stage
        self.dropped = 0
        self.good = 0
        self.pass_good = 0  # usable samples in the current pass over the worker's shards
        self.last_pass_good = -1  # ... in the last finished pass (-1: none finished yet)
        self.pass_shard_faults = 0  # shards of the current pass that failed
        self.last_pass_shard_faults = 0  # ... of the last finished pass
        self.empty_seen: set[str] = set()  # empty shards already logged by this worker

    def ok(self) -> None:
        self.checked += 1
        self.good += 1
        self.pass_good += 1

    def end_pass(self) -> None:
        self.last_pass_good, self.pass_good = self.pass_good, 0
        self.last_pass_shard_faults, self.pass_shard_faults = self.pass_shard_faults, 0

    def skip(self, reason: str, shard: str, key: str, detail: str) -> None:
        """Drop one sample: count it, log it (rate-limited) with its shard, check the budget."""
        self.checked += 1
        self.dropped += 1
        self._count(reason)
        n = self.totals[reason]
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            more = f" (further skips of this kind are logged every {LOG_EVERY})" if n == LOG_FIRST else ""
            log.warning("%s: skipped sample %r of shard %s [%s, %d so far]: %s%s",
                        self.where, key, shard, reason, n, detail, more)
        allowed = self.skip_budget * self.checked + self.skip_grace
        if self.dropped > allowed:
            raise SkipBudgetExceeded(
                f"{self.where}: dropped {self.dropped} of {self.checked} samples, more than the skip budget "
                f"({self.skip_budget:.1%} + {self.skip_grace}); {self.good} usable so far; reasons "
                f"{self.totals.as_dict()}; last: shard {shard}, sample {key!r}: {detail}. Rebuild or remove the "
                f"broken shards, or raise data.skip_budget if this loss is acceptable.")

    def shard_fault(self, shard: str, detail: str, samples_read: int, reason: str = "shard_error") -> None:
        """A shard failed to open or to read to its end; always logged."""
        if reason not in SHARD_REASONS:
            raise ValueError(f"unknown shard skip reason {reason!r}")
        self._count(reason)
        self.pass_shard_faults += 1
        log.warning("%s: shard %s unreadable after %d sample(s), skipping the rest of it: %s",
                    self.where, shard, samples_read, detail)

    def empty_shard(self, shard: str) -> None:
        """A shard that is a valid tar without any sample: counted every time, logged once per worker."""
        self._count("empty_shard")
        if shard not in self.empty_seen:
            self.empty_seen.add(shard)
            log.warning("%s: shard %s is a valid tar with no sample in it (counted as empty_shard; logged once)",
                        self.where, shard)

    def take(self) -> dict[str, int]:
        return self.pending.take()

    def _count(self, reason: str) -> None:
        self.pending.add(reason)
        self.totals.add(reason)


def skip_reason(field: str, problem: str, data: bytes | None) -> str:
    """The skip reason of a schema decoding error on `field` (its raw bytes `data`).

    Only runs on the failure path, so it can afford to look at the bytes again to tell a non-UTF-8
    caption from malformed JSON or an empty text.
    """
    if problem == "missing" or data is None:
        return "missing_field"
    if problem == "duplicate":
        return "duplicate_field"
    if field == "jpg":
        return "bad_image"
    if not field.endswith(".json"):
        return "bad_array"
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError:
        return "non_utf8"
    except ValueError:
        return "bad_json"
    values = list(obj.values()) if isinstance(obj, dict) else []
    if any(isinstance(v, str) and not v.strip() for v in values):
        return "empty_text"
    if field != "pair.json" and values and all(isinstance(v, str) for v in values) and len(values) < 2:
        return "too_few_langs"
    return "bad_json"


def decode_sample(corpus: str, raw: dict, needs_image: bool, draft_size: int | None) -> Any:
    """Decode one raw sample with the corpus's decoder (rc3.data.corpora); raises schemas.SampleError."""
    if "__duplicate__" in raw:
        raise schemas.SampleError(raw["__duplicate__"], "duplicate", raw["__key__"])
    return CORPORA.get(corpus).decode(raw, needs_image, draft_size)


def check_samples(items: Iterable[Any], corpus: str, collate_fn: Any, needs_image: bool, draft_size: int | None,
                  tracker: FaultTracker) -> Iterator[Any]:
    """Pipeline stage: raw samples -> decoded usable samples; drops (and counts) the rest.

    A string item marks the end of a pass over the worker's shards (see rc3.data.pipeline).
    """
    reject = getattr(collate_fn, "reject", None)
    for raw in items:
        if isinstance(raw, str):
            tracker.end_pass()
            continue
        try:
            sample = decode_sample(corpus, raw, needs_image, draft_size)
        except schemas.SampleError as err:
            skipped = skip_reason(err.field, err.reason, raw.get(err.field))
            tracker.skip(skipped, raw["__url__"], raw["__key__"], str(err))
            continue
        reason: str | None
        try:
            for text in CORPORA.get(corpus).texts(sample):
                text.encode("utf-8")  # JSON escapes can smuggle in lone surrogates
            reason = reject(sample) if reject is not None else None
        except UnicodeEncodeError:
            reason = "non_utf8"
        if reason is not None:
            tracker.skip(reason, raw["__url__"], raw["__key__"], f"rejected ({reason})")
            continue
        tracker.ok()
        yield sample
