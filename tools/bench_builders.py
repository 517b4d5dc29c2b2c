"""Shard builder benchmark: rows/s and peak memory of build_dw and build_ds at growing sizes.

    python tools/bench_builders.py --dw-rows 100000,1000000 --ds-images 5000,20000 --workers 1,2

Inputs are generated in a temp dir in the released layouts:
  * Dw: a WIT TSV (the 17 released columns, gzipped) with R rows over R/3 image URLs in 1 to 4 of
    de/en/fr/ja each (so some images have one language and are skipped), and img2dataset output
    (tars of `<key>.jpg` + `<key>.json` with the url; 1 in 20 URLs has no image);
  * Ds: caption TSVs for N images x 6 languages (en, cs, de, fr, ja, zh) and an IGLUE-layout H5
    store of 36 x 2048 float32 features per image (1 in 50 images has none).
Each build runs in a fresh process (`--run`), timed from the call to the builder's return
(input generation excluded); peak RSS is the builder process's (and what it held after its
imports, mostly torch, which webdataset imports) and, separately, the largest of its worker
processes' (ru_maxrss; forked workers count the pages they share with the builder process). rows/s counts input rows: WIT rows for Dw, caption rows
(images x 6) for Ds. Results go to stdout as one JSON line per run and a Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIT_COLUMNS = [
    "language", "page_url", "image_url", "page_title", "section_title", "hierarchical_section_title",
    "caption_reference_description", "caption_attribution_description", "caption_alt_text_description",
    "mime_type", "original_height", "original_width", "is_main_image", "attribution_passes_lang_id",
    "page_changed_recently", "context_page_description", "context_section_description",
]
DS_LANGS = ("en", "cs", "de", "fr", "ja", "zh")
WORDS = "a small red dog runs across the green field near two old stone houses under grey clouds".split()


def _jpegs(n: int = 16) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.full((24, 32, 3), 10 + 15 * i, dtype=np.uint8)).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return out


def _text(rng: np.random.Generator) -> str:
    return " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(4, 12)))


def make_dw(root: Path, rows: int) -> tuple[Path, Path]:
    import webdataset as wds

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    wit = root / "wit_v1.train.all-00000-of-00010.tsv.gz"
    urls = []
    with gzip.open(wit, "wt", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(WIT_COLUMNS)
        written, u = 0, 0
        while written < rows:
            url = f"https://upload.wikimedia.org/wikipedia/commons/{u % 16:x}/{u:08d}.jpg"
            urls.append(url)
            for lang in ("en", "de", "fr", "ja")[: 1 + u % 4]:
                if written == rows:
                    break
                row = dict.fromkeys(WIT_COLUMNS, "")
                row.update(language=lang, image_url=url, page_url=f"https://{lang}.wikipedia.org/wiki/P{u}",
                           caption_reference_description=_text(rng), mime_type="image/jpeg")
                w.writerow([row[c] for c in WIT_COLUMNS])
                written += 1
            u += 1
    images = root / "img2dataset"
    images.mkdir()
    jpegs = _jpegs()
    per_tar = 10_000
    for t in range(0, len(urls), per_tar):
        with wds.TarWriter(str(images / f"{t // per_tar:05d}.tar"), encoder=False) as tw:
            for k, url in enumerate(urls[t: t + per_tar], start=t):
                if k % 20 == 7:
                    continue  # failed download
                tw.write({"__key__": f"{k:09d}", "jpg": jpegs[k % len(jpegs)],
                          "json": json.dumps({"url": url, "key": f"{k:09d}", "status": "success"}).encode()})
    return wit, images


def make_ds(root: Path, images: int) -> tuple[dict[str, Path], Path]:
    import h5py

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    captions = {lang: root / f"train.{lang}.tsv" for lang in DS_LANGS}
    handles = {lang: open(p, "w", encoding="utf-8") for lang, p in captions.items()}
    feats = rng.standard_normal((64, 36, 2048)).astype(np.float32)  # rows reused: generation stays fast
    with h5py.File(root / "features.h5", "w") as f:
        for i in range(images):
            image_id = str(3_000_000 + i)
            for lang, fh in handles.items():
                fh.write(f"{image_id}\t{lang} {_text(rng)}\n")
            if i % 50 == 13:
                continue
            g = f.create_group(image_id)
            g["features"] = feats[i % 64]
            g["boxes"] = np.tile(np.array([0, 0, 50, 40], np.float32), (36, 1))
            g["img_w"], g["img_h"] = 100, 80
    for fh in handles.values():
        fh.close()
    return captions, root / "features.h5"


def run_one(spec: dict) -> dict:
    """In a fresh process: one build, timed, with its peak memory."""
    from rc3.data.builders.ds import build_ds
    from rc3.data.builders.dw import build_dw

    out = Path(spec["out"])
    kib = 1 if sys.platform != "darwin" else 1 / 1024
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 1024  # after the imports (torch)
    t0 = time.perf_counter()
    if spec["corpus"] == "dw":
        stats = build_dw([Path(spec["wit"])], out, Path(spec["images"]), workers=spec["workers"], show_progress=False)
    else:
        stats = build_ds({k: Path(v) for k, v in spec["captions"].items()}, Path(spec["features"]), out,
                         workers=spec["workers"], show_progress=False)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "written": stats.written, "skipped": stats.total_skipped,
            "shards": len(stats.shards),
            "rss_after_imports_mib": round(baseline, 1),
            "peak_rss_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 1024, 1),
            "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dw-rows", default="100000,1000000", help="comma-separated WIT row counts ('' to skip)")
    ap.add_argument("--ds-images", default="5000,20000", help="comma-separated Ds image counts ('' to skip)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--tmp", type=Path, default=None, help="where inputs and shards go (default: a temp dir)")
    ap.add_argument("--run", help=argparse.SUPPRESS)  # internal: one build, spec as JSON
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_one(json.loads(args.run))), flush=True)
        return
    workers = [int(w) for w in args.workers.split(",") if w]
    results = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        jobs = []
        for rows in [int(r) for r in args.dw_rows.split(",") if r]:
            t0 = time.perf_counter()
            wit, images = make_dw(root / f"dw-in-{rows}", rows)
            print(f"generated Dw inputs ({rows} rows) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            jobs += [("dw", rows, {"wit": str(wit), "images": str(images)})]
        for n in [int(r) for r in args.ds_images.split(",") if r]:
            t0 = time.perf_counter()
            captions, features = make_ds(root / f"ds-in-{n}", n)
            print(f"generated Ds inputs ({n} images) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            jobs += [("ds", n * len(DS_LANGS), {"captions": {k: str(v) for k, v in captions.items()},
                                                "features": str(features)})]
        for corpus, rows, inputs in jobs:
            for w in workers:
                out = root / f"out-{corpus}-{rows}-{w}"
                spec = {"corpus": corpus, "workers": w, "out": str(out), **inputs}
                proc = subprocess.run([sys.executable, __file__, "--run", json.dumps(spec)], capture_output=True,
                                      text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                if proc.returncode:
                    raise SystemExit(f"build failed: {proc.stderr[-2000:]}")
                res = {"corpus": corpus, "rows": rows, "workers": w,
                       **json.loads(proc.stdout.strip().splitlines()[-1])}
                res["rows_per_s"] = round(rows / res["seconds"])
                results.append(res)
                print(json.dumps(res), flush=True)
                subprocess.run(["rm", "-rf", str(out)], check=True)
    print(f"\n{platform.node()} | {os.cpu_count()} CPUs | python {platform.python_version()}")
    print("| corpus | input rows | workers | seconds | rows/s | written | skipped | RSS after imports (MiB) | "
          "peak RSS main (MiB) | peak RSS worker (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['corpus']} | {r['rows']:,} | {r['workers']} | {r['seconds']} | {r['rows_per_s']:,} | "
              f"{r['written']:,} | {r['skipped']:,} | {r['rss_after_imports_mib']} | {r['peak_rss_main_mib']} | "
              f"{r['peak_rss_worker_mib']} |")


if __name__ == "__main__":
    main()
