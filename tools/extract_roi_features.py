"""Extract 36 x 2048-d region features for a directory of images into an IGLUE-layout H5 file.

    python tools/extract_roi_features.py --images DIR --out FILE.h5 --weights DETECTOR.safetensors

One H5 group per image (key: file name, or its stem with --key-style stem) holding `features`
[36,2048] float32, `boxes` [36,4] (x1,y1,x2,y2 in pixels), `obj_id`, `obj_conf`, `attr_id`,
`attr_conf`, `img_w`, `img_h`. The detector is torchvision's fasterrcnn_resnet50_fpn filled from a
local weights file (nothing is downloaded); region vectors are RoIAlign over its ResNet C5 map.
This approximates the Visual Genome R101-C4 features that IGLUE ships; see
rc3/vision/roi_extractor.py for the selection and fill rules. Attributes are not predicted
(attr_id -1, attr_conf 0).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere without installing the package
    sys.path.insert(0, str(REPO))

WEIGHTS_ENV = "RC3_DETECTOR_WEIGHTS"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the module docstring's line breaks."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="directory of images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output H5 file")
    parser.add_argument(
        "--weights", type=Path, default=None,
        help=f"fasterrcnn_resnet50_fpn state dict (.safetensors or torch .pth/.pt); default: ${WEIGHTS_ENV}",
    )
    parser.add_argument("--num-boxes", type=int, default=36, help="regions per image (always exactly this many)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per detector forward pass")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (0: in-process)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--key-style", choices=("name", "stem"), default="name",
        help="H5 key per image: file name (xFlickr&CO) or name without extension (MaRVL, Flickr30k ids)",
    )
    parser.add_argument("--min-size", type=int, default=800, help="shorter side after resizing")
    parser.add_argument("--max-size", type=int, default=1333, help="longest side cap after resizing")
    parser.add_argument("--score-thresh", type=float, default=0.05, help="class score needed to enter NMS")
    parser.add_argument("--nms-thresh", type=float, default=0.5, help="per-class NMS IoU threshold")
    parser.add_argument(
        "--bn-eps", type=float, default=0.0,
        help="batch-norm epsilon: 0.0 for torchvision's COCO checkpoint, 1e-5 for standard-BN training",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the extraction; returns the process exit code."""
    args = parse_args(argv)
    # Checked before loading anything heavy, so a mistaken command fails at once.
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    weights = args.weights or (Path(os.environ[WEIGHTS_ENV]) if os.environ.get(WEIGHTS_ENV) else None)
    if weights is None:
        print(f"error: no detector weights; pass --weights FILE or set ${WEIGHTS_ENV}", file=sys.stderr)
        return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
            return 2

    from rc3.vision.roi_extractor import RoIExtractor, extract_to_h5, find_images

    try:
        items = find_images(args.images, args.key_style)
        if not items:
            print(f"error: no image files under {args.images}", file=sys.stderr)
            return 2
        extractor = RoIExtractor.from_weights(
            weights, min_size=args.min_size, max_size=args.max_size, bn_eps=args.bn_eps,
            num_boxes=args.num_boxes, score_thresh=args.score_thresh, nms_thresh=args.nms_thresh,
            device=args.device,
        )
        stats = extract_to_h5(
            extractor, items, args.out, batch_size=args.batch_size, workers=args.workers,
            progress=not args.quiet, overwrite=args.overwrite,
            attrs={
                "extractor": "torchvision fasterrcnn_resnet50_fpn, RoIAlign on ResNet C5, mean-pooled",
                "weights": weights.name, "num_boxes": args.num_boxes, "key_style": args.key_style,
                "min_size": args.min_size, "max_size": args.max_size,
            },
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for key, error in sorted(stats.skipped.items()):
        print(f"skipped {key}: {error}", file=sys.stderr)
    print(f"wrote {stats.written} images to {args.out}; skipped {len(stats.skipped)} undecodable", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
