"""Complete-or-nothing checkpoints of a DeepSpeed run, with per-rank RNG and data positions.

Layout under `run_dir/checkpoints/`:

    step_00000100/            DeepSpeed's files for this tag (every rank writes its ZeRO partition)
        rng_rank00000.safetensors   each rank's RNG states (DeepSpeed does not save them)
        data_rank00000.json         each rank's data-stream position and skip counts
        COMPLETE                    written by rank 0 after a barrier: every rank has finished
    latest                    names the newest complete tag; replaced atomically after COMPLETE

DeepSpeed's own `latest` is turned off (it is written before every rank has finished). A kill
at any point leaves `latest` naming a complete checkpoint (or absent), so `--resume` never loads
half a checkpoint; a tag without COMPLETE is ignored and, when `latest` itself points at one (an
older version's file), the newest complete tag is used instead. Only the last `keep_last` complete
tags are kept, and the newest complete one is never deleted.
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

from rc3 import atomic, rng, safe_load
from rc3 import distributed as comm
from rc3.pretrain import fault_injection
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

    def resume_tag(self) -> str:
        """The tag `--resume` continues from, or a CheckpointError saying why there is none."""
        tag = self.newest_complete()
        if tag is not None:
            return tag
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
        rng.save(path / f"rng_rank{rank:05d}.safetensors")
        _write_atomic(path / f"data_rank{rank:05d}.json", json.dumps(data_state))
        comm.barrier()  # every rank's part is on disk
        if rank == 0:
            _write_atomic(path / COMPLETE, json.dumps({"step": step, "world_size": world, "time": time.time()}))
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
