"""`rc3` command line over rc3.inference: embed, index, search, classify and translate, printing tables.

    rc3 embed MODEL --text "a dog" --text "ein Hund" --lang en de [--out emb.safetensors]
    rc3 embed MODEL --image photos/1.jpg --features feats.h5
    rc3 index MODEL --image-dir photos/ --features feats.h5 --out photos.index
    rc3 index MODEL --image-dir photos/ --detector butd.safetensors --out photos.index   # resumable
    rc3 search MODEL --index photos.index --query "a dog on grass" --lang en --k 5 [--no-rerank] [--html top.html]
    rc3 classify MODEL --image 1.jpg --text "Two dogs play." --lang en     # XVNLI / xGQA head
    rc3 classify MODEL --image left.jpg --image2 right.jpg --text "..." --lang id   # MaRVL head
    rc3 translate MODEL --text "a dog runs" --src en --tgt de [--image 1.jpg] [--num-beams 4]

Also `python -m rc3.cli ...`. Errors (missing files, wrong model kind, an empty --text/--query) print one
line and exit 2; a text longer than the model reads prints a warning with its length in pieces. Files
under --image-dir that are not images (or cannot be read) are listed on stderr and the rest is used.

`rc3 index --detector W` over many image files extracts their regions first, with a progress bar
and decoding in --loader-workers processes, into chunk files renamed into place when complete and
merged into OUT.features.h5 beside the index (rc3.vision.image_folder): an interrupted command, run
again, extracts only the images it had not finished, and a later one reuses the store.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from rc3 import atomic, heap

# How rc3.inference names the inputs in its errors, when they come from this command.
CLI_ARG_NAMES = {"features": "--features FILE.h5", "detector_weights": "--detector WEIGHTS"}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with aligned columns (floats to 4 decimals)."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "| " + " | ".join("-" * w for w in widths) + " |", *(line(r) for r in cells)])


def _images_of(args: argparse.Namespace) -> list[str]:
    images = list(args.image or [])
    if getattr(args, "image_list", None):
        images += [ln.strip() for ln in Path(args.image_list).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if getattr(args, "image_dir", None):
        root = Path(args.image_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"--image-dir {root}: no such folder")
        found, skipped = scan_image_dir(root)
        _report_skipped(skipped, f"under --image-dir {root}")
        if not found:
            raise ValueError(f"--image-dir {root}: no usable image files"
                             + (f" ({len(skipped)} skipped, listed above)" if skipped else " (the folder is empty)"))
        images += found
    return images


def scan_image_dir(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files under `root` (sorted) and the other files with why each is left out.

    Every file is looked at, not only those named like images: a stray or broken file is listed as
    "not an image" / "unreadable (...)" rather than dropped unseen or, named *.jpg, stopping a whole
    index later with an error about the step that first touched it. Hidden files are ignored."""
    from rc3.data.images import image_file_problem

    found, skipped = [], []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts) or p.is_dir():
            continue
        problem = image_file_problem(p)
        if problem is None:
            found.append(str(p))
        else:
            skipped.append((str(p), problem))
    return found, skipped


def _report_skipped(skipped: Sequence[tuple[str, str]], where: str) -> None:
    if skipped:
        print(f"skipped {len(skipped)} file(s) {where}:\n" + "\n".join(f"  {name}: {why}" for name, why in skipped),
              file=sys.stderr, flush=True)


def _checked_texts(texts: Sequence[str], flag: str) -> list[str]:
    """`texts` given as `flag` on the command line; an empty or whitespace-only one is an error naming it."""
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"{flag}: text {i + 1} of {len(texts)} is {'empty' if not text else 'whitespace only'} "
                             f"({text!r}); give a non-empty text")
    return list(texts)


def _texts_of(args: argparse.Namespace) -> list[str]:
    texts = _checked_texts(list(args.text or []), getattr(args, "text_flag", "--text"))
    if getattr(args, "text_file", None):
        # blank lines separate nothing in a file of texts: they are skipped, as always
        texts += [ln.rstrip("\n") for ln in Path(args.text_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
    return texts


def _langs(langs: Sequence[str], n: int) -> str | list[str]:
    if len(langs) == 1:
        return langs[0]
    if len(langs) != n:
        raise ValueError(f"--lang: give one language, or one per text ({n}), not {len(langs)}")
    return list(langs)


def _load(args: argparse.Namespace):
    from rc3.inference import load

    return load(args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size, features=args.features,
                images=args.images_root, detector_weights=args.detector, progress=not args.quiet,
                detector_kind=args.detector_kind, arg_names=CLI_ARG_NAMES)


def cmd_embed(args: argparse.Namespace) -> None:
    import torch

    m = _load(args)
    texts, images = _texts_of(args), _images_of(args)
    if not texts and not images:
        raise ValueError("embed: give --text/--text-file or --image/--image-list/--image-dir")
    out: dict[str, torch.Tensor] = {}
    rows = []
    if texts:
        out["texts"] = m.embed_texts(texts, _langs(args.lang, len(texts)))
        rows += [("text", t, *e[:args.dims].tolist()) for t, e in zip(texts, out["texts"])]
    if images:
        out["images"] = m.embed_images(images)
        rows += [("image", i, *e[:args.dims].tolist()) for i, e in zip(images, out["images"])]
    print(format_table(["kind", "input", *(f"d{j}" for j in range(min(args.dims, m.embed_dim)))], rows))
    if args.out:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in out.items()}, str(args.out),
                  metadata={"texts": json.dumps(texts, ensure_ascii=False), "images": json.dumps(images)})
        print(f"wrote {args.out} ({', '.join(f'{k} {tuple(v.shape)}' for k, v in out.items())})")


def cmd_index(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:  # before hours of extraction, not after
        raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    m = _load(args)
    images = _images_of(args)
    if not images:
        raise ValueError("index: give --image/--image-list/--image-dir")
    unreadable: list[tuple[str, str]] = []
    inputs: list[Any] = list(images)
    if args.detector and m.needs_roi:
        inputs, images = _regions_of_files(args, m, images, unreadable)
    index = m.build_index(inputs, names=images, on_unreadable=lambda name, why: unreadable.append((name, why)))
    _report_skipped(unreadable, "that could not be read")
    index.save(out, overwrite=args.overwrite)
    print(f"wrote {out}: {len(index)} images, {index.embeddings.shape[1]}-d, visual mode {index.mode}"
          + (f" ({len(unreadable)} unreadable skipped)" if unreadable else ""))


def features_store_of(out: str | os.PathLike) -> Path:
    """Where `rc3 index --detector` keeps the regions it extracts: beside the index, OUT.features.h5."""
    out = Path(out)
    return out.with_name(out.name + ".features.h5")


def _regions_of_files(args: argparse.Namespace, m: Any, images: list[str],
                      unreadable: list[tuple[str, str]]) -> tuple[list[Any], list[str]]:
    """Extract the regions of the image files among `images` into a resumable store (rc3.vision.image_folder)
    and return (inputs for build_index, their names); feature-store keys pass through unchanged."""
    import time

    from rc3.vision.image_folder import extract_folder

    files = [p for p in images if Path(p).is_file()]
    store = features_store_of(args.out)
    regions = None
    if files:
        t0 = time.perf_counter()
        try:
            regions = extract_folder(files, store, Path(args.detector), kind=args.detector_kind, device=args.device,
                                     num_boxes=m.num_regions, chunk_size=args.chunk_size,
                                     loader_workers=args.loader_workers, progress=not args.quiet,
                                     batch_size=args.detector_batch_size)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"--detector {args.detector}: {err}") from None
        done = regions.extracted
        print(f"regions: {done} images extracted ({done / max(time.perf_counter() - t0, 1e-9):.2f} images/s), "
              f"{regions.resumed} done earlier, {len(regions.skipped)} unreadable; kept in {store}",
              file=sys.stderr, flush=True)
        unreadable += sorted(regions.skipped.items())
    inputs: list[Any] = []
    names: list[str] = []
    for p in images:
        if regions is not None and p in regions.keys:
            item: dict[str, Any] = {**regions.regions(p), "name": p}
            if m.needs_pixels:
                item["image"] = p
            inputs.append(item)
        elif regions is None or p not in regions.skipped:
            inputs.append(p)
        else:
            continue
        names.append(p)
    return inputs, names


def cmd_search(args: argparse.Namespace) -> None:
    m = _load(args)
    if args.index:
        index = m.load_index(args.index)
    else:
        images = _images_of(args)
        if not images:
            raise ValueError("search: give --index DIR (from `rc3 index`) or the images to search (--image ...)")
        index = m.build_index(images)
    queries = _texts_of(args)
    if not queries:
        raise ValueError("search: give --query/--text or --text-file")
    k = "all" if args.k == "all" else int(args.k)
    hits = m.search(index, queries, _langs(args.lang, len(queries)), k=k, rerank=not args.no_rerank)
    score = "similarity" if args.no_rerank else "ITM logit"
    for q, row in zip(queries, hits):
        print(f"\nquery: {q}")
        print(format_table(["rank", "image", score, "similarity"], [(h.rank + 1, h.name, h.score, h.similarity) for h in row]))
    if args.html:
        write_search_html(args.html, queries, hits, score)
        print(f"\nwrote {args.html}")


def write_search_html(path: str | os.PathLike, queries: Sequence[str], hits: Sequence[Sequence[Any]], score: str) -> Path:
    """A self-contained page: per query, its top results (image thumbnail when the name is a file, name, scores)."""
    out = Path(path)
    from rc3.modeling.visual_inputs import IMAGE_SUFFIXES  # torch: only once there are hits to show

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>RC3 search results</title><style>",
             "body{font-family:sans-serif;margin:1em} section{margin-bottom:2em} .hits{display:flex;flex-wrap:wrap;gap:12px}",
             "figure.hit{margin:0;width:180px} figure.hit img{width:180px;height:135px;object-fit:cover;background:#ddd}",
             "figcaption{font-size:12px;word-break:break-all}</style></head><body><h1>RC3 search results</h1>"]
    for qi, (q, row) in enumerate(zip(queries, hits)):
        parts.append(f"<section class='query' id='q{qi}'><h2>{html.escape(q)}</h2><div class='hits'>")
        for h in row:
            img = Path(h.name)
            thumb = (f"<img src='{html.escape(img.resolve().as_uri())}' alt='{html.escape(h.name)}'>"
                     if img.suffix.lower() in IMAGE_SUFFIXES and img.is_file() else "<div class='noimg'></div>")
            parts.append(f"<figure class='hit' data-rank='{h.rank + 1}'>{thumb}<figcaption>#{h.rank + 1} "
                         f"{html.escape(h.name)}<br>{html.escape(score)} {h.score:.4f} · similarity {h.similarity:.4f}"
                         "</figcaption></figure>")
        parts.append("</div></section>")
    # Counted by the browser once the page has loaded: results shown and thumbnails actually decoded.
    parts.append("<script>window.addEventListener('load', () => { const b = document.body;"
                 " b.dataset.results = document.querySelectorAll('figure.hit').length;"
                 " b.dataset.loadedImages = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;"
                 " });</script>")
    parts.append("</body></html>")
    return atomic.write_text(out, "\n".join(parts))


def cmd_classify(args: argparse.Namespace) -> None:
    m = _load(args)
    texts, images = _texts_of(args), list(args.image or [])
    if args.tsv:
        for ln in Path(args.tsv).read_text(encoding="utf-8").splitlines():
            if ln.strip():
                cols = ln.split("\t")
                if len(cols) not in (2, 3):
                    raise ValueError(f"{args.tsv}: lines are image<TAB>text or image1<TAB>image2<TAB>text, got {ln!r}")
                if not cols[-1].strip():
                    raise ValueError(f"{args.tsv}: the text of line {ln!r} is empty; give a non-empty text")
                images.append(cols[0] if len(cols) == 2 else (cols[0], cols[1]))
                texts.append(cols[-1])
    if args.image2:
        if len(args.image2) != len(args.image or []):
            raise ValueError("classify: one --image2 per --image")
        images = [(a, b) for a, b in zip(args.image, args.image2)] + images[len(args.image):]
    if not texts:
        raise ValueError("classify: give --image and --text (or --tsv FILE)")
    preds = m.classify(images, texts, _langs(args.lang, len(texts)))
    top = min(args.top, len(m.labels))
    rows = []
    for img, t, p in zip(images, texts, preds):
        others = sorted(p.probabilities.items(), key=lambda kv: -kv[1])[:top]
        rows.append((" + ".join(img) if isinstance(img, tuple) else img, t, p.label, p.probability,
                     ", ".join(f"{k} {v:.3f}" for k, v in others)))
    print(format_table(["image", "text", f"{m.task} label", "probability", f"top {top}"], rows))


def cmd_translate(args: argparse.Namespace) -> None:
    m = _load(args)
    texts = _texts_of(args)
    if not texts:
        raise ValueError("translate: give --text or --text-file")
    images = _images_of(args) or None
    hyps = m.translate(texts, images, src=args.src, tgt=args.tgt, num_beams=args.num_beams,
                       max_new_tokens=args.max_new_tokens)
    print(format_table([args.src, args.tgt], list(zip(texts, hyps))))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rc3", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="RC3 model directory (pretrained, or finetuned with task_head.json)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"), help="default: as saved (fp32)")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--features", nargs="*", default=[], help="ROI feature stores (H5 / LMDB) to look images up in")
        p.add_argument("--images-root", default=None, help="folder where image keys are resolved to files")
        p.add_argument("--detector", default=None, metavar="WEIGHTS",
                       help="detector weights to extract ROI features of images no --features store holds: the "
                            "bottom-up-attention .safetensors of tools/convert_butd_weights.py (IGLUE's features; "
                            "for models trained on them) or torchvision COCO fasterrcnn_resnet50_fpn weights "
                            "(another feature space), told apart by the file")
        p.add_argument("--detector-kind", default=None, choices=("butd", "torchvision-coco"),
                       help="insist on one kind of --detector weights (default: whichever the file holds)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    def images(p: argparse.ArgumentParser) -> None:
        p.add_argument("--image", action="append", help="an image file or feature-store key (repeatable)")
        p.add_argument("--image-list", help="a file with one image path/key per line")
        p.add_argument("--image-dir", help="every image file under this folder (other files are listed and skipped)")

    def texts(p: argparse.ArgumentParser, flag: str = "--text") -> None:
        p.add_argument(flag, "--text" if flag != "--text" else "-t", dest="text", action="append", help="a text (repeatable)")
        p.add_argument("--text-file", help="a file with one text per line")
        p.set_defaults(text_flag=flag)

    p = sub.add_parser("embed", help="embeddings of texts and/or images")
    common(p)
    images(p)
    texts(p)
    p.add_argument("--lang", nargs="+", default=["en"], help="language of the texts (one, or one per text)")
    p.add_argument("--dims", type=int, default=4, help="embedding dimensions to print")
    p.add_argument("--out", help="also write the embeddings to this .safetensors file")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("index", help="embed images into a search index saved on disk")
    common(p)
    images(p)
    p.add_argument("--out", required=True, help="index directory to write")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--chunk-size", type=int, default=256,
                   help="with --detector: images per chunk of extracted regions (the most an interruption loses)")
    p.add_argument("--loader-workers", type=int, default=2,
                   help="with --detector: processes decoding images while the detector runs")
    p.add_argument("--detector-batch-size", type=int, default=4,
                   help="with --detector: images of equal size per detector pass (bottom-up-attention detector)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="images for text queries: FAISS candidates re-ranked by ITM")
    common(p)
    images(p)
    texts(p, "--query")
    p.add_argument("--index", help="an index directory from `rc3 index` (else --image ... are indexed now)")
    p.add_argument("--lang", nargs="+", default=["en"])
    p.add_argument("--k", default="10", help="results per query (candidates re-ranked), or 'all' for brute force")
    p.add_argument("--no-rerank", action="store_true", help="rank by embedding similarity only")
    p.add_argument("--html", help="also write an HTML page of the top results per query")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("classify", help="labels from a finetuned XVNLI / xGQA / MaRVL head")
    common(p)
    texts(p)
    p.add_argument("--image", action="append", help="the example's image (repeat with --text)")
    p.add_argument("--image2", action="append", help="the second image (MaRVL), one per --image")
    p.add_argument("--tsv", help="examples: image<TAB>text or image1<TAB>image2<TAB>text per line")
    p.add_argument("--lang", nargs="+", default=["en"])
    p.add_argument("--top", type=int, default=3, help="label probabilities to show")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("translate", help="translate text (with its image, if given)")
    common(p)
    texts(p)
    p.add_argument("--image", action="append", help="the image of each text, in order")
    p.add_argument("--src", required=True)
    p.add_argument("--tgt", required=True)
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=cmd_translate)
    return ap


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: Optional[str] = None) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    with heap.collector_paused():  # torch, transformers and the model, once the command line is known
        from rc3.inference import TextTruncatedWarning

    try:
        with warnings.catch_warnings():
            # a truncated text is worth one plain line on stderr, not a source location
            warnings.simplefilter("always", TextTruncatedWarning)
            warnings.showwarning = _show_warning
            args.func(args)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
