"""Registries: each concept of the framework declared once, as a named record, and found by name.

A pretraining objective, a corpus, a task stream, a visual front end and a downstream task are
each one record in one `Registry`. Everything that used to keep a parallel list of them (config
validation, the data streams, the loss loop, p_avg trackers, the test harness, the recipes'
command line) reads the registry instead, so adding one is one new file that registers it plus
its config. `Registry.temporarily` registers a record for the duration of a `with` block (tests
register their toy objectives and corpora that way, never at import time).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Records of one kind by name, in registration order (the order losses and streams run in)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._records: dict[str, T] = {}
        self.version = 0  # bumped on every change: caches derived from the registry key on it

    def register(self, record: T, *, replace: bool = False) -> T:
        name = record.name
        if not name or not name.isidentifier():
            raise ValueError(f"a {self.kind} name must be a Python identifier (it names a config key), got {name!r}")
        if name in self._records and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._records[name] = record
        self.version += 1
        return record

    def unregister(self, name: str) -> None:
        self.get(name)
        del self._records[name]
        self.version += 1

    @contextlib.contextmanager
    def temporarily(self, record: T) -> Iterator[T]:
        """Register `record` inside the block only."""
        self.register(record)
        try:
            yield record
        finally:
            self.unregister(record.name)

    def get(self, name: str) -> T:
        try:
            return self._records[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self._records) or 'none'}") from None

    def names(self) -> list[str]:
        return list(self._records)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)
