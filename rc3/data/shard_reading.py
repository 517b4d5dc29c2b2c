"""Reading tar shards into raw samples: webdataset's member grouping, only the schema's fields read
(stray members such as pickles are never loaded), the end-of-archive check that catches a truncated
shard, and bounded retries of a remote shard that resume past the samples already handed on.

Stage 2 of the shard pipeline (rc3.data.pipeline). Written by hand rather than with
`wds.tarfile_to_samples`: that stage reads every member and cannot re-open a remote shard mid-way.

Remote shards follow the retry policy of rc3.data.shard_source.ShardOpener.retry_wait; a shard whose
tries are used up is skipped and counted (shard_fetch_error; a complete transfer of a broken tar is a
shard_error, not retried: the server holds those bytes). Each stream also tracks how long its fetches
have failed without a break (:class:`FetchHealth`): past `outage_s` the run stops with one
:class:`ShardsUnreachable` line naming the corpus's config key and the last URL, rather than skipping
shard after shard of a corpus that cannot be reached (at the defaults: 60 s read timeout, 90 s outage,
so a silent server stops the run after about 90 s). Once a stream has had data, a stretch stops it
only when a second shard fails in it: one shard that hangs is skipped, not taken for an outage.
"""
from __future__ import annotations

import math
import re
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from rc3.data.faults import DataPipelineError, FaultTracker, log
from rc3.data.shard_order import END_OF_PASS
from rc3.data.shard_source import ShardOpener, abort, is_remote, stream_for_tar, transport_failure

_MEMBER = re.compile(r"^((?:.*/)?[^./]+)\.([^/]+)$")  # webdataset's rule: key = name up to the first '.'
_READ_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error)


class ShardsUnreachable(DataPipelineError):
    """Every fetch of a corpus's remote shards has failed for longer than the outage budget."""


class FetchHealth:
    """How long a stream's remote fetches have failed without data arriving in between."""

    def __init__(self, outage_s: float) -> None:
        self.outage_s = outage_s
        self.since: float | None = None  # start of the failing stretch (None: the last fetch delivered)
        self.last_arrival = -math.inf
        self.ever_arrived = False
        self.skipped = 0  # shards given up within the current stretch

    def arrived(self) -> None:
        self.since, self.skipped = None, 0
        self.last_arrival, self.ever_arrived = time.monotonic(), True

    def failed(self, attempt_start: float) -> None:
        if self.since is None:
            self.since = max(attempt_start, self.last_arrival)

    def remaining(self) -> float:
        """Seconds left before the stretch stops the run. Once the stream has had data, one shard
        failing is that shard's fault (it is retried and skipped by the shard's own budget): the
        stretch counts only from the second shard that fails in it."""
        if self.since is None or (self.ever_arrived and self.skipped == 0):
            return math.inf
        return self.outage_s - (time.monotonic() - self.since)

    def timeout(self, read_timeout: float) -> float:
        """An attempt's read timeout: within a failing stretch, no longer than what is left of it."""
        return max(0.5, min(read_timeout, self.remaining()))

    def unreachable(self, key: str, url: str, detail: str, next_wait: float | None = None) -> ShardsUnreachable:
        elapsed = 0.0 if self.since is None else time.monotonic() - self.since
        budget = f"data.shard_outage_s = {self.outage_s:g}"
        when = (f"{budget}" if next_wait is None else
                f"its next retry ({next_wait:.1f} s away) would come after {budget}")
        what = "no shard has been fetched since the stream started" if not self.ever_arrived else \
            "no shard data has arrived since"
        return ShardsUnreachable(
            f"{key}: every fetch failed for {elapsed:.1f} s ({when}), {what}; {self.skipped} shard(s) skipped; "
            f"last: {url}: {detail}; check that the URL is right and its server is up")


def read_samples(items: Iterable[str], fields: frozenset[str], tracker: FaultTracker,
                 opener: ShardOpener | None = None, key: str = "shards") -> Iterator[Any]:
    """Raw samples of the shards in `items` (END_OF_PASS passed on); `key` names the corpus's shards
    in errors (its config key, e.g. data.ds_shards)."""
    opener = opener or ShardOpener()
    health = FetchHealth(opener.outage_s)
    for url in items:
        if url == END_OF_PASS:
            yield url
        else:
            yield from read_shard(url, fields, tracker, opener, health, key)


def read_shard(url: str, fields: frozenset[str], tracker: FaultTracker, opener: ShardOpener,
               health: FetchHealth | None = None, key: str = "shards") -> Iterator[dict]:
    """The shard's samples; a remote shard that fails is reopened (bounded retries with backoff) and
    the samples already handed on are passed over, so a retried shard yields what an intact one would.
    Raises ShardsUnreachable when `health` says the stream's fetches have failed for too long."""
    done, attempt, remote = 0, 0, is_remote(url)
    health = health or FetchHealth(opener.outage_s)
    first_failure: float | None = None
    while True:
        started = time.monotonic()
        try:
            n = 0
            for sample in tar_samples(url, fields, opener, health.timeout(opener.read_timeout_s) if remote else None):
                n += 1
                if remote:
                    health.arrived()
                if n > done:
                    done = n
                    yield sample
            if remote:
                health.arrived()  # a complete transfer (even of a tar without samples)
            if n == 0:
                tracker.empty_shard(url)
            return
        except _READ_ERRORS as exc:
            # The sample being assembled when the fault hit may be incomplete: it goes with the shard rest.
            detail = f"{type(exc).__name__}: {exc}"
            transport = remote and isinstance(exc, OSError)
            if transport:
                health.failed(started)
                # the shard's budget runs from its first failure: from the try's start when nothing arrived
                # in it, else from the last sample (a long read that breaks late keeps its retries)
                if first_failure is None:
                    first_failure = max(started, health.last_arrival)
            retryable = remote and not getattr(exc, "transfer_complete", False)
            wait = opener.retry_wait(attempt + 1, exc, first_failure or started) if retryable else None
            if transport and health.remaining() <= 0:
                raise health.unreachable(key, url, detail) from None
            if transport and wait is not None and wait >= health.remaining():  # no point waiting to fail
                raise health.unreachable(key, url, detail, wait) from None
            if wait is not None:
                attempt += 1
                log.warning("%s: shard %s failed after %d sample(s) (%s); retry %d of %d in %.1f s",
                            tracker.where, url, done, detail, attempt, opener.retries, wait)
                time.sleep(wait)
                continue
            reason = "shard_fetch_error" if transport else "shard_error"
            if remote:
                detail += f" (after {attempt} retries)"
            tracker.shard_fault(url, detail, done, reason)
            if transport:
                health.skipped += 1
            return


def tar_samples(url: str, fields: frozenset[str], opener: ShardOpener, timeout: float | None = None) -> Iterator[dict]:
    """Tar members grouped into raw samples; only the schema's fields are read. `timeout`: a remote
    shard's read timeout (default: the opener's)."""
    current = None
    raw = opener.open(url, timeout)
    finished = False
    try:
        seekable = not is_remote(url)
        # Random-access mode (not "r|"): at the end we can look back for the end-of-archive block. A stream
        # gets that through a seek window (rc3.data.shard_source.SeekWindow).
        f = raw if seekable else stream_for_tar(raw)
        with tarfile.open(fileobj=f, mode="r:*" if seekable else "r:") as tar:
            for info in tar:
                tar.members = []  # type: ignore[attr-defined]  # not in tarfile's stubs; iteration does not need the list, a shard's can be long
                m = _MEMBER.match(info.name) if info.isreg() else None
                if m is None:
                    continue
                key, field = m.group(1), m.group(2).lower()
                if current is None or key != current["__key__"]:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": url}
                if field not in fields:
                    continue  # not part of the schema: never read (stray pickles included)
                if field in current:
                    current["__duplicate__"] = field
                else:
                    member = tar.extractfile(info)
                    assert member is not None  # a regular file (isreg above) always has a file object
                    current[field] = member.read()
            _check_archive_end(tar)
        finished = True
        raw.close()  # a pipe reports its command's exit status here (an OSError when it failed)
    except (EOFError, tarfile.TarError, zlib.error) as exc:
        # A shard cut short looks broken; when the command that fetched it failed, it is a transport fault.
        failure = transport_failure(raw) if is_remote(url) else None
        if failure is not None:
            raise OSError(f"{failure} ({type(exc).__name__}: {exc})") from exc
        length, received = getattr(raw, "length", None), getattr(raw, "received", None)
        if length is not None and received == length:  # an http(s) shard that arrived whole, as the server has it
            setattr(exc, "transfer_complete", True)  # noqa: B010 (an attribute of ours on a library's exception)
        raise
    finally:
        if not finished:
            abort(raw)
    if current is not None:
        yield current


def count_samples(url: str, opener: ShardOpener | None = None, key: str = "shards") -> int:
    """Samples in one shard (local or remote: member data is not read, a remote shard is streamed and
    retried as in reading). A remote shard that cannot be fetched raises ShardsUnreachable."""
    opener = opener or ShardOpener()
    health = FetchHealth(opener.outage_s)
    remote, attempt, first_failure = is_remote(url), 0, None
    while True:
        started = time.monotonic()
        try:
            return sum(1 for _ in tar_samples(url, frozenset(), opener,
                                              health.timeout(opener.read_timeout_s) if remote else None))
        except _READ_ERRORS as exc:
            detail = f"{type(exc).__name__}: {exc}"
            if not remote:
                raise OSError(f"cannot count the samples of shard {url}: {detail}") from None
            health.failed(started)
            first_failure = started if first_failure is None else first_failure
            wait = (None if getattr(exc, "transfer_complete", False)
                    else opener.retry_wait(attempt + 1, exc, first_failure))
            if wait is None or wait >= health.remaining():
                raise ShardsUnreachable(f"{key}: cannot count the samples of shard {url} (to size an epoch; "
                                        f"data.batches_per_epoch skips this): {detail} (after {attempt} retries); "
                                        f"check that the URL is right and its server is up") from None
            attempt += 1
            log.warning("shard %s failed (%s); retry %d of %d in %.1f s", url, detail, attempt, opener.retries, wait)
            time.sleep(wait)


def _check_archive_end(tar: tarfile.TarFile) -> None:
    """tarfile stops quietly at a truncated or garbled header; a complete tar ends with a zero block."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"no end-of-archive block at byte {tar.offset}: the shard is truncated or garbled")
