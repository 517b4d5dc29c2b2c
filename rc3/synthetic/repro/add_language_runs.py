"""Languages pretraining never saw: add_language (sentence-embedding distillation) and code-switching, measured.

    python tools/repro_add_language.py [--out runs/repro/add-language] [--seeds 3] [--data DIR (default: RC3_DATA, else the excerpt in tests/data)]
    python tools/repro_add_language.py --no-text          # the synthetic world only

1. Synthetic world (tools/repro_synthetic.py's tiny world, weak overlap 0.8): the RC3 model pretrained
   for 300 steps per seed (OUT/synthetic, made by `repro_synthetic.py --no-finetune` when missing).
   For each seed, tools/add_language.py adds es, then ru, then tr (a chain: the last model covers all
   three) on English-X parallel text of the world's grammar (rc3.synthetic.repro.add_language.world_parallel,
   its own scenes, none of the test images'), with `--embedding-rows new` and, as `--keep`, the
   world's pretraining sentences of cs/de/fr/id/ja/zh and the X side of every language added before
   (so the covered languages keep their TR; --keep-pretrained 0 --embedding-rows all: the plain
   method, English anchored only). Both models are finetuned on English (ITR, XVNLI, xGQA)
   and tested zero-shot; xGQA is also finetuned from the pretrained model with code-switching
   (the world's MUSE dictionaries for every xGQA language) and with the linguistic-prior loss. The TR
   alignment without finetuning (en -> X caption retrieval on the world's xFlickr&CO test captions) is
   measured before and after.
2. Real text: XTCL pretrained on Multi30K + xFlickr&CO en-de/id/ja/zh only (tools/repro_text.py
   --train-langs de,id,ja,zh: es, ru, tr are in neither its pairs nor its tokenizer); add_language with
   vocabulary extension, separately for es, ru and tr, on the (English, X) first captions of the
   1,500 training images of xFlickr&CO (the pretrained languages' captions of those images kept);
   en -> X sentence retrieval on the 500 held-out images, before and after, with chance and the pretrained languages.
Writes OUT/tables.md and OUT/summary.json; every command's log is in OUT/logs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rc3 import atomic
from rc3.synthetic.repro.jobs import CHECKOUT, Job, require_checkout, run_jobs
from rc3.synthetic.repro.report import baseline_row, fmt, read_results, table

ROOT = CHECKOUT

PY = sys.executable
LANGS = {"itr": ["en", "de", "id", "ja", "zh", "es", "ru", "tr"], "xvnli": ["en", "fr", "ar", "es", "ru"],
         "xgqa": ["en", "de", "id", "zh", "bn", "ko", "pt", "ru"]}
METRIC = {"itr": "dual_mean_R@1", "xvnli": "accuracy", "xgqa": "accuracy"}
EPOCHS = {"itr": 4, "xvnli": 10, "xgqa": 10}
CHANCE = {"itr": "xflickrco_recall_at_1", "xvnli": "xvnli", "xgqa": "xgqa_majority_answer"}
PRETRAINED = ["de", "id", "ja", "zh"]  # languages of the world's / the real text's pretraining pairs besides en
XGQA_DICTS = ["de", "id", "zh", "bn", "ko", "pt", "ru"]
KEEP_LANGS = ["cs", "de", "fr", "id", "ja", "zh"]  # the synthetic world's pretraining languages besides English


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs/repro/add-language")
    ap.add_argument("--world", type=Path, default=ROOT / "work/repro/world-tiny-wo0.8")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--langs", default="es,ru,tr")
    ap.add_argument("--pairs", type=int, default=3000, help="synthetic parallel pairs per language")
    ap.add_argument("--trainable", default="embeddings", choices=("embeddings", "encoder", "lora"))
    ap.add_argument("--keep-pretrained", type=int, default=1000, metavar="N",
                    help="anchor the world's pretrained languages with up to N of their pretraining sentences each, "
                         "and each language added earlier in the chain with N of its parallel sentences "
                         "(tools/add_language.py --keep); 0: only English is anchored")
    ap.add_argument("--embedding-rows", default="new", choices=("all", "new"),
                    help="tools/add_language.py --embedding-rows of the synthetic runs (new: only rows that neither "
                         "English nor a kept sentence uses train, so those languages keep their TR exactly)")
    ap.add_argument("--al-epochs", type=int, default=3, help="add_language epochs over the synthetic pairs")
    ap.add_argument("--tasks", default="itr,xvnli,xgqa")
    ap.add_argument("--cs-ratio", type=float, default=0.5, help="code_switch.ratio of the xGQA code-switching run")
    ap.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True,
                    help="the synthetic-world part (--no-synthetic: the real-text part alone)")
    ap.add_argument("--text", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--data", type=Path, default=None,
                    help="folder holding multi30k/ and iglue/ (default: RC3_DATA, else the excerpt in tests/data)")
    ap.add_argument("--text-seeds", type=int, default=3)
    ap.add_argument("--text-steps", type=int, default=1200, help="XTCL pretraining steps of the real-text model")
    ap.add_argument("--text-al-epochs", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: tabulate what OUT already holds (rows of unfinished runs are left out)")
    args = ap.parse_args(argv)
    if args.data is None:  # as tools/repro_text.py: the full release at RC3_DATA, else the in-repo excerpt
        from rc3.synthetic.repro.release import full_release, release_dir

        args.data = full_release() or release_dir(args.out / "release-excerpt")
    return args


def keep_file(path: Path, lang: str, sentences: list[str]) -> str:
    """Write `sentences` one a line (atomically) and return tools/add_language.py's `--keep LANG=FILE` spec."""
    from rc3.atomic import write_text

    write_text(path, "".join(f"{t}\n" for t in sentences))
    return f"{lang}={path}"


def plan(args: argparse.Namespace) -> tuple[list[Job], dict[str, Any]]:
    from rc3.synthetic.dictionaries import write_muse_dictionaries
    from rc3.synthetic.repro.add_language import world_parallel, write_tsv, xflickrco_parallel

    out, w = args.out, args.world
    langs = [lang for lang in args.langs.split(",") if lang]
    tasks = [t for t in args.tasks.split(",") if t]
    jobs: list[Job] = []
    where: dict[str, Any] = {"finetune": {}, "models": {}, "text_models": {}}
    pre_models = out / "synthetic/models"
    exists = lambda p: (lambda: (p / "model.safetensors").is_file())  # noqa: E731
    if not args.synthetic:
        tasks, args.seeds = [], 0
    else:
        jobs.append(Job("pretrain synthetic", [PY, "tools/repro_synthetic.py", "--no-finetune", "--variants", "full",
                                           "--seeds", str(args.seeds), "--no-text", "--world", str(w),
                                           "--out", str(out / "synthetic")],
                    out / "logs/pretrain-synthetic.log",
                    done=lambda: all((pre_models / f"full-s{s}/model.safetensors").is_file() for s in range(args.seeds))))
    dict_dir = w / "dictionaries"
    if args.synthetic and not dict_dir.is_dir() and (w / "world.json").is_file():  # worlds older than the dictionaries
        write_muse_dictionaries(dict_dir)
    world_pairs = {lang: world_parallel(lang, args.pairs, seed=0) for lang in langs} if args.synthetic else {}
    parallel = {lang: out / f"parallel/en-{lang}.tsv" for lang in langs}
    for lang, path in parallel.items():
        if lang in world_pairs and not path.is_file():
            write_tsv(path, world_pairs[lang])
    keep_args: list[str] = []
    added_keep: dict[str, str] = {}  # languages added earlier in the chain are kept too, with their X side
    if args.synthetic and args.keep_pretrained:
        from rc3.synthetic.texts import pretraining_sentences

        keep_args = [keep_file(out / f"keep/{lang}.txt", lang, pretraining_sentences(w, lang, args.keep_pretrained))
                     for lang in KEEP_LANGS]
        added_keep = {lang: keep_file(out / f"keep/added-{lang}.txt", lang,
                                      [x for _, x in world_pairs[lang][:args.keep_pretrained]]) for lang in langs}

    def finetune(task: str, model: Path, name: str, seed: int, after: tuple[str, ...], extra: Sequence[str] = ()) -> None:
        ft = out / "finetune" / f"{task}-{name}"
        sets = [f"data.root={w / 'downstream'}", f"seed={seed}", f"train.epochs={EPOCHS[task]}", f"output_dir={ft}",
                "eval.select=last", f"data.test_langs=[{','.join(LANGS[task])}]", *extra]
        jobs.append(Job(f"{task} {name}", [PY, f"finetune/{task}.py", "--config", f"configs/finetune/synthetic/{task}.yaml",
                                          "--init", str(model), "--no-save", *sum((["--set", s] for s in sets), [])],
                        out / "logs" / f"{task}-{name}.log", after=after, done=lambda: (ft / "results.json").is_file()))
        where["finetune"][(task, name, seed)] = ft / "results.json"

    for seed in range(args.seeds):
        base = pre_models / f"full-s{seed}"
        prev, dep, chain = base, ("pretrain synthetic",), list[str]()
        for lang in langs:
            keep_chain = [*keep_args, *(added_keep[k] for k in chain)] if keep_args else []
            chain.append(lang)
            model = out / "models" / f"full-s{seed}+{'+'.join(chain)}"
            name = f"add {'+'.join(chain)} s{seed}"
            jobs.append(Job(name, [PY, "tools/add_language.py", "--model", str(prev), "--lang", lang,
                                   "--parallel", str(parallel[lang]), "--out", str(model), "--seed", str(seed),
                                   "--epochs", str(args.al_epochs), "--trainable", args.trainable,
                                   "--embedding-rows", args.embedding_rows, "--overwrite", "--no-progress",
                                   *(["--keep", *keep_chain] if keep_chain else [])],
                            out / "logs" / f"add-{'+'.join(chain)}-s{seed}.log", after=dep, done=exists(model)))
            prev, dep = model, (name,)
        where["models"][seed] = (base, prev)
        for task in tasks:
            finetune(task, base, f"base-s{seed}", seed, ("pretrain synthetic",))
            finetune(task, prev, f"added-s{seed}", seed, dep)
        if "xgqa" in tasks:
            dicts = ",".join(str(dict_dir / f"en-{lang}.txt") for lang in XGQA_DICTS)
            finetune("xgqa", base, f"cs-s{seed}", seed, ("pretrain synthetic",),
                     [f"code_switch.dictionaries=[{dicts}]", f"code_switch.ratio={args.cs_ratio}"])
            finetune("xgqa", base, f"prior-s{seed}", seed, ("pretrain synthetic",), ["prior.enabled=true"])
    if args.text:
        text_out = out / "text"
        xtcl = text_out / "models/xtcl"
        jobs.append(Job("pretrain text", [PY, "tools/repro_text.py", "--data", str(args.data), "--out", str(text_out),
                                          "--train-langs", ",".join(PRETRAINED), "--no-mmt", "--steps", str(args.text_steps)],
                        out / "logs/pretrain-text.log", done=exists(xtcl)))
        pairs, _, _ = xflickrco_parallel(args.data, [*langs, *PRETRAINED])
        # The pretrained languages' captions of the training images, as --keep.
        text_keep = [keep_file(out / f"text-keep/{lang}.txt", lang, [x for _, x in pairs[lang][:args.keep_pretrained]])
                     for lang in (PRETRAINED if args.keep_pretrained else [])]
        for lang in langs:
            tsv = out / f"text-parallel/en-{lang}.tsv"
            if not tsv.is_file():
                write_tsv(tsv, pairs[lang])
            for seed in range(args.text_seeds):
                model = out / "text-models" / f"xtcl+{lang}-s{seed}"
                jobs.append(Job(f"text add {lang} s{seed}", [
                    PY, "tools/add_language.py", "--model", str(xtcl), "--lang", lang, "--parallel", str(tsv),
                    "--out", str(model), "--seed", str(seed), "--epochs", str(args.text_al_epochs), "--extend-vocab",
                    "--trainable", args.trainable, "--embedding-rows", args.embedding_rows, "--overwrite",
                    "--no-progress", *(["--keep", *text_keep] if text_keep else [])],
                    out / "logs" / f"text-add-{lang}-s{seed}.log", after=("pretrain text",), done=exists(model)))
                where["text_models"][(lang, seed)] = model
        where["xtcl"] = xtcl
    # Longest first: the pretraining runs, then the add_language chains, then the finetunes.
    order = {"pretrain": 0, "add": 1, "text": 1}
    return sorted(jobs, key=lambda j: order.get(j.name.split()[0], 2)), where


def mean_row(name: str, cols: list[str], runs: list[dict[str, float]]) -> str:
    return "| " + " | ".join([name, *(fmt([r[c] for r in runs if c in r]) for c in cols)]) + " |"


def summarise(args: argparse.Namespace, where: dict[str, Any], times: dict[str, float], wall: float) -> dict[str, Any]:

    langs = [lang for lang in args.langs.split(",") if lang]
    tasks = [t for t in args.tasks.split(",") if t]
    anchored = (f"{args.keep_pretrained} pretraining sentences each of {', '.join(KEEP_LANGS)} kept"
                if args.keep_pretrained else "only English anchored")
    md = [f"Synthetic world {args.world.name}; {args.seeds} seed(s); add_language: {args.pairs} pairs per language, "
          f"{args.al_epochs} epochs, trainable {args.trainable} (embedding rows: {args.embedding_rows}; {anchored}), "
          f"languages added in the order {', '.join(langs)}; "
          "cells are mean ± std over seeds.\n"] if args.synthetic else []
    summary: dict[str, Any] = {"wall_s": wall, "job_s": times, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.synthetic:
        summarise_synthetic(args, where, langs, tasks, md, summary)
    text_part(args, where, langs, md, summary)
    text = "".join(md)
    name = "tables.md" if args.synthetic and args.text else ("tables-synthetic.md" if args.synthetic else "tables-text.md")
    for fname, content in ((name, text), (name.replace("tables", "summary").replace(".md", ".json"),
                                          json.dumps(summary, indent=1, default=str))):
        atomic.write_text(args.out / fname, content)
    print(text)
    return summary


def summarise_synthetic(args: argparse.Namespace, where: dict[str, Any], langs: list[str], tasks: list[str],
                        md: list[str], summary: dict[str, Any]) -> None:
    from rc3.synthetic.repro.add_language import text_alignment, world_captions

    world = json.loads((args.world / "world.json").read_text())
    cols = [*langs, *PRETRAINED]
    en, others = world_captions(args.world, cols)
    before, after = [], []
    for _seed, (base, added) in sorted(where["models"].items()):
        if (base / "model.safetensors").is_file():
            before.append(text_alignment(base, en, others))
        if (added / "model.safetensors").is_file():
            after.append(text_alignment(added, en, others))
    summary["alignment"] = {"before": before, "after": after}
    md.append(f"\n### Without finetuning: en -> X caption retrieval with the TR (accuracy@1, %, {len(en)} captions)\n\n")
    md.append("| model | " + " | ".join(cols) + " | chance |\n|---" + "|---:" * (len(cols) + 1) + "|\n")
    for name, runs in (("RC3 (pretrained)", before), (f"RC3 + add_language {'+'.join(langs)}", after)):
        md.append(mean_row(f"{name} ({len(runs)} seed(s))", [*cols, "chance"], runs) + "\n")
    names = {"base": "RC3 (pretrained)", "added": f"RC3 + add_language {'+'.join(langs)}",
             "cs": f"RC3, xGQA finetuned with code-switching (ratio {args.cs_ratio})",
             "prior": "RC3, xGQA finetuned with the linguistic prior"}
    summary["finetune"] = {}
    for task in tasks:
        by_name: dict[str, list[dict]] = {}
        for (t, name, _seed), path in sorted(where["finetune"].items(), key=lambda kv: (kv[0][1], kv[0][2])):
            if t == task and path.is_file():
                by_name.setdefault(names[name.rsplit("-s", 1)[0]], []).append(read_results(path))
        task_runs = {f"{k} ({len(v)} seed(s))": v for k, v in by_name.items()}
        summary["finetune"][task] = task_runs
        groups = {"added langs": [lang for lang in LANGS[task] if lang in langs],
                  "pretrained langs": [lang for lang in LANGS[task] if lang in PRETRAINED]}
        chance = 100 * world["chance"][CHANCE[task]]
        metrics = [METRIC[task], "mean_R@1"] if task == "itr" else [METRIC[task]]
        for metric in metrics:
            md.append(f"\n### {task} ({metric}, %): finetuned on English, zero-shot elsewhere\n\n")
            md.append(table(task_runs, metric, LANGS[task], groups))
            md.append(baseline_row(task, chance, len(LANGS[task]) + len(groups)))


def text_part(args: argparse.Namespace, where: dict[str, Any], langs: list[str], md: list[str],
              summary: dict[str, Any]) -> None:
    from rc3.synthetic.repro.add_language import text_alignment, xflickrco_parallel

    if args.text and "xtcl" in where:
        pairs, held_en, held = xflickrco_parallel(args.data, [*langs, *PRETRAINED])
        base = text_alignment(where["xtcl"], held_en, held)
        rows: dict[str, list[dict[str, float]]] = {}
        for (lang, _seed), model in sorted(where["text_models"].items()):
            if (model / "model.safetensors").is_file():
                rows.setdefault(lang, []).append(text_alignment(model, held_en, held))
        summary["text"] = {"before": base, "after": rows}
        md.append(f"\n### Real text: en -> X retrieval on the {len(held_en)} held-out xFlickr&CO images "
                  "(accuracy@1, %; XTCL pretrained without es/ru/tr)\n\n")
        cols_t = [*langs, *PRETRAINED]
        md.append("| model | " + " | ".join(cols_t) + " | chance |\n|---" + "|---:" * (len(cols_t) + 1) + "|\n")
        md.append(mean_row("XTCL (pretrained: en, cs, de, fr, id, ja, zh)", [*cols_t, "chance"], [base]) + "\n")
        for lang, runs_t in rows.items():
            md.append(mean_row(f"+ add_language {lang} ({len(runs_t)} seed(s))", [*cols_t, "chance"], runs_t) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    require_checkout()
    args = parse(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs, where = plan(args)
    times = {} if args.report_only else run_jobs(jobs, parallel=args.parallel, cwd=ROOT,
                                                 echo=lambda s: print(s, flush=True))
    return summarise(args, where, times, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
