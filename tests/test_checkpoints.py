"""rc3.checkpoints: the checkpoint directory every loop shares (staged tags, COMPLETE with its manifest,
`latest`, pruning, the legacy rule) and tensor states stored without pickle. Pretraining's DeepSpeed
checkpoints are tested in test_checkpoint_manifest.py, finetuning's and add_language's resumes in
test_finetune_runs.py and test_add_language.py."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rc3.checkpoints import COMPLETE, CheckpointError, CheckpointStore, tag_for, tensor_state
from rc3.checkpoints.tensor_state import StateFormatError


def save(store: CheckpointStore, step: int, payload: bytes, staged: bool = True) -> Path:
    tag = tag_for(step)
    (store.begin(tag, staged=staged) / "weights.bin").write_bytes(payload)
    return store.publish(tag, {"step": step}, staged=staged)


def test_staged_tags_are_published_whole_and_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints", keep_last=2)
    first = save(store, 1, b"one")
    marker = json.loads((first / COMPLETE).read_text())
    assert marker["step"] == 1 and marker["world_size"] == 1
    assert marker["files"] == {"weights.bin": {"size": 3, "sha256": hashlib.sha256(b"one").hexdigest()}}
    assert (store.dir / "latest").read_text() == "step_00000001\n"
    # a save killed half-way leaves only its hidden staging directory: not a tag, not chosen, removed later
    (store.begin(tag_for(2), staged=True) / "weights.bin").write_bytes(b"tw")
    assert store.complete_tags() == ["step_00000001"] and store.newest_intact() == "step_00000001"
    save(store, 3, b"three")
    save(store, 4, b"four")
    assert sorted(p.name for p in store.dir.iterdir()) == ["latest", "step_00000003", "step_00000004"]
    assert store.resume_tag() == "step_00000004"


def test_damaged_tag_is_passed_over_naming_the_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints", keep_last=3)
    save(store, 1, b"one")
    newest = save(store, 2, b"two")
    (newest / "weights.bin").write_bytes(b"tww")  # same size, other contents
    warnings: list[str] = []
    assert store.newest_intact(warnings.append) == "step_00000001"
    assert warnings == [f"checkpoint {newest} is damaged: weights.bin has other contents than when it was saved "
                        "(SHA-256 differs); falling back to step_00000001"]
    (store.dir / "step_00000001" / "weights.bin").unlink()
    with pytest.raises(CheckpointError, match="every complete checkpoint .* is damaged"):
        store.resume_tag()


def test_legacy_marker_makes_an_older_tag_complete_but_unverified(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    old = root / "step_00000005"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text("{}")
    (root / "step_00000006").mkdir()  # neither COMPLETE nor the marker: a killed save
    assert CheckpointStore(root).complete_tags() == []
    store = CheckpointStore(root, legacy_marker="trainer_state.json")
    warnings: list[str] = []
    assert store.newest_intact(warnings.append) == "step_00000005"
    assert warnings == [f"checkpoint {old} has no file manifest (written by an older version); its files cannot be "
                        "verified, using it as it is"]
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .*\(2 incomplete tag\(s\) ignored\)"):
        CheckpointStore(root).resume_tag()


def test_tensor_state_round_trip_keeps_structure(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "list": [1, 2.5, None, "x", True], "inf": float("inf")}
    back = tensor_state.load(tensor_state.save(state, tmp_path / "s.safetensors"))
    assert set(back["optimizer"]["state"]) == {0, 1}  # integer keys stay integers
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9)  # tuples stay tuples
    for i in (0, 1):
        for k, v in opt.state_dict()["state"][i].items():
            assert torch.equal(back["optimizer"]["state"][i][k], v)
    assert back["list"] == [1, 2.5, None, "x", True] and back["inf"] == float("inf")
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    fresh.load_state_dict(back["optimizer"])
    assert fresh.param_groups[0]["lr"] == 1e-3
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_tensor_state_refuses_other_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(StateFormatError, match=rf"^{plain}: no rc3.structure metadata"):
        tensor_state.load(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 16)
    with pytest.raises(StateFormatError, match=rf"^{junk}: not a readable safetensors file"):
        tensor_state.load(junk)
    with pytest.raises(TypeError, match="cannot store a object"):
        tensor_state.save({"x": object()}, tmp_path / "x.safetensors")
