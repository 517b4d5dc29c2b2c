"""A pickled payload for the tests that check no checkpoint is ever unpickled with arbitrary globals.

`Payload(marker)`, once unpickled, runs a shell command that creates `marker`; `tamper(path, marker)` adds
one to a torch checkpoint the test itself wrote. Used by test_safe_load.py, test_add_language.py and the
DeepSpeed resume probe (ds_resume_probe.py, run in its own process from this folder).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


class Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: str | Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tamper(path: Path, marker: str | Path) -> None:
    """Add a Payload to the checkpoint at `path` (a dict gets a new key; anything else becomes a pair)."""
    state = torch.load(path, map_location="cpu", weights_only=False)  # the test's own fresh file
    if isinstance(state, dict):
        state["tampered"] = Payload(marker)
    else:
        state = (state, Payload(marker))
    torch.save(state, path)
