"""Benchmark bottom-up-attention region extraction: images/s of the full-size R101-C4 detector.

Random weights (nothing downloaded) in the real architecture (ResNet-101 C4, RPN with 300
proposals, res5 head on 14 x 14 RoIPool, 1,601 classes, 401 attributes), random images of the
given size run through `ButdExtractor.extract` (resize, detector, 36-box selection) one at a time,
as the extraction tool runs them; plus a per-stage split (backbone to res4, RPN, box head) of one
image. Prints one JSON line with the figures.

    .venv/bin/python benchmarks/bench_butd_extract.py --images 3                      # CPU, 600 x 1000
    .venv/bin/python benchmarks/bench_butd_extract.py --device cuda --images 50 --min-size 800 --max-size 1333
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time

import numpy as np
import torch
from PIL import Image

from rc3.provenance import git_commit
from rc3.vision.butd import ButdConfig, ButdDetector, ButdExtractor, preprocess


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3, help="timed images")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--height", type=int, default=600)
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--min-size", type=int, default=600, help="resize shorter side (IGLUE: 800)")
    ap.add_argument("--max-size", type=int, default=1000, help="longer side cap (IGLUE: 1333)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    cfg = ButdConfig(min_size=args.min_size, max_size=args.max_size)
    extractor = ButdExtractor(ButdDetector(cfg), device=device)
    rng = np.random.default_rng(args.seed)
    images = [Image.fromarray(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8))
              for _ in range(args.warmup + args.images)]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.processor() or platform.machine()}"
    print(f"# bench_butd_extract  date={dt.datetime.now().astimezone().isoformat(timespec='seconds')}  "
          f"commit={git_commit(['rc3/vision/butd', 'benchmarks/bench_butd_extract.py'])}")
    print(f"# device: {dev_name} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads); "
          f"images {args.height}x{args.width}, resize {args.min_size}/{args.max_size}")

    for img in images[: args.warmup]:
        extractor.extract(img)
    _sync(device)
    t0 = time.perf_counter()
    regions = [extractor.extract(img) for img in images[args.warmup:]]
    _sync(device)
    total = time.perf_counter() - t0

    detector = extractor.detector
    image, size, _ = preprocess(images[-1], cfg)
    image = image.to(device)
    stages = {}
    with torch.inference_mode():
        _sync(device)
        t = time.perf_counter()
        res4 = detector.backbone(image)
        _sync(device)
        stages["backbone_s"] = time.perf_counter() - t
        t = time.perf_counter()
        proposals = detector.rpn(res4, size)
        _sync(device)
        stages["rpn_s"] = time.perf_counter() - t
        t = time.perf_counter()
        detector.box_head(res4, proposals.boxes)
        _sync(device)
        stages["box_head_s"] = time.perf_counter() - t
    result = {
        "device": dev_name, "threads": torch.get_num_threads(), "image": [args.height, args.width],
        "resize": [args.min_size, args.max_size], "resized": list(size), "images": args.images,
        "seconds": round(total, 3), "images_per_s": round(args.images / total, 4),
        "proposals": len(proposals.boxes), "regions": [len(r.features) for r in regions],
        **{k: round(v, 3) for k, v in stages.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
