"""`rc3-add-language`: add a language to an RC3 model directory by aligning it to English on parallel text
(rc3.add_language).

    rc3-add-language --model models/rc3 --lang ru --parallel train.en train.ru --out models/rc3-ru
    rc3-add-language --model models/rc3 --lang es --parallel en-es.tsv --out models/rc3-es \
        --trainable encoder --extend-vocab --steps 2000
    rc3-add-language ... --resume        # continue an interrupted run from its last checkpoint

--parallel takes two line-aligned files (English, then the new language) or one TSV (english<TAB>X).
--trainable: embeddings (default), encoder, or lora (needs peft: pip install -e .[adapters]).
--extend-vocab appends sentencepiece pieces for characters the vocabulary lacks (text of every other
language segments exactly as before). The output is a new model directory, written atomically; the
input is never modified. Checkpoints live in --work-dir (default: .OUT.add_language next to OUT) and are
removed once the model is written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rc3.add_language.options import TRAINABLE, AddLanguageOptions
from rc3.add_language.parallel_text import ParallelTextError


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    d = AddLanguageOptions(lang="xx")
    ap = argparse.ArgumentParser(prog="rc3-add-language", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="RC3 model directory (pretrained or finetuned)")
    ap.add_argument("--lang", required=True, help="short code of the new language (e.g. es, ru, tr)")
    ap.add_argument("--parallel", nargs="+", required=True, metavar="FILE",
                    help="EN_FILE X_FILE (line-aligned) or one TSV english<TAB>translation")
    ap.add_argument("--out", type=Path, required=True, help="new model directory")
    ap.add_argument("--trainable", choices=TRAINABLE, default=d.trainable)
    ap.add_argument("--embedding-rows", choices=("all", "new"), default=d.embedding_rows,
                    help="new: train only the rows of pieces the new language uses that neither English nor any "
                         "--keep sentence uses (and its language tag); with --trainable embeddings, English and the "
                         "kept languages keep their TR exactly")
    ap.add_argument("--keep", nargs="+", default=[], metavar="LANG=FILE",
                    help="sentences (one a line) of languages the model already covers whose TR must stay where it is "
                         "(e.g. de=captions.de.txt); without them only English is held in place")
    ap.add_argument("--extend-vocab", action="store_true", help="append pieces for the new language's unknown characters")
    ap.add_argument("--new-vocab-size", type=int, default=d.new_vocab_size,
                    help="size of the sentencepiece model trained on the new language's side")
    ap.add_argument("--max-new-pieces", type=int, default=d.max_new_pieces)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs passes)")
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                    help="optimizer steps of linear warmup to --lr (then linear decay to 0)")
    ap.add_argument("--max-len", type=int, default=d.max_len)
    ap.add_argument("--lora-rank", type=int, default=d.lora_rank)
    ap.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=d.precision,
                    help="auto: bf16 autocast on a GPU that supports it, fp32 otherwise (as pretraining and finetuning)")
    ap.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: none)")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    # torch only once the arguments are parsed (`--help` stays light)
    from rc3.add_language.distill import add_language
    from rc3.add_language.parallel_text import read_keep, read_tsv_or_pair

    try:
        opts = AddLanguageOptions(lang=args.lang, trainable=args.trainable, extend_vocab=args.extend_vocab,
                                  embedding_rows=args.embedding_rows,
                                  new_vocab_size=args.new_vocab_size, max_new_pieces=args.max_new_pieces,
                                  steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  warmup_steps=args.warmup_steps,
                                  max_len=args.max_len, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                                  seed=args.seed, precision=args.precision, save_every=args.save_every)
        opts.check()
        pairs = read_tsv_or_pair(args.parallel)
        keep = read_keep(args.keep)
        add_language(args.model, pairs, args.out, opts, work_dir=args.work_dir, resume=args.resume,
                     overwrite=args.overwrite, progress=not args.no_progress, keep=keep)
    except (ParallelTextError, ValueError, FileNotFoundError, FileExistsError) as err:
        sys.exit(f"add_language: {err}")


if __name__ == "__main__":
    main()
