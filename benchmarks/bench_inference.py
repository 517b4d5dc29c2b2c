#!/usr/bin/env python
"""Throughput of rc3.inference on CPU against a plain per-item loop over the same model.

For each model size (random weights, an ITR head, the model directory written and loaded as users do):
* texts/s of `embed_texts` (batched) vs one `ITRModel.text_embeddings` call per text, unpadded;
* images/s of `embed_images` (ROI feature dicts, batched) vs one `image_embeddings` call per image;
* queries/s of `search(index, queries, k)` (FAISS top-k + batched ITM re-ranking, each distinct image's
  front end once per batch) vs a loop that embeds the query, takes the top k by numpy inner product and
  scores each candidate pair with its own ITM forward pass.
Both sides produce the same numbers (checked here: embeddings to 1e-4, the same ranked ids).

Sizes: `tiny` (tests' config: d=32, 2+2 layers) and `paper` (d=1024, 12+12 layers, 16 heads, FFN 4096:
mBART-50 large; the vocabulary is the test tokenizer's 2k pieces instead of 250k, which only changes the
embedding table, not the encoder work measured here).

    python benchmarks/bench_inference.py [--sizes tiny paper] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rc3.provenance import git_commit

# The tiny builders (configs, random batches, the naive R-XVtCL) live with the tests: tests/tiny.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

WATCHED = ["rc3/inference", "rc3/finetune/retrieval.py", "benchmarks/bench_inference.py"]
SIZES = {  # model config overrides; texts, images, index images, queries, k
    "tiny": ({}, 512, 256, 256, 64, 16),
    "paper": ({"d_model": 1024, "encoder_layers": 12, "decoder_layers": 12, "attention_heads": 16, "ffn_dim": 4096,
               "patch_dim": 768}, 32, 16, 32, 4, 8),
}


def texts_of(n: int, work: Path) -> list[str]:
    from rc3.synthetic.repro.release import real_texts, release_dir

    per_lang = max(8, n)
    en = real_texts(release_dir(work / "release"), per_lang=per_lang)[:per_lang]  # English captions (Multi30K), the first language
    return [en[i % len(en)] for i in range(n)]


def make_model(size: str, tok_dir: Path, out: Path) -> Path:
    from tiny import tiny_model_config

    from rc3.finetune.itr_model import ITRModel
    from rc3.modeling import RC3Model
    from rc3.tokenization import RC3Tokenizer

    tok = RC3Tokenizer.from_dir(tok_dir)
    torch.manual_seed(0)
    rc3 = RC3Model.from_config(tiny_model_config(**SIZES[size][0]), tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
    return ITRModel(rc3, "roi", embed_dim=256).save_pretrained(out, tok)


def rois(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        r = 10 + i % 27
        xy = g.random((r, 2)) * 0.5
        out.append({"roi": g.random((r, 2048), dtype=np.float32),
                    "boxes": np.concatenate([xy, xy + 0.4, np.full((r, 1), 0.16)], 1).astype(np.float32)})
    return out


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench(size: str, tok_dir: Path, work: Path) -> dict:
    from rc3.inference import collate_images, load

    _, n_text, n_img, n_index, n_q, k = SIZES[size]
    model_dir = make_model(size, tok_dir, work / size)
    m = load(model_dir, batch_size=32, progress=False)
    itr = m.task_model
    texts, images = texts_of(n_text, work), rois(n_img, 1)
    row: dict = {"size": size, "params_M": round(sum(p.numel() for p in itr.parameters()) / 1e6, 1)}

    # texts
    t_batched, emb = timed(lambda: m.embed_texts(texts, "en"))
    ids = m.encode_texts(texts, "en")

    def text_loop() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([itr.text_embeddings(torch.tensor([i]), torch.ones(1, len(i), dtype=torch.bool)) for i in ids])
    t_loop, emb_loop = timed(text_loop)
    assert torch.allclose(emb, emb_loop, atol=1e-4), "batched and per-item text embeddings differ"
    row["texts"] = {"n": n_text, "batched_per_s": n_text / t_batched, "loop_per_s": n_text / t_loop}

    # images
    t_batched, iemb = timed(lambda: m.embed_images(images))
    loaded = [m.load_image(x) for x in images]

    def image_loop() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([itr.image_embeddings(collate_images([v])) for v in loaded])
    t_loop, iemb_loop = timed(image_loop)
    assert torch.allclose(iemb, iemb_loop, atol=1e-4), "batched and per-item image embeddings differ"
    row["images"] = {"n": n_img, "batched_per_s": n_img / t_batched, "loop_per_s": n_img / t_loop}

    # search: index built outside the timing; queries timed
    index = m.build_index(rois(n_index, 2))
    queries = texts_of(n_q + 7, work)[7:]
    t_search, hits = timed(lambda: m.search(index, queries, "en", k=k))
    q_ids = m.encode_texts(queries, "en")
    cand_emb = index.embeddings.numpy()

    def search_loop() -> list[list[int]]:
        out = []
        with torch.inference_mode():
            for qi in q_ids:
                ids_t, mask = torch.tensor([qi]), torch.ones(1, len(qi), dtype=torch.bool)
                q = itr.text_embeddings(ids_t, mask)[0].numpy()
                top = np.argsort(-(cand_emb @ q), kind="stable")[:k]
                scores = [float(itr.itm_scores(ids_t, mask, collate_images([index.visual[c]]))) for c in top]
                out.append([int(c) for c, _ in sorted(zip(top, scores), key=lambda cs: (-cs[1], cs[0]))])
        return out
    t_loop, ranked = timed(search_loop)
    same = sum(r == [h.index for h in hs] for r, hs in zip(ranked, hits))
    row["search"] = {"queries": n_q, "index": n_index, "k": k, "batched_per_s": n_q / t_search,
                     "loop_per_s": n_q / t_loop, "same_ranking": f"{same}/{n_q}"}
    return row


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def table(rows: list[dict]) -> str:
    lines = ["| model | params | what | n | rc3.inference /s | per-item loop /s | speed-up |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        for what, unit in (("texts", "texts"), ("images", "images"), ("search", "queries")):
            b = r[what]
            n = b.get("n", b.get("queries"))
            extra = f" (index {b['index']}, k={b['k']}, same ranking {b['same_ranking']})" if what == "search" else ""
            lines.append(f"| {r['size']} | {r['params_M']}M | {unit}{extra} | {n} | {fmt(b['batched_per_s'])} | "
                         f"{fmt(b['loop_per_s'])} | {b['batched_per_s'] / b['loop_per_s']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["tiny", "paper"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1 on a shared machine: contended OpenMP threads spin-wait)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    commit = git_commit(WATCHED)
    with tempfile.TemporaryDirectory() as tmp:
        from tiny import train_tiny_spm

        from rc3.synthetic.repro.release import real_texts, release_dir

        tok_dir = Path(tmp) / "tokenizer"
        train_tiny_spm(tok_dir, real_texts(release_dir(Path(tmp) / "release")), vocab_size=2000)  # the tests' tokenizer
        rows = []
        for size in args.sizes:
            t0 = time.perf_counter()
            rows.append(bench(size, tok_dir, Path(tmp)))
            print(f"[{size}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    report = {"rows": rows, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "date": dt.date.today().isoformat(), "commit": commit}
    print(table(rows))
    print(f"\n{args.threads} threads, torch {torch.__version__}, {report['date']}, commit {commit}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
