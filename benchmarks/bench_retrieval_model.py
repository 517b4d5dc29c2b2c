#!/usr/bin/env python
"""Retrieve-then-rerank against brute-force ITM with a finetuned ITR model, on real annotation files.

The recipe's own evaluation path (rc3.finetune.itr.RetrievalEvaluator: dual embeddings, FAISS top-k,
ITM re-ranking) on a Flickr30k-layout test set, side by side in one process:
1. FAISS top-k + ITM re-ranking (`itr.k = k`), both directions: what finetune/itr.py runs;
2. brute force: the ITM logit of every (image, caption) pair, computed once (one score matrix, each
   pair scored a single time, the cheapest exhaustive cross-encoder), then both rankings read off it
   with rc3.finetune.retrieval's `k = "all"` path (the same sort and tie-breaking as the recipe).
The re-rank timing includes embedding every image and caption (brute force needs no embeddings). Reports pairs scored,
seconds, R@1/5/10 in both directions and the paper's mean R@1, the time ratio, and the device,
date and commit.

    python finetune/itr.py --config configs/finetune/synthetic/itr.yaml --init MODEL --output-dir runs/itr \
        --set data.root=WORLD/downstream ...            # writes runs/itr/model (RC3 + ITR heads)
    python benchmarks/bench_retrieval_model.py --model runs/itr/model --root WORLD/downstream \
        --ann flickr30k/annotations/valid_ann.jsonl flickr30k/annotations/test_ann.jsonl   # 1,000 x 5,000
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rc3.finetune.classification import visual_source
from rc3.finetune.cli import parse_cli
from rc3.finetune.heads import HEAD_META, load_head
from rc3.finetune.itr import RetrievalEvaluator, build_itr_model
from rc3.finetune.readers.xflickrco import caption_table, read_retrieval
from rc3.finetune.retrieval import itr_recall
from rc3.finetune.trainer import FinetuneRun
from rc3.provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]

WATCHED = ["rc3/finetune/retrieval.py", "rc3/finetune/itr.py", "benchmarks/bench_retrieval_model.py"]


def score_matrix(ev: RetrievalEvaluator, n_images: int, n_captions: int, rows: int) -> torch.Tensor:
    """ITM logits [images, captions], every pair scored once, `rows` images per call of the evaluator."""
    out = torch.empty(n_images, n_captions)
    caps = torch.arange(n_captions)
    for a in tqdm(range(0, n_images, rows), desc="brute-force ITM", unit="image rows", dynamic_ncols=True):
        img = torch.arange(a, min(a + rows, n_images))
        out[img] = ev.pair_scores(img[:, None].expand(-1, n_captions), caps.expand(len(img), -1))
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison; returns the figures (also printed as a Markdown table)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="finetuned ITR model directory (finetune/itr.py's OUTPUT/model)")
    ap.add_argument("--root", required=True, help="downstream root the annotation paths are relative to")
    ap.add_argument("--ann", nargs="+", required=True, help="Flickr30k-layout jsonl file(s), concatenated")
    ap.add_argument("--config", default=str(ROOT / "configs/finetune/synthetic/itr.yaml"))
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--images", type=int, default=None, help="use the first N images only (a quick run)")
    ap.add_argument("--batch", type=int, default=512, help="pairs per ITM forward (eval.batch_size)")
    ap.add_argument("--index", choices=("faiss", "torch"), default="faiss")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--output-dir", default=str(ROOT / "runs/bench_retrieval_model"),
                    help="where the evaluation run writes its resolved config")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="finetune config overrides (e.g. model.visual_mode=patch)")
    args = ap.parse_args(argv)
    commit = git_commit(WATCHED)

    sets = [f"data.root={args.root}", "train.epochs=0", f"eval.batch_size={args.batch}"]
    meta = Path(args.model) / HEAD_META
    if meta.is_file():  # the head's own sizes, whatever the config says
        saved = json.loads(meta.read_text())
        sets += [f"itr.embed_dim={saved['embed_dim']}", f"model.visual_mode={saved['visual_mode']}"]
    sets += args.overrides
    cfg, _ = parse_cli("itr", ["--config", args.config, "--init", args.model, "--no-save",
                               "--output-dir", args.output_dir, *sum((["--set", s] for s in sets), [])])
    examples = [ex for path in args.ann for ex in read_retrieval(Path(args.root) / path, "en")]
    table = caption_table(examples[:args.images] if args.images else examples)
    with FinetuneRun(cfg, save_model=False) as run:
        rc3 = run.load_rc3()
        model = build_itr_model(rc3, cfg)
        if not load_head(model, args.model):
            raise SystemExit(f"{args.model}: no ITR head (dual encoder + ITM) saved there; give the `model` directory "
                             "that finetune/itr.py writes (without --no-save)")
        model = run.accelerator.prepare(model).eval()
        visual = visual_source(cfg, rc3.cfg.image_size)
        visual.check(table.images, "the benchmark set")
        ev = RetrievalEvaluator(model, table, "en", run, visual)  # loads every image's features once (untimed)
        n_img, n_cap = len(table.images), len(table.captions)
        device = run.accelerator.device
        print(f"# bench_retrieval_model  date={dt.datetime.now().astimezone().isoformat(timespec='seconds')}  "
              f"commit={commit}", flush=True)
        print(f"# device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU ' + (platform.processor() or platform.machine())}"
              f" (torch {torch.__version__}, {torch.get_num_threads()} threads); model {args.model}; "
              f"{n_img} images x {n_cap} captions; k={args.k}; {args.batch} pairs per ITM forward", flush=True)

        n_pairs = {"n": 0}
        inner = ev.pair_scores

        def counted(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
            n_pairs["n"] += image_idx.numel()
            return inner(image_idx, text_idx)

        ev.pair_scores = counted  # type: ignore[method-assign]
        t0 = time.perf_counter()
        rerank = ev.recall(args.k, args.index, dual=True)
        t_rerank, pairs_rerank = time.perf_counter() - t0, n_pairs["n"]
        print(f"# re-rank done in {t_rerank:.1f}s ({pairs_rerank:,} pairs)", flush=True)

        n_pairs["n"] = 0
        t0 = time.perf_counter()
        scores = score_matrix(ev, n_img, n_cap, rows=max(1, args.batch // n_cap))
        # k="all" never searches: the embeddings only give the counts, so brute force computes none.
        brute = itr_recall(torch.zeros(n_img, 1), torch.zeros(n_cap, 1), table.caption_image,
                           lambda i, t: scores[i, t], k="all", chunk_size=256)
        t_brute, pairs_brute = time.perf_counter() - t0, n_pairs["n"]

    out = {"images": n_img, "captions": n_cap, "k": args.k, "device": str(device), "commit": commit,
           "date": dt.date.today().isoformat(), "rerank": {"seconds": t_rerank, "pairs": pairs_rerank, **rerank},
           "brute_force": {"seconds": t_brute, "pairs": pairs_brute, **brute}, "speedup": t_brute / t_rerank}
    print("\n| method | ITM pairs scored | time (s) | i2t R@1 | t2i R@1 | mean R@1 | i2t R@10 | t2i R@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| dual encoder alone (first stage) | 0 | - | {rerank['dual_i2t_R@1']:.2f} | {rerank['dual_t2i_R@1']:.2f} | "
          f"{rerank['dual_mean_R@1']:.2f} | {rerank['dual_i2t_R@10']:.2f} | {rerank['dual_t2i_R@10']:.2f} |")
    for name, r, t, p in ((f"{args.index.upper() if args.index == 'faiss' else 'torch'} top-{args.k} + ITM re-rank",
                           rerank, t_rerank, pairs_rerank), ("brute-force ITM (every pair once)", brute, t_brute, pairs_brute)):
        print(f"| {name} | {p:,} | {t:.1f} | {r['i2t_R@1']:.2f} | {r['t2i_R@1']:.2f} | {r['mean_R@1']:.2f} | "
              f"{r['i2t_R@10']:.2f} | {r['t2i_R@10']:.2f} |")
    print(f"\nbrute force / re-rank time: {out['speedup']:.1f}x (pairs {pairs_brute / max(1, pairs_rerank):.1f}x); "
          f"mean R@1 {rerank['mean_R@1']:.2f} (k={args.k}) vs {brute['mean_R@1']:.2f} (all pairs)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
