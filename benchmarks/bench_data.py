"""Data pipeline benchmark: samples/s of the Ds and Dw shard pipelines beside a bare decode loop.

    python benchmarks/bench_data.py                                   # makes its own shards in a temp dir
    python benchmarks/bench_data.py --ds 'work/synthetic/shards/ds/ds-*.tar' --dw '.../dw-*.tar' \\
        --tokenizer work/synthetic/tokenizer --workers 0,1,2

For each corpus it times
  * bare: one process reading the same shards with tarfile and decoding each sample as the
    pipeline does (np.load(allow_pickle=False) + json for Ds; json + JPEG decode at draft scale
    for Dw), no checks, no shuffle, no collate;
  * pipeline: rc3.data.pipeline.make_pipeline + the real collator (tokenisation, masking, ROI
    tensors as stored (fp16), 224x224 uint8 pixels) with N DataLoader workers (0 = in-process),
    one pass over the shards, timed from the first batch on (worker start-up excluded).
The ratio is pipeline samples/s over bare samples/s; per worker is total / max(N, 1).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from rc3.data import schemas
from rc3.data.collate import DsCollator, DwCollator
from rc3.data.config import DataConfig
from rc3.data.images import load_image
from rc3.data.pipeline import expand_shards, make_pipeline
from rc3.data.shard_writer import ShardWriter
from rc3.provenance import git_commit
from rc3.tokenization import RC3Tokenizer

# The tiny builders (configs, random batches, the naive R-XVtCL) live with the tests: tests/tiny.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import train_tiny_spm  # noqa: E402

WORDS = ("a man woman dog child red blue small large street beach field ball runs sits looks holds "
         "near under with two three playing walking standing green water tree building car bike").split()
LANGS = ("en", "de", "fr", "cs", "ja", "zh")


def environment() -> dict[str, str]:
    commit = git_commit(["rc3/data", "benchmarks/bench_data.py"])
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        device += f"; GPU {torch.cuda.get_device_name(0)} (unused: the pipeline is CPU work)"
    # Other processes skew CPU figures; the load average says how busy the machine was.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return {"device": device, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "python": platform.python_version(), "torch": torch.__version__, "load average (1/5/15 min)": load}


def _caption(rng: np.random.Generator, lang: str) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(6, 16)))
    return f"{lang}: " + " ".join(words)


def _photo(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    """A smooth synthetic photo (gradient + shapes) whose JPEG size is photo-like, not noise-like."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    base = rng.random(3) * 255 * (0.5 + 0.5 * x) * (0.6 + 0.4 * y)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        draw.ellipse((x0, y0, x0 + int(rng.integers(10, w // 3)), y0 + int(rng.integers(10, h // 3))),
                     fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_shards(out: Path, shards: int, per_shard: int, image_size: tuple[int, int]) -> dict[str, str]:
    """Write Ds and Dw shards of synthetic samples; returns the shard patterns."""
    rng = np.random.default_rng(0)
    with ShardWriter(out / "ds", "ds", per_shard) as ds, ShardWriter(out / "dw", "dw", per_shard) as dw:
        for i in range(shards * per_shard):
            caps = {lang: _caption(rng, lang) for lang in LANGS}
            roi = rng.standard_normal((36, 2048)).astype(np.float16)
            ds.write(schemas.encode_ds(f"s{i:07d}", roi, rng.random((36, 5)).astype(np.float32), caps))
            texts = {lang: caps[lang] for lang in rng.choice(LANGS, size=int(rng.integers(2, 4)), replace=False)}
            dw.write(schemas.encode_dw(f"w{i:07d}", _photo(rng, image_size), texts))
    return {"ds": str(out / "ds" / "ds-*.tar"), "dw": str(out / "dw" / "dw-*.tar")}


def bare_loop(corpus: str, shards: list[str], draft: int) -> tuple[int, float]:
    """Samples/s of reading + decoding only (the floor any pipeline pays)."""
    n, t0 = 0, time.perf_counter()
    for path in shards:
        with tarfile.open(path) as tar:
            sample: dict[str, bytes] = {}
            for member in tar:
                key, _, field = member.name.partition(".")
                if sample and key != sample["__key__"]:
                    _decode_bare(corpus, sample, draft)
                    n += 1
                    sample = {}
                sample["__key__"] = key
                sample[field] = tar.extractfile(member).read()
            if sample:
                _decode_bare(corpus, sample, draft)
                n += 1
    return n, time.perf_counter() - t0


def _decode_bare(corpus: str, sample: dict, draft: int) -> None:
    if corpus == "ds":
        np.load(io.BytesIO(sample["roi.npy"]), allow_pickle=False)
        np.load(io.BytesIO(sample["boxes.npy"]), allow_pickle=False)
        json.loads(sample["captions.json"])
    else:
        json.loads(sample["texts.json"])
        load_image(sample["jpg"], draft)


def pipeline_rate(corpus: str, shards: list[str], collate, batch_size: int, workers: int,
                  strict: bool) -> tuple[int, float]:
    """`strict`: the bench's own shards are clean, so any skipped sample is a bug and stops the run; a
    user's shards (--ds / --dw) get a training run's skip budget, as a real corpus has rejects (a Dw tuple
    with fewer than two of the collator's languages, say)."""
    budget = dict(skip_budget=0.0, skip_grace=0) if strict else dict(skip_budget=DataConfig().skip_budget)
    loader = make_pipeline(corpus, shards, batch_size, collate, num_workers=workers, shuffle_buffer=256, **budget)
    n, t0 = 0, None
    for batch in loader:
        if t0 is None:  # start the clock at the first batch: worker start-up is not throughput
            t0 = time.perf_counter()
            continue
        n += len(batch["keys"])
    if t0 is None or n == 0:
        raise SystemExit(f"{corpus}: too few samples to time; give more shards (--shards-per-corpus)")
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ds", help="Ds shard pattern (default: synthetic shards made in a temp dir)")
    ap.add_argument("--dw", help="Dw shard pattern (default: synthetic shards made in a temp dir)")
    ap.add_argument("--tokenizer", help="tokenizer dir (default: a small one trained on the synthetic captions)")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shards-per-corpus", type=int, default=8)
    ap.add_argument("--samples-per-shard", type=int, default=128)
    ap.add_argument("--image-size", default="500x375", help="synthetic JPEG size (Flickr-like by default)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    env = environment()
    for k, v in env.items():
        print(f"{k}: {v}")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        patterns = {"ds": args.ds, "dw": args.dw}
        if not (args.ds and args.dw):
            w, h = (int(v) for v in args.image_size.split("x"))
            made = make_shards(Path(tmp), args.shards_per_corpus, args.samples_per_shard, (w, h))
            patterns = {c: patterns[c] or made[c] for c in patterns}
        if args.tokenizer:
            tok = RC3Tokenizer.from_dir(args.tokenizer)
        else:
            rng = np.random.default_rng(1)
            train_tiny_spm(Path(tmp) / "tok", [_caption(rng, lang) for lang in LANGS for _ in range(300)],
                           vocab_size=300)
            tok = RC3Tokenizer.from_dir(Path(tmp) / "tok")
        collators = {"ds": DsCollator(tok, 40, 40, seed=0, langs=LANGS), "dw": DwCollator(tok, 40, 224, langs=LANGS)}
        results = []
        for corpus in ("ds", "dw"):
            shards = expand_shards(patterns[corpus])
            n, dt = bare_loop(corpus, shards, 224)
            bare = n / dt
            print(f"\n{corpus}: {len(shards)} shards, {n} samples; bare read+decode loop: {bare:8.1f} samples/s")
            for nw in workers:
                m, pt = pipeline_rate(corpus, shards, collators[corpus], args.batch_size, nw, strict=not getattr(args, corpus))
                rate = m / pt
                print(f"  pipeline, {nw} worker(s): {rate:8.1f} samples/s total, {rate / max(nw, 1):8.1f} per worker, "
                      f"ratio to bare {rate / bare:5.2f}")
                results.append({"corpus": corpus, "workers": nw, "samples_per_s": rate,
                                "per_worker": rate / max(nw, 1), "bare_samples_per_s": bare, "ratio": rate / bare})
    if args.json:
        Path(args.json).write_text(json.dumps({**env, "batch_size": args.batch_size, "results": results}, indent=1))


if __name__ == "__main__":
    main()
