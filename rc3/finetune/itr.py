"""Image-text retrieval recipe (xFlickr&CO): dual-encoder candidates re-ranked by the ITM head.

Training: English Flickr30k-style captions (`data.train`, e.g. flickr30k/annotations/train_ann.jsonl,
five sentences per image) with the loss of `rc3.finetune.itr_model`. Evaluation per language
(`data.test`/annotations/<lang>/<test_split>.jsonl, one caption per image): every image is embedded
image-only and every caption text-only; FAISS (or torch) finds each query's top `itr.k` candidates
by inner product (rc3.finetune.retrieval) and the ITM cross-encoder re-ranks them. `itr.k=all` skips the
search and scores every pair, which is exactly the brute-force cross-encoder ranking. Rows:
R@1/5/10 image->text and text->image, and mean R@1 (the paper's ITR number); the same with a `dual_`
prefix for the dual encoder's ranking alone (the first stage, before re-ranking).

Evaluation uses every process: each embeds a share of the images and captions (gathered, so all
hold every embedding) and ranks a share of the queries; the recall counts are summed over processes.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rc3 import distributed
from rc3.data.collate import pad_batch
from rc3.finetune.classification import pick_langs, visual_source
from rc3.finetune.cli import parse_cli
from rc3.finetune.code_switch import switch_items
from rc3.finetune.datasets import TaskItem, TextCollator, VisualTextDataset, image_keys, limit
from rc3.finetune.itr_model import ITRModel
from rc3.finetune.readers.xflickrco import CaptionTable, caption_table, read_retrieval, xflickrco_langs, xflickrco_path
from rc3.finetune.retrieval import itr_recall
from rc3.finetune.tasks.itr import ITRFinetuneConfig
from rc3.finetune.trainer import FinetuneRun
from rc3.modeling import RC3Model
from rc3.modeling.visual_inputs import VisualSource, collate_visual

METRICS = ["i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mean_R@1", "dual_mean_R@1",
           "images", "captions"]
DUAL_K = 10  # the dual encoder's own recall needs its top 10 only (R@1/5/10)


def read_table(path: Any, lang: str, limit_to: Optional[int]) -> CaptionTable:
    """A retrieval file as a caption table (its first `limit_to` images when set)."""
    return caption_table(limit(list(read_retrieval(path, lang)), limit_to))


def train_items(table: CaptionTable, lang: str) -> list[TaskItem]:
    """One item per (image, caption); the label is the image's index (its group in the batch)."""
    return [TaskItem(f"{table.images[i]}#{j}", cap, lang, (table.images[i],), i)
            for j, (cap, i) in enumerate(zip(table.captions, table.caption_image))]


class RetrievalEvaluator:
    """Embeds one caption table and scores (image, caption) pairs with the ITM head, in batches."""

    def __init__(self, model: ITRModel, table: CaptionTable, lang: str, run: FinetuneRun, visual: VisualSource) -> None:
        self.model, self.table, self.lang, self.run = model, table, lang, run
        self.device = run.accelerator.device
        self.batch = run.cfg.eval.batch_size
        # Images are scored many times during re-ranking: load each once (ROI kept in half precision).
        self.images = [_compact(visual.load(k)) for k in tqdm(table.images, desc=f"itr load {lang}", disable=not run.is_main,
                                                               dynamic_ncols=True, leave=False)]
        self.text_ids = [run.tokenizer.encode(c, lang, run.cfg.data.max_text_len) for c in table.captions]

    def _visual(self, idx: Sequence[int]) -> dict[str, Tensor]:
        batch = collate_visual([self.images[i] for i in idx])  # casts the half-precision ROI back to float32
        return {k: v.to(self.device) for k, v in batch.items()}

    def _text(self, idx: Sequence[int]) -> tuple[Tensor, Tensor]:
        ids, mask = pad_batch([self.text_ids[j] for j in idx], self.run.tokenizer.pad_id)
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def embeddings(self) -> tuple[Tensor, Tensor]:
        """Every image and caption embedding; each process computes its share, then all are gathered."""
        acc, out_i, out_t = self.run.accelerator, [], []
        mine_i, mine_t = distributed.shard_range(len(self.images)), distributed.shard_range(len(self.text_ids))
        dim = self.model.dual.image_proj.out_features
        with acc.autocast():
            for a in range(mine_i.start, mine_i.stop, self.batch):
                out_i.append(self.model.image_embeddings(self._visual(range(a, min(a + self.batch, mine_i.stop)))).float())
            for a in range(mine_t.start, mine_t.stop, self.batch):
                out_t.append(self.model.text_embeddings(*self._text(range(a, min(a + self.batch, mine_t.stop)))).float())
        empty = torch.zeros(0, dim, device=self.device)
        return (distributed.all_gather(torch.cat(out_i) if out_i else empty),
                distributed.all_gather(torch.cat(out_t) if out_t else empty))

    @torch.no_grad()
    def pair_scores(self, image_idx: Tensor, text_idx: Tensor) -> Tensor:
        """ITM logits of pairs (image_idx[c,k], text_idx[c,k]) -> [c,k], `eval.batch_size` pairs per forward."""
        flat_i, flat_t = image_idx.reshape(-1), text_idx.reshape(-1).tolist()
        out = []
        with self.run.accelerator.autocast():
            for a in range(0, len(flat_i), self.batch):
                ids, mask = self._text(flat_t[a:a + self.batch])
                # A chunk pairs few distinct images with many texts: embed each image once.
                images, where = torch.unique(flat_i[a:a + self.batch], return_inverse=True)
                out.append(self.model.itm_scores(ids, mask, self._visual(images.tolist()),
                                                 visual_index=where.to(self.device)).float().cpu())
        return torch.cat(out).reshape(image_idx.shape)

    def recall(self, k: int | Literal["all"], index: Literal["faiss", "torch"], dual: bool = False) -> dict[str, float]:
        """Recall of the re-ranked ranking; with `dual`, also the `dual_*` recall of the dual encoder alone
        (candidates ordered by embedding similarity: the first stage, which no ITM head touches)."""
        image_emb, text_emb = (e.cpu() for e in self.embeddings())
        scores = itr_recall(image_emb, text_emb, self.table.caption_image, self.pair_scores, k=k,
                            chunk_size=max(1, self.batch // 4), index=index, max_pairs=4 * self.batch,
                            shard=distributed.shard_range, reduce=distributed.all_reduce_sum_dict)
        if dual:
            def similarity(i: Tensor, t: Tensor) -> Tensor:
                return (image_emb[i] * text_emb[t]).sum(-1)

            first = itr_recall(image_emb, text_emb, self.table.caption_image, similarity, k=DUAL_K,
                               chunk_size=4096, index=index, shard=distributed.shard_range,
                               reduce=distributed.all_reduce_sum_dict)
            scores.update({f"dual_{name}": value for name, value in first.items()})
        return scores


def build_itr_model(rc3: RC3Model, cfg: ITRFinetuneConfig) -> ITRModel:
    """The retrieval model (ITM cross-encoder + dual-encoder head) over `rc3`, sized by `cfg.itr`."""
    c = cfg.itr
    return ITRModel(rc3, cfg.model.visual_mode, c.embed_dim, c.temperature, c.learn_temperature,
                    c.contrastive_weight, c.itm_weight, c.hard_negatives, c.uniform_negative_share)


def _compact(visual: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: (v.half() if k == "roi" else v) for k, v in visual.items()}


def evaluate(run: FinetuneRun, model: ITRModel, tables: dict[str, CaptionTable], visual: VisualSource,
             k: int | Literal["all"], index: Literal["faiss", "torch"], log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Recall rows per language (every process takes part; all return the rows)."""
    model.eval()
    results = {}
    for lang, table in tables.items():
        scores = RetrievalEvaluator(model, table, lang, run, visual).recall(k, index, dual=True)
        results[lang] = {**scores, "images": len(table.images), "captions": len(table.captions)}
        log(f"[itr] {lang}: mean R@1 {scores['mean_R@1']:.2f} (i2t R@1 {scores['i2t_R@1']:.2f}, "
            f"t2i R@1 {scores['t2i_R@1']:.2f}; dual encoder alone {scores['dual_mean_R@1']:.2f}; "
            f"{len(table.images)} images, {len(table.captions)} captions, k={k})")
    return results


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, Any]]:
    cfg, args = parse_cli("itr", argv)
    assert isinstance(cfg, ITRFinetuneConfig)
    with FinetuneRun(cfg, save_model=not args.no_save, resume=args.resume) as run:
        rc3 = run.load_rc3()
        c = cfg.itr
        model = build_itr_model(rc3, cfg)
        run.maybe_load_head(model)
        visual = visual_source(cfg, rc3.cfg.image_size)
        root, split = cfg.required_path(cfg.data.test), cfg.data.test_split
        langs = pick_langs(cfg, xflickrco_langs(root, split), f"{root}/annotations/<lang>/{split}.jsonl")
        tables = {lang: read_table(xflickrco_path(root, lang, split), lang, cfg.data.max_eval_examples) for lang in langs}
        for lang, table in tables.items():
            visual.check(table.images, f"the {lang} test set")
        dev = None
        if cfg.data.dev and cfg.train.epochs > 0:
            dev = read_table(cfg.data_path(cfg.data.dev), cfg.data.train_lang, cfg.data.max_eval_examples)
            visual.check(dev.images, f"the dev set {cfg.data_path(cfg.data.dev)}")

        if cfg.train.epochs > 0:
            table = read_table(cfg.data_path(cfg.data.train), cfg.data.train_lang, cfg.data.max_train_examples)
            items = train_items(table, cfg.data.train_lang)
            visual.check(image_keys(items), f"the training set {cfg.data_path(cfg.data.train)}")
            items = switch_items(items, cfg)
            dataset = VisualTextDataset(items, run.tokenizer, visual, cfg.data.max_text_len)

            def after_epoch(m: Any, epoch: int) -> dict[str, float]:
                out: dict[str, float] = {}
                if dev is not None:
                    m.eval()
                    scores = RetrievalEvaluator(run.accelerator.unwrap_model(m), dev, cfg.data.train_lang, run, visual)
                    out = {"mean_R@1": scores.recall(c.rerank_k, c.index)["mean_R@1"]}
                m.train()
                return out

            prepared = run.fit(model, dataset, TextCollator(run.tokenizer.pad_id), after_epoch)
        else:
            prepared = run.accelerator.prepare(model)
        results = evaluate(run, run.accelerator.unwrap_model(prepared), tables, visual, c.rerank_k, c.index, run.print)
        return run.finish(prepared, results, METRICS, {"k": c.k})
