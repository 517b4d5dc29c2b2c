"""Generate the synthetic world: pretraining corpora and shards, downstream sets, tokenizer.

    python tools/make_synthetic.py --out work/synthetic [--seed 0] [--size tiny|small]
                                   [--n-images N] [--weak-overlap 0.5] [--general-share 0.5]
                                   [--english-weight 1] [--dt-pairs N] [--gqa-train-images N]
                                   [--force] [--no-shards]

Everything is in the real corpus formats (see rc3/synthetic/build.py for the layout) and is
determined by --seed. `--n-images`, `--dt-pairs` and `--gqa-train-images` override the number of
Ds images, of WikiMatrix-style Dt sentence pairs and of English GQA training images (4 questions
each) of the chosen size.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rc3.synthetic.build import SIZES, make_world
from rc3.synthetic.corpora import ENGLISH_WEIGHT, GENERAL_SHARE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory (must be empty unless --force)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--n-images", type=int, default=None, help="number of Ds images (default: from --size)")
    ap.add_argument("--weak-overlap", type=float, default=0.5,
                    help="fraction of a Dw image's objects that all its texts mention (0..1; 1 = strictly aligned)")
    ap.add_argument("--general-share", type=float, default=GENERAL_SHARE,
                    help="share of the WikiMatrix-style Dt pairs that are claims, questions or two-image statements "
                         "instead of captions (0..1; 0 = captions only)")
    ap.add_argument("--english-weight", type=float, default=ENGLISH_WEIGHT,
                    help="how many times more sentence pairs an en-X WikiMatrix file holds than an X-Y one "
                         "(real WikiMatrix is English-centric; 1 = every language pair the same size)")
    ap.add_argument("--dt-pairs", type=int, default=None, help="WikiMatrix-style Dt sentence pairs over all language "
                    "pairs (default: from --size)")
    ap.add_argument("--gqa-train-images", type=int, default=None, help="English GQA training images, 4 questions "
                    "each (default: from --size)")
    ap.add_argument("--force", action="store_true", help="replace an existing output directory")
    ap.add_argument("--no-shards", action="store_true", help="write raw corpora and downstream sets only")
    args = ap.parse_args(argv)
    sizes = SIZES[args.size]
    if args.n_images is not None:
        if args.n_images < 1:
            ap.error("--n-images must be >= 1")
        sizes = dataclasses.replace(sizes, ds_images=args.n_images)
    if args.dt_pairs is not None:
        if args.dt_pairs < 1:
            ap.error("--dt-pairs must be >= 1")
        sizes = dataclasses.replace(sizes, dt_pairs=args.dt_pairs)
    if args.gqa_train_images is not None:
        if args.gqa_train_images < 1:
            ap.error("--gqa-train-images must be >= 1")
        sizes = dataclasses.replace(sizes, gqa_images=(args.gqa_train_images, sizes.gqa_images[1]))
    if not 0.0 <= args.weak_overlap <= 1.0:
        ap.error("--weak-overlap must lie in [0, 1]")
    if not 0.0 <= args.general_share <= 1.0:
        ap.error("--general-share must lie in [0, 1]")
    if not args.english_weight > 0:
        ap.error("--english-weight must be > 0")
    try:
        world = make_world(args.out, seed=args.seed, sizes=sizes, weak_overlap=args.weak_overlap, force=args.force,
                           shards=not args.no_shards, general_share=args.general_share,
                           english_weight=args.english_weight)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, info in world["shards"].items():
        print(f"shards/{name}: {info['samples']} samples in {info['shards']} shard(s); skipped {info['skipped']}")
    print(f"downstream: {world['downstream']['n_feature_keys']} feature keys; tokenizer vocab "
          f"{world['tokenizer']['vocab_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
