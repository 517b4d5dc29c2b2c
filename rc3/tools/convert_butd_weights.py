"""Convert py-bottom-up-attention's detectron2 pickle into RC3's bottom-up-attention safetensors.

    python tools/convert_butd_weights.py --pkl faster_rcnn_from_caffe_attr.pkl --out butd.safetensors

The pickle (``{"model": {detectron2 name: numpy array}, "__author__": ...}``) is read with an
unpickler that rebuilds only builtin containers and numpy arrays; every tensor is mapped to RC3's
module names (rc3/vision/butd/weights.py), and a name no rule maps, an unused or missing tensor,
or a shape mismatch stops the conversion with the full list. The architecture read from the shapes
is stored in the file's metadata; the output is loaded back strictly before the command succeeds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pkl", type=Path, required=True, help="faster_rcnn_from_caffe_attr.pkl (detectron2 pickle)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def convert(pkl: Path, out: Path) -> tuple[int, int]:
    """Convert and verify; returns (tensors written, parameters)."""
    from rc3.vision.butd.weights import (
        convert_state,
        infer_config,
        load_detector,
        read_detectron2_pickle,
        save_rc3_weights,
    )

    state, _extra = read_detectron2_pickle(pkl)
    cfg = infer_config(state)
    tensors = convert_state(state, cfg)
    save_rc3_weights(tensors, cfg, out)
    model = load_detector(out)  # strict: proves the file rebuilds the detector
    return len(tensors), sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for name, b in model.named_buffers() if name != "rpn.cell_anchors")


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; returns the process exit code."""
    args = parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        count, numel = convert(args.pkl, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {count} tensors ({numel / 1e6:.1f}M values) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
