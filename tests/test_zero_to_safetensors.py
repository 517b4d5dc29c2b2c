"""tools/zero_to_safetensors.py: DeepSpeed ZeRO-2 and ZeRO-3 checkpoints of 2 CPU ranks -> RC3 model directory.

The slow tests train a tiny RC3Model for a few steps with `deepspeed --num_gpus 2` (gloo on CPU, see
tests/ds_train_tiny.py) and compare the consolidated directory with the engine's own gathered weights.
The fast tests check the run-directory errors on hand-made layouts.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_model_config

from rc3.modeling import RC3Model
from rc3.tokenization import RC3Tokenizer

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "zero_to_safetensors.py"
TAG = "step_00000003"  # what CheckpointManager names step 3


def load_tool():
    return importlib.import_module("rc3.tools.zero_to_safetensors")  # what TOOL runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def run_dir(request, tmp_path_factory, tokenizer_dir: Path) -> Path:
    """A run directory from 3 steps on 2 CPU ranks under ZeRO stage 2 or 3."""
    stage = request.param
    out = tmp_path_factory.mktemp(f"run_zero{stage}")
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
           str(REPO / "tests" / "ds_train_tiny.py"), "--run-dir", str(out), "--tokenizer-dir", str(tokenizer_dir),
           "--stage", str(stage), "--steps", "3"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return out


def text_batch(tokenizer: RC3Tokenizer) -> tuple[torch.Tensor, torch.Tensor, dict]:
    rows = [tokenizer.encode(t, "de") for t in ("Ein Hund rennt am Strand.", "Zwei Kinder spielen.")]
    width = max(map(len, rows))
    ids = torch.full((2, width), tokenizer.pad_id)
    mask = torch.zeros(2, width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), True
    g = torch.Generator().manual_seed(3)
    visual = {"roi": torch.randn(2, 36, 2048, generator=g), "boxes": torch.rand(2, 36, 5, generator=g),
              "pixels": torch.randn(2, 3, 224, 224, generator=g)}
    return ids, mask, visual


@pytest.mark.slow
def test_consolidated_weights_equal_the_engine(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    res = subprocess.run([sys.executable, str(TOOL), str(run_dir), str(out)], capture_output=True, text=True,
                         cwd=REPO, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    reference = load_file(str(run_dir / "reference.safetensors"))
    initial = load_file(str(run_dir / "initial.safetensors"))
    written = load_file(str(out / "model.safetensors"))
    model = RC3Model.from_pretrained(out)
    state = model.state_dict()
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert state[key].dtype == torch.float32 and torch.equal(state[key], value), key
    # The tied LM head is saved once; all other tensors are in the file.
    assert set(reference) - set(written) <= {"mbart.lm_head.weight", "mbart.model.encoder.embed_tokens.weight",
                                             "mbart.model.decoder.embed_tokens.weight", "mbart.model.shared.weight"}
    # Training moved the weights, so equality above is not the initial state coming back.
    changed = [k for k in reference if not torch.equal(reference[k], initial[k])]
    assert "mbart.model.shared.weight" in changed and "visual.roi.feature_proj.weight" in changed
    assert "itm_head.weight" in changed and "visual.patch.proj.weight" in changed
    assert len(changed) >= len(reference) - 2  # at most the final_logits_bias buffer and [SEP'] stay
    assert (out / "sentencepiece.bpe.model").is_file()


@pytest.mark.slow
def test_converted_model_gives_the_engine_outputs(run_dir: Path, tmp_path: Path) -> None:
    load_tool().convert(run_dir, tmp_path / "model")
    converted = RC3Model.from_pretrained(tmp_path / "model").eval()
    engine_model = RC3Model.from_pretrained(run_dir / "model_card", load_weights=False)
    engine_model.load_state_dict(load_file(str(run_dir / "reference.safetensors")))
    engine_model.eval()
    tokenizer = RC3Tokenizer.from_dir(tmp_path / "model")
    ids, mask, visual = text_batch(tokenizer)

    @torch.no_grad()
    def outputs(m: RC3Model) -> list[torch.Tensor]:
        return [m.tr(ids, mask), m.encode(ids, mask, visual, "combined").hidden,
                m.decode(ids, mask, m.encode(ids, mask, visual, "roi"))]

    for a, b in zip(outputs(converted), outputs(engine_model)):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_incomplete_or_mismatched_checkpoints_are_refused(run_dir: Path, tmp_path: Path) -> None:
    tool = load_tool()
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    (broken / "checkpoints" / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(tool.CheckpointError, match="incomplete"):
        tool.convert(broken, tmp_path / "out")
    shutil.copytree(run_dir / "checkpoints" / TAG, broken / "checkpoints" / TAG, dirs_exist_ok=True)
    card = json.loads((broken / "model_card" / "rc3_config.json").read_text())
    card["model"]["ffn_dim"] = card["mbart"]["encoder_ffn_dim"] = card["mbart"]["decoder_ffn_dim"] = 48
    (broken / "model_card" / "rc3_config.json").write_text(json.dumps(card))
    with pytest.raises(tool.CheckpointError, match="other shapes"):
        tool.convert(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ run-directory errors (fast)

def fake_run(root: Path, tokenizer_dir: Path) -> Path:
    """A run directory with a model card and an (empty) checkpoint tag directory."""
    model = RC3Model.from_config(tiny_model_config(), 10)
    model.save_pretrained(root / "model_card", tokenizer_dir=tokenizer_dir, weights=False)
    (root / "checkpoints" / TAG).mkdir(parents=True)
    return root


def test_run_directory_errors_name_the_problem(tmp_path: Path, tokenizer_dir: Path, capsys) -> None:
    tool = load_tool()
    run = fake_run(tmp_path / "run", tokenizer_dir)
    with pytest.raises(tool.CheckpointError, match=rf"no complete checkpoint.*--tag \(found: {TAG}\)"):
        tool.convert(run, tmp_path / "out")
    (run / "checkpoints" / "latest").write_text("step_000009\n")  # naming a tag that is not there changes nothing
    with pytest.raises(tool.CheckpointError, match=rf"no complete checkpoint.*\(found: {TAG}\)"):
        tool.convert(run, tmp_path / "out")
    with pytest.raises(tool.CheckpointError, match=rf"step_000009 does not exist \(found: {TAG}\)"):
        tool.convert(run, tmp_path / "out", tag="step_000009")
    with pytest.raises(tool.CheckpointError, match="incomplete"):
        tool.convert(run, tmp_path / "out", tag=TAG)
    shutil.rmtree(run / "model_card")
    with pytest.raises(tool.CheckpointError, match="model card"):
        tool.convert(run, tmp_path / "out", tag=TAG)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(SystemExit, match="--overwrite"):
        tool.main([str(run), str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "nope"), str(tmp_path / "out2")])
    assert "not a directory" in capsys.readouterr().err
    assert (tmp_path / "out" / "x").read_text() == "keep"


class _Tripwire:
    """Unpickling this would create a file: checkpoints must be read without running such code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_checkpoint_objects_are_never_unpickled(tmp_path: Path, tokenizer_dir: Path) -> None:
    tool = load_tool()
    run = fake_run(tmp_path / "run", tokenizer_dir)
    tag_dir = run / "checkpoints" / TAG
    marker = tmp_path / "unpickled"
    torch.save({"module": {}, "buffer_names": [], "param_shapes": [], "shared_params": {},
                "client_state": _Tripwire(str(marker))}, tag_dir / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {}}, tag_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(tool.CheckpointError, match=r"mp_rank_00_model_states\.pt: refuses to unpickle \S+ "
                                                    r"\(not a tensor/allowed type\).* use an intact checkpoint$"):
        tool.convert(run, tmp_path / "out", tag=TAG)
    assert not marker.exists()
