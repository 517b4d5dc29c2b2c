"""Statistics of RC3 WebDataset shards: samples, languages, language pairs, broken samples/shards.

    python tools/dataset_stats.py 'shards/ds/ds-*.tar' 'shards/dw/dw-{000000..000009}.tar' [--json]

Every sample is decoded by its corpus (rc3.data.corpora: detected from its members, no pickles); a sample that fails is counted by
field and reason, a shard that cannot be read (truncated, not a tar) is listed as broken.
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from braceexpand import braceexpand

from rc3.data.schemas import SampleError
from rc3.tokenization import display_order


def expand(patterns: list[str]) -> list[Path]:
    """Brace patterns, then globs; a pattern that matches nothing is kept so it is reported."""
    paths: list[str] = []
    for pattern in patterns:
        for item in braceexpand(pattern):
            hits = sorted(glob.glob(item))
            paths.extend(hits or [item])
    return [Path(p) for p in dict.fromkeys(paths)]


def _samples(path: Path) -> Any:
    from webdataset.tariterators import group_by_keys, tar_file_iterator  # imports torch: not for `--help`

    with open(path, "rb") as fh:
        files = ({**f, "__url__": str(path)} for f in tar_file_iterator(fh))
        yield from group_by_keys(files)


def collect(shards: list[Path], verify_images: bool = True) -> dict[str, Any]:
    from rc3.data.corpora import detect  # the corpora decode images with torch: not for `--help`

    samples: Counter[str] = Counter()
    langs: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    broken_samples: Counter[str] = Counter()
    broken_shards: list[str] = []
    for path in shards:
        if not path.is_file():
            broken_shards.append(f"{path} (missing)")
            continue
        try:
            for raw in _samples(path):
                try:
                    corpus = detect(raw)
                    # without image checks, an optional image is left alone (a required one is still decoded)
                    sample = corpus.inspect(raw) if verify_images else corpus.decode(raw, False, None)
                except SampleError as exc:
                    broken_samples[f"{exc.field}: {exc.reason.split(' (')[0]}"] += 1
                    continue
                samples[corpus.name] += 1
                present = corpus.languages(sample)
                langs.update(present)
                for a, b in itertools.combinations(sorted(set(present)), 2):
                    pairs[(a, b)] += 1
        except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
            broken_shards.append(f"{path} ({type(exc).__name__}: {exc})")
    return {
        "shards": len(shards),
        "samples": dict(samples),
        "languages": dict(langs),
        "pairs": {f"{a}-{b}": n for (a, b), n in sorted(pairs.items())},
        "broken_samples": dict(broken_samples),
        "broken_shards": broken_shards,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [f"shards: {report['shards']}  samples: {sum(report['samples'].values())} " + str(report["samples"])]
    langs = display_order(report["languages"])  # the order of the builders' tables
    lines.append("languages: " + ", ".join(f"{lg}={report['languages'][lg]:,}" for lg in langs))
    if langs:
        pair = {tuple(k.split("-")): v for k, v in report["pairs"].items()}
        names = [lg.capitalize() for lg in langs]
        rows = [[""] + names]
        for a in langs:
            cells = [f"{report['languages'][a]:,}" if a == b else f"{pair.get((a, b), pair.get((b, a), 0)):,}" for b in langs]
            rows.append([a.capitalize()] + cells)
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines.append("language pairs (diagonal: samples with that language):")
        lines.extend("  " + "  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)
    n_bad = sum(report["broken_samples"].values())
    lines.append(f"broken samples: {n_bad}")
    lines.extend(f"  {reason}: {n}" for reason, n in sorted(report["broken_samples"].items()))
    lines.append(f"broken shards: {len(report['broken_shards'])}")
    lines.extend(f"  {s}" for s in report["broken_shards"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", help="shard paths, globs ('ds-*.tar') or brace patterns ('ds-{000000..000009}.tar')")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-verify-images", action="store_true", help="skip JPEG decoding of Ds samples (faster)")
    args = parser.parse_args(argv)
    shards = expand(args.shards)
    report = collect(shards, verify_images=not args.no_verify_images)
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else format_report(report))
    return 1 if report["broken_shards"] and not report["samples"] else 0


if __name__ == "__main__":
    sys.exit(main())
