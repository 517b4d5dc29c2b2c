"""What each pretraining objective encodes in a real run: only MCLM's encoder input carries <mask>.

One optimizer step of `rc3.pretrain.loop.train` on a small synthetic world (tests/probe_objective_inputs.py
records every encoder call per task). MCLM's sequences must hold masks; ITM, XTCL and R-XVtCL
(Ds and Dw) encode the captions as written, and the R-XVtCL Ds stream does not mask at all.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_fixtures import free_port

from rc3.synthetic.build import SIZES, make_world

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("world") / "w"
    make_world(path, seed=0, sizes=SIZES["tiny"].scaled(0.25), weak_overlap=0.5, log=lambda _: None)
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("visual_mode", ["roi", "combined"])
def test_only_mclm_encodes_masked_text(world: Path, tmp_path: Path, visual_mode: str) -> None:
    out = tmp_path / "probe.json"
    sets = [f"model.tokenizer={world}/tokenizer", f"data.ds_shards={world}/shards/ds/ds-*.tar",
            f"data.dw_shards={world}/shards/dw/dw-*.tar", f"data.dt_shards={world}/shards/dt/dt-*.tar",
            f"model.visual_mode={visual_mode}", "train.total_steps=1", "train.global_batch_size=16",
            "train.micro_batch_size=8", "data.prefetch_steps=0", "data.shuffle_buffer=16",
            f"train.run_dir={tmp_path / 'run'}"]
    env = {**os.environ, "RC3_NO_PROGRESS": "1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "probe_objective_inputs.py"),
                           str(REPO / "configs" / "repro" / "synthetic.yaml"), str(out), *sets],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(out.read_text())
    assert probe["steps"] == 1
    tasks = probe["tasks"]
    assert set(tasks) == {"mclm", "itm", "xtcl", "rxvtcl_ds", "rxvtcl_dw"}, sorted(tasks)
    for name, entry in tasks.items():
        calls = entry["calls"]
        assert calls, f"{name} encoded nothing"
        if name == "mclm":
            # one masked sequence per sample (at least one whole word each), with the image
            assert all(c["with_mask"] == c["rows"] and c["visual"] for c in calls), calls
        else:
            assert sum(c["with_mask"] for c in calls) == 0, f"{name} encoded <mask>: {calls}"
    # 2 micro-steps of 8: MCLM 8 sequences each; ITM 16 (positives + negatives); XTCL 16 texts
    assert [c["rows"] for c in tasks["mclm"]["calls"]] == [8, 8]
    assert [c["rows"] for c in tasks["itm"]["calls"]] == [16, 16]
    assert [c["rows"] for c in tasks["xtcl"]["calls"]] == [16, 16]
    # the R-XVtCL Ds stream draws no MCLM mask and builds no decoder target
    for name in ("rxvtcl_ds", "rxvtcl_dw"):
        assert not {"mlm_ids", "mlm_labels", "dec_input_ids", "dec_labels"} & set(tasks[name]["batch_keys"])
    assert {"mlm_ids", "mlm_labels", "src_ids"} <= set(tasks["mclm"]["batch_keys"])
    # R-XVtCL on Dw: the contrastive call with images, then the text-only TR pass of the KL
    assert [c["visual"] for c in tasks["rxvtcl_dw"]["calls"]] == [True, False, True, False]
