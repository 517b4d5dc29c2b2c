"""Keep DeepSpeed's just-in-time kernels in this Python environment, not in a per-user cache.

DeepSpeed compiles its C++/CUDA ops (shared-memory all-reduce on CPU ranks, CPU Adam, FusedAdam)
through torch's extension loader, which caches them under ``$TORCH_EXTENSIONS_DIR`` or else
``~/.cache/torch_extensions``. A cache entry is keyed by the op's name only, while its build files
name one environment's torch and include paths: two virtual environments on one machine then
rebuild each other's kernels on every switch (minutes each, with every rank of a job queued on the
cache's lock meanwhile), or load a kernel built against another torch.

``use_environment_extension_dir()`` points the cache at ``<sys.prefix>/torch_extensions`` unless the
user chose a directory. Every entry point that may build or load an op calls it before DeepSpeed
does: ``rc3.tools.build_ops`` (the ahead-of-time build), ``rc3.distributed.init_from_launcher`` (the
shared-memory op of every CPU launch), pretraining's set-up in ``rc3.pretrain.loop`` (before DeepSpeed
is imported) and ``rc3.pretrain.engine.build_optimizer`` (CPU Adam, FusedAdam).
Child processes (the ranks of a launch, data workers) inherit the variable.

Older torch loaders (``FileBaton``) wait while ``<op>/lock`` merely exists, so a build that was killed
(Ctrl-C, a timeout) left a lock on which every later run waited forever without a word;
``use_environment_extension_dir`` names such a lock on stderr. Newer ones hold an OS lock on that file
(``FileLock``), which the kernel frees when its holder dies, and leave the file behind after every
build: there a lock file is harmless and nothing is said.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

VARIABLE = "TORCH_EXTENSIONS_DIR"
# A kernel builds in 1-2 minutes on two cores; a lock this old belongs to a build that was killed.
STALE_LOCK_S = 600.0


def environment_extension_dir() -> Path:
    """Where this environment's kernels are cached when the user has not chosen: inside sys.prefix."""
    return Path(sys.prefix) / "torch_extensions"


def use_environment_extension_dir() -> str | None:
    """Set TORCH_EXTENSIONS_DIR to this environment's cache unless it is set; returns the value in force.

    Only inside a virtual (or conda) environment that this user may write: a system interpreter's
    prefix (/usr) is shared by everyone and not ours to fill, so there torch's per-user default stays.
    """
    if os.environ.get(VARIABLE):
        warn_stale_locks(Path(os.environ[VARIABLE]))
        return os.environ[VARIABLE]
    prefix = Path(sys.prefix)
    own_environment = sys.prefix != sys.base_prefix or os.environ.get("CONDA_PREFIX") == sys.prefix
    if not own_environment or not os.access(prefix, os.W_OK):
        return None
    os.environ[VARIABLE] = str(environment_extension_dir())
    warn_stale_locks(environment_extension_dir())
    return os.environ[VARIABLE]


def loader_waits_on_lock_files() -> bool:
    """True when torch's extension loader waits while a lock file exists (FileBaton); False when it holds
    an OS lock on the file instead (FileLock: a file left behind blocks nobody)."""
    from torch.utils import cpp_extension  # the callers are about to load DeepSpeed, which imports it

    return not hasattr(cpp_extension, "FileLock")


def stale_locks(cache: Path, max_age_s: float = STALE_LOCK_S) -> list[tuple[Path, float]]:
    """Build locks under `cache` (<cache>/<op>/lock) older than `max_age_s`, with their age in s; none when
    torch's loader does not wait on lock files (`loader_waits_on_lock_files`)."""
    locks = sorted(cache.glob("*/lock"))
    if not locks or not loader_waits_on_lock_files():  # torch is imported only when there is a lock to judge
        return []
    now = time.time()
    found = []
    for lock in locks:
        try:
            age = now - lock.stat().st_mtime
        except FileNotFoundError:  # the build finished while we looked
            continue
        if age > max_age_s:
            found.append((lock, age))
    return found


def warn_stale_locks(cache: Path, max_age_s: float = STALE_LOCK_S) -> list[Path]:
    """One line on stderr per stale lock: torch would wait on it forever, silently."""
    found = stale_locks(cache, max_age_s)
    for lock, age in found:
        print(f"rc3: kernel build lock {lock} is {age / 60:.0f} min old (an interrupted build); DeepSpeed will wait on "
              f"it forever: if no build is running, remove it (rm {lock})", file=sys.stderr, flush=True)
    return [lock for lock, _ in found]
