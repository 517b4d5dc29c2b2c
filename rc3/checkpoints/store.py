"""The checkpoint directory of a run: tag names, the COMPLETE marker with its manifest, `latest`, pruning
and the choice of the checkpoint a resume reads. One set of rules for every loop (pretraining,
finetuning, add_language); what goes inside a tag is the loop's business.

Layout of `checkpoints/`:

    step_00000100/            one checkpoint (tag); the loop's files, then
        COMPLETE              written last, by rank 0, once every rank has finished its part: the step,
                              the world size and the manifest (each file of the tag, its size and SHA-256,
                              rc3.checkpoints.manifest)
    latest                    names the newest complete tag; replaced atomically after COMPLETE

A tag is written either in place (DeepSpeed writes into `checkpoints/<tag>/` itself) or staged in a
hidden sibling `.<tag>.tmp/` and renamed into place once COMPLETE is in it (`begin(tag, staged=True)`):
a staged tag is never visible half-written. Either way a kill at any point leaves `latest` naming a
complete checkpoint (or absent); a tag without COMPLETE is ignored and, when `latest` itself names one,
the newest complete tag is used instead. Only the last `keep_last` complete tags are kept, and the
newest complete one is never deleted.

A resume reads `newest_intact()`: the newest complete tag whose files match its manifest; a damaged one
is reported in one line naming its first bad file and the next older intact tag is used, on every rank
alike. Tags written before manifests existed (a COMPLETE without `files`, or, for a loop that names a
`legacy_marker`, a directory holding that file and no COMPLETE: finetuning's older checkpoints were
renamed into place once whole) are trusted as they were, with a warning that they cannot be verified:
refusing them would strand every older run.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from rc3 import atomic
from rc3 import distributed as comm
from rc3.checkpoints import manifest

log = logging.getLogger("rc3.checkpoint")
TAG_RE = re.compile(r"^step_(\d{8})$")
COMPLETE = "COMPLETE"
LATEST = "latest"
STAGING_RE = re.compile(r"^\.step_\d{8}\.tmp$")


def tag_for(step: int) -> str:
    """The tag of the checkpoint saved after optimizer step `step`."""
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    match = TAG_RE.match(tag)
    if match is None:
        raise ValueError(f"{tag!r} is not a checkpoint tag (step_XXXXXXXX)")
    return int(match.group(1))


class CheckpointError(RuntimeError):
    pass


def _write(path: Path, text: str) -> None:
    atomic.write_text(path, text, fsync=True)


class CheckpointStore:
    """The tags under `directory`. Queries are plain file reads; `begin`/`publish` and the verification
    of a tag are collectives when a process group exists (every rank calls them)."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, legacy_marker: Optional[str] = None) -> None:
        self.dir = Path(directory)
        self.keep_last = keep_last
        self.legacy_marker = legacy_marker

    # ---- queries ---------------------------------------------------------------------------
    def _is_complete(self, tag_dir: Path) -> bool:
        if (tag_dir / COMPLETE).is_file():
            return True
        return self.legacy_marker is not None and (tag_dir / self.legacy_marker).is_file()

    def _tag_dirs(self) -> list[Path]:
        return [p for p in self.dir.iterdir() if TAG_RE.match(p.name) and p.is_dir()] if self.dir.is_dir() else []

    def complete_tags(self) -> list[str]:
        """Complete tags, oldest first."""
        return sorted(p.name for p in self._tag_dirs() if self._is_complete(p))

    def incomplete_tags(self) -> list[str]:
        return sorted(p.name for p in self._tag_dirs() if not self._is_complete(p))

    def has_any(self) -> bool:
        return bool(self._tag_dirs())

    def newest_complete(self) -> str | None:
        """The newest complete tag: the one `latest` names when it is complete, else the newest tag with
        COMPLETE (a warning says so), else None."""
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

    def problems(self, tag: str) -> list[manifest.Problem] | None:
        """The files of `tag` that differ from its manifest ([] when intact), or None when the tag has no
        manifest (written before manifests). A collective when a process group exists."""
        marker = self.dir / tag / COMPLETE
        if not marker.is_file():
            return None  # a legacy tag (legacy_marker): complete, not verifiable
        try:
            meta = json.loads(marker.read_text())
        except (OSError, ValueError) as err:
            return [manifest.Problem(COMPLETE, f"is not readable JSON ({type(err).__name__})")]
        files = meta.get("files") if isinstance(meta, dict) else None
        if files is None:
            return None
        return manifest.verify(self.dir / tag, files)

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

    def resume_tag(self, start_over: str = "run without --resume to start a new run (in a new run_dir)") -> str:
        """The tag a resume continues from (the newest intact complete one), or a CheckpointError saying
        why there is none; `start_over` says what to do then."""
        tag = self.newest_intact()
        if tag is not None:
            return tag
        if self.complete_tags():
            raise CheckpointError(f"--resume: every complete checkpoint in {self.dir} is damaged (see the warnings "
                                  "above); restore the named files or start a new run in a new directory")
        found = self.has_any()
        raise CheckpointError(f"--resume: no complete checkpoint in {self.dir}"
                              + (f" ({len(self._tag_dirs())} incomplete tag(s) ignored)" if found else "")
                              + f"; {start_over}")

    # ---- save ------------------------------------------------------------------------------
    def begin(self, tag: str, staged: bool = False) -> Path:
        """Every rank calls this before writing `tag`; returns the directory to write into. In place, a tag
        saved again (e.g. SIGTERM right after a save) loses its COMPLETE first; staged, a leftover of a
        killed save is removed."""
        path = self.dir / (f".{tag}.tmp" if staged else tag)
        if comm.get_rank() == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if staged:
                shutil.rmtree(path, ignore_errors=True)
                path.mkdir()
            else:
                path.mkdir(exist_ok=True)
                (path / COMPLETE).unlink(missing_ok=True)
        comm.barrier()
        return path

    def publish(self, tag: str, meta: dict[str, Any], staged: bool = False) -> Path:
        """Every rank calls this once its part of `tag` is on disk: the manifest is built (each rank hashes
        a share), rank 0 writes COMPLETE (with `meta`), moves a staged tag into place, points `latest` at
        it and prunes. Returns the tag's directory."""
        written = self.dir / (f".{tag}.tmp" if staged else tag)
        final = self.dir / tag
        comm.barrier()  # every rank's part is on disk
        files = manifest.build(written, exclude=frozenset({COMPLETE}))
        if comm.get_rank() == 0:
            _write(written / COMPLETE, json.dumps({**meta, "world_size": comm.get_world_size(), "time": time.time(),
                                                   "files": files}))
            if staged:
                atomic.replace(written, final)
            _write(self.dir / LATEST, tag + "\n")
            self.prune(keep=tag)
        comm.barrier()
        return final

    def prune(self, keep: str) -> None:
        """Keep the newest `keep_last` complete tags (never `keep` nor the newest complete); remove the
        leftovers of killed saves: incomplete tags older than the newest complete one, staging directories."""
        complete = self.complete_tags()
        if not complete:
            return
        doomed = complete[: max(0, len(complete) - self.keep_last)]
        doomed += [t for t in self.incomplete_tags() if t < complete[-1]]
        for tag in doomed:
            if tag != keep and tag != complete[-1]:
                shutil.rmtree(self.dir / tag, ignore_errors=True)
        for p in self.dir.iterdir():
            if STAGING_RE.match(p.name) and p.name != f".{keep}.tmp":
                shutil.rmtree(p, ignore_errors=True)

    def meta(self, tag: str) -> dict[str, Any]:
        """What COMPLETE records for `tag` ({} for a legacy tag without it)."""
        marker = self.dir / tag / COMPLETE
        return json.loads(marker.read_text()) if marker.is_file() else {}
