"""XTCL alone on real parallel text: cross-lingual sentence retrieval and text-only MMT.

    python tools/repro_text.py [--data DIR] [--out runs/repro/text] [--steps 1500] [--mmt-epochs 2]

--data is a folder holding multi30k/ and iglue/ as released; by default $RC3_DATA, else the excerpt
shipped in tests/data (tests/data/NOTICE: 1,500 Multi30K training lines, 650 xFlickr&CO images), which
runs the whole protocol on less text: the figures in REPRODUCTION.md come from the full release.

1. Text: Multi30K train (en-de, en-fr, en-cs; 29,000 lines each) and xFlickr&CO (the same 2,000
   images described in de en es id ja ru tr zh): its first 1,500 images (by id) give en-X training
   pairs (repeated --xf-repeat times, so that id/ja/zh/es/ru/tr are not drowned by Multi30K), the
   other 500 are held out. A sentencepiece model is trained on the training text
   (rc3.tokenization.train_sentencepiece) and the pairs become Dt shards (rc3.data.builders build_dt).
2. Pretraining: configs/repro/text.yaml (XTCL only, small model from scratch), one rank.
3. Retrieval: the TR of each English sentence, nearest neighbour by Euclidean distance among the
   TRs of all sentences of the other language; accuracy@1 vs chance 1/N, on Multi30K test2016
   (de fr cs) and test2017 (de fr), and the held-out xFlickr&CO part (every other language). The
   same model untrained is the baseline.
4. MMT text-only: finetune/mmt.py (mmt.use_image=false) en->de on Multi30K train from the XTCL model,
   sacreBLEU on test2016.
Writes OUT/summary.json and OUT/tables.md.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

from rc3 import atomic
from rc3.synthetic.repro.jobs import CHECKOUT, Job, require_checkout, run_jobs

ROOT = CHECKOUT

PY = sys.executable
M30K_PAIRS = ("de", "fr", "cs")
XF_LANGS = ("de", "es", "id", "ja", "ru", "tr", "zh")
RETRIEVAL = {"test_2016_flickr": ("de", "fr", "cs"), "test_2017_flickr": ("de", "fr")}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None,
                    help="folder holding multi30k/ and iglue/ as released (default: $RC3_DATA, else the excerpt "
                         "in tests/data, unpacked into OUT/release-excerpt)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/repro/text")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--holdout", type=int, default=500, help="xFlickr&CO images held out for evaluation")
    ap.add_argument("--xf-repeat", type=int, default=4)
    ap.add_argument("--mmt-epochs", type=int, default=1)
    ap.add_argument("--mmt-steps", type=int, default=300, help="cap on MMT optimizer steps (64 pairs each)")
    ap.add_argument("--mmt-beams", type=int, default=1, help="beam size of the test decoding (1 = greedy)")
    ap.add_argument("--no-mmt", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-langs", default=",".join(XF_LANGS),
                    help="xFlickr&CO languages whose en-X pairs (and text, for the tokenizer) pretraining sees; "
                         "retrieval is still measured for all of them (e.g. de,id,ja,zh leaves es/ru/tr unseen)")
    args = ap.parse_args(argv)
    args.train_langs = [lang for lang in args.train_langs.split(",") if lang]
    unknown = [lang for lang in args.train_langs if lang not in XF_LANGS]
    if unknown:
        ap.error(f"--train-langs: {unknown} not among xFlickr&CO's {','.join(XF_LANGS)}")
    if args.data is None:
        from rc3.synthetic.repro.release import ENV, full_release, release_dir

        try:
            full = full_release()
        except FileNotFoundError as e:
            ap.error(str(e))
        args.data = release_dir(args.out / "release-excerpt")
        if full is None:
            print(f"--data not given and {ENV} unset: using the excerpt in tests/data ({args.data}); "
                  "REPRODUCTION.md's figures need the full release", flush=True)
    return args


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh]


def read_xflickrco(data: Path) -> dict[str, dict[str, str]]:
    """lang -> image id -> first sentence, for the 8 languages of xFlickr&CO."""
    out: dict[str, dict[str, str]] = {}
    for lang in ("en", *XF_LANGS):
        path = data / "iglue/xFlickrCO/annotations" / lang / "test.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"xFlickr&CO annotations missing: {path} (IGLUE layout expected under --data)")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        out[lang] = {str(r["id"]): r["sentences"][0].strip() for r in rows if r.get("sentences")}
    return out


def split_xflickrco(xf: dict[str, dict[str, str]], holdout: int) -> tuple[list[str], list[str]]:
    """Image ids described in every language, sorted: the last `holdout` are held out."""
    ids = sorted(set.intersection(*(set(d) for d in xf.values())))
    if len(ids) <= holdout:
        raise ValueError(f"xFlickr&CO has {len(ids)} images in every language; cannot hold out {holdout}")
    return ids[:-holdout], ids[-holdout:]


def write_lines(path: Path, lines: list[str]) -> None:
    atomic.write_text(path, "".join(line.replace("\n", " ") + "\n" for line in lines))


def prepare(args: argparse.Namespace) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Training text files, the tokenizer and the Dt shards (each made once); returns xFlickr&CO and held-out ids."""
    from rc3.data.builders.dt import LineAlignedSource, build_dt
    from rc3.tokenization import train_sentencepiece

    m30k = args.data / "multi30k/raw"
    xf = read_xflickrco(args.data)
    train_ids, held = split_xflickrco(xf, args.holdout)
    text_dir = args.out / "text"
    text_dir.mkdir(parents=True, exist_ok=True)
    for lang in ("en", *args.train_langs):
        write_lines(text_dir / f"xf_train.{lang}", [xf[lang][i] for i in train_ids] * args.xf_repeat)
    tok = args.out / "tokenizer"
    if not (tok / "sentencepiece.bpe.model").is_file():
        t0 = time.perf_counter()
        texts = [s for lang in ("en", *M30K_PAIRS) for s in read_lines(m30k / f"train.{lang}.gz")]
        texts += [xf[lang][i] for lang in ("en", *args.train_langs) for i in train_ids]
        train_sentencepiece(texts, tok, vocab_size=args.vocab)
        print(f"sentencepiece ({args.vocab} pieces) on {len(texts)} sentences in {time.perf_counter() - t0:.0f}s", flush=True)
    shards = args.out / "shards/dt"
    if not any(shards.glob("dt-*.tar")):
        sources = [LineAlignedSource(m30k / "train.en.gz", m30k / f"train.{lang}.gz", "en", lang) for lang in M30K_PAIRS]
        sources += [LineAlignedSource(text_dir / "xf_train.en", text_dir / f"xf_train.{lang}", "en", lang)
                    for lang in args.train_langs]
        stats = build_dt(sources, shards, shard_size=5000, show_progress=False)
        print(f"Dt shards: {stats}", flush=True)
    return xf, held


def retrieval(model_dir: Path, tok_dir: Path, data: Path, xf: dict[str, dict[str, str]], held: list[str]) -> dict[str, Any]:
    """Accuracy@1 (%) of en -> X nearest-neighbour retrieval per test set and language, with N and chance."""
    from rc3.modeling import RC3Model
    from rc3.synthetic.repro.sentence_retrieval import embed_texts, nn_accuracy
    from rc3.tokenization import RC3Tokenizer

    model = RC3Model.from_pretrained(model_dir)
    tok = RC3Tokenizer.from_dir(tok_dir)
    rows: dict[str, Any] = {}
    sets = {split: ({lang: read_lines(data / f"multi30k/raw/{split}.{lang}.gz") for lang in ("en", *langs)})
            for split, langs in RETRIEVAL.items()}
    sets["xFlickrCO held-out"] = {lang: [xf[lang][i] for i in held] for lang in ("en", *XF_LANGS)}
    for name, texts in sets.items():
        en = embed_texts(model, tok, texts["en"], "en")
        for lang, lines in texts.items():
            if lang != "en":
                acc = nn_accuracy(en, embed_texts(model, tok, lines, lang))
                rows[f"{name} en->{lang}"] = {"acc@1": 100 * acc, "n": len(lines), "chance": 100 / len(lines)}
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    require_checkout()
    args = parse(argv)
    t0 = time.perf_counter()
    out = args.out
    xf, held = prepare(args)
    tok = out / "tokenizer"
    run_dir, model, random_model = out / "pretrain", out / "models/xtcl", out / "models/random"
    if not (model / "model.safetensors").is_file() and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    if not (random_model / "model.safetensors").is_file():
        import torch

        from rc3.modeling import build_model, load_tokenizer
        from rc3.pretrain.config import load_config

        cfg = load_config(ROOT / "configs/repro/text.yaml", [f"model.tokenizer={tok}"])
        torch.manual_seed(args.seed)
        build_model(cfg.model, load_tokenizer(cfg.model)).save_pretrained(random_model, tokenizer_dir=tok, overwrite=True)
    exists = lambda: (model / "model.safetensors").is_file()  # noqa: E731
    sets = [f"model.tokenizer={tok}", f"data.dt_shards={out / 'shards/dt/dt-*.tar'}", f"train.total_steps={args.steps}",
            f"train.run_dir={run_dir}", f"train.seed={args.seed}"]
    jobs = [Job("pretrain xtcl", [PY, "pretrain/main.py", "--config", "configs/repro/text.yaml",
                                  *sum((["--set", s] for s in sets), [])], out / "logs/pretrain.log", done=exists),
            Job("convert xtcl", [PY, "tools/zero_to_safetensors.py", str(run_dir), str(model), "--overwrite"],
                out / "logs/convert.log", after=("pretrain xtcl",), done=exists)]
    mmt_dir = out / "mmt"
    if not args.no_mmt:
        mmt_sets = [f"data.train={args.data / 'multi30k'}", "mmt.use_image=false", "mmt.tgt_lang=de",
                    "mmt.test_splits=[test_2016_flickr]", "mmt.dev_split=null",
                    f"train.epochs={args.mmt_epochs}", f"train.max_steps={args.mmt_steps}",
                    "optim.lr=5.0e-4", "train.batch_size=64", "train.micro_batch_size=64", "data.max_text_len=48",
                    f"mmt.num_beams={args.mmt_beams}", "mmt.max_new_tokens=48", "data.num_workers=0",
                    f"seed={args.seed}", "eval.batch_size=200", f"output_dir={mmt_dir}"]
        jobs.append(Job("mmt en-de text-only", [PY, "finetune/mmt.py", "--init", str(model), "--no-save",
                                                *sum((["--set", s] for s in mmt_sets), [])],
                        out / "logs/mmt.log", after=("convert xtcl",), done=lambda: (mmt_dir / "results.json").is_file()))
    # Pretraining and MMT are one chain; the random-init retrieval baseline runs meanwhile in this process.
    import threading

    base: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: base.update(retrieval(random_model, tok, args.data, xf, held)))
    worker.start()
    times = run_jobs(jobs, parallel=1, cwd=ROOT, echo=lambda s: print(s, flush=True))
    worker.join()
    trained = retrieval(model, tok, args.data, xf, held)
    lines = ["| test set | en -> | N | chance | untrained | XTCL |", "|---|---|---:|---:|---:|---:|"]
    for key, row in trained.items():
        name, pair = key.rsplit(" ", 1)
        lines.append(f"| {name} | {pair.split('->')[1]} | {row['n']} | {row['chance']:.2f} | "
                     f"{base[key]['acc@1']:.2f} | {row['acc@1']:.2f} |")
    md = [f"XTCL alone, {args.steps} steps x 64 pairs; sentence retrieval accuracy@1 (%), Euclidean nearest "
          "neighbour of the TR:\n\n", "\n".join(lines) + "\n"]
    summary: dict[str, Any] = {"retrieval": trained, "retrieval_untrained": base, "job_s": times}
    if not args.no_mmt:
        mmt = json.loads((mmt_dir / "results.json").read_text())["results"]
        summary["mmt"] = mmt
        md.append(f"\nText-only MMT en->de (Multi30K train, {args.mmt_steps} steps x 64 pairs from the XTCL model, "
                  f"beam {args.mmt_beams}), sacreBLEU:\n\n")
        md.append("| row | BLEU | BLEU (lowercased) | n |\n|---|---:|---:|---:|\n")
        md.extend(f"| {k} | {v['BLEU']:.2f} | {v['BLEU_lc']:.2f} | {v['n']} |\n" for k, v in mmt.items())
        md.append(f"\nsignature: `{next(iter(mmt.values())).get('signature', '')}`\n")
    summary["wall_s"] = time.perf_counter() - t0
    text = "".join(md)
    for name, content in (("tables.md", text), ("summary.json", json.dumps(summary, indent=1))):
        atomic.write_text(out / name, content)
    print(text)
    return summary


if __name__ == "__main__":
    main()
