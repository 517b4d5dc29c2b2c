r"""Build WebDataset shards for RC3 pretraining from the released corpora.

    python tools/build_shards.py ds --captions en=cc3m.en.tsv de=cc3m.de.tsv ... \
        --features cc3m_boxes36.h5 --out shards/ds [--images-dir cc3m/images]
    python tools/build_shards.py dw --wit wit_v1.train.all-*.tsv.gz --images wit_img2dataset/ --out shards/dw
    python tools/build_shards.py dt --wikimatrix de en WikiMatrix.de-en.tsv.gz --min-score 1.06 \
        --parallel en de train.en.gz train.de.gz --captions en=cc3m.en.tsv de=cc3m.de.tsv --out shards/dt

Prints what was written and skipped (and the Table-5 language-pair table for dw). `--workers N` reads
features and images in N processes (ds, dw); `--resume` continues an interrupted build without
rewriting its finished shards.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rc3.data.builders.common import BuildStats
from rc3.data.builders.dt import CaptionPairsSource, DtSource, LineAlignedSource, WikiMatrixSource, build_dt
from rc3.data.builders.dw import DW_LANGS, TEXT_SOURCES, build_dw, format_pair_table
from rc3.tokenization import display_order


def _lang_paths(items: list[str] | None, flag: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items or []:
        lang, sep, path = item.partition("=")
        if not sep or not lang or not path:
            raise SystemExit(f"error: {flag} expects LANG=PATH, got {item!r}")
        out[lang] = Path(path)
    return out


def _common(p: argparse.ArgumentParser, prefix: str) -> None:
    p.add_argument("--out", type=Path, required=True, help="output directory for the shards")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--prefix", default=prefix, help=f"shard file prefix (default {prefix!r})")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty output dir (replaces shards of this prefix)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted build in --out, keeping its finished shards")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="corpus", required=True)

    ds = sub.add_parser("ds", help="CC3M captions + translations + ROI features")
    ds.add_argument("--captions", nargs="+", required=True, metavar="LANG=PATH",
                    help="one caption file per language (TSV image_id<TAB>caption or JSONL); en drives the order")
    ds.add_argument("--features", type=Path, required=True,
                    help="IGLUE H5 file, volta LMDB directory, or UNITER/UC2 img_db folder (feat_th0.2_max100_min10*/)")
    ds.add_argument("--images-dir", type=Path, default=None,
                    help="also store the JPEGs (needed for Combined input): a folder of <image_id>.jpg or img2dataset "
                         "output (tars; matched by img2dataset key, URL or URL file name)")
    ds.add_argument("--min-langs", type=int, default=None, help="skip images with captions in fewer languages (default 2)")
    ds.add_argument("--workers", type=int, default=1,
                    help="processes reading features/images (default 1; the shards are the same for any count)")
    _common(ds, "ds")

    dw = sub.add_parser("dw", help="WIT rows grouped by image URL")
    dw.add_argument("--wit", nargs="+", type=Path, required=True, help="WIT TSV files (.tsv or .tsv.gz)")
    dw.add_argument("--images", type=Path, required=True,
                    help="img2dataset output dir (tars with jpg+json) or a dir of images named sha1(url) or by URL basename")
    dw.add_argument("--langs", default=",".join(DW_LANGS), help="comma-separated languages (default %(default)s)")
    dw.add_argument("--text-source", choices=sorted(TEXT_SOURCES), default="reference",
                    help="WIT text of a row: the reference caption (then alt, attribution), the alt text, or the "
                         "long context descriptions (default %(default)s; FIDELITY.md)")
    dw.add_argument("--workers", type=int, default=1,
                    help="processes reading images (default 1; the shards are the same for any count)")
    _common(dw, "dw")

    dt = sub.add_parser("dt", help="parallel text pairs")
    dt.add_argument("--wikimatrix", nargs=3, action="append", metavar=("LANG_A", "LANG_B", "TSV"),
                    help="WikiMatrix TSV (score, sentence A, sentence B); repeatable")
    dt.add_argument("--min-score", type=float, default=None, help="minimum WikiMatrix margin score")
    dt.add_argument("--parallel", nargs=4, action="append", metavar=("SRC_LANG", "TGT_LANG", "SRC_FILE", "TGT_FILE"),
                    help="line-aligned files (e.g. Multi30K raw/<split>.<lang>.gz); repeatable")
    dt.add_argument("--captions", nargs="+", metavar="LANG=PATH", help="Ds caption files; pairs en-xx per image")
    dt.add_argument("--caption-pairs", default=None, help="caption language pairs, e.g. en-de,en-fr (default: en with each)")
    _common(dt, "dt")
    return parser.parse_args(argv)


def _dt_sources(args: argparse.Namespace) -> list[DtSource]:
    sources: list[DtSource] = []
    for a, b, path in args.wikimatrix or []:
        sources.append(WikiMatrixSource(Path(path), a, b, args.min_score))
    for a, b, fa, fb in args.parallel or []:
        sources.append(LineAlignedSource(Path(fa), Path(fb), a, b))
    if args.captions:
        pairs = None
        if args.caption_pairs:
            pairs = [tuple(p.split("-", 1)) for p in args.caption_pairs.split(",")]
        sources.append(CaptionPairsSource(_lang_paths(args.captions, "--captions"), pairs))
    if not sources:
        raise SystemExit("error: dt needs at least one of --wikimatrix, --parallel, --captions")
    return sources


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common = dict(shard_size=args.shard_size, prefix=args.prefix, overwrite=args.overwrite, show_progress=not args.no_progress,
                  resume=args.resume)
    try:
        stats: BuildStats
        if args.corpus == "ds":
            from rc3.data.builders.ds import build_ds  # ROI features: numpy/torch, not needed by `--help`

            stats = build_ds(_lang_paths(args.captions, "--captions"), args.features, args.out,
                             images_dir=args.images_dir, min_langs=args.min_langs, workers=args.workers, **common)
        elif args.corpus == "dw":
            langs = tuple(x for x in args.langs.split(",") if x)
            stats = build_dw(args.wit, args.out, args.images, langs=langs, text_source=args.text_source,
                             workers=args.workers, **common)
        else:
            stats = build_dt(_dt_sources(args), args.out, **common)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(stats.summary())
    if args.corpus == "dw" and stats.pair_table is not None:
        print("\nlanguage-pair tuples (as Table 5 of the paper):")
        print(format_pair_table(stats.pair_table, display_order(langs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
