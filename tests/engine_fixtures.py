"""Shared set-up of the multi-process engine tests: tiny shards, a tiny run config, launching `deepspeed`."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WORDS = {"en": "a red dog runs on the green grass near two small cats".split(),
         "de": "ein roter Hund läuft auf dem grünen Gras neben zwei kleinen Katzen".split(),
         "fr": "un chien rouge court sur l'herbe verte près de deux petits chats".split()}


def sentence(rng: random.Random, lang: str) -> str:
    return " ".join(rng.sample(WORDS[lang], rng.randint(3, 8)))


def write_tiny_shards(root: Path, n_shards: int = 4, per_shard: int = 8) -> dict[str, str]:
    """Random Ds, Dw and Dt shards in the real schemas (rc3.data.schemas), a few samples each."""
    from rc3.data import schemas
    from rc3.data.shard_writer import ShardWriter

    rng = random.Random(0)
    nrng = np.random.default_rng(0)
    patterns = {}
    for corpus in ("ds", "dw", "dt"):
        with ShardWriter(root / corpus, corpus, max_samples=per_shard) as w:
            for i in range(n_shards * per_shard):
                key = f"{corpus}{i:05d}"
                texts = {lang: sentence(rng, lang) for lang in WORDS}
                if corpus == "ds":
                    boxes = np.concatenate([nrng.random((36, 4)), nrng.random((36, 1))], 1).astype(np.float32)
                    w.write(schemas.encode_ds(key, nrng.standard_normal((36, 2048)).astype(np.float16), boxes, texts))
                elif corpus == "dw":
                    img = Image.fromarray(nrng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
                    buf = io.BytesIO()
                    img.save(buf, format="JPEG")
                    w.write(schemas.encode_dw(key, buf.getvalue(), dict(list(texts.items())[: rng.randint(2, 3)])))
                else:
                    a, b = rng.sample(sorted(WORDS), 2)
                    w.write(schemas.encode_dt(key, a, b, texts[a], texts[b]))
        patterns[corpus] = str(root / corpus / f"{corpus}-*.tar")
    return patterns


def write_config(path: Path, tokenizer_dir: Path, shards: dict[str, str], run_dir: Path, **train: object) -> Path:
    cfg = {
        "model": {"tokenizer": str(tokenizer_dir), "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
                  "attention_heads": 4, "ffn_dim": 64, "max_position_embeddings": 160, "dropout": 0.1,
                  "patch_dim": 32},
        "data": {"ds_shards": shards["ds"], "dw_shards": shards["dw"], "dt_shards": shards["dt"],
                 "langs": ["en", "de", "fr"], "max_text_len": 16, "max_tgt_len": 16, "num_workers": 1,
                 "shuffle_buffer": 8, "batches_per_epoch": 3},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"run_dir": str(run_dir), "deepspeed_config": str(REPO / "ds_configs" / "zero2.json"),
                  "precision": "fp32", "total_steps": 10, "global_batch_size": 8, "micro_batch_size": 4,
                  "log_every": 1, "save_every": 4, "keep_last": 2, "collective_timeout_s": 120.0, **train},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "deepspeed"), *args]


def launch(config: Path, *extra: str, env: dict | None = None, nproc: int = 2, timeout: float = 300,
           port: int | None = None) -> subprocess.CompletedProcess:
    """`deepspeed --num_gpus nproc pretrain/main.py`; one rank runs as plain `python pretrain/main.py`
    (rc3.distributed makes it a world of one), which spares the launcher's two interpreters."""
    port = port or free_port()
    script = [str(REPO / "pretrain" / "main.py"), "--config", str(config), *extra]
    if nproc == 1:
        cmd = [sys.executable, *script]
        env = {"MASTER_PORT": str(port), **(env or {})}
    else:
        cmd = deepspeed_cmd("--num_gpus", str(nproc), "--master_port", str(port), *script)
    # PYTHONPATH: every rank and its loader workers import this checkout's rc3, not an installed copy
    # (pretrain/main.py's own directory comes first on sys.path, so `import rc3` would find that copy)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RC3_NO_PROGRESS": "1", "PYTHONPATH": path, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # a timed-out launch takes its ranks with it
        out, err = proc.communicate()
        raise AssertionError(f"the {nproc}-rank run of {config.name} ({' '.join(extra) or 'fresh'}) gave no result "
                             f"within {timeout:g} s; its last output:\n{out[-1500:]}\n{err[-2500:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def step_losses(run_dir: Path) -> dict[int, dict[str, float]]:
    """Per step, the last logged record (a resumed run logs its steps again after the restart)."""
    out: dict[int, dict[str, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "step" in rec and "loss" in rec:
            out[rec["step"]] = {k: v for k, v in rec.items()
                                if k in ("loss", "mclm", "itm", "xtcl", "rxvtcl_ds", "rxvtcl_dw", "kl")}
    return out


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"event"' in line]
