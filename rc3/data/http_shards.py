"""Reading http(s) shards in-process, with a read timeout, and the errors a retry policy needs.

Why not webdataset's `gopen` (a `curl` subprocess): curl is given only a connect timeout and retries
by its own policy (30 tries, 2 s apart), so a server that accepts the connection and then sends
nothing blocks the reader forever, and a failing shard costs minutes before the pipeline even sees
an error. Reading the response here puts both under the run's settings: every socket operation
(connect, status line, each body read) fails after `timeout` seconds without a byte, and the caller
(rc3.data.shard_reading) decides on retries (rc3.data.shard_source.ShardOpener.retry_wait). The
standard library's client is used (urllib.request: redirects, https, proxy variables), so nothing
is added to the dependencies.

Every transport fault surfaces as :class:`ShardFetchError` (an OSError): the connection refused or
dropped mid-body (fewer bytes than Content-Length), no data within the timeout, an HTTP error
status. It says whether retrying can help (`permanent`: 4xx other than 408/425/429) and how long the
server asked to wait (`retry_after`, from a Retry-After header in seconds or as an HTTP date).
"""
from __future__ import annotations

import email.utils
import http.client
import io
import socket
import time
import urllib.error
import urllib.request
from typing import Optional

# Client errors that a later try can cure: request timeout, too early, too many requests.
RETRYABLE_4XX = frozenset({408, 425, 429})


class ShardFetchError(OSError):
    """A remote shard did not arrive (whole); `permanent` when retrying cannot help."""

    def __init__(self, message: str, retry_after: Optional[float] = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a Retry-After header ("120" or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpShardStream(io.RawIOBase):
    """The body of one response; a short body or a silent server raises ShardFetchError."""

    def __init__(self, url: str, response: http.client.HTTPResponse, timeout: float) -> None:
        super().__init__()
        self.url, self.response, self.timeout = url, response, timeout
        length = response.getheader("Content-Length")
        self.length = int(length) if length is not None and length.isdigit() else None
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 (buffer protocol)
        try:
            n = self.response.readinto(b)
        except TimeoutError:
            raise ShardFetchError(f"no data for {self.timeout:.3g} s after {self.received} bytes "
                                  f"(data.shard_read_timeout_s)") from None
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise ShardFetchError(f"connection broken after {self.received} bytes ({type(exc).__name__}: {exc})") \
                from None
        if n == 0 and len(b) and self.length is not None and self.received < self.length:
            # http.client returns b"" when the server closes early; only its read() without a size checks
            raise ShardFetchError(f"connection closed after {self.received} of {self.length} bytes")
        self.received += n
        return n

    def close(self) -> None:
        if not self.closed:
            self.response.close()
        super().close()


def open_http(url: str, timeout: float) -> HttpShardStream:
    """GET `url`; the body as a stream. Raises ShardFetchError for every transport fault."""
    request = urllib.request.Request(url, headers={"User-Agent": "rc3-shard-reader", "Accept-Encoding": "identity"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) only: caller's scheme check)
    except urllib.error.HTTPError as err:
        retry_after = parse_retry_after(err.headers.get("Retry-After") if err.headers else None)
        err.close()
        permanent = 400 <= err.code < 500 and err.code not in RETRYABLE_4XX
        raise ShardFetchError(f"HTTP {err.code} {err.reason}", retry_after, permanent) from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise ShardFetchError(f"no connection within {timeout:.3g} s (data.shard_read_timeout_s)") from None
        raise ShardFetchError(f"cannot connect ({reason})") from None
    except TimeoutError:
        raise ShardFetchError(f"no response for {timeout:.3g} s after connecting (data.shard_read_timeout_s)") from None
    except (http.client.HTTPException, ConnectionError, OSError) as exc:
        raise ShardFetchError(f"no valid response ({type(exc).__name__}: {exc})") from None
    return HttpShardStream(url, response, timeout)
