"""Benchmark `rc3 index` over one's own images: images/s with a detector vs with a feature store.

Both sides in one run, on the same tiny RC3 model (random weights; the model's share is the same on
both sides and small):
* store: `rc3 index --features store.h5` - regions looked up in an IGLUE H5 store (random 36 x 2048);
* detector: `rc3 index --detector butd.safetensors` - regions extracted on the fly into the resumable
  store (rc3.vision.image_folder: decoding, the detector, chunk files, merge) and then indexed. The
  detector is the full-size bottom-up-attention R101-C4 (random weights in the released
  architecture) with IGLUE's settings (shorter side 800, longer at most 1333, 36 boxes), or with
  --tiny-detector the narrow one of the tests (for the pipeline's own overhead).
Images are random photos of --height x --width. Prints a header and one JSON line.

    .venv/bin/python benchmarks/bench_index_own_images.py --detector-images 2 --store-images 200
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from rc3.provenance import git_commit

# The tiny builders (configs, random batches, the naive R-XVtCL) live with the tests: tests/tiny.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector-images", type=int, default=2)
    ap.add_argument("--store-images", type=int, default=200)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--tiny-detector", action="store_true", help="the narrow test detector instead of R101-C4")
    ap.add_argument("--loader-workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from tiny import tiny_model_config, train_tiny_spm

    from rc3.inference import load
    from rc3.modeling import RC3Model
    from rc3.tokenization import RC3Tokenizer
    from rc3.vision.butd import ButdConfig, ButdDetector, save_rc3_weights
    from rc3.vision.image_folder import extract_folder

    print(f"# bench_index_own_images  date={dt.datetime.now().astimezone().isoformat(timespec='seconds')}  "
          f"commit={git_commit(['rc3/vision', 'rc3/inference', 'rc3/cli.py', 'benchmarks/bench_index_own_images.py'])}")
    print(f"# device: CPU {platform.processor() or platform.machine()} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f}; "
          f"images {args.height}x{args.width}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        words = ["dog", "cat", "red", "runs", "on", "the", "grass", "ein", "Hund", "une", "chienne"]
        train_tiny_spm(tmp / "tok", [" ".join(rng.choice(words, 8)) for _ in range(300)], vocab_size=60)
        tok = RC3Tokenizer.from_dir(tmp / "tok")
        torch.manual_seed(0)
        model = RC3Model.from_config(tiny_model_config(), tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
        model_dir = model.save_pretrained(tmp / "model", tokenizer_dir=tmp / "tok")
        photos = tmp / "photos"
        photos.mkdir()
        n = max(args.detector_images, args.store_images)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)).save(
                photos / f"p{i:05d}.jpg", quality=90)
        paths = sorted(str(p) for p in photos.iterdir())
        with h5py.File(tmp / "store.h5", "w") as h5:
            for p in paths[: args.store_images]:
                g = h5.create_group(Path(p).name)
                g["features"] = rng.random((36, 2048), dtype=np.float32)
                xy = rng.random((36, 2)) * 300
                g["boxes"] = np.concatenate([xy, xy + 100], 1).astype(np.float32)
                g["img_w"], g["img_h"] = args.width, args.height

        # store side: what `rc3 index --features store.h5` runs
        t0 = time.perf_counter()
        m = load(model_dir, features=[tmp / "store.h5"], progress=False)
        m.build_index(paths[: args.store_images])
        store_s = time.perf_counter() - t0

        cfg = (ButdConfig(stem_channels=8, res2_bottleneck=8, res2_channels=256, blocks=(1, 1, 1), res5_blocks=1,
                          rpn_channels=16, num_classes=12, num_attrs=6, rpn_post_nms_topk=64, pooler_resolution=4)
               if args.tiny_detector else ButdConfig())
        save_rc3_weights(ButdDetector(cfg).state_dict(), cfg, tmp / "butd.safetensors")
        # detector side: what `rc3 index --detector butd.safetensors` runs (rc3.cli._regions_of_files)
        t0 = time.perf_counter()
        m = load(model_dir, detector_weights=tmp / "butd.safetensors", progress=False)
        done = extract_folder(paths[: args.detector_images], tmp / "idx.features.h5", tmp / "butd.safetensors",
                              loader_workers=args.loader_workers, progress=False)
        items = [{**done.regions(p), "name": p} for p in paths[: args.detector_images]]
        m.build_index(items, names=paths[: args.detector_images])
        det_s = time.perf_counter() - t0
    row = {
        "detector": "tiny test detector" if args.tiny_detector else "butd R101-C4 full size, 800/1333",
        "store_images": args.store_images, "store_s": round(store_s, 2),
        "store_images_per_s": round(args.store_images / store_s, 2),
        "detector_images": args.detector_images, "detector_s": round(det_s, 2),
        "detector_images_per_s": round(args.detector_images / det_s, 4),
        "ratio_store_over_detector": round((args.store_images / store_s) / (args.detector_images / det_s), 1),
        "load_average_end": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
