"""The generic configuration engine: typed dataclasses from YAML, dotted overrides, strict validation.

What every run config shares, whatever its schema: `read_config_yaml` (a YAML mapping, with `base:`
inheritance), `apply_overrides` (`--set key.path=value`, values parsed as YAML), `from_dict` (a
dataclass from a mapping, every value type-checked, unknown keys named), `RegistrySection` (a section
part of whose keys come from a registry), `import_plugins` (the modules a config's `plugins:` names,
which register records of their own), `save_config` and `ConfigError`. Every error is raised before
any work starts and names the offending key, e.g.
``config error: model.visual_mode: 'grid' is not one of roi, patch, combined``.

The schemas live beside their code: `rc3.modeling.config` (the model), `rc3.data.config` (the data
section), `rc3.pretrain.config` (the pretraining run: `RC3Config`, `load_config`), `rc3.finetune.config`.
This module imports neither torch nor any of them.

    cfg = rc3.pretrain.config.load_config("configs/synthetic-tiny.yaml", overrides=["model.d_model=64"])
    save_config(cfg, run_dir / "config.yaml")
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence, cast

import yaml

from rc3 import atomic

__all__ = ["ConfigError", "RegistrySection", "import_plugins", "from_dict", "to_dict", "set_dotted", "parse_override",
           "apply_overrides", "merge_dicts", "read_config_yaml", "save_config"]


class ConfigError(ValueError):
    """A configuration problem, with the dotted key it concerns."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config error: {key}: {message}")


class RegistrySection:
    """A config section part of whose keys come from a registry: `objectives.<name>` for every registered
    objective, `data.<corpus>_shards` / `data.<corpus>_sources` for every registered corpus.

    The dataclass written below holds the keys of its own; `resolved()` is that class extended with the
    registry's keys (rebuilt when the registry changes). Constructing the written class gives an instance
    of the resolved one, so `ObjectivesConfig()` has every objective's section."""

    _resolved_cache: ClassVar[dict[int, type]]  # per written class (set in its own __dict__ by resolved())

    @classmethod
    def registry_fields(cls) -> list[tuple[str, Any, Any]]:
        raise NotImplementedError

    @classmethod
    def registry_version(cls) -> int:
        raise NotImplementedError

    @classmethod
    def registry_defaults(cls, data: dict) -> dict:
        """`data` (the section as written) with what its registered records default to filled in."""
        return data

    @classmethod
    def resolved(cls) -> type:
        if cls.__dict__.get("_registry_extension"):
            return cls
        version = cls.registry_version()  # first, so that the built-in records are registered
        cache = cls.__dict__.get("_resolved_cache")
        if cache is None:
            cache = {}
            cls._resolved_cache = cache
        if version not in cache:
            ext = dataclasses.make_dataclass(cls.__name__, cls.registry_fields(), bases=(cls,),
                                             namespace={"_registry_extension": True, "__doc__": cls.__doc__})
            ext.__module__ = cls.__module__
            cache[version] = ext
        return cache[version]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(cls.resolved())

    def __reduce__(self) -> Any:  # the resolved class is not importable by name: rebuild from plain values
        base = next(c for c in type(self).__mro__ if not c.__dict__.get("_registry_extension"))
        # An instance is always of the resolved class, a dataclass (__new__ above).
        return (_rebuild_section, (base, dataclasses.asdict(cast(Any, self))))


def _rebuild_section(base: type, values: dict) -> Any:
    return from_dict(base, values)


def import_plugins(modules: Any, key: str = "plugins") -> list[str]:
    """Import the modules a config's `plugins:` list names (each registers its objectives, corpora, visual
    front ends or downstream tasks), before the rest of the config is read: their config keys exist then.
    A module that cannot be imported is a ConfigError naming it."""
    if modules is None:
        return []
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ConfigError(key, f"expected a list of module names (e.g. [mypkg.my_objective]), got {modules!r}")
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as err:  # any failure while importing a plugin is the config's problem to name
            raise ConfigError(f"{key}", f"cannot import {module!r} ({type(err).__name__}: {err}); put its package on "
                                        "PYTHONPATH or remove it from the list") from None
    return list(modules)


# ---- generic dataclass <-> dict with type checking ------------------------------------------------

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(key, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and issubclass(tp, RegistrySection):
            tp = tp.resolved()
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return [_convert(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-5" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        return value
    raise ConfigError(key, f"unsupported type {tp}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """A config dataclass from a plain mapping, every value type-checked; unknown keys are errors naming
    the known ones. `prefix` is the dotted path of `data` in the whole config (for messages)."""
    if isinstance(cls, type) and issubclass(cls, RegistrySection):
        data = cls.registry_defaults(data)
        cls = cls.resolved()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(f"{prefix}.{k}" if prefix else k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """data[a][b][c] = value for dotted "a.b.c", creating sections on the way."""
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, f"{p} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as YAML, so 64 is an int, true a bool, [en, de] a list)."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(key, f"cannot parse value {raw!r}: {err}") from None
    return key.strip(), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """A deep copy of `data` (through plain YAML types) with each `key.path=value` override set."""
    data = yaml.safe_load(yaml.safe_dump(data or {}))
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return data


def merge_dicts(base: dict, top: dict) -> dict:
    """`top` over `base`, recursively for nested mappings (lists and scalars are replaced)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config as a mapping. A top-level `base: OTHER.yaml` (relative to this file) is read first
    and this file's keys are merged over it, so a variant names only what it changes."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--config" if not _seen else f"{_seen[-1]}: base", f"no such file {p}")
    if p.resolve() in _seen:
        raise ConfigError(f"{_seen[-1]}: base", f"{p} is already being read (a cycle of base configs)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError("--config", f"{p} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{p} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: base", f"expected a path to another config, got {base!r}")
    return merge_dicts(read_config_yaml(p.parent / base, (*_seen, p.resolve())), data)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write a resolved config (a dataclass) as YAML, atomically (temp file + rename)."""
    return atomic.write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
