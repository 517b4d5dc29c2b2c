"""Reading tar shards into raw samples: webdataset's member grouping, only the schema's fields read
(stray members such as pickles are never loaded), the end-of-archive check that catches a truncated
shard, and bounded retries of a remote shard that resume past the samples already handed on.

Stage 2 of the shard pipeline (rc3.data.pipeline). Written by hand rather than with
`wds.tarfile_to_samples`: that stage reads every member and cannot re-open a remote shard mid-way.
"""
from __future__ import annotations

import re
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from rc3.data.faults import FaultTracker, log
from rc3.data.shard_order import END_OF_PASS
from rc3.data.shard_source import ShardOpener, abort, is_remote, stream_for_tar, transport_failure

_MEMBER = re.compile(r"^((?:.*/)?[^./]+)\.([^/]+)$")  # webdataset's rule: key = name up to the first '.'


def read_samples(items: Iterable[str], fields: frozenset[str], tracker: FaultTracker,
                 opener: ShardOpener | None = None) -> Iterator[Any]:
    opener = opener or ShardOpener()
    for url in items:
        if url == END_OF_PASS:
            yield url
        else:
            yield from read_shard(url, fields, tracker, opener)


def read_shard(url: str, fields: frozenset[str], tracker: FaultTracker, opener: ShardOpener) -> Iterator[dict]:
    """The shard's samples; a remote shard that fails is reopened (bounded retries with backoff) and
    the samples already handed on are passed over, so a retried shard yields what an intact one would."""
    done, attempt, remote = 0, 0, is_remote(url)
    while True:
        try:
            n = 0
            for sample in tar_samples(url, fields, opener):
                n += 1
                if n > done:
                    done = n
                    yield sample
            if n == 0:
                tracker.empty_shard(url)
            return
        except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
            # The sample being assembled when the fault hit may be incomplete: it goes with the shard rest.
            detail = f"{type(exc).__name__}: {exc}"
            if remote and attempt < opener.retries:
                attempt += 1
                wait = opener.backoff(attempt)
                log.warning("%s: shard %s failed after %d sample(s) (%s); retry %d of %d in %.1f s",
                            tracker.where, url, done, detail, attempt, opener.retries, wait)
                time.sleep(wait)
                continue
            reason = "shard_fetch_error" if remote and isinstance(exc, OSError) else "shard_error"
            if remote:
                detail += f" (after {attempt} retries)"
            tracker.shard_fault(url, detail, done, reason)
            return


def tar_samples(url: str, fields: frozenset[str], opener: ShardOpener) -> Iterator[dict]:
    """Tar members grouped into raw samples; only the schema's fields are read."""
    current = None
    raw = opener.open(url)
    finished = False
    try:
        seekable = not is_remote(url)
        # Random-access mode (not "r|"): at the end we can look back for the end-of-archive block. A stream
        # gets that through a seek window (rc3.data.shard_source.SeekWindow).
        f = raw if seekable else stream_for_tar(raw)
        with tarfile.open(fileobj=f, mode="r:*" if seekable else "r:") as tar:
            for info in tar:
                tar.members = []  # iteration does not need the member list; a shard's can be long
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
                    current[field] = tar.extractfile(info).read()
            _check_archive_end(tar)
        finished = True
        raw.close()  # a pipe reports its command's exit status here (an OSError when it failed)
    except (EOFError, tarfile.TarError, zlib.error) as exc:
        # A shard cut short looks broken; when the command that fetched it failed, it is a transport fault.
        failure = transport_failure(raw) if is_remote(url) else None
        if failure is not None:
            raise OSError(f"{failure} ({type(exc).__name__}: {exc})") from exc
        raise
    finally:
        if not finished:
            abort(raw)
    if current is not None:
        yield current


def count_samples(url: str, opener: ShardOpener | None = None) -> int:
    """Samples in one shard (local or remote; member data is not read, a remote shard is streamed)."""
    opener = opener or ShardOpener()
    last_error: Exception | None = None
    for attempt in range(opener.retries + 1):
        if attempt:
            time.sleep(opener.backoff(attempt))
        try:
            return sum(1 for _ in tar_samples(url, frozenset(), opener))
        except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
            last_error = exc
            if not is_remote(url):
                break
    raise OSError(f"cannot count the samples of shard {url}: {type(last_error).__name__}: {last_error}")


def _check_archive_end(tar: tarfile.TarFile) -> None:
    """tarfile stops quietly at a truncated or garbled header; a complete tar ends with a zero block."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"no end-of-archive block at byte {tar.offset}: the shard is truncated or garbled")
