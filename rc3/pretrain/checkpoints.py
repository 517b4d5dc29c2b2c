"""Complete-or-nothing checkpoints of a DeepSpeed run, with per-rank RNG and data positions.

Layout under `run_dir/checkpoints/`:

    step_00000100/            DeepSpeed's files for this tag (every rank writes its ZeRO partition)
        rng_rank00000.safetensors   each rank's RNG states (DeepSpeed does not save them)
        data_rank00000.json         each rank's data-stream position and skip counts
        COMPLETE                    written by rank 0 after a barrier: every rank has finished; holds
                                    the manifest: each file of the tag, its size and SHA-256
    latest                    names the newest complete tag; replaced atomically after COMPLETE

DeepSpeed's own `latest` is turned off (it is written before every rank has finished). A kill
at any point leaves `latest` naming a complete checkpoint (or absent), so `--resume` never loads
half a checkpoint; a tag without COMPLETE is ignored and, when `latest` itself points at one (an
older version's file), the newest complete tag is used instead. Only the last `keep_last` complete
tags are kept, and the newest complete one is never deleted.

`--resume` (and tools/zero_to_safetensors.py) verify a tag against its manifest before reading it
(rc3.pretrain.checkpoint_manifest): a file that is missing, of another size or other contents makes
them warn in one line naming the file and fall back to the newest intact complete tag, on every rank
alike. A COMPLETE without a manifest (written before manifests existed) is trusted as it was then,
with a warning that it cannot be verified: refusing it would strand every older run, and the DeepSpeed
files of such a tag are still read weights-only (rc3.safe_load).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from rc3 import atomic, fault_injection, rng, safe_load
from rc3 import distributed as comm
from rc3.pretrain import checkpoint_manifest
from rc3.pretrain.preemption import Preemption

log = logging.getLogger("rc3.checkpoint")
TAG_RE = re.compile(r"^step_(\d{8})$")
COMPLETE = "COMPLETE"
LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


class CheckpointError(RuntimeError):
    pass


@dataclass
class Resumed:
    tag: str
    step: int
    client_state: dict[str, Any]
    data_state: dict[str, Any]


def _write_atomic(path: Path, text: str) -> None:
    atomic.write_text(path, text, fsync=True)


class CheckpointManager:
    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 3) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    # ---- queries ---------------------------------------------------------------------------
    def complete_tags(self) -> list[str]:
        """Complete tags, oldest first."""
        if not self.dir.is_dir():
            return []
        tags = [p.name for p in self.dir.iterdir() if TAG_RE.match(p.name) and (p / COMPLETE).is_file()]
        return sorted(tags)

    def has_any(self) -> bool:
        return self.dir.is_dir() and any(TAG_RE.match(p.name) for p in self.dir.iterdir())

    def newest_complete(self) -> str | None:
        """The newest complete tag: the one `latest` names when it is complete, else the newest tag with
        COMPLETE (a warning says so), else None. The one rule for finding a checkpoint: `--resume` and
        the conversion tools (tools/zero_to_safetensors.py) both use it."""
        complete = self.complete_tags()
        latest = self.dir / LATEST
        named = latest.read_text().strip() if latest.is_file() else None
        if named and named in complete:
            return named
        if complete:
            if named:
                log.warning("%s names %s, which is not complete; using %s instead", latest, named, complete[-1])
            return complete[-1]
        return None

    def incomplete_tags(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if TAG_RE.match(p.name) and not (p / COMPLETE).is_file()) \
            if self.dir.is_dir() else []

    def problems(self, tag: str) -> list[checkpoint_manifest.Problem] | None:
        """The files of `tag` that differ from its manifest ([] when intact), or None when its COMPLETE
        holds no manifest (written before manifests). A collective when a process group exists."""
        try:
            meta = json.loads((self.dir / tag / COMPLETE).read_text())
        except (OSError, ValueError) as err:
            return [checkpoint_manifest.Problem(COMPLETE, f"is not readable JSON ({type(err).__name__})")]
        files = meta.get("files")
        if files is None:
            return None
        return checkpoint_manifest.verify(self.dir / tag, files)

    def newest_intact(self, warn: Callable[[str], None] | None = None) -> str | None:
        """The tag a resume reads: `newest_complete()` when it matches its manifest, else the newest older
        complete tag that does, each damaged one reported through `warn` in one line naming its first
        bad file (rank 0 warns; every rank takes the same decision). None when no complete tag is intact."""
        warn = warn if warn is not None else (log.warning if comm.get_rank() == 0 else (lambda _: None))
        complete = self.complete_tags()
        first = self.newest_complete()
        candidates = [t for t in reversed(complete) if first is None or t <= first]
        for i, tag in enumerate(candidates):
            found = self.problems(tag)
            if found is None:
                warn(f"checkpoint {self.dir / tag} has no file manifest (written by an older version); "
                     "its files cannot be verified, using it as it is")
                return tag
            if not found:
                return tag
            fallback = next(iter(candidates[i + 1:]), None)
            more = f" (and {len(found) - 1} more file(s))" if len(found) > 1 else ""
            warn(f"checkpoint {self.dir / tag} is damaged: {found[0]}{more}; "
                 + (f"falling back to {fallback}" if fallback else "no older complete checkpoint to fall back to"))
        return None

    def resume_tag(self) -> str:
        """The tag `--resume` continues from (the newest intact complete one), or a CheckpointError saying
        why there is none."""
        tag = self.newest_intact()
        if tag is not None:
            return tag
        if self.complete_tags():
            raise CheckpointError(f"--resume: every complete checkpoint in {self.dir} is damaged (see the warnings "
                                  "above); restore the named files or start a new run in a new run_dir")
        raise CheckpointError(
            f"--resume: no complete checkpoint in {self.dir}"
            + (f" ({len([p for p in self.dir.iterdir() if TAG_RE.match(p.name)])} incomplete tag(s) ignored)" if self.dir.is_dir() else "")
            + "; run without --resume to start a new run (in a new run_dir)")

    # ---- save ------------------------------------------------------------------------------
    def save(self, engine: Any, step: int, client_state: dict[str, Any], data_state: dict[str, Any]) -> str:
        """Every rank calls this. Returns the tag once it is complete and published."""
        tag = tag_for(step)
        rank, world = comm.get_rank(), comm.get_world_size()
        path = self.dir / tag
        if rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if (path / COMPLETE).exists():  # re-saving a step (e.g. SIGTERM right after a save): start clean
                (path / COMPLETE).unlink()
        comm.barrier()
        engine.save_checkpoint(str(self.dir), tag=tag, client_state={**client_state, "step": step, "world_size": world},
                               save_latest=False)
        fault_injection.maybe_crash_in_save(step, rank)
        fault_injection.maybe_stall_in_save(step, rank)
        rng.save(path / f"rng_rank{rank:05d}.safetensors")
        _write_atomic(path / f"data_rank{rank:05d}.json", json.dumps(data_state))
        comm.barrier()  # every rank's part is on disk
        files = checkpoint_manifest.build(path, exclude=frozenset({COMPLETE}))  # every rank hashes a share
        if rank == 0:
            _write_atomic(path / COMPLETE, json.dumps({"step": step, "world_size": world, "time": time.time(),
                                                       "files": files}))
            _write_atomic(self.dir / LATEST, tag + "\n")
            self._prune(keep=tag)
        comm.barrier()
        return tag

    def _prune(self, keep: str) -> None:
        complete = self.complete_tags()
        doomed = complete[: max(0, len(complete) - self.keep_last)]
        # incomplete tags older than the newest complete one are leftovers of killed saves
        doomed += [p.name for p in self.dir.iterdir()
                   if TAG_RE.match(p.name) and p.name not in complete and p.name < complete[-1]]
        for tag in doomed:
            if tag != keep and tag != complete[-1]:
                shutil.rmtree(self.dir / tag, ignore_errors=True)

    # ---- load ------------------------------------------------------------------------------
    def load(self, engine: Any, tag: Optional[str] = None, restore_rng: bool = True) -> Resumed:
        tag = tag or self.resume_tag()
        path = self.dir / tag
        meta = json.loads((path / COMPLETE).read_text())
        rank, world = comm.get_rank(), comm.get_world_size()
        if meta["world_size"] != world:
            raise CheckpointError(f"{path} was written by {meta['world_size']} ranks, this run has {world}; "
                                  "resume with the same number of ranks (or convert it with "
                                  "tools/zero_to_safetensors.py and start a new run from the model directory)")
        # DeepSpeed unpickles its state files with weights_only=False: read them weights-only instead
        # (rc3.safe_load), so a tampered file is refused, naming it, before anything in it runs
        try:
            with safe_load.weights_only_loading():
                loaded, client = engine.load_checkpoint(str(self.dir), tag=tag, load_optimizer_states=True,
                                                        load_lr_scheduler_states=True)
        except safe_load.UnsafeCheckpointError as err:
            raise CheckpointError(str(err)) from None
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load {path}")
        if restore_rng:
            rng.load(path / f"rng_rank{rank:05d}.safetensors")
        data_state = json.loads((path / f"data_rank{rank:05d}.json").read_text())
        return Resumed(tag, int(meta["step"]), client or {}, data_state)


class Checkpointer:
    """Decides when a run saves: every `save_every` steps, when any rank was sent SIGTERM (then the run
    stops), and at the end. `state` returns what goes with the weights: the client state (p_avg trackers)
    and this rank's data position."""

    def __init__(self, manager: CheckpointManager, engine: Any, save_every: int, total_steps: int,
                 state: Callable[[], tuple[dict[str, Any], dict[str, Any]]], on_saved: Callable[[str, int], None]) -> None:
        self.manager, self.engine = manager, engine
        self.save_every, self.total_steps = save_every, total_steps
        self.state, self.on_saved = state, on_saved
        self.preemption: Optional[Preemption] = None
        self.newest: Optional[str] = None  # the newest complete checkpoint's directory, for the SIGTERM line

    @property
    def stop_requested(self) -> bool:
        return self.preemption is not None and self.preemption.requested

    def listen_for_sigterm(self, grace_s: float, step: int) -> None:
        """A scheduler's SIGTERM (pre-emption, a time limit) asks for a checkpoint at the end of the step;
        when no step ends within `grace_s` the process says why and exits (rc3.pretrain.preemption).
        `step`: the step the run starts from."""
        tag = self.manager.newest_complete()
        self.newest = str(self.manager.dir / tag) if tag else None
        self.preemption = Preemption(grace_s, lambda: self.newest)
        self.preemption.boundary(step)
        self.preemption.install()

    def after_step(self, step: int) -> bool:
        """Save when one is due; True when the run must stop now (SIGTERM on some rank, checkpoint saved)."""
        if self.preemption is not None:
            self.preemption.boundary(step)
        if comm.any_rank(self.stop_requested):  # every rank stops at the same step, or none does
            tag = self.save(step)
            if self.preemption is not None:
                self.preemption.checkpoint_saved(tag)
            return True
        if step % self.save_every == 0 and step < self.total_steps:  # the last step is saved by the caller
            self.save(step)
        return False

    def save(self, step: int) -> str:
        client, data = self.state()
        tag = self.manager.save(self.engine, step, client, data)
        self.newest = str(self.manager.dir / tag)
        self.on_saved(tag, step)
        return tag
