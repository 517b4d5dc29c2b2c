"""Checkpoints of a DeepSpeed run, with per-rank RNG and data positions, in the checkpoint directory
every loop shares (rc3.checkpoints.store: tags, COMPLETE with its manifest, `latest`, pruning, the
newest intact tag).

Inside a tag under `run_dir/checkpoints/`:

    step_00000100/            DeepSpeed's files for this tag (every rank writes its ZeRO partition)
        rng_rank00000.safetensors   each rank's RNG states (DeepSpeed does not save them)
        data_rank00000.json         each rank's data-stream position and skip counts
        flat_params.json            with perf.flat_params: which named tensors each flat tensor holds
        COMPLETE                    written by rank 0 after every rank has finished, with the manifest

DeepSpeed's own `latest` is turned off (it is written before every rank has finished); the store's
`latest` is written after COMPLETE. DeepSpeed writes into the tag directory itself, so the tag is
written in place (a tag without COMPLETE is ignored). `--resume` (and tools/zero_to_safetensors.py)
read the newest intact complete tag; DeepSpeed's files are read weights-only (rc3.safe_load).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rc3 import atomic, fault_injection, rng, safe_load
from rc3 import distributed as comm
from rc3.checkpoints.store import COMPLETE, LATEST, TAG_RE, CheckpointError, CheckpointStore, tag_for
from rc3.pretrain.flat_params import LAYOUT_FILE, FlatParameters
from rc3.pretrain.preemption import Preemption

log = logging.getLogger("rc3.checkpoint")

__all__ = ["COMPLETE", "LATEST", "TAG_RE", "CheckpointError", "CheckpointManager", "Checkpointer", "Resumed", "tag_for"]


@dataclass
class Resumed:
    tag: str
    step: int
    client_state: dict[str, Any]
    data_state: dict[str, Any]


class CheckpointManager(CheckpointStore):
    """The checkpoints of a pretraining run (`run_dir/checkpoints`): DeepSpeed engine state per tag."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 3) -> None:
        super().__init__(os.path.join(run_dir, "checkpoints"), keep_last)

    # ---- save ------------------------------------------------------------------------------
    def save(self, engine: Any, step: int, client_state: dict[str, Any], data_state: dict[str, Any]) -> str:
        """Every rank calls this. Returns the tag once it is complete and published."""
        tag = tag_for(step)
        rank, world = comm.get_rank(), comm.get_world_size()
        path = self.begin(tag)
        engine.save_checkpoint(str(self.dir), tag=tag, client_state={**client_state, "step": step, "world_size": world},
                               save_latest=False)
        fault_injection.maybe_crash_in_save(step, rank)
        fault_injection.maybe_stall_in_save(step, rank)
        if rank == 0 and isinstance(getattr(engine, "module", None), FlatParameters):  # perf.flat_params: the partitions' layout
            atomic.write_text(path / LAYOUT_FILE, engine.module.layout_json(), fsync=True)
        rng.save(path / f"rng_rank{rank:05d}.safetensors")
        atomic.write_text(path / f"data_rank{rank:05d}.json", json.dumps(data_state), fsync=True)
        self.publish(tag, {"step": step})
        return tag

    # ---- load ------------------------------------------------------------------------------
    def load(self, engine: Any, tag: Optional[str] = None, restore_rng: bool = True) -> Resumed:
        tag = tag or self.resume_tag()
        path = self.dir / tag
        meta = self.meta(tag)
        rank, world = comm.get_rank(), comm.get_world_size()
        if meta["world_size"] != world:
            raise CheckpointError(f"{path} was written by {meta['world_size']} ranks, this run has {world}; "
                                  "resume with the same number of ranks (or convert it with "
                                  "tools/zero_to_safetensors.py and start a new run from the model directory)")
        flat_saved, flat_now = (path / LAYOUT_FILE).is_file(), isinstance(getattr(engine, "module", None), FlatParameters)
        if flat_saved != flat_now:
            raise CheckpointError(f"{path} was written with perf.flat_params={str(flat_saved).lower()} and this run has "
                                  f"perf.flat_params={str(flat_now).lower()}: the optimizer's partitions differ; resume "
                                  "with the setting it was written with (or convert it with tools/zero_to_safetensors.py "
                                  "and start a new run from the model directory)")
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
