"""Multimodal machine translation recipe (Multi30K): source text (+ image) -> target text.

The encoder reads `[CLS] image [BOS] source [LANG_src]` (or the text alone with `mmt.use_image=false`);
the decoder is fed `[EOS] [LANG_tgt] target` and predicts `[LANG_tgt] target [EOS]`, trained with
label-smoothed cross-entropy. Evaluation: beam search through `RC3Model.generate` with the target
tag forced first, detokenised, and scored with sacreBLEU against the raw references: BLEU (cased,
with its signature printed and stored) and lowercased BLEU (the paper-era Multi30K number).

`data.train` is the Multi30K task1 folder (raw/<split>.<lang>.gz + image_splits/<split>.txt);
`data.test` defaults to the same folder. One result row per (target language, test split).
Generation is split over processes and the hypotheses gathered.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from rc3.data.collate import IGNORE_INDEX, pad_batch
from rc3.finetune.classification import visual_source
from rc3.finetune.cli import parse_cli
from rc3.finetune.code_switch import switch_examples
from rc3.finetune.datasets import limit
from rc3.finetune.metrics import bleu
from rc3.finetune.mmt_model import MMTModel
from rc3.finetune.readers.multi30k import Multi30kExample, multi30k_langs, read_multi30k, split_name
from rc3.finetune.tasks.mmt import MMTFinetuneConfig
from rc3.finetune.trainer import FinetuneRun
from rc3.finetune.visual_batch import visual_of
from rc3.modeling.visual_inputs import VisualSource, collate_visual
from rc3.tokenization import RC3Tokenizer

METRICS = ["BLEU", "BLEU_lc", "n", "signature"]


class TranslationDataset(Dataset):
    def __init__(self, examples: Sequence[Multi30kExample], src: str, tgt: str, tokenizer: RC3Tokenizer,
                 visual: Optional[VisualSource], max_len: int) -> None:
        self.examples, self.src, self.tgt = list(examples), src, tgt
        self.tokenizer, self.visual, self.max_len = tokenizer, visual, max_len

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.examples[i]
        labels = self.tokenizer.encode_target(e.texts[self.tgt], self.tgt, self.max_len)
        ids = self.tokenizer.encode(e.texts[self.src], self.src, self.max_len)
        return {"index": i, "ids": ids, "labels": labels, "dec_in": [self.tokenizer.eos_id, *labels[:-1]],
                "visual": self.visual.load(image_of(e)) if self.visual is not None else None}


def image_of(example: Multi30kExample) -> str:
    """The image name of an example read for a run that uses images."""
    # main reads with allow_missing_images only when mmt.use_image is false, and then builds no VisualSource
    assert example.image is not None, "a Multi30K example without its image name in an image-using run"
    return example.image


class TranslationCollator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ids, mask = pad_batch([s["ids"] for s in samples], self.pad_id)
        dec_in, dec_mask = pad_batch([s["dec_in"] for s in samples], self.pad_id)
        labels, _ = pad_batch([s["labels"] for s in samples], IGNORE_INDEX)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "dec_input_ids": dec_in, "dec_mask": dec_mask,
                                 "dec_labels": labels, "index": torch.tensor([s["index"] for s in samples])}
        if samples and samples[0]["visual"] is not None:
            batch.update(collate_visual([s["visual"] for s in samples]))
        return batch


@torch.no_grad()
def translate(run: FinetuneRun, model: MMTModel, dataset: TranslationDataset) -> list[str]:
    """Beam-search hypotheses for every example of `dataset`, in order (work split over processes)."""
    from accelerate.utils import gather_object

    assert isinstance(run.cfg, MMTFinetuneConfig)  # the MMT recipe's run (main)
    acc, c = run.accelerator, run.cfg.mmt
    model.eval()
    collate, tgt_id = TranslationCollator(run.tokenizer.pad_id), run.tokenizer.lang_id(dataset.tgt)
    mine: list[tuple[int, str]] = []
    with acc.split_between_processes(list(range(len(dataset)))) as shard:
        for a in tqdm(range(0, len(shard), run.cfg.eval.batch_size), desc=f"mmt translate {dataset.tgt}",
                      disable=not run.is_main, dynamic_ncols=True, leave=False):
            idx = shard[a:a + run.cfg.eval.batch_size]
            batch = collate([dataset[i] for i in idx])
            visual = {k: v.to(acc.device) for k, v in visual_of(batch).items()} or None
            with acc.autocast():
                out = model.rc3.generate(batch["input_ids"].to(acc.device), batch["attention_mask"].to(acc.device), tgt_id,
                                         visual, model.mode, num_beams=c.num_beams, max_new_tokens=c.max_new_tokens)
            mine += [(i, run.tokenizer.decode(seq.tolist())) for i, seq in zip(idx, out)]
    gathered = dict(gather_object(mine))
    return [gathered[i] for i in range(len(dataset))]


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    cased, lower = bleu(hypotheses, references), bleu(hypotheses, references, lowercase=True)
    return {"BLEU": cased.score, "BLEU_lc": lower.score, "n": len(references), "signature": cased.signature,
            "signature_lc": lower.signature}


def test_sets(cfg: MMTFinetuneConfig, log: Any) -> dict[str, tuple[str, str, list[Multi30kExample]]]:
    """Row name -> (target language, split, examples) for every configured split with both languages present."""
    root = cfg.required_path(cfg.data.test or cfg.data.train)
    src, tgts = cfg.mmt.src_lang, (cfg.data.test_langs or [cfg.mmt.tgt_lang])
    out = {}
    for split in cfg.mmt.test_splits:
        name = split_name(split)
        have = multi30k_langs(root, name)
        for tgt in tgts:
            if src not in have or tgt not in have:
                log(f"[mmt] {name}: no {src}/{tgt} text under {root}/raw (has {have}); row skipped")
                continue
            examples = read_multi30k(root, name, [src, tgt], allow_missing_images=not cfg.mmt.use_image)
            out[f"{tgt}:{name}"] = (tgt, name, limit(list(examples), cfg.data.max_eval_examples))
    if not out:
        raise FileNotFoundError(f"none of the Multi30K test splits {cfg.mmt.test_splits} has {src} and {tgts} under {root}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, dict[str, Any]]:
    cfg, args = parse_cli("mmt", argv)
    assert isinstance(cfg, MMTFinetuneConfig)
    c = cfg.mmt
    with FinetuneRun(cfg, save_model=not args.no_save, resume=args.resume) as run:
        rc3 = run.load_rc3()
        model = MMTModel(rc3, cfg.model.visual_mode, c.label_smoothing)
        visual = visual_source(cfg, rc3.cfg.image_size) if c.use_image else None
        tests = test_sets(cfg, run.print)
        datasets = {}
        for row, (tgt, split, examples) in tests.items():
            if visual is not None:
                visual.check([image_of(e) for e in examples], f"Multi30K {split}")
            datasets[row] = TranslationDataset(examples, c.src_lang, tgt, run.tokenizer, visual, cfg.data.max_text_len)
        if cfg.train.epochs > 0:
            root = cfg.required_path(cfg.data.train)
            train = limit(list(read_multi30k(root, c.train_split, [c.src_lang, c.tgt_lang], not c.use_image)),
                          cfg.data.max_train_examples)
            if visual is not None:
                visual.check([image_of(e) for e in train], f"Multi30K {c.train_split}")
            dev = None
            if c.dev_split and cfg.eval.dev_every_epoch:
                dev_examples = limit(list(read_multi30k(root, c.dev_split, [c.src_lang, c.tgt_lang], not c.use_image)),
                                     cfg.data.max_eval_examples)
                dev = TranslationDataset(dev_examples, c.src_lang, c.tgt_lang, run.tokenizer, visual, cfg.data.max_text_len)

            def after_epoch(m: Any, epoch: int) -> dict[str, float]:
                if dev is None:
                    return {}
                hyps = translate(run, run.accelerator.unwrap_model(m), dev)
                return {"BLEU": bleu(hyps, [e.texts[c.tgt_lang] for e in dev.examples]).score}

            train = switch_examples(train, c.src_lang, cfg)  # the source side only; targets stay as written
            dataset = TranslationDataset(train, c.src_lang, c.tgt_lang, run.tokenizer, visual, cfg.data.max_text_len)
            prepared = run.fit(model, dataset, TranslationCollator(run.tokenizer.pad_id), after_epoch)
        else:
            prepared = run.accelerator.prepare(model)
        results: dict[str, dict[str, Any]] = {}
        for row, ds in datasets.items():
            hyps = translate(run, run.accelerator.unwrap_model(prepared), ds)
            results[row] = score(hyps, [e.texts[ds.tgt] for e in ds.examples])
            run.print(f"[mmt] {row}: BLEU {results[row]['BLEU']:.2f}, lowercased {results[row]['BLEU_lc']:.2f} "
                      f"({len(ds)} sentences)\n[mmt] sacreBLEU signature: {results[row]['signature']}")
            if run.is_main and len(ds):
                run.print(f"[mmt]   e.g. src: {ds.examples[0].texts[c.src_lang]}\n[mmt]   hyp: {hyps[0]}\n"
                          f"[mmt]   ref: {ds.examples[0].texts[ds.tgt]}")
        return run.finish(prepared, results, METRICS, {"src_lang": c.src_lang, "tgt_lang": c.tgt_lang,
                                                       "use_image": c.use_image})
