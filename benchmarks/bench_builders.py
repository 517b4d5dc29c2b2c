"""Shard builder benchmark: rows/s, CPU time and peak memory of build_dw and build_ds at growing sizes.

    python benchmarks/bench_builders.py --dw-rows 100000,1000000 --ds-images 5000,20000 --workers 1,2
    python benchmarks/bench_builders.py --dw-rows '' --ds-images 100000,1000000 --workers 1,2 --inputs /data/bench-in

Inputs are generated in a temp dir (Ds inputs in `--inputs` instead, kept and reused) in the released layouts:
  * Dw: a WIT TSV (the 17 released columns, gzipped) with R rows over R/3 image URLs in 1 to 4 of
    de/en/fr/ja each (so some images have one language and are skipped), and img2dataset output
    (tars of `<key>.jpg` + `<key>.json` with the url; 1 in 20 URLs has no image);
  * Ds: caption TSVs for N images x 6 languages (en, cs, de, fr, ja, zh) and an IGLUE-layout H5
    store, one group per image id with `features` (36 x 2048 float32), `boxes`, `img_w`, `img_h`
    (1 in 50 images has none). Only the first `--ds-pool` (1024) groups hold their own random
    arrays; every other image id is an HDF5 hard link to one of them (make_ds). The builder
    reads each id as in the release (open the group, read its four datasets), but the store is
    ~300 MB instead of ~295 GB for 1M images. What this leaves out: those 300 MB stay in the
    page cache, so the feature reads never wait for the disk; a real 295 GB store does not fit
    in memory and is read from disk at ~300 KB an image (60 MB/s at 200 images/s).
Each build runs in a fresh process (`--run`), timed from the call to the builder's return
(input generation excluded). Each shard is written, fsynced and renamed as in any build; then
the benchmark (ShardTally, patched over the writer's shard-closing step in that process only)
counts its bytes and its samples from the tar headers, checks the count against the writer's,
and deletes it (`--keep-shards` keeps them until the run ends), so a 1M-image Ds build (~147 GB
of shards) needs the disk of one shard; that counting time is included and also reported apart.
Peak RSS is the builder process's (and what it held after its imports, mostly torch, which
webdataset imports) and, separately, the largest of its worker processes' (ru_maxrss; forked
workers count the pages they share with the builder process). CPU s is user + system time of
the builder process and its workers: on a shared machine it says what the build cost, which
wall time does not. rows/s counts input rows: WIT rows for Dw, caption rows (images x 6) for
Ds. load is the 1-minute load average at the start and the end. Results go to stdout as one
JSON line per run and a Markdown table.
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


def make_ds(root: Path, images: int, pool: int = 1024) -> tuple[dict[str, Path], Path]:
    """Caption TSVs for `images` ids x 6 languages and an IGLUE-layout H5 store for them.

    Every image id with features is a top-level group of the store, as in the release, but only
    the first `pool` of them hold their own arrays: the others are HDF5 hard links to one of
    those groups (id k links to pool group k mod pool). The builder opens them like any other
    group; the file stays ~pool x 300 KB whatever the number of images (1M distinct 36 x 2048
    float32 arrays would be ~295 GB)."""
    import h5py

    rng = np.random.default_rng(0)
    feat_rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    done = root / "complete"  # written last: a directory without it is generated again
    captions = {lang: root / f"train.{lang}.tsv" for lang in DS_LANGS}
    if done.is_file() and done.read_text() == f"{images} {pool}":
        return captions, root / "features.h5"
    handles = {lang: open(p, "w", encoding="utf-8") for lang, p in captions.items()}
    boxes = np.tile(np.array([0, 0, 50, 40], np.float32), (36, 1))
    owners: list = []  # the pool: groups that hold their own arrays
    block = 10_000
    with h5py.File(root / "features.h5", "w") as f:
        for b0 in range(0, images, block):
            n = min(block, images - b0)
            # captions of 4 to 11 words, drawn a block at a time (per line, generating 1M x 6 took minutes)
            lengths = rng.integers(4, 12, (n, len(DS_LANGS)))
            words = rng.integers(0, len(WORDS), (n, len(DS_LANGS), 11))
            for j in range(n):
                i = b0 + j
                image_id = str(3_000_000 + i)
                for k, (lang, fh) in enumerate(handles.items()):
                    fh.write(f"{image_id}\t{lang} {' '.join(WORDS[w] for w in words[j, k, :lengths[j, k]])}\n")
                if i % 50 == 13:
                    continue
                if len(owners) < pool:
                    g = f.create_group(image_id)
                    g["features"] = feat_rng.standard_normal((36, 2048)).astype(np.float32)
                    g["boxes"] = boxes
                    g["img_w"], g["img_h"] = 100, 80
                    owners.append(g)
                else:
                    f[image_id] = owners[i % pool]  # a hard link: another name for the same group
    for fh in handles.values():
        fh.close()
    done.write_text(f"{images} {pool}")
    return captions, root / "features.h5"


class ShardTally:
    """Counts each shard the writer finishes (bytes, samples) and, with `discard`, deletes it.

    Installed over ShardWriter._finish_current in the benchmark's build process only: the shard is
    written, fsynced and renamed as in any build, then its size is taken, its samples are counted
    from its tar headers (members named `<key>.captions.json`, one per sample, checked against
    what the writer put in) and, with `discard`, it is removed, so that a 1M-image Ds build needs
    the disk of one shard (~150 MB) instead of ~147 GB. The time this takes is reported apart."""

    def __init__(self, discard: bool) -> None:
        self.discard = discard
        self.shards = self.bytes = self.samples = 0
        self.seconds = 0.0

    def install(self) -> None:
        from rc3.data.shard_writer import ShardWriter

        finish = ShardWriter._finish_current
        tally = self

        def finish_and_count(writer: ShardWriter) -> None:
            if writer._file is None:
                return
            expected = writer._count
            finish(writer)
            t0 = time.perf_counter()
            tally.count(writer.shards[-1], expected)
            tally.seconds += time.perf_counter() - t0

        ShardWriter._finish_current = finish_and_count  # type: ignore[method-assign]

    def count(self, shard: Path, expected: int) -> None:
        n = 0
        with open(shard, "rb") as fh:  # walk the 512-byte headers (tarfile's objects cost ~0.5 s a shard)
            while True:
                header = fh.read(512)
                if len(header) < 512 or not header.strip(b"\0"):
                    break
                size = int(header[124:136].strip(b" \0") or b"0", 8)
                name = header[:100].rstrip(b"\0")
                n += header[156:157] in (b"0", b"\0") and name.endswith(b".captions.json")
                fh.seek((size + 511) // 512 * 512, os.SEEK_CUR)
        if n != expected:
            raise SystemExit(f"{shard}: {n} samples in the tar, the writer wrote {expected}")
        self.shards += 1
        self.samples += n
        self.bytes += shard.stat().st_size
        if self.discard:
            shard.unlink()


def run_one(spec: dict) -> dict:
    """In a fresh process: one build, timed, with its peak memory."""
    from rc3.data.builders.ds import build_ds
    from rc3.data.builders.dw import build_dw

    out = Path(spec["out"])
    tally = ShardTally(spec.get("discard", False))
    tally.install()
    kib = 1 if sys.platform != "darwin" else 1 / 1024
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 1024  # after the imports (torch)
    load0 = os.getloadavg()[0]
    cpu0 = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
    t0 = time.perf_counter()
    if spec["corpus"] == "dw":
        stats = build_dw([Path(spec["wit"])], out, Path(spec["images"]), workers=spec["workers"], show_progress=False)
    else:
        stats = build_ds({k: Path(v) for k, v in spec["captions"].items()}, Path(spec["features"]), out,
                         workers=spec["workers"], show_progress=False)
    seconds = time.perf_counter() - t0
    cpu = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_seconds = sum(r.ru_utime + r.ru_stime for r in cpu) - cpu0
    if tally.samples != stats.written or tally.shards != len(stats.shards):
        raise SystemExit(f"counted {tally.samples} samples in {tally.shards} shards, the builder reports "
                         f"{stats.written} in {len(stats.shards)}")
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "written": stats.written,
            "skipped": stats.total_skipped,
            "shards": len(stats.shards), "shard_gb": round(tally.bytes / 1e9, 2),
            "count_seconds": round(tally.seconds, 2), "discarded": tally.discard,
            "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}",
            "rss_after_imports_mib": round(baseline, 1),
            "peak_rss_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 1024, 1),
            "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dw-rows", default="100000,1000000", help="comma-separated WIT row counts ('' to skip)")
    ap.add_argument("--ds-images", default="5000,20000", help="comma-separated Ds image counts ('' to skip)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--ds-pool", type=int, default=1024,
                    help="distinct feature arrays in the Ds store; the other images hard-link to them")
    ap.add_argument("--keep-shards", action="store_true",
                    help="keep each shard until its build ends (default: delete it once counted; needs "
                         "~150 KB of disk per Ds image)")
    ap.add_argument("--tmp", type=Path, default=None, help="where inputs and shards go (default: a temp dir)")
    ap.add_argument("--inputs", type=Path, default=None,
                    help="keep the generated Ds inputs here and reuse them when present (default: in --tmp, removed)")
    ap.add_argument("--run", help=argparse.SUPPRESS)  # internal: one build, spec as JSON
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_one(json.loads(args.run))), flush=True)
        return
    workers = [int(w) for w in args.workers.split(",") if w]
    results = []
    if args.tmp is not None:
        args.tmp.mkdir(parents=True, exist_ok=True)
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
            captions, features = make_ds((args.inputs or root) / f"ds-in-{n}", n, args.ds_pool)
            print(f"generated Ds inputs ({n} images) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            jobs += [("ds", n * len(DS_LANGS), {"captions": {k: str(v) for k, v in captions.items()},
                                                "features": str(features)})]
        for corpus, rows, inputs in jobs:
            for w in workers:
                out = root / f"out-{corpus}-{rows}-{w}"
                spec = {"corpus": corpus, "workers": w, "out": str(out), "discard": not args.keep_shards, **inputs}
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
    print("| corpus | input rows | workers | seconds | CPU s | rows/s | written | skipped | shards (GB) | "
          "RSS after imports (MiB) | peak RSS main (MiB) | peak RSS worker (MiB) | load |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        print(f"| {r['corpus']} | {r['rows']:,} | {r['workers']} | {r['seconds']} | {r['cpu_seconds']} | "
              f"{r['rows_per_s']:,} | {r['written']:,} | {r['skipped']:,} | {r['shard_gb']} | {r['rss_after_imports_mib']} | "
              f"{r['peak_rss_main_mib']} | {r['peak_rss_worker_mib']} | {r['load']} |")


if __name__ == "__main__":
    main()
