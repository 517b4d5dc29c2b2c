"""Benchmark retrieve-then-rerank against brute-force cross-encoder retrieval on synthetic data.

A synthetic ITR test set (default 1,000 images x 5 captions = 5,000 captions) with:
- dual-encoder embeddings: noisy views of each item's latent vector (cheap, imperfect);
- a cross-encoder over the pair: a small transformer (default 2 layers, width 256, 4+4 pair tokens plus
  a [CLS]) whose score is the latents' cosine plus a term read off [CLS]. It is untrained; only its
  cost is realistic, so brute force over all pairs is genuinely expensive. Its cosine term makes it a
  better ranker than the dual encoder, so R@1 of re-ranking can be compared with brute force.
Side by side, in one run and on one device: first-stage top-k with FAISS vs torch matmul top-k,
and FAISS top-k + cross-encoder re-ranking vs cross-encoder over all pairs (both directions).

    .venv/bin/python benchmarks/bench_retrieval.py                       # paper-sized test set
    .venv/bin/python benchmarks/bench_retrieval.py --images 50 --device cpu  # quick run on a laptop
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from typing import Callable

import torch
from torch import nn

from rc3.finetune import (
    metrics,
    retrieval,
)
from rc3.provenance import git_commit


class PairCrossEncoder(nn.Module):
    """Scores (image, caption) pairs with a transformer over [CLS] + image tokens + caption tokens."""

    def __init__(self, latent_dim: int, width: int, layers: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.tokens, self.width = tokens, width
        self.img_proj = nn.Linear(latent_dim, tokens * width)
        self.txt_proj = nn.Linear(latent_dim, tokens * width)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 1)

    def forward(self, img_latent: torch.Tensor, txt_latent: torch.Tensor) -> torch.Tensor:
        b = len(img_latent)
        seq = torch.cat([self.cls.expand(b, 1, self.width),
                         self.img_proj(img_latent).view(b, self.tokens, self.width),
                         self.txt_proj(txt_latent).view(b, self.tokens, self.width)], dim=1)
        learned = self.head(self.encoder(seq)[:, 0]).squeeze(-1).float()
        cosine = nn.functional.cosine_similarity(img_latent.float(), txt_latent.float(), dim=-1)
        return 10.0 * cosine + 0.1 * torch.tanh(learned)


def make_world(n_images: int, per_image: int, dim: int, dual_noise: float, caption_noise: float,
               seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img_lat = nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=1)
    cap_img = torch.arange(n_images).repeat_interleave(per_image)
    txt_lat = nn.functional.normalize(img_lat[cap_img] + caption_noise * torch.randn(len(cap_img), dim, generator=g) / dim ** 0.5, dim=1)
    noise = lambda x: nn.functional.normalize(x + dual_noise * torch.randn(x.shape, generator=g) / dim ** 0.5, dim=1)  # noqa: E731
    out = {"img_lat": img_lat, "txt_lat": txt_lat, "img_emb": noise(img_lat), "txt_emb": noise(txt_lat), "cap_img": cap_img}
    return {k: v.to(device) for k, v in out.items()}


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> tuple[float, object]:
    """Best wall time of `repeats` runs (seconds) and the last result; synchronises CUDA around each run."""
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--captions-per-image", type=int, default=5)
    ap.add_argument("--dim", type=int, default=256, help="embedding / latent size")
    ap.add_argument("--k", type=int, default=16, help="candidates re-ranked per query")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=4, help="tokens per side of the pair")
    ap.add_argument("--chunk-size", type=int, default=256, help="queries per chunk")
    ap.add_argument("--max-pairs", type=int, default=65536, help="pairs per cross-encoder call")
    ap.add_argument("--dual-noise", type=float, default=0.5)
    ap.add_argument("--caption-noise", type=float, default=4.0)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="autocast (default: on GPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    bf16 = device.type == "cuda" if args.bf16 is None else args.bf16
    torch.manual_seed(args.seed)
    w = make_world(args.images, args.captions_per_image, args.dim, args.dual_noise, args.caption_noise, args.seed, device)
    model = PairCrossEncoder(args.dim, args.width, args.layers, args.heads, args.tokens).to(device).eval()
    n_calls = {"pairs": 0}

    @torch.inference_mode()
    def pair_scores(image_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        n_calls["pairs"] += image_idx.numel()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            s = model(w["img_lat"][image_idx.reshape(-1)], w["txt_lat"][text_idx.reshape(-1)])
        return s.view(image_idx.shape)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.processor() or platform.machine()}"
    commit = git_commit(["rc3/finetune/retrieval.py", "benchmarks/bench_retrieval.py"])
    print(f"# bench_retrieval  date={dt.datetime.now().astimezone().isoformat(timespec='seconds')}  commit={commit}")
    print(f"# device: {dev_name} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads), "
          f"faiss on {'GPU' if retrieval.faiss_gpu_available() else 'CPU'}, bf16 autocast={bf16}")
    n_img, n_txt = args.images, len(w["cap_img"])
    print(f"# {n_img} images x {n_txt} captions, dim {args.dim}; cross-encoder {args.layers} layers x {args.width} wide, "
          f"{2 * args.tokens + 1} tokens/pair; k={args.k}, chunk={args.chunk_size}, max_pairs={args.max_pairs}")

    # Warm-up: kernels, allocator and faiss threads, so the first timed method pays no start-up cost.
    pair_scores(torch.zeros(4096, 1, dtype=torch.long, device=device), torch.zeros(4096, 1, dtype=torch.long, device=device))
    retrieval.itr_recall(w["img_emb"][:8], w["txt_emb"][:8 * args.captions_per_image], w["cap_img"][:8 * args.captions_per_image].cpu(),
                         pair_scores, k=min(args.k, 8), ks=(1,), index="faiss")

    # 1) First-stage search alone: FAISS vs torch matmul top-k, both directions.
    def search(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = []
        for q, c in ((w["img_emb"], w["txt_emb"]), (w["txt_emb"], w["img_emb"])):
            index = retrieval.FaissIndex(args.dim) if kind == "faiss" else retrieval.TorchTopK()
            index.add(c)
            ids.append(index.search(q, args.k)[1].to(device))
        return ids[0], ids[1]

    t_faiss, (fi2t, ft2i) = timed(lambda: search("faiss"), device, repeats=5)
    t_torch, (ti2t, tt2i) = timed(lambda: search("torch"), device, repeats=5)
    same = float(((fi2t.sort(1).values == ti2t.sort(1).values).all(1).float().mean()
                  + (ft2i.sort(1).values == tt2i.sort(1).values).all(1).float().mean()) / 2)
    cap = w["cap_img"].cpu()
    dual_i2t = metrics.recall_at_k(metrics.gold_ranks(ti2t.cpu().numpy(), [torch.nonzero(cap == i).flatten().tolist()
                                                                             for i in range(n_img)]), (1, args.k))
    dual_t2i = metrics.recall_at_k(metrics.gold_ranks(tt2i.cpu().numpy(), cap[:, None].tolist()), (1, args.k))

    # 2) FAISS top-k + cross-encoder re-ranking vs 3) the cross-encoder over every pair.
    def run(k: retrieval.K, index: str = "faiss") -> dict[str, float]:
        n_calls["pairs"] = 0
        return retrieval.itr_recall(w["img_emb"], w["txt_emb"], cap, pair_scores, k=k, ks=(1, 5, 10),
                                    chunk_size=args.chunk_size, index=index, max_pairs=args.max_pairs)

    t_rerank, rr = timed(lambda: run(args.k), device, repeats=3)
    pairs_rerank = n_calls["pairs"]
    t_rerank_torch, rr_torch = timed(lambda: run(args.k, "torch"), device, repeats=3)
    t_brute, bf = timed(lambda: run("all"), device)
    pairs_brute = n_calls["pairs"]

    print("\n| first stage (both directions) | time (ms) | top-k sets equal to exact |")
    print("|---|---:|---:|")
    print(f"| FAISS IndexFlatIP top-{args.k} | {1e3 * t_faiss:.1f} | {100 * same:.1f}% |")
    print(f"| torch matmul + topk ({device.type}) | {1e3 * t_torch:.1f} | (reference) |")
    print(f"\nFAISS / torch time ratio: {t_faiss / t_torch:.2f}")
    print("\n| method | pairs scored | time (s) | i2t R@1 | t2i R@1 | mean R@1 | i2t R@5 | t2i R@5 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| dual encoder only | 0 | {t_faiss:.3f} | {dual_i2t['R@1']:.2f} | {dual_t2i['R@1']:.2f} | "
          f"{metrics.mean_recall_at_1(dual_i2t['R@1'], dual_t2i['R@1']):.2f} | - | - |")
    for name, t, pairs, r in ((f"FAISS top-{args.k} + re-rank", t_rerank, pairs_rerank, rr),
                              (f"torch top-{args.k} + re-rank", t_rerank_torch, pairs_rerank, rr_torch),
                              ("brute-force cross-encoder", t_brute, pairs_brute, bf)):
        print(f"| {name} | {pairs:,} | {t:.3f} | {r['i2t_R@1']:.2f} | {r['t2i_R@1']:.2f} | {r['mean_R@1']:.2f} | "
              f"{r['i2t_R@5']:.2f} | {r['t2i_R@5']:.2f} |")
    print(f"\nbrute force / FAISS re-rank time ratio: {t_brute / t_rerank:.1f}x, "
          f"brute force / torch re-rank: {t_brute / t_rerank_torch:.1f}x  "
          f"(pairs ratio {pairs_brute / max(pairs_rerank, 1):.1f}x); dual-encoder R@{args.k} "
          f"(ceiling of re-ranking): i2t {dual_i2t[f'R@{args.k}']:.2f}, t2i {dual_t2i[f'R@{args.k}']:.2f}")


if __name__ == "__main__":
    main()
