"""Running a command from a test: bounded in time, and saying what was waiting when the bound fires.

A test that starts a process (a tool, a recipe, a training run) must not hang a CI job on a loaded
machine, nor fail with a bare TimeoutExpired that does not say which command it was. `run_bounded` is
`subprocess.run(..., capture_output=True, text=True)` with a timeout, whose expiry becomes an
AssertionError naming the command, what the test was waiting for, and the last lines it printed.
"""
from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any


def _tail(out: str | bytes | None, n: int = 2000) -> str:
    if out is None:
        return ""
    if isinstance(out, bytes):
        out = out.decode("utf-8", "replace")
    return out[-n:]


def run_bounded(cmd: Sequence[str], *, timeout: float, waiting_for: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)`; when the timeout
    fires (the child is killed by subprocess.run), raise an AssertionError that says what was waiting."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{waiting_for}: no result within {timeout:g} s from `{' '.join(map(str, cmd))}`; "
            f"its last output:\nstdout: {_tail(exc.stdout)}\nstderr: {_tail(exc.stderr)}") from None
