"""rc3.heap: the model's imports run with the cyclic collector paused and leave it as they found it, frozen objects
are out of later collections, and RC3_GC_FREEZE=0 leaves Python's default alone."""
from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import pytest
from procs import run_bounded

from rc3 import heap

REPO = Path(__file__).resolve().parents[1]


LAZY_MODEL_IMPORT = """
import gc, json, sys
import rc3
light = {"torch": "torch" in sys.modules, "frozen": gc.get_freeze_count()}
from rc3.modeling import RC3Model  # the package's lazy names import the model with the collector paused
print(json.dumps({"light": light, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}))
"""


def test_the_model_is_imported_with_the_collector_paused_and_frozen() -> None:
    """`import rc3` imports no torch and freezes nothing; the first model import (rc3.modeling's lazy
    names, what the commands use) leaves the collector on with torch's and transformers' objects frozen."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("RC3_GC_FREEZE", None)
    proc = run_bounded([sys.executable, "-c", LAZY_MODEL_IMPORT], timeout=300,
                       waiting_for="the process importing rc3.modeling.RC3Model", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.splitlines()[-1])
    assert state["light"] == {"torch": False, "frozen": 0}
    assert state["enabled"]
    assert state["frozen"] > 100_000  # torch, transformers and mBART's objects


def test_collector_paused_restores_the_previous_state_and_freezes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RC3_GC_FREEZE", raising=False)
    assert gc.isenabled()
    before = gc.get_freeze_count()
    with heap.collector_paused():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]  # tracked containers made while paused
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)
    gc.disable()
    try:
        with heap.collector_paused():
            pass
        assert not gc.isenabled()  # a collector the caller had turned off stays off
    finally:
        gc.enable()


def test_rc3_gc_freeze_0_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RC3_GC_FREEZE", "0")
    made = [[i] for i in range(1000)]  # tracked and not frozen: a freeze would add all of them
    before = gc.get_freeze_count()  # may only shrink meanwhile (frozen objects that are freed leave the count)
    with heap.collector_paused():
        assert gc.isenabled()
    assert heap.freeze_long_lived() == 0
    assert gc.get_freeze_count() < before + len(made)


def test_freeze_long_lived_collects_garbage_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RC3_GC_FREEZE", raising=False)

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    import weakref

    ref = weakref.ref(a)
    del a, b
    total = heap.freeze_long_lived()
    assert ref() is None  # collected, not frozen forever
    # Nothing joins the permanent generation without another freeze, but frozen objects can still be freed
    # between the two reads (another thread of the process can free its own; seen once under pytest -n 3:
    # 1,054,279 returned, 1,054,277 read next): the count can only have fallen.
    assert 0 < gc.get_freeze_count() <= total
