"""The pretraining preflight (rc3.pretrain.preflight): one line naming the key, exit 2, before DeepSpeed.

The fast tests call `preflight` (or the CLI in-process) on configs whose shard files are empty stand-ins:
the preflight only looks at names, counts and the tokenizer. One end-to-end test launches
`deepspeed --num_gpus 2 pretrain/main.py` with a shard pattern that matches nothing.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from engine_fixtures import REPO, free_port, launch, write_config

from rc3.config import ConfigError
from rc3.pretrain import cli
from rc3.pretrain.config import load_config
from rc3.pretrain.preflight import preflight


@pytest.fixture
def shards(tmp_path) -> dict[str, str]:
    patterns = {}
    for corpus in ("ds", "dw", "dt"):
        (tmp_path / corpus).mkdir()
        for i in range(4):
            (tmp_path / corpus / f"{corpus}-{i:06d}.tar").write_bytes(b"")
        patterns[corpus] = str(tmp_path / corpus / f"{corpus}-*.tar")
    return patterns


@pytest.fixture
def config(tmp_path, tokenizer_dir, shards) -> Path:
    return write_config(tmp_path / "run.yaml", tokenizer_dir, shards, tmp_path / "run")


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_the_valid_config_passes(config):
    preflight(load_config(config), world_size=2)  # 4 shards per corpus for 2 ranks x 1 worker


def test_config_not_utf8_is_one_line_naming_the_file(tmp_path, config, capsys):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(config.read_bytes() + "# Qualität\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(latin1)
    assert one_line(err.value).startswith(f"config error: --config: {latin1} is not UTF-8 text (byte 0xe4 at offset")
    assert cli.main(["--config", str(latin1)]) == 2
    out = capsys.readouterr()
    assert out.err.strip().splitlines() == [f"error: {err.value}"] and "Traceback" not in out.err


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("optim.lr", -1.0, "must be a finite number > 0, got -1.0"),
    ("optim.lr", math.nan, "must be a finite number > 0, got nan"),
    ("optim.lr", 0.0, "must be a finite number > 0"),
    ("optim.betas", [0.9, 1.0], "must be two numbers in [0, 1)"),
    ("optim.betas", [-0.1, 0.99], "must be two numbers in [0, 1)"),
    ("optim.eps", 0.0, "must be a finite number > 0"),
    ("optim.warmup_steps", -1, "must be >= 0"),
    ("train.total_steps", 0, "must be positive"),
    ("train.micro_batch_size", 0, "must be positive"),
    ("train.global_batch_size", -8, "must be positive"),
    ("train.max_nonfinite_steps", 0, "must be >= 1"),
])
def test_numeric_ranges_name_the_key(config, key, value, expected):
    cfg = load_config(config)
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)  # as a config built in code, past load_config's checks
    with pytest.raises(ConfigError) as err:
        preflight(cfg, world_size=1)
    assert one_line(err.value).startswith(f"config error: {key}: {expected}")
    with pytest.raises(ConfigError, match=f"^config error: {key}: "):  # and when read from the YAML
        load_config(config, [f"{key}={json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else '.nan'}"])


def test_shard_pattern_matching_nothing_names_the_key(config, tmp_path):
    with pytest.raises(ConfigError) as err:
        preflight(load_config(config, [f"data.ds_shards={tmp_path}/nowhere/ds-*.tar"]), world_size=1)
    assert one_line(err.value).startswith("config error: data.ds_shards: ") and "matches no file" in str(err.value)
    with pytest.raises(ConfigError, match=r"^config error: data\.dt_sources\[1\]\.shards: .*do not exist"):
        preflight(load_config(config, ["data.dt_shards=null",
                                       f"data.dt_sources=[{{shards: '{tmp_path}/dt/dt-{{000000..000003}}.tar'}}, "
                                       f"{{shards: '{tmp_path}/dt/dt-{{000004..000007}}.tar'}}]"]), world_size=1)
    # a disabled objective's corpus is not checked
    preflight(load_config(config, [f"data.dw_shards={tmp_path}/nowhere/*.tar", "objectives.rxvtcl_dw.enabled=false"]),
              world_size=1)


def test_too_few_shards_for_ranks_times_workers_says_how_many(config):
    cfg = load_config(config, ["data.num_workers=3"])
    with pytest.raises(ConfigError) as err:
        preflight(cfg, world_size=2)
    text = one_line(err.value)
    assert text.startswith("config error: data.ds_shards: ")
    assert "matches 4 shard(s), but 2 rank(s) x 3 loader worker(s) need at least 6" in text
    assert "--shard-size" in text
    preflight(load_config(config, ["data.num_workers=3", "data.resampled=true", "data.batches_per_epoch=3"]),
              world_size=2)
    preflight(load_config(config, ["data.num_workers=2"]), world_size=2)  # exactly enough


def test_tokenizer_size_differing_from_the_model_names_the_key(config, tmp_path, tokenizer, tokenizer_dir):
    size = tokenizer.vocab_size
    with pytest.raises(ConfigError) as err:
        preflight(load_config(config, [f"model.vocab_size={size + 7}"]), world_size=1)
    assert one_line(err.value).startswith("config error: model.tokenizer: ")
    assert f"has {size} ids but the model has {size + 7} token embeddings (model.vocab_size)" in str(err.value)
    # an HF mBART directory given as model.init_from, whose own tokenizer is used
    init = tmp_path / "mbart"
    shutil.copytree(tokenizer_dir, init)
    (init / "config.json").write_text(json.dumps({"vocab_size": size + 3}))
    with pytest.raises(ConfigError, match=rf"^config error: model\.init_from: .* {size + 3} token embeddings "
                                          rf"\(model\.init_from \({init / 'config.json'}\)\)"):
        preflight(load_config(config, ["model.tokenizer=null", f"model.init_from={init}"]), world_size=1)
    with pytest.raises(ConfigError, match=r"^config error: model\.tokenizer: .* holds no sentencepiece\.bpe\.model"):
        preflight(load_config(config, [f"model.tokenizer={tmp_path}"]), world_size=1)


@pytest.mark.slow(seconds=40)
def test_deepspeed_launch_with_a_bad_shard_pattern_exits_2_with_one_line(config, tmp_path):
    bad = f"{tmp_path}/nowhere/ds-*.tar"
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["ds_shards"] = bad
    config.write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    proc = launch(config, nproc=2, port=free_port(), timeout=240)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if "error:" in line]
    assert errors == [f"error: config error: data.ds_shards: shard pattern '{bad}' matches no file"], out[-3000:]
    assert "Traceback" not in out
    assert not (tmp_path / "run").exists()  # nothing started
    assert elapsed < 120, f"the launch took {elapsed:.0f} s to report the bad pattern"


def test_deepspeed_is_not_imported_before_the_preflight(config, tmp_path):
    script = ("import sys; from rc3.pretrain import cli; "
              f"rc = cli.main(['--config', {str(config)!r}, '--set', 'optim.lr=-1']); "
              "print(rc, 'deepspeed' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["error: config error: optim.lr: must be a finite number > 0, got -1.0"]
