"""Registries: each concept of the framework declared once, as a named record, and found by name.

A pretraining objective, a corpus, a stream of pretraining batches, a visual front end and a
downstream task are each one record in one `Registry`. Everything that used to keep a parallel list
of them (config validation, the data streams, the loss loop, p_avg trackers, the recipes' command
line) reads the registry instead.

A record lives where the thing it describes is defined, and registers itself when its module is
imported. A registry finds its built-in records by importing its package and every module in it
(`packages`, as timm finds its models), so adding one is one new file in that package; a record
defined outside rc3 is one module named in the run config's `plugins:` list (rc3.config.import_plugins).
`Registry.temporarily` registers a record for the duration of a `with` block.
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Records of one kind by name, in registration order (the order losses and streams run in).

    `packages`: the packages whose modules register the built-in records; they are imported on the
    first look at the registry's contents (their modules may import torch: a registry module itself
    stays light)."""

    def __init__(self, kind: str, packages: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.packages = packages
        self._records: dict[str, T] = {}
        self._version = 0  # bumped on every change: caches derived from the registry key on it
        self._discovered = not packages

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True  # first: the modules imported below look at this registry as they register
        try:
            for package in self.packages:
                module = importlib.import_module(package)
                for info in pkgutil.iter_modules(getattr(module, "__path__", []), package + "."):
                    importlib.import_module(info.name)
        except BaseException:
            self._discovered = False
            raise

    @property
    def version(self) -> int:
        self._discover()
        return self._version

    def register(self, record: T, *, replace: bool = False) -> T:
        self._discover()  # the built-ins first, whoever registers first: registration order is run order
        name = record.name
        if not name or not name.isidentifier():
            raise ValueError(f"a {self.kind} name must be a Python identifier (it names a config key), got {name!r}")
        if name in self._records and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._records[name] = record
        self._version += 1
        return record

    def unregister(self, name: str) -> None:
        self.get(name)
        del self._records[name]
        self._version += 1

    @contextlib.contextmanager
    def temporarily(self, record: T) -> Iterator[T]:
        """Register `record` inside the block only."""
        self.register(record)
        try:
            yield record
        finally:
            self.unregister(record.name)

    def get(self, name: str) -> T:
        self._discover()
        try:
            return self._records[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self._records) or 'none'}") from None

    def names(self) -> list[str]:
        self._discover()
        return list(self._records)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._records

    def __iter__(self) -> Iterator[T]:
        self._discover()
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        self._discover()
        return len(self._records)
