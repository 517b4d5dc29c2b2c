"""The file manifest in a checkpoint's COMPLETE marker, and the fall-back past a damaged checkpoint.

Single process, with a stand-in engine whose `save_checkpoint` writes files named as DeepSpeed names them
(the real two-rank DeepSpeed resume from a damaged checkpoint is in tests/test_engine.py). Reference
digests come from hashlib over the raw bytes, not from the module under test.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from rc3.pretrain.checkpoints import COMPLETE, CheckpointError, CheckpointManager, tag_for

FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt")


class FakeEngine:
    """Writes DeepSpeed's file names with contents that depend on the step."""

    def __init__(self) -> None:
        self.step = 0

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool) -> None:
        d = Path(save_dir) / tag
        d.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(FILES):
            (d / name).write_bytes(os.urandom(1000 + 37 * i) + json.dumps(client_state).encode())


def saved_run(root: Path, steps=(2, 4, 6)) -> CheckpointManager:
    manager = CheckpointManager(root, keep_last=5)
    engine = FakeEngine()
    for step in steps:
        manager.save(engine, step, client_state={"objectives": {}}, data_state={"position": step})
    return manager


def test_complete_holds_size_and_sha256_of_every_file(tmp_path):
    manager = saved_run(tmp_path, steps=(2,))
    tag_dir = manager.dir / tag_for(2)
    meta = json.loads((tag_dir / COMPLETE).read_text())
    on_disk = sorted(p.name for p in tag_dir.iterdir() if p.name != COMPLETE)
    assert sorted(meta["files"]) == on_disk  # model and optimizer states, rng and data sidecars
    assert {*FILES, "rng_rank00000.safetensors", "data_rank00000.json"} == set(on_disk)
    for name, entry in meta["files"].items():
        raw = (tag_dir / name).read_bytes()
        assert entry == {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def test_damaged_newest_checkpoint_falls_back_naming_the_file(tmp_path):
    manager = saved_run(tmp_path)
    warnings: list[str] = []
    assert manager.newest_intact(warnings.append) == tag_for(6) and not warnings

    optim = manager.dir / tag_for(6) / FILES[1]
    optim.write_bytes(optim.read_bytes()[:500])  # truncated
    assert manager.newest_intact(warnings.append) == tag_for(4)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"{tag_for(6)} is damaged: {FILES[1]} is 500 bytes" in warnings[0]
    assert f"falling back to {tag_for(4)}" in warnings[0]

    (manager.dir / tag_for(4) / FILES[0]).unlink()  # missing
    warnings.clear()
    assert manager.newest_intact(warnings.append) == tag_for(2)
    assert f"{tag_for(4)} is damaged: {FILES[0]} is missing" in warnings[1]

    model = manager.dir / tag_for(2) / FILES[0]
    raw = bytearray(model.read_bytes())
    raw[10] ^= 0xFF  # same size, one byte changed
    model.write_bytes(bytes(raw))
    warnings.clear()
    assert manager.newest_intact(warnings.append) is None
    assert f"{FILES[0]} has other contents" in warnings[2] and "no older complete checkpoint" in warnings[2]
    with pytest.raises(CheckpointError, match="every complete checkpoint .* is damaged"):
        manager.resume_tag()


def test_checkpoint_without_manifest_is_used_with_a_warning(tmp_path):
    manager = saved_run(tmp_path, steps=(2, 4))
    complete = manager.dir / tag_for(4) / COMPLETE
    meta = json.loads(complete.read_text())
    del meta["files"]  # as written before manifests existed
    complete.write_text(json.dumps(meta))
    (manager.dir / tag_for(4) / FILES[1]).write_bytes(b"x")  # cannot be noticed without a manifest
    warnings: list[str] = []
    assert manager.newest_intact(warnings.append) == tag_for(4)
    assert warnings == [f"checkpoint {manager.dir / tag_for(4)} has no file manifest (written by an older "
                        "version); its files cannot be verified, using it as it is"]


def test_zero_to_safetensors_passes_over_a_damaged_newest_checkpoint(tmp_path, capsys):
    from rc3.tools.zero_to_safetensors import CheckpointError as ToolError
    from rc3.tools.zero_to_safetensors import resolve_tag

    manager = saved_run(tmp_path, steps=(2, 4))
    (manager.dir / tag_for(4) / FILES[0]).unlink()
    assert resolve_tag(tmp_path, None) == manager.dir / tag_for(2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and f"{FILES[0]} is missing" in err[0]
    with pytest.raises(ToolError, match=f"{tag_for(4)} is damaged: {FILES[0]} is missing; pick another --tag"):
        resolve_tag(tmp_path, tag_for(4))
