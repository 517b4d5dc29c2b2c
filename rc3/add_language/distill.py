"""Add a language to a trained RC3 model by sentence-embedding alignment on parallel text.

Multilingual knowledge distillation (Reimers & Gurevych, EMNLP 2020, "Making Monolingual Sentence
Embeddings Multilingual using Knowledge Distillation", Eq. 1): a frozen copy of the model is the
teacher T, the model being trained the student S, and on parallel pairs (s_en, t_X)

    L = MSE(S(s_en), T(s_en)) + MSE(S(t_X), T(s_en))

where S(.) and T(.) are RC3's text representation (TR: the top encoder state at [BOS] of
``[BOS] text [LANG]``). The first term keeps English where the teacher put it; the second pulls the
new language onto English, so every head finetuned later on English TR/VtR reads the new language.

Pieces of the vocabulary (optional, `extend_vocab`): a small sentencepiece model is trained on the
X side; the pieces that hold a character the model's vocabulary does not know are appended (the
others could change how text of the existing languages is segmented). Every text made of known
characters therefore segments exactly as before, into the same pieces; such text still maps to the
same embedding rows (the ids of language codes and ``<mask>``, which sit after the pieces, move up).
A new piece's embedding starts as the mean of the embeddings of the old tokenisation of its string
(mostly ``<unk>`` for an unknown script, the known characters otherwise).

What trains is a switch (`trainable`): ``embeddings`` (the shared token embeddings only),
``encoder`` (embeddings and every encoder layer) or ``lora`` (low-rank adapters on the encoder's
attention and feed-forward projections via peft, merged into the weights before saving; the
embeddings of new pieces train too). The result is a new model directory in the same layout
(`RC3Model.save_pretrained`, written to a temporary directory and renamed into place), with
`add_language.json` recording what was done.

Keeping the languages the model covers (`keep`, `embedding_rows`): the pairs anchor English only, and
the embedding rows are shared (``<s>``, whose top state is the TR, punctuation, pieces common to Latin
languages), so training them moves every other language too. `keep` adds Reimers & Gurevych's anchor
MSE(S(k), T(k)) for sentences k of the covered languages; ``embedding_rows="new"`` goes further and
trains only the rows the new language uses that neither the English side nor any kept sentence uses
(with ``trainable="embeddings"`` the kept languages then keep their TR exactly, not approximately).

The loop is the one pretraining and finetuning use: parameter groups and the warmup-then-linear
schedule of rc3.optim (warmup counted in optimizer steps), the metrics window (rc3.metrics_window) and
RunLogger (`work_dir/metrics.jsonl`; the same records go into `add_language.json`). Checkpoints
(`work_dir/checkpoints/step_XXXXXXXX`, every `save_every` steps, in the checkpoint directory every loop
shares: rc3.checkpoints.store, COMPLETE with its manifest, `latest`) hold the trained weights, the
optimizer and scheduler (safetensors, rc3.checkpoints.tensor_state), the RNG states (rc3.rng) and the
step, log and options (JSON); nothing is unpickled. `resume=True` continues the newest intact one (or
the `checkpoint/state.pt` an older version wrote, read weights-only) and ends with the same weights as
an uninterrupted run (the batch order is a function of (seed, epoch)).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from rc3 import atomic, fault_injection, rng, safe_load
from rc3.add_language.options import AddLanguageOptions
from rc3.add_language.parallel_text import ParallelTextError
from rc3.add_language.vocab_extension import candidate_pieces, extend_tokenizer, resize_embeddings, row_sources
from rc3.checkpoints import CheckpointStore, tag_for, tensor_state
from rc3.data.collate import pad_batch
from rc3.metrics_window import MetricsWindow, StepDone
from rc3.modeling import RC3Model
from rc3.optim import lr_factor, param_groups, use_bf16
from rc3.run_log import RunLogger
from rc3.tokenization import ID_MAP_FILE, SPM_FILE, RC3Tokenizer

INFO_FILE = "add_language.json"


# ---- distillation --------------------------------------------------------------------------------
def distillation_loss(student_en: Tensor, student_x: Tensor, teacher_en: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Reimers & Gurevych (2020), Eq. 1: MSE(S(s), T(s)) + MSE(S(t), T(s)); returns (total, en term, X term).
    MSE is the mean over the batch and the dimensions (the paper's 1/|B| sum of squared norms, scaled)."""
    en = torch.mean((student_en - teacher_en) ** 2)
    x = torch.mean((student_x - teacher_en) ** 2)
    return en + x, en, x


def _set_trainable(model: RC3Model, trainable: str) -> list[nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    model.mbart.model.shared.weight.requires_grad_(True)
    if trainable == "encoder":
        for p in model.mbart.model.encoder.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")


def _add_lora(model: RC3Model, rank: int, alpha: int, seed: int) -> list[nn.Parameter]:
    """peft LoRA adapters on every linear layer of the encoder (the TR comes from the encoder alone)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ImportError("trainable='lora' needs peft: pip install -e .[adapters] (or pip install peft)") from None
    n = model.mbart.config.encoder_layers
    targets = [f"mbart.model.encoder.layers.{i}.{part}" for i in range(n)
               for part in LORA_TARGETS]
    torch.manual_seed(seed)  # LoRA's A matrices are drawn at injection
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0), model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    model.mbart.model.shared.weight.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def _merge_lora(model: RC3Model) -> None:
    """Fold every LoRA adapter into its base linear layer and put the plain layer back."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, module.get_base_layer())


def _used_rows(tok: RC3Tokenizer, texts: Sequence[str], langs: Sequence[str], max_len: int) -> set[int]:
    """Model ids (embedding rows) that the encoding of `texts`, each with its language tag, uses."""
    return {i for ids in tok.encode_many(list(texts), list(langs), max_len) for i in ids}


def _encode(tok: RC3Tokenizer, texts: Sequence[str], lang: str, max_len: int,
            device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    ids, mask = pad_batch(tok.encode_many(list(texts), [lang] * len(texts), max_len), tok.pad_id)
    return ids.to(device), mask.to(device)


def _tr(model: RC3Model, tok: RC3Tokenizer, texts: Sequence[str], lang: str, opts: AddLanguageOptions) -> Tensor:
    """TR of `texts` on the model's device, under the run's precision (rc3.optim.use_bf16), in fp32."""
    device = model.mbart.model.shared.weight.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(opts.precision)):
        return model.tr(*_encode(tok, texts, lang, opts.max_len, device)).float()


LEGACY_STATE = Path("checkpoint") / "state.pt"  # the single checkpoint an older version wrote (a torch file)
TRAINED_STATE = "state.safetensors"  # trained parameters, optimizer, scheduler (rc3.checkpoints.tensor_state)
RUN_STATE = "run_state.json"  # step, training record, metrics window, what the run was started with
RNG_STATE = "rng.safetensors"


def _single_group_optimizer_state(old: dict[str, Any], params: Sequence[nn.Parameter],
                                  optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer state saved with all of `params` in one group (older versions), for `optimizer` whose
    groups are rc3.optim.param_groups of the same parameters: each parameter's state moves to its new index;
    every group takes the saved group's hyperparameters (the lr of the step reached) but its own weight decay."""
    index = {id(p): j for j, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    new = optimizer.state_dict()
    (saved,) = old["param_groups"]
    hyper = {k: v for k, v in saved.items() if k not in ("params", "weight_decay")}
    new["param_groups"] = [{**g, **hyper} for g in new["param_groups"]]
    new["state"] = {index[id(params[int(i)])]: s for i, s in old["state"].items()}
    return new


def _order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _step_batch(items: Sequence[Any], batch_size: int, seed: int, step: int) -> list[Any]:
    """The batch of optimizer step `step`: epochs are seeded passes over `items` (a function of (seed, epoch))."""
    epoch, within = divmod(step, math.ceil(len(items) / batch_size))
    order = _order(len(items), seed, epoch)
    return [items[i] for i in order[within * batch_size:(within + 1) * batch_size]]


def distill(student: RC3Model, teacher: RC3Model, new_tok: RC3Tokenizer, old_tok: RC3Tokenizer,
            pairs: Sequence[tuple[str, str]], opts: AddLanguageOptions, work_dir: Path, resume: bool = False,
            progress: bool = True, log: Callable[[str], None] = print,
            keep: Sequence[tuple[str, str]] = ()) -> dict:
    """Train `student` (in place) so that its TR of both sides matches the teacher's TR of the English side.

    `keep`: (language, sentence) pairs of languages the model already covers; each step also pulls the
    student's TR of a batch of them onto the teacher's (Reimers & Gurevych anchor every language the
    student must keep; the pairs only anchor English). Returns the training record (steps, first and
    last losses). Checkpoints under `work_dir`."""
    torch.manual_seed(opts.seed)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if opts.trainable == "lora":
        params = _add_lora(student, opts.lora_rank, opts.lora_alpha, opts.seed)
    else:
        params = _set_trainable(student, opts.trainable)
    rows_fixed = opts.embedding_rows == "new"
    if rows_fixed:
        # Rows used by the English side or by any sentence to keep (<s>, punctuation, pieces shared across
        # languages, the kept languages' tags) get no gradient; with no weight decay AdamW then leaves them
        # exactly as they were, so with the encoder frozen every text made of them keeps its TR bit for bit.
        x_ids = _used_rows(new_tok, [q for _, q in pairs], [opts.lang] * len(pairs), opts.max_len)
        protected = _used_rows(new_tok, [p for p, _ in pairs], ["en"] * len(pairs), opts.max_len)
        protected |= _used_rows(new_tok, [t for _, t in keep], [lang for lang, _ in keep], opts.max_len)
        mask = torch.zeros(student.mbart.model.shared.weight.shape[0], 1)
        mask[sorted(x_ids - protected - {new_tok.pad_id})] = 1.0
        student.mbart.model.shared.weight.register_hook(lambda g: g * mask.to(g.device, g.dtype))
        record_rows = int(mask.sum())
    else:
        record_rows = student.mbart.model.shared.weight.shape[0]
    # With only the unprotected embedding rows training, the kept sentences' TR cannot move: their anchor
    # term would be a constant (zero gradient) costing two forward passes a step, so it is left out.
    anchor = keep if not (rows_fixed and opts.trainable == "embeddings") else ()
    optimizer = torch.optim.AdamW(param_groups(student.named_parameters(), opts.weight_decay), lr=opts.lr)
    per_epoch = math.ceil(len(pairs) / opts.batch_size)
    total = opts.steps if opts.steps is not None else per_epoch * opts.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor("linear", opts.warmup_steps, total))
    store = CheckpointStore(work_dir / "checkpoints", keep_last=2)
    trained = {n: p for n, p in student.named_parameters() if p.requires_grad}
    record: dict[str, Any] = {"steps": total, "trainable_embedding_rows": record_rows, "log": []}
    window = MetricsWindow(world=1)
    started = {"options": dataclasses.asdict(opts), "pairs": len(pairs), "keep": len(keep)}
    step = 0
    if resume:
        step, record = _resume(store, work_dir, started, trained, params, optimizer, sched, window, total)
        log(f"[add_language] resumed at step {step} of {total}")

    def save(step: int) -> None:
        tag = tag_for(step)
        path = store.begin(tag)
        tensor_state.save({"params": {n: p.detach() for n, p in trained.items()}, "optimizer": optimizer.state_dict(),
                           "scheduler": sched.state_dict()}, path / TRAINED_STATE)
        rng.save(path / RNG_STATE)
        atomic.write_json(path / RUN_STATE, {"step": step, "record": record, "window": window.state_dict(), **started},
                          indent=1)
        store.publish(tag, {"step": step})

    student.train()
    work_dir.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(work_dir, enabled=True, tensorboard=False, fresh=not resume, progress_bar=progress)
    logger.progress(total, step, desc=f"add {opts.lang}")
    t0 = time.time()
    try:
        _train(student, teacher, new_tok, old_tok, pairs, opts, anchor, optimizer, sched, window, logger, record,
               step, total, save, t0)
    finally:
        logger.close()
    student.eval()
    if opts.trainable == "lora":
        _merge_lora(student)
    return record


def _resume(store: CheckpointStore, work_dir: Path, started: dict[str, Any], trained: dict[str, nn.Parameter],
            params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer, sched: Any,
            window: MetricsWindow, total: int) -> tuple[int, dict[str, Any]]:
    """Restore the newest intact checkpoint (or an older version's state.pt) into the run; (step, record)."""
    legacy = work_dir / LEGACY_STATE
    legacy_rng: Optional[Tensor] = None
    if not store.has_any() and legacy.is_file():
        state = safe_load.load(legacy)  # weights-only: a tampered state.pt is refused, naming it, not run
        run, legacy_rng = {**state, "window": {}}, state["rng"]
        if "warmup_ratio" in run["options"]:  # older versions warmed up over a fraction of the run
            run["options"] = dict(run["options"])
            warmup = int(run["options"].pop("warmup_ratio") * total)
            if warmup != started["options"]["warmup_steps"]:
                raise ValueError(f"resume: {legacy} warmed up over {warmup} of its {total} steps; resume it with "
                                 f"--warmup-steps {warmup}")
            run["options"]["warmup_steps"] = warmup
        tensors = {"params": state["params"], "scheduler": state["scheduler"],
                   "optimizer": _single_group_optimizer_state(state["optimizer"], params, optimizer)}
        source: Path = legacy
    elif store.has_any():
        tag = store.resume_tag(start_over="start without --resume")
        source = store.dir / tag
        run = json.loads((source / RUN_STATE).read_text())
        tensors = tensor_state.load(source / TRAINED_STATE)
    else:
        raise FileNotFoundError(f"resume: no checkpoint in {store.dir}; start without --resume")
    run["options"] = {"precision": "auto", **run["options"]}  # runs from before the option computed as "auto" does
    if run["options"] != started["options"] or run["pairs"] != started["pairs"]:
        raise ValueError(f"resume: {source} was written with other options or another parallel text "
                         f"({run['pairs']} pairs, {run['options']}); start without --resume")
    if run.get("keep", 0) != started["keep"]:
        raise ValueError(f"resume: {source} was written with {run.get('keep', 0)} sentences to keep, not "
                         f"{started['keep']}; start without --resume")
    with torch.no_grad():
        for n, t in tensors["params"].items():
            trained[n].copy_(t)
    optimizer.load_state_dict(tensors["optimizer"])
    sched.load_state_dict(tensors["scheduler"])
    if legacy_rng is not None:
        torch.set_rng_state(legacy_rng)
    else:
        rng.load(source / RNG_STATE)
    window.load_state_dict(run["window"])
    return int(run["step"]), run["record"]


def _train(student: RC3Model, teacher: RC3Model, new_tok: RC3Tokenizer, old_tok: RC3Tokenizer,
           pairs: Sequence[tuple[str, str]], opts: AddLanguageOptions, anchor: Sequence[tuple[str, str]],
           optimizer: torch.optim.Optimizer, sched: Any, window: MetricsWindow, logger: RunLogger,
           record: dict[str, Any], step: int, total: int, save: Callable[[int], None], t0: float) -> None:
    """Optimizer steps from `step` to `total`; log records go to `logger` and record["log"]."""
    while step < total:
        t_step = time.time()
        batch = _step_batch(pairs, opts.batch_size, opts.seed, step)
        fault_injection.maybe_kill(step + 1, 0)  # tests kill the run here, between two steps
        en_texts, x_texts = [p for p, _ in batch], [q for _, q in batch]
        with torch.no_grad():
            target = _tr(teacher, old_tok, en_texts, "en", opts)
        s_en = _tr(student, new_tok, en_texts, "en", opts)
        s_x = _tr(student, new_tok, x_texts, opts.lang, opts)
        loss, l_en, l_x = distillation_loss(s_en, s_x, target)
        if anchor:
            loss = loss + _keep_loss(student, teacher, new_tok, old_tok, anchor, opts, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
        step += 1
        logger.step()
        window.add(StepDone({k: float(v.detach()) for k, v in (("loss", loss), ("loss_en", l_en), ("loss_x", l_x))},
                            time.time() - t_step, 0.0, samples=len(batch)))
        if step % opts.log_every == 0 or step == total or step == 1:
            row = window.flush(step, sched.get_last_lr()[0], elapsed_s=round(time.time() - t0, 1))
            record["log"].append(row)
            logger.write(row)
        if opts.save_every and step % opts.save_every == 0 and step < total:
            save(step)


def _keep_loss(student: RC3Model, teacher: RC3Model, new_tok: RC3Tokenizer, old_tok: RC3Tokenizer,
               keep: Sequence[tuple[str, str]], opts: AddLanguageOptions, step: int) -> Tensor:
    """MSE(S(k), T(k)) over this step's batch of sentences to keep (a seeded pass over them per epoch),
    each encoded with its own language tag."""
    batch = _step_batch(keep, opts.batch_size, opts.seed + 7919, step)
    terms = []
    for lang in sorted({lang for lang, _ in batch}):  # one forward per language: its tag closes every sequence
        texts = [t for code, t in batch if code == lang]
        with torch.no_grad():
            target = _tr(teacher, old_tok, texts, lang, opts)
        terms.append(((_tr(student, new_tok, texts, lang, opts) - target) ** 2).sum(0))
    return torch.stack(terms).sum(0).mean() / len(batch)


def add_language(model_dir: str | os.PathLike, pairs: Sequence[tuple[str, str]], out_dir: str | os.PathLike,
                 opts: AddLanguageOptions, work_dir: Optional[str | os.PathLike] = None, resume: bool = False,
                 overwrite: bool = False, progress: bool = True, log: Callable[[str], None] = print,
                 keep: Sequence[tuple[str, str]] = ()) -> Path:
    """Write a new model directory `out_dir`: the model of `model_dir`, aligned on (English, X) `pairs`
    for X = opts.lang (and its vocabulary extended when opts.extend_vocab), holding the TR of the `keep`
    sentences (language, text) where the input model had it. Returns `out_dir`."""
    opts.check()
    if any(lang == opts.lang for lang, _ in keep):
        raise ValueError(f"--keep names {opts.lang}, the language being added; keep the languages the model covers")
    src, out = Path(model_dir), Path(out_dir)
    if out.resolve() == src.resolve():
        raise ValueError(f"the output {out} is the input model directory; write the new model elsewhere")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite (--overwrite) to replace it")
    if not pairs:
        raise ParallelTextError("no parallel pairs given")
    work = Path(work_dir) if work_dir is not None else out.with_name(f".{out.name}.add_language")
    if not resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    old_tok = RC3Tokenizer.from_dir(src)
    teacher = RC3Model.from_pretrained(src)
    if teacher.mbart.config.vocab_size != old_tok.vocab_size:
        raise ValueError(f"{src}: the model has {teacher.mbart.config.vocab_size} token embeddings but its tokenizer "
                         f"{old_tok.vocab_size} ids")
    student = copy.deepcopy(teacher)
    tok_dir = work / "tokenizer"
    new_pieces: list[tuple[str, float]] = []
    if opts.extend_vocab:
        # Deterministic given the text and sizes, so a resumed run rebuilds the same vocabulary.
        new_pieces = candidate_pieces([q for _, q in pairs], src / SPM_FILE, opts.new_vocab_size, opts.max_new_pieces)
        log(f"[add_language] {len(new_pieces)} new piece(s) for {opts.lang}"
            + (f", e.g. {' '.join(p for p, _ in new_pieces[:8])}" if new_pieces else
               " (every character of the text is already in the vocabulary)"))
    if new_pieces:
        if tok_dir.exists():
            shutil.rmtree(tok_dir)
        ext = extend_tokenizer(src, new_pieces, tok_dir)
        new_tok = RC3Tokenizer.from_dir(tok_dir)
        resize_embeddings(student, row_sources(old_tok, new_tok, ext))
        tokenizer_files = tok_dir
    else:
        new_tok, tokenizer_files = old_tok, src
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device)
    student.to(device)
    record = distill(student, teacher, new_tok, old_tok, pairs, opts, work, resume=resume, progress=progress, log=log,
                     keep=keep)
    student.to("cpu")
    staging = work / "tokenizer-files"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    for f in src.iterdir():  # task heads and other files of the input travel with the model
        if f.is_file():
            shutil.copy2(f, staging / f.name)
    if tokenizer_files != src:
        for f in tokenizer_files.iterdir():
            shutil.copy2(f, staging / f.name)
        if old_tok.id_map is None and (staging / ID_MAP_FILE).exists():
            (staging / ID_MAP_FILE).unlink()
    info = {"lang": opts.lang, "pairs": len(pairs), "keep": {lang: sum(1 for k, _ in keep if k == lang)
                                                             for lang in sorted({k for k, _ in keep})},
            "new_pieces": [p for p, _ in new_pieces],
            "options": dataclasses.asdict(opts), "source": str(src), "training": record}
    previous = staging / INFO_FILE
    history = json.loads(previous.read_text())["history"] if previous.is_file() else []
    (staging / INFO_FILE).write_text(json.dumps({**info, "history": [*history, {"lang": opts.lang, "source": str(src)}]},
                                                indent=1, ensure_ascii=False))
    student.save_pretrained(out, tokenizer_dir=staging, overwrite=True)
    shutil.rmtree(work, ignore_errors=True)
    log(f"[add_language] wrote {out} ({opts.lang}: {len(pairs)} pairs, {record['steps']} steps, "
        f"trainable {opts.trainable}, {len(new_pieces)} new pieces)")
    return out
