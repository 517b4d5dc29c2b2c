"""Where shards come from: local files and globs, brace ranges, `pipe:` commands and URLs.

A shard spec is a string or a list of strings. Each string is brace-expanded
(`shards/ds-{000000..000127}.tar`); a local pattern may also be a glob (`shards/ds-*.tar`) and every
local file must exist. Anything with a scheme is a remote shard and is opened by :class:`ShardOpener`:

  pipe:CMD             CMD's stdout (webdataset's `gopen`, e.g. `pipe:cat a.tar`, `pipe:curl -s URL`)
  http://, https://    read in-process with a read timeout (rc3.data.http_shards; not curl)
  gs://                webdataset's `gopen` (`gsutil cat`)
  s3://                `aws s3 cp URL -` (webdataset has no s3 handler)
  file://              a local file

`commands` overrides a scheme: `{"s3": "pipe:s5cmd cat {url}"}` runs that command (the URL is
shell-quoted into `{url}`), and the value `"fsspec"` opens the URL with fsspec (s3fs / gcsfs must
be installed). Remote URLs are listed, not globbed (an object store has no cheap glob): give them
as brace ranges.

Remote shards are streamed, never downloaded whole: :class:`SeekWindow` lets tarfile's
random-access reader run over a forward-only stream (it seeks back at most one header), so the
same reader, with the same truncation check, serves local and remote shards. Errors on a remote
shard are retried by :meth:`ShardOpener.retry_wait`: at most `retries` times, after an exponential
backoff from `backoff_s` (capped, with jitter so that workers that failed together do not retry
together), at least as long as a Retry-After header asks, and never once `retry_budget_s` has passed
since the shard's first failure. A retry reopens the shard and passes over the samples already handed
on, so the stream is the same as without the fault and resume stays exact. Fetches that keep failing
for `outage_s` with no data arriving stop the run (rc3.data.shard_reading.FetchHealth). See
rc3.data.pipeline for the stages that use it.
"""
from __future__ import annotations

import glob
import gzip
import io
import math
import os
import random
import select
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urlparse

import braceexpand

# Schemes that name a remote shard (one letter would be a Windows drive, not a scheme).
DEFAULT_COMMANDS = {"s3": "pipe:aws s3 cp --only-show-errors {url} -"}
GOPEN_SCHEMES = ("pipe", "gs")
HTTP_SCHEMES = ("http", "https")
# Retry jitter: its own generator, so that retries never move the random state training is seeded with.
_JITTER = random.Random()


def shard_scheme(spec: str) -> str:
    """The scheme of a shard spec ('' for a local path)."""
    if spec.startswith("pipe:"):
        return "pipe"
    scheme = urlparse(spec).scheme
    return scheme if len(scheme) > 1 else ""


def is_remote(spec: str) -> bool:
    return shard_scheme(spec) not in ("", "file")


def local_path(spec: str) -> str:
    return urlparse(spec).path if shard_scheme(spec) == "file" else spec


def expand_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand brace patterns (and local globs) into a sorted list of shard specs.

    Local files must exist; remote URLs and `pipe:` commands are checked when opened."""
    patterns = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    out: list[str] = []
    for pattern in patterns:
        for name in braceexpand.braceexpand(os.fspath(pattern)):
            if is_remote(name):
                if shard_scheme(name) != "pipe" and glob.has_magic(urlparse(name).path):
                    raise ValueError(f"remote shard pattern {name!r} is a glob; list remote shards as a brace range, "
                                     f"e.g. s3://bucket/ds-{{000000..000127}}.tar")
                out.append(name)
                continue
            path = local_path(name)
            if glob.has_magic(path):
                hits = glob.glob(path)
                if not hits:
                    raise FileNotFoundError(f"shard pattern {name!r} matches no file")
                out.extend(hits)
            else:
                out.append(path)
    if not out:
        raise ValueError("no shards given")
    missing = [p for p in out if not is_remote(p) and not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) do not exist, e.g. {missing[:3]}; check the shard pattern")
    return sorted(set(out))


def parse_commands(items: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """`["s3=pipe:aws s3 cp {url} -", "gs=fsspec"]` (the run config's form) -> {scheme: command}."""
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            scheme, sep, command = str(item).partition("=")
            if not sep:
                raise ValueError(f"a shard command is SCHEME=COMMAND (e.g. 's3=pipe:aws s3 cp {{url}} -'), got {item!r}")
            pairs.append((scheme, command))
    out = {}
    for scheme, command in pairs:
        scheme, command = scheme.strip().lower(), command.strip()
        if not scheme.isidentifier():
            raise ValueError(f"shard command scheme {scheme!r} is not a URL scheme (s3, gs, http, ...)")
        if command != "fsspec" and not (command.startswith("pipe:") and "{url}" in command):
            raise ValueError(f"shard command for {scheme!r} must be 'fsspec' or 'pipe:...{{url}}...', got {command!r}")
        out[scheme] = command
    return out


@dataclass
class ShardOpener:
    """Opens shard specs as binary streams; holds the retry policy for remote ones (picklable).

    `read_timeout_s`: an http(s) shard that sends nothing for this long fails. `retries`, `backoff_s`,
    `backoff_max_s`, `retry_budget_s`: see :meth:`retry_wait`. `outage_s`: fetches failing without a
    break for this long stop the run (rc3.data.shard_reading)."""

    commands: dict[str, str] = field(default_factory=dict)
    retries: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    read_timeout_s: float = 60.0
    retry_budget_s: float = 120.0
    outage_s: float = 90.0

    def __post_init__(self) -> None:
        self.commands = {**DEFAULT_COMMANDS, **parse_commands(self.commands)}
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError(f"backoff times must be >= 0, got {self.backoff_s}, {self.backoff_max_s}")
        for name in ("read_timeout_s", "outage_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not (isinstance(self.retry_budget_s, (int, float)) and 0 <= self.retry_budget_s < math.inf):
            raise ValueError(f"retry_budget_s must be >= 0 seconds, got {self.retry_budget_s!r}")

    def backoff(self, attempt: int) -> float:
        """The longest wait before retry `attempt` (1, 2, ...): exponential, capped."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))

    def retry_wait(self, attempt: int, error: BaseException, first_failure: float) -> float | None:
        """Seconds to wait before retry `attempt` of a shard that first failed at `first_failure`
        (time.monotonic()), or None: give up on it. Retries stop after `retries`, at once for an
        error retrying cannot cure (an HTTP 404), and when the wait would end past `retry_budget_s`
        after the first failure. The wait is the backoff times a jitter in [0.5, 1] (workers hit by
        one fault do not retry in step), and at least what the server asked for (Retry-After)."""
        if attempt > self.retries or getattr(error, "permanent", False):
            return None
        wait = self.backoff(attempt) * _JITTER.uniform(0.5, 1.0)
        asked = getattr(error, "retry_after", None)
        if asked is not None:
            wait = max(wait, float(asked))
        if time.monotonic() + wait - first_failure > self.retry_budget_s:
            return None
        return wait

    def open(self, spec: str, timeout: float | None = None) -> BinaryIO:
        """A readable binary stream of the shard (a real file for a local one). `timeout` (an http(s)
        shard's read timeout) defaults to `read_timeout_s`."""
        scheme = shard_scheme(spec)
        if scheme in ("", "file"):
            return open(local_path(spec), "rb")
        import webdataset as wds  # imports torch: kept out of the config's import path

        command = self.commands.get(scheme)
        if command == "fsspec":
            import fsspec  # only needed when asked for

            return fsspec.open(spec, "rb").open()
        if command is not None:
            pipe = TimedPipe(wds.gopen(command.replace("{url}", shlex.quote(spec)), "rb"),
                             self.read_timeout_s if timeout is None else timeout)
            return pipe  # type: ignore[return-value]  # an io.RawIOBase, which typeshed does not count as a BinaryIO
        if scheme in HTTP_SCHEMES:
            from rc3.data.http_shards import open_http

            http = open_http(spec, self.read_timeout_s if timeout is None else timeout)
            return http  # type: ignore[return-value]  # an io.RawIOBase, which typeshed does not count as a BinaryIO
        if scheme in GOPEN_SCHEMES:
            stream = wds.gopen(spec, "rb")
            if getattr(stream, "proc", None) is not None:  # pipe: and webdataset's own command routes
                pipe = TimedPipe(stream, self.read_timeout_s if timeout is None else timeout)
                return pipe  # type: ignore[return-value]  # an io.RawIOBase, which typeshed does not count as a BinaryIO
            return stream
        raise ValueError(f"no way to open {spec!r}: set data.shard_commands, e.g. '{scheme}=pipe:mytool cat {{url}}' "
                         f"or '{scheme}=fsspec'")


def transport_failure(stream: BinaryIO, wait_s: float = 2.0) -> str | None:
    """After a read error: did the command behind a pipe stream fail (a dropped connection, a missing
    object)? Then the error is the transport's, not the shard's. Waits briefly for the command to
    exit; one still running is killed by the caller (see abort)."""
    proc = getattr(stream, "proc", None)
    if proc is None:
        return None
    try:
        status = proc.wait(timeout=wait_s)
    except Exception:  # still running: the stream itself broke (subprocess.TimeoutExpired)
        return None
    if status in getattr(stream, "ignore_status", [0]):
        return None
    pipe: Any = stream  # a stream with a `proc` is a pipe (webdataset's Pipe or TimedPipe): it has `args`
    return f"the command {pipe.args[0][0]!r} exited with status {status}"


def abort(stream: BinaryIO) -> None:
    """Close a stream read only in part: a pipe's command is killed first (it may be blocked on the
    network), so that closing does not wait for it; its exit status is then of no interest."""
    proc = getattr(stream, "proc", None)
    if proc is not None:
        try:
            proc.kill()
        except OSError:
            pass
        pipe: Any = stream  # a stream with a `proc` is a pipe (webdataset's Pipe or TimedPipe)
        pipe.ignore_errors = True
    try:
        stream.close()
    except OSError:
        pass


class TimedPipe(io.RawIOBase):
    """A `pipe:` command's stdout with a read timeout: no byte for `timeout` seconds kills the command
    and raises TimeoutError (an OSError: a counted fetch error, retried by our policy), so a command
    stuck on a silent server cannot hang the loader. webdataset's Pipe reads through a blocking
    buffered stream with no timeout, hence this wrapper (select on the pipe's descriptor, then one
    os.read of what is there). A command that exits non-zero raises OSError at end of stream, as
    webdataset's Pipe does. Exposes the Pipe's `proc`, `args`, `ignore_status` and `ignore_errors`
    for `transport_failure` and `abort`."""

    def __init__(self, pipe: Any, timeout: float) -> None:
        super().__init__()
        self.pipe, self.timeout = pipe, float(timeout)
        self.proc, self.args, self.ignore_status = pipe.proc, pipe.args, pipe.ignore_status
        self._fd = pipe.stream.fileno()

    @property
    def ignore_errors(self) -> bool:
        return bool(self.pipe.ignore_errors)

    @ignore_errors.setter
    def ignore_errors(self, value: bool) -> None:
        self.pipe.ignore_errors = value

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 (buffer protocol)
        ready, _, _ = select.select([self._fd], [], [], self.timeout)
        if not ready:
            self.proc.kill()
            self.pipe.ignore_errors = True
            raise TimeoutError(f"no byte for {self.timeout:g} s from the command {self.args[0][0]!r} "
                               "(data.shard_read_timeout_s)")
        data = os.read(self._fd, len(b))
        if not data:
            status = self.proc.wait()
            if status not in self.ignore_status and not self.pipe.ignore_errors:
                raise OSError(f"the command {self.args[0][0]!r} exited with status {status}")
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self.pipe.close()
            finally:
                super().close()


class SeekWindow(io.RawIOBase):
    """A forward-only stream made seekable within the last `window` bytes read.

    tarfile's random-access reader ("r:") only ever seeks forward, except by one block when the
    pipeline looks back at the end-of-archive block; forward seeks read and discard. Written by hand
    because neither webdataset nor the standard library offers it: webdataset's own tar reader gives
    no way to tell a shard cut at a member boundary from a complete one."""

    def __init__(self, raw: BinaryIO | io.BufferedIOBase, window: int = 1 << 16) -> None:
        super().__init__()
        self.raw, self.window = raw, window
        self.pos = 0  # logical position
        self.buf = bytearray()  # bytes [end - len(buf), end) of the stream
        self.end = 0  # bytes read from raw so far
        self.eof = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def _fill(self, upto: int, floor: int) -> None:
        """Read up to byte `upto`, keeping `window` bytes behind `floor` and everything after it."""
        while self.end < upto and not self.eof:
            chunk = self.raw.read(min(max(upto - self.end, 1), 1 << 20))
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
            self.end += len(chunk)
            keep = self.window + max(0, self.end - floor)
            if len(self.buf) > keep:
                del self.buf[: len(self.buf) - keep]

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            while not self.eof:
                self._fill(self.end + (1 << 20), self.pos)
            size = self.end - self.pos
        self._fill(self.pos + size, self.pos)
        start = self.pos - (self.end - len(self.buf))
        out = bytes(self.buf[start: start + size])
        self.pos += len(out)
        return out

    def readinto(self, b) -> int:  # noqa: ANN001 (buffer protocol)
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self.pos + offset}.get(whence)
        if target is None:
            raise OSError("a streamed shard cannot seek from its end")
        if target < self.end - len(self.buf):
            raise OSError(f"a streamed shard cannot seek back to byte {target} (window starts at "
                          f"{self.end - len(self.buf)})")
        self._fill(target, target)
        self.pos = min(target, self.end)
        return self.pos

    def close(self) -> None:
        self.buf = bytearray()
        super().close()


def stream_for_tar(raw: BinaryIO) -> SeekWindow:
    """A seek window over the shard's tar bytes, gunzipping a gzip stream (detected by its magic)."""
    win = SeekWindow(raw)
    if win.read(2) == b"\x1f\x8b":
        win.seek(0)
        return SeekWindow(gzip.GzipFile(fileobj=win, mode="rb"))
    win.seek(0)
    return win
