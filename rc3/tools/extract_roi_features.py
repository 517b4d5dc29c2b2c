"""Extract region features for your own images into the IGLUE H5 layout (or a volta LMDB).

    python tools/extract_roi_features.py --images DIR_OR_GLOB_OR_URL [...] --out FILE.h5 \\
        --weights butd.safetensors [--num-workers N] [--format lmdb]
    torchrun --nproc_per_node 8 tools/extract_roi_features.py --images 'shards/*.tar' --out f.h5 \\
        --weights butd.safetensors --device cuda

One H5 group per image (key: file name, its stem with --key-style stem, or the sample key of a
tar / parquet shard) holding `features` [36,2048] float32, `boxes` [36,4] (x1,y1,x2,y2 in the
image's pixels), `obj_id`, `obj_conf`, `attr_id`, `attr_conf`, `img_w`, `img_h`: what IGLUE ships
and what `rc3.data.features_open.open_feature_store` and `build_shards.py ds --features` read.

Detectors:
  butd (default)    the bottom-up-attention Faster R-CNN R101-C4 with attributes that made IGLUE's
                    features, run with IGLUE's 36-box settings (rc3/vision/butd). Weights:
                    tools/convert_butd_weights.py on the public faster_rcnn_from_caffe_attr.pkl.
  torchvision-coco  torchvision's COCO Faster R-CNN R50-FPN, RoIAlign on C5. NOT IGLUE-compatible:
                    a model trained on IGLUE features sees another feature space. No attributes.

Inputs: folders of images, img2dataset output (tar or parquet), WebDataset shards, by path, glob
or URL (rc3/vision/image_sources.py). Unreadable images are skipped, counted and listed in
OUT.skipped.tsv. Work is split deterministically over --num-workers processes or torchrun /
accelerate ranks, written in chunks under OUT.parts/; rerunning a killed command resumes it.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

WEIGHTS_ENV = "RC3_DETECTOR_WEIGHTS"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the module docstring's line breaks."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--images", nargs="+", required=True,
                        help="image folders, tar / parquet files or globs of them, or shard URLs")
    parser.add_argument("--out", type=Path, required=True, help="output H5 file (or LMDB directory with --format lmdb)")
    parser.add_argument("--format", choices=("h5", "lmdb"), default="h5", help="IGLUE H5 or volta h5_to_lmdb LMDB")
    parser.add_argument("--detector", choices=("butd", "torchvision-coco"), default="butd",
                        help="butd: IGLUE's bottom-up-attention detector; torchvision-coco: not IGLUE-compatible")
    parser.add_argument("--weights", type=Path, default=None, help=f"detector weights (.safetensors); default: ${WEIGHTS_ENV}")
    parser.add_argument("--num-workers", type=int, default=1, help="extraction processes on this machine")
    parser.add_argument("--loader-workers", type=int, default=0, help="image-decoding processes per extraction process")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per extraction process (0: torch default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--key-style", choices=("name", "stem"), default="name",
                        help="key of a plain image file: file name (xFlickr&CO) or name without extension (MaRVL)")
    parser.add_argument("--num-boxes", type=int, default=36, help="regions per image")
    parser.add_argument("--min-size", type=int, default=None, help="shorter side after resizing (butd: 800, as IGLUE)")
    parser.add_argument("--max-size", type=int, default=None, help="longer side cap (butd: 1333, as IGLUE)")
    parser.add_argument("--chunk-size", type=int, default=256, help="images per part file (the most a kill loses)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="butd: images of equal resized size per forward pass (no padding: same features)")
    parser.add_argument("--keep-parts", action="store_true", help="keep OUT.parts after merging")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    coco = parser.add_argument_group("torchvision-coco only")
    coco.add_argument("--score-thresh", type=float, default=0.05, help="class score needed to enter NMS")
    coco.add_argument("--nms-thresh", type=float, default=0.5, help="per-class NMS IoU threshold")
    coco.add_argument("--bn-eps", type=float, default=0.0, help="batch-norm epsilon of the COCO checkpoint")
    return parser.parse_args(argv)


def _launcher_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) set by torchrun / accelerate launch; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _spec(args: argparse.Namespace, weights: Path, device: str):
    from rc3.vision.extractors import ExtractorSpec

    if args.detector == "butd":
        options = {"min_boxes": args.num_boxes, "max_boxes": args.num_boxes,
                   "min_size": args.min_size, "max_size": args.max_size}
    else:
        options = {"num_boxes": args.num_boxes, "score_thresh": args.score_thresh, "nms_thresh": args.nms_thresh,
                   "bn_eps": args.bn_eps, "min_size": args.min_size or 800, "max_size": args.max_size or 1333}
    return ExtractorSpec(args.detector, weights, device=device, threads=args.threads,
                         options={k: v for k, v in options.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the extraction; returns the process exit code."""
    args = parse_args(argv)
    # Checked before loading anything heavy, so a mistaken command fails at once.
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    weights = args.weights or (Path(os.environ[WEIGHTS_ENV]) if os.environ.get(WEIGHTS_ENV) else None)
    if weights is None:
        print(f"error: no detector weights; pass --weights FILE or set ${WEIGHTS_ENV}", file=sys.stderr)
        return 2
    if not weights.is_file():
        print(f"error: detector weights not found: {weights}", file=sys.stderr)
        return 2
    rank, world, local_rank = _launcher_rank()
    if world > 1 and args.num_workers > 1:
        print("error: under torchrun / accelerate every rank is a worker; drop --num-workers", file=sys.stderr)
        return 2
    if args.num_workers < 1 or args.chunk_size < 1 or args.num_boxes < 1 or args.batch_size < 1:
        print("error: --num-workers, --chunk-size, --num-boxes and --batch-size must be positive", file=sys.stderr)
        return 2
    device = args.device
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
            return 2
        device = f"cuda:{local_rank}"

    from rc3.vision.image_sources import discover_units
    from rc3.vision.sharded_extract import (
        all_workers_done,
        claim_merge,
        fingerprint,
        merge_parts,
        parts_dir_for,
        run_worker,
    )

    try:
        units = discover_units(args.images, args.key_style)
        spec = _spec(args, weights, device)
        built = spec()  # built here first: bad weights fail before any worker starts
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    settings = {"detector": args.detector, "weights": str(weights.resolve()), "key_style": args.key_style,
                "options": spec.options}
    run_id = fingerprint(units, settings)
    kwargs = dict(run_id=run_id, key_style=args.key_style, chunk_size=args.chunk_size,
                  loader_workers=args.loader_workers, num_boxes=args.num_boxes, progress=not args.quiet,
                  batch_size=args.batch_size)
    try:
        if world > 1:
            stats = [run_worker(units, args.out, lambda: built, rank=rank, world=world, **kwargs)]
        elif args.num_workers > 1:
            del built  # each worker process builds its own
            with ProcessPoolExecutor(args.num_workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(run_worker, units, args.out, spec, rank=r, world=args.num_workers, **kwargs)
                           for r in range(args.num_workers)]
                stats = [f.result() for f in futures]
            world = args.num_workers
        else:
            stats = [run_worker(units, args.out, lambda: built, **kwargs)]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for st in stats:
        rate = st.written / st.seconds if st.seconds > 0 else 0.0
        print(f"worker: {st.written} extracted ({rate:.2f} images/s), {st.resumed} already done, "
              f"{len(st.skipped)} skipped", file=sys.stderr)
    if not all_workers_done(args.out, world, run_id):
        print(f"rank {rank} finished; the last rank to finish merges into {args.out}", file=sys.stderr)
        return 0
    lock = parts_dir_for(args.out) / "merge.lock"
    if world == 1 or args.num_workers > 1:
        lock.unlink(missing_ok=True)  # sole merger: a lock left by a killed merge is stale
    if not claim_merge(args.out):
        print(f"rank {rank}: another process is merging ({lock}); if none is, delete that file and rerun",
              file=sys.stderr)
        return 0
    try:
        merged = merge_parts(args.out, fmt=args.format, keep_parts=args.keep_parts, attrs={
            "extractor": spec.describe(), "detector": args.detector, "weights": weights.name,
            "num_boxes": args.num_boxes, "key_style": args.key_style,
            **{k: v for k, v in spec.options.items() if isinstance(v, (int, float, str))},
        })
    except ValueError as exc:
        lock.unlink(missing_ok=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    for key, why in sorted(merged.skipped.items())[:20]:
        print(f"skipped {key}: {why}", file=sys.stderr)
    for dup in merged.duplicates[:20]:
        print(f"duplicate key {dup}", file=sys.stderr)
    short = sum(len(st.short) for st in stats)
    print(f"wrote {merged.written} images to {args.out}; skipped {len(merged.skipped)} unreadable "
          f"(listed in {args.out}.skipped.tsv); {short} with fewer than {args.num_boxes} regions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
