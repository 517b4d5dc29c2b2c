"""rc3.heap: imports run with the cyclic collector paused and leave it as they found it, frozen objects
are out of later collections, and RC3_GC_FREEZE=0 leaves Python's default alone."""
from __future__ import annotations

import gc

import pytest

from rc3 import heap


def test_importing_rc3_leaves_the_collector_on_with_its_imports_frozen() -> None:
    import rc3  # noqa: F401  (imported by conftest's fixtures already; the state it left is what counts)

    assert gc.isenabled()
    assert gc.get_freeze_count() > 100_000  # torch, transformers and mBART's objects


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
    assert total == gc.get_freeze_count() > 0
