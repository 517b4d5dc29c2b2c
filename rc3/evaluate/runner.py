"""One evaluation of a pretrained model on every task and language: `evaluate(EvalOptions(...))`.

For each task (rc3.evaluate.tasks) and seed, the task's finetuning recipe (rc3.finetune, called as a
library with its `--config/--init/--set` arguments) finetunes on English and tests every language
the data has, zero-shot; MMT trains one model per target language; XM3600 is tested with the English
retrieval model of the same seed and no training of its own. With `few_shot`, IGLUE's protocol
follows: from the English model, each language's few-shot split at each shot count is trained at
each learning rate of the grid, and the test score of the rate with the best dev score is kept.

Everything is resumable (rc3.evaluate.cells): a finished (task, split, language, seed) cell is never
redone; a finished English run is reused (its model feeds few-shot and XM3600); a killed training
run continues from its last checkpoint (`--resume`). Layouts are checked before any training
(rc3.evaluate.layout). Outputs: OUT/leaderboard.json, OUT/leaderboard.md and OUT/charts/<task>.png
(rc3.evaluate.leaderboard), the recipe runs under OUT/runs/.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from rc3.evaluate import cells
from rc3.evaluate.layout import LayoutError, TaskPlan, check_files, check_xm3600, plan_languages
from rc3.evaluate.tasks import TASKS, FewShot, Shot


@dataclass
class EvalOptions:
    model_dir: Path
    data: Path  # data root: every recipe's data.root
    out: Path
    recipes: Path = Path("configs/finetune")  # <recipe>.yaml per task (e.g. configs/finetune/synthetic)
    tasks: Sequence[str] = tuple(TASKS)
    langs: Optional[Sequence[str]] = None  # default: every language of each task
    few_shot: bool = False
    seeds: int = 1
    overrides: Sequence[str] = ()  # `--set key=value` for every recipe (e.g. train.max_steps=2)
    shots: Optional[Sequence[Shot]] = None  # default: IGLUE's shot counts of each task (MaRVL: 1 2 4 10 10x2)
    few_shot_lrs: Optional[Sequence[float]] = None  # default: IGLUE's grid
    few_shot_epochs: Optional[int] = None  # default: IGLUE's 20
    xm3600: Optional[Path] = None  # default: DATA/xm3600
    log: Callable[[str], None] = field(default=print)


def run_recipe(recipe: str, argv: list[str]) -> dict[str, dict[str, Any]]:
    """Run a finetuning recipe in this process (as `rc3-finetune RECIPE ARGV`); returns its result rows."""
    from rc3.finetune.registry import DOWNSTREAM, resolve

    return resolve(DOWNSTREAM.get(recipe).recipe)(argv)


def _q(value: Any) -> str:
    return json.dumps(str(value)) if isinstance(value, Path) else json.dumps(value)


def _argv(config: Path, init: Path, out_dir: Path, sets: Sequence[str], resume: bool = False,
          save: bool = True) -> list[str]:
    argv = ["--config", str(config), "--init", str(init), "--output-dir", str(out_dir)]
    for s in sets:
        argv += ["--set", s]
    return argv + (["--resume"] if resume else []) + ([] if save else ["--no-save"])


def _finished(run_dir: Path, saved: bool = True) -> bool:
    return (run_dir / "results.json").is_file() and (not saved or (run_dir / "model" / "task_head.json").is_file())


def _results(run_dir: Path) -> dict[str, dict[str, Any]]:
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))["results"]


class Evaluation:
    """The state of one `evaluate` call (see the module docstring)."""

    def __init__(self, opts: EvalOptions) -> None:
        self.o = opts
        self.out = Path(opts.out)
        self.plans: dict[str, TaskPlan] = {}
        self.ran: list[str] = []  # run directories trained or evaluated by this call
        self.timings: dict[str, float] = {}  # seconds per task in this call (finished cells cost ~0)

    # ---- configs and layout -----------------------------------------------------------------
    def load_configs(self) -> None:
        from rc3.finetune.config import load_finetune_config

        unknown = [t for t in self.o.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
        for name in self.o.tasks:
            task = TASKS[name]
            source = "xflickrco" if name == "xm3600" else name
            path = Path(self.o.recipes) / f"{TASKS[source].recipe}.yaml"
            if not path.is_file():
                raise FileNotFoundError(f"{name}: no recipe config {path}; --recipes names a folder with "
                                        f"{task.recipe}.yaml (e.g. configs/finetune/synthetic)")
            own = _own_overrides(task.recipe, self.o.overrides)
            cfg = load_finetune_config(path, task.recipe, [f"data.root={_q(str(self.o.data))}", *own])
            self.plans[name] = TaskPlan(name, cfg, path, overrides=own)
        used = {o for plan in self.plans.values() for o in plan.overrides}
        unused = [o for o in self.o.overrides if o not in used]
        if unused:
            raise ValueError(f"--set {unused[0]}: no selected recipe has a '{unused[0].split('.', 1)[0]}' section; "
                             "check the key (e.g. train.max_steps, itr.k, mmt.num_beams)")

    def check_layout(self) -> None:
        """Every file every selected task reads, checked now; raises LayoutError (one line per file)."""
        problems: list[str] = []
        if not Path(self.o.data).is_dir():
            raise LayoutError(f"--data {self.o.data}: no such folder; give the folder that holds the released data sets")
        if not (Path(self.o.model_dir) / "rc3_config.json").is_file():
            problems.append(f"model: {self.o.model_dir} is not an RC3 model directory (no rc3_config.json); "
                            "give the save_pretrained / rc3-zero-to-safetensors output")
        for name, plan in self.plans.items():
            if name == "xm3600":
                root = Path(self.o.xm3600) if self.o.xm3600 else Path(self.o.data) / "xm3600"
                plan.xm3600_dir = root
                check_xm3600(root, plan.cfg.model.visual_mode, problems)
                check_files("xflickrco", plan.cfg, problems)  # the English retrieval model trains on it
            else:
                check_files(name, plan.cfg, problems)
        problems = list(dict.fromkeys(problems))
        if problems:
            raise LayoutError("\n".join(problems))
        for name, plan in self.plans.items():
            if name == "xm3600":
                self._plan_xm3600(plan)
            else:
                plan_languages(plan, list(self.o.langs) if self.o.langs else None, self.o.few_shot,
                               list(self.o.shots) if self.o.shots else None)
            if self.o.few_shot and name == "xm3600":
                plan.missing.append({"language": "*", "split": "few_shot", "reason": "XM3600 has no training splits"})

    def _plan_xm3600(self, plan: TaskPlan) -> None:
        from rc3.evaluate.tasks import XM3600_LANGS
        from rc3.evaluate.xm3600 import caption_langs, read_captions

        assert plan.xm3600_dir is not None
        from rc3.tokenization import LANG_CODES

        have = caption_langs(read_captions(plan.xm3600_dir / "captions.jsonl"))
        wanted = list(self.o.langs) if self.o.langs else sorted(set(XM3600_LANGS) | set(have))
        plan.langs["test"] = [lang for lang in wanted if lang in have and lang in LANG_CODES]
        for lang in wanted:
            if lang not in have:
                plan.missing.append({"language": lang, "split": "test",
                                     "reason": f"no captions in {plan.xm3600_dir / 'captions.jsonl'}"})
            elif lang not in LANG_CODES:
                plan.missing.append({"language": lang, "split": "test", "reason": "no language tag in the tokenizer (mBART-50)"})

    # ---- runs -------------------------------------------------------------------------------
    def seed_of(self, plan: TaskPlan, i: int) -> int:
        return int(plan.cfg.seed) + i

    def english_model(self, name: str, i: int, tgt: Optional[str] = None) -> Path:
        """Train (or reuse) the English model of task `name`, seed index i; returns its run directory."""
        plan = self.plans.get(name) or self.plans["xm3600"]
        seed = self.seed_of(plan, i)
        run_dir = self.out / "runs" / (f"{name}-{tgt}" if tgt else name) / f"seed{seed}"
        if _finished(run_dir):
            return run_dir
        langs = self.plans[name].langs.get("test", []) if name in self.plans else []  # [] = every language
        sets = [f"seed={seed}"]
        if name == "mmt":
            sets += [f"mmt.tgt_lang={tgt}", f"data.test_langs=[{tgt}]"]
        elif langs:
            sets.append(f"data.test_langs=[{','.join(langs)}]")
        resume = (run_dir / "checkpoints" / "latest").is_file()
        self.o.log(f"[evaluate] {name}{'-' + tgt if tgt else ''} seed {seed}: "
                   + ("resuming" if resume else "finetuning on English") + f" -> {run_dir}")
        run_recipe(TASKS[name].recipe, _argv(plan.config_file, Path(self.o.model_dir), run_dir,
                                               [*plan.overrides, f"data.root={_q(str(self.o.data))}", *sets], resume))
        self.ran.append(str(run_dir))
        return run_dir

    def _info(self, plan: TaskPlan, run_dir: Path, **extra: Any) -> dict[str, Any]:
        return {"run_dir": str(run_dir.relative_to(self.out)) if run_dir.is_relative_to(self.out) else str(run_dir),
                "recipe": TASKS[plan.name].recipe, **extra}

    def zero_shot(self, name: str) -> None:
        plan = self.plans[name]
        for i in range(self.o.seeds):
            seed = self.seed_of(plan, i)
            if name == "mmt":
                for tgt in _mmt_targets(plan):
                    todo = [s for s in TASKS["mmt"].splits if tgt in plan.langs.get(s, [])
                            and cells.read(self.out, cells.Cell("mmt", s, tgt, seed)) is None]
                    if not todo:
                        continue
                    run_dir = self.english_model("mmt", i, tgt)
                    results = _results(run_dir)
                    for split in todo:
                        row = results.get(f"{tgt}:{split}")
                        if row is not None:
                            cells.write(self.out, cells.Cell("mmt", split, tgt, seed), row, **self._info(plan, run_dir))
                continue
            if name == "xm3600":
                self._xm3600(plan, i)
                continue
            langs = plan.langs["test"]
            todo = [lang for lang in langs if cells.read(self.out, cells.Cell(name, "test", lang, seed)) is None]
            if not todo:
                continue
            run_dir = self.english_model(name, i)
            results = _results(run_dir)
            absent = [lang for lang in todo if lang not in results]
            if absent:  # languages added after the English run: test its model on them, no training
                results.update(self._eval_only(plan, run_dir, absent, seed, tag="more"))
            for lang in todo:
                cells.write(self.out, cells.Cell(name, "test", lang, seed), results[lang], **self._info(plan, run_dir))

    def _eval_only(self, plan: TaskPlan, run_dir: Path, langs: list[str], seed: int, tag: str,
                   extra_sets: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        out_dir = run_dir / f"eval-{tag}-{'-'.join(langs)}"
        if not _finished(out_dir, saved=False):
            sets = [*plan.overrides, f"data.root={_q(str(self.o.data))}", f"seed={seed}", "train.epochs=0",
                    f"data.test_langs=[{','.join(langs)}]", *extra_sets]
            self.o.log(f"[evaluate] {plan.name} seed {seed}: testing {run_dir / 'model'} on {', '.join(langs)}")
            run_recipe(TASKS[plan.name].recipe, _argv(plan.config_file, run_dir / "model", out_dir, sets, save=False))
            self.ran.append(str(out_dir))
        return _results(out_dir)

    def _xm3600(self, plan: TaskPlan, i: int) -> None:
        from rc3.evaluate.xm3600 import read_captions, to_retrieval_layout

        seed = self.seed_of(plan, i)
        todo = [lang for lang in plan.langs["test"] if cells.read(self.out, cells.Cell("xm3600", "test", lang, seed)) is None]
        if not todo:
            return
        assert plan.xm3600_dir is not None
        run_dir = self.english_model("xflickrco", i)
        converted = self.out / "data" / "xm3600"
        to_retrieval_layout(read_captions(plan.xm3600_dir / "captions.jsonl"), plan.langs["test"], converted)
        root = plan.xm3600_dir.resolve()
        sets = [f"data.test={_q(str(converted.resolve()))}", f"data.features=[{_q(str(root / 'features.h5'))}]",
                f"data.images={_q(str(root / 'images'))}", "data.dev=null"]
        results = self._eval_only(plan, run_dir, todo, seed, tag="xm3600", extra_sets=sets)
        for lang in todo:
            cells.write(self.out, cells.Cell("xm3600", "test", lang, seed), results[lang],
                        **self._info(plan, run_dir, model="the xflickrco English retrieval model; no XM3600 training"))

    def few_shot(self, name: str) -> None:
        plan, task = self.plans[name], TASKS[name]
        fs = task.few_shot
        if fs is None or not plan.few_shot:
            return
        lrs = list(self.o.few_shot_lrs or fs.lrs)
        epochs = self.o.few_shot_epochs if self.o.few_shot_epochs is not None else fs.epochs
        for i in range(self.o.seeds):
            seed = self.seed_of(plan, i)
            for lang, shots in plan.few_shot.items():
                for n in shots:
                    cell = cells.Cell(name, f"few_shot_{n}", lang, seed)
                    if cells.read(self.out, cell) is not None:
                        continue
                    english = self.english_model(name, i)
                    tried: list[dict[str, Any]] = []
                    warmup = few_shot_warmup(fs.train(plan.cfg, lang, n), fs.batch_size_of(n), epochs)
                    for lr in lrs:
                        out_dir = english / "few_shot" / lang / str(n) / f"lr{lr:g}"
                        dev = fs.dev(plan.cfg, lang)
                        if not _finished(out_dir, saved=False):
                            sets = [*plan.overrides, f"data.root={_q(str(self.o.data))}", f"seed={seed}",
                                    f"data.train={_q(str(fs.train(plan.cfg, lang, n)))}", f"data.train_lang={lang}",
                                    f"data.dev={_q(str(dev)) if dev is not None and dev.is_file() else 'null'}",
                                    f"data.test_langs=[{lang}]", f"optim.lr={lr}", f"train.epochs={epochs}",
                                    f"train.batch_size={fs.batch_size_of(n)}", f"train.micro_batch_size={fs.batch_size_of(n)}",
                                    f"optim.warmup_steps={warmup}",
                                    f"data.features=[{','.join(_q(f) for f in _few_shot_features(plan.cfg, fs, lang))}]"]
                            self.o.log(f"[evaluate] {name} few-shot {lang} {n} shot(s), lr {lr:g}, seed {seed} -> {out_dir}")
                            resume = (out_dir / "checkpoints" / "latest").is_file()  # killed while training
                            run_recipe(task.recipe, _argv(plan.config_file, english / "model", out_dir, sets, resume, save=False))
                            self.ran.append(str(out_dir))
                        sel_path = out_dir / "selection.json"
                        sel = json.loads(sel_path.read_text()) if sel_path.is_file() else {}
                        tried.append({"lr": lr, "dev": sel.get("score"), "test": _results(out_dir)[lang]})
                    scored = [t for t in tried if t["dev"] is not None]
                    best = max(scored, key=lambda t: t["dev"]) if scored else tried[0]
                    cells.write(self.out, cell, best["test"], **self._info(
                        plan, english / "few_shot" / lang / str(n), lr=best["lr"], epochs=epochs, shots=n,
                        lr_selection="best dev score" if scored else "no dev score: first learning rate of the grid",
                        grid=[{"lr": t["lr"], "dev": t["dev"], "test": t["test"].get(task.metric)} for t in tried]))


def count_examples(path: Path) -> int:
    """Training examples of a released split file: JSON lines (a line with a `sentences` list, as
    xFlickr&CO's, counts each caption), or a JSON object / list (xGQA's questions by id)."""
    if path.suffix == ".jsonl":
        from rc3.finetune.readers import iter_jsonl

        counts = (len(s) if isinstance(s := record.get("sentences"), list) else 1 for _, record in iter_jsonl(path))
        return sum(counts)
    return len(json.loads(path.read_text(encoding="utf-8")))


def few_shot_warmup(path: Path, batch_size: int, epochs: int, proportion: float = 0.1) -> int:
    """IGLUE's few-shot warmup (`--warmup_proportion 0.1` in its train scripts) in optimizer steps, the unit
    of every RC3 loop: a recipe's own `optim.warmup_steps` is sized for its full training set and would
    leave a few-shot run of a few dozen steps in warmup throughout."""
    steps = -(-count_examples(path) // batch_size) * epochs
    return int(proportion * steps)


def _few_shot_features(cfg: Any, fs: FewShot, lang: str) -> list[str]:
    """The recipe's feature stores, then those of `lang`'s few-shot images that exist (FewShot.features)."""
    stores = [str(cfg.data_path(f)) for f in cfg.data.features]
    return stores + [str(f) for f in fs.features(cfg, lang) if f.exists()]


def _own_overrides(recipe: str, overrides: Sequence[str]) -> list[str]:
    """The `--set` settings whose section the recipe's config has: `itr.k=4` goes to the retrieval recipe
    only, `train.max_steps=2` to every recipe."""
    import dataclasses

    from rc3.finetune.registry import DOWNSTREAM, resolve

    sections = {f.name for f in dataclasses.fields(resolve(DOWNSTREAM.get(recipe).config_class))}
    return [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] in sections]


def _mmt_targets(plan: TaskPlan) -> list[str]:
    return list(dict.fromkeys(lang for split in TASKS["mmt"].splits for lang in plan.langs.get(split, [])))


def evaluate(opts: EvalOptions) -> dict[str, Any]:
    """Run (or continue) the evaluation; returns the leaderboard written to OUT/leaderboard.json."""
    from rc3.evaluate.leaderboard import write_leaderboard

    t0 = time.time()
    ev = Evaluation(opts)
    ev.load_configs()
    ev.check_layout()  # before any training
    for plan in ev.plans.values():
        for m in plan.missing:
            opts.log(f"[evaluate] {plan.name}: {m['language']} {m['split']} missing ({m['reason']})")
    order = [t for t in TASKS if t in ev.plans]  # xflickrco before xm3600, which reuses its model
    for name in order:
        t = time.time()
        ev.zero_shot(name)
        ev.timings[name] = round(time.time() - t, 1)
        if opts.few_shot:
            t = time.time()
            ev.few_shot(name)
            ev.timings[f"{name}/few_shot"] = round(time.time() - t, 1)
    board = write_leaderboard(ev, time.time() - t0)
    opts.log(f"[evaluate] leaderboard: {Path(opts.out) / 'leaderboard.md'} ({len(ev.ran)} recipe run(s) this call)")
    return board


__all__ = ["EvalOptions", "Evaluation", "LayoutError", "evaluate", "run_recipe"]
