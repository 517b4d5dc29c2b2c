"""Finetuning as users run it: batch split over any process count, kill and --resume, best-epoch
selection, metrics.jsonl + TensorBoard, and the ITR recipe on two processes (gathered negatives,
sharded evaluation). The tiny downstream world and model come from tests/test_finetune.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_finetune import COMMON, DATA, build_world, read_results, run_recipe  # noqa: F401  (fixtures below)

from rc3.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("downstream")
    build_world(root)
    return root


def test_batch_split_for_any_process_count() -> None:
    from rc3.finetune.config import load_finetune_config
    from rc3.finetune.trainer import split_batch

    def brute(batch: int, micro: int, world: int) -> tuple[int, int]:
        # the largest micro-batch <= micro with micro x world x accumulation == batch
        best = max(m for m in range(1, micro + 1) if batch % (m * world) == 0)
        return best, batch // (best * world)

    for task in ("xvnli", "xgqa", "marvl", "itr", "mmt"):
        t = load_finetune_config(REPO / "configs" / "finetune" / f"{task}.yaml", task).train
        for world in (1, 2, 3, 4, 8, 16):
            if t.batch_size % world:
                continue
            micro, accum = split_batch(t.batch_size, t.micro_batch_size, world)
            assert (micro, accum) == brute(t.batch_size, t.micro_batch_size, world), (task, world)
            assert micro * world * accum == t.batch_size and micro <= t.micro_batch_size
    assert split_batch(128, 32, 8) == (16, 1) and split_batch(64, 64, 8) == (8, 1) and split_batch(256, 32, 2) == (32, 4)
    assert split_batch(96, 32, 3) == (32, 1) and split_batch(120, 32, 4) == (30, 1)
    with pytest.raises(ConfigError, match=r"train.batch_size.*over 8 processes"):
        split_batch(100, 32, 8)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def losses_by_step(out: Path) -> dict[int, dict]:
    return {r["step"]: {k: v for k, v in r.items() if k.startswith(("loss", "acc_"))} for r in metrics(out) if "loss" in r}


# 4 captions per micro-batch, so that each ITM negative is a random draw among 2-3 others (RNG state matters);
# 2 micro-batches per step (the resume lands between accumulation rounds' data positions).
ITR_RUN = ["train.epochs=2", "train.max_steps=null", "train.batch_size=8", "train.micro_batch_size=4",
           "train.save_every=2", "data.dev=flickr30k/annotations/train_ann.jsonl", "itr.k=all", "data.test_langs=[de]"]


def recipe_cmd(task: str, world: Path, tiny_model_dir: Path, out: Path, *extra: str) -> list[str]:
    sets = [*COMMON, f"data.root={world}", "data.features=[features.h5]", "data.images=images", *DATA[task], *extra]
    cmd = [str(REPO / "finetune" / f"{task}.py"), "--init", str(tiny_model_dir), "--output-dir", str(out)]
    for s in sets:
        cmd += [s] if s.startswith("--") else ["--set", s]
    return cmd


@pytest.mark.slow  # starts Python processes that import torch
def test_killed_run_resumes_exactly(world: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """ITR (its negatives are random draws, so the RNG state matters): killed at the start of step 5, resumed from
    the step-4 checkpoint (mid-epoch), it logs the same losses and ends with the same weights as an uninterrupted run."""
    whole = tmp_path / "whole"
    run_recipe("itr", world, tiny_model_dir, whole, *ITR_RUN)
    log = losses_by_step(whole)
    assert sorted(log) == list(range(1, 7))  # 18 captions, 2 x 4 per step: 3 steps per epoch, 2 epochs

    cut = tmp_path / "cut"
    # the killed run must sum in the same thread count as this process's runs (earlier tests in the
    # suite may have changed it in-process), or the comparison below cannot be bit-exact
    env = dict(os.environ, RC3_KILL_AT="5", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, *recipe_cmd("itr", world, tiny_model_dir, cut, *ITR_RUN)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (cut / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert sorted(losses_by_step(cut)) == list(range(1, 5))
    run_recipe("itr", world, tiny_model_dir, cut, *ITR_RUN, "--resume")
    resumed = losses_by_step(cut)
    for step in range(1, 7):
        assert resumed[step] == log[step], step  # bit-exact: same batches, same negatives, same updates
    a, b = load_file(str(whole / "model" / "model.safetensors")), load_file(str(cut / "model" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert read_results(cut) == read_results(whole)
    assert len(list((cut / "checkpoints").glob("step_*"))) == 2  # train.keep_checkpoints
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_recipe("itr", world, tiny_model_dir, tmp_path / "fresh", *ITR_RUN, "--resume")


def test_best_dev_epoch_is_kept_and_tested(world: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "best"
    extra = ["train.epochs=4", "train.max_steps=null", "optim.lr=0.003", "data.max_train_examples=6"]
    run_recipe("xvnli", world, tiny_model_dir, out, *extra)
    dev = [r for r in metrics(out) if "dev_accuracy" in r]
    assert [r["epoch"] for r in dev] == [0, 1, 2, 3]
    scores = [r["dev_accuracy"] for r in dev]
    chosen = json.loads((out / "selection.json").read_text())
    assert chosen["selected"] == "best" and chosen["epoch"] == scores.index(max(scores))  # first best epoch
    best = load_file(str(out / "checkpoints" / "best" / "model.safetensors"))
    saved = load_file(str(out / "model" / "model.safetensors"))
    shared = [k for k in saved if f"rc3.{k}" in best]  # tied embeddings are stored under one of their names
    assert len(shared) >= len(saved) - 1
    for k in shared:  # the saved model is the best epoch's (RC3 part; the head is saved beside it)
        assert torch.equal(best[f"rc3.{k}"], saved[k]), k
    head = load_file(str(out / "model" / "task_head.safetensors"))
    assert all(torch.equal(best[k], v) for k, v in head.items())
    # The test rows are that model's: evaluating the saved model alone gives the same numbers.
    again = run_recipe("xvnli", world, out / "model", tmp_path / "eval", "train.epochs=0")
    assert again == read_results(out)
    # eval.select=last tests the last epoch's weights instead (those of the last checkpoint).
    last = tmp_path / "last"
    run_recipe("xvnli", world, tiny_model_dir, last, *extra, "eval.select=last")
    assert json.loads((last / "selection.json").read_text())["epoch"] == 3
    final = load_file(str(last / "checkpoints" / "step_00000008" / "model.safetensors"))
    saved = load_file(str(last / "model" / "model.safetensors"))
    assert all(torch.equal(final[f"rc3.{k}"], v) for k, v in saved.items() if f"rc3.{k}" in final)
    assert (out / "tb").is_dir() and any((out / "tb").iterdir())  # TensorBoard events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {"loss", "lr", "dev/accuracy"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("dev/accuracy")] == pytest.approx(scores)


# ---- two processes ---------------------------------------------------------------------------
def _itr_worker(rank: int, init_file: str, out_file: str) -> None:
    from tiny import tiny_model_config

    from rc3 import distributed as rd
    from rc3.finetune.itr_model import ITRModel
    from rc3.modeling import RC3Model

    rd.init_process_group("gloo", f"file://{init_file}", rank, 2, timeout_s=60)
    try:
        torch.manual_seed(0)
        model = ITRModel(RC3Model.from_config(tiny_model_config(), 64), "roi", embed_dim=8, itm_weight=0.0)
        batch = global_batch()
        mine = {k: v[rank * 3:(rank + 1) * 3] for k, v in batch.items()}
        out = model(mine)
        out["loss"].backward()  # itm_weight 0: the contrastive loss alone
        # What DDP would do: average the gradients over the processes.
        grads = {n: rd.all_reduce_mean(p.grad) for n, p in model.named_parameters() if p.grad is not None}
        loss = rd.all_reduce_mean(out["loss_contrastive"].detach())
        if rank == 0:
            torch.save({"loss": loss, "grads": grads}, out_file)
    finally:
        rd.destroy_process_group()


def global_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(4, 60, (6, 5), generator=g), "attention_mask": torch.ones(6, 5, dtype=torch.bool),
            "labels": torch.tensor([0, 1, 2, 2, 3, 0]),  # captions 2/3 and 0/5 share an image, across the processes
            "roi": torch.randn(6, 36, 2048, generator=g), "boxes": torch.rand(6, 36, 5, generator=g)}


@pytest.mark.slow  # starts Python processes that import torch
def test_itr_contrastive_negatives_are_gathered_across_processes(tmp_path: Path) -> None:
    """Two processes with 3 captions each: the loss and the averaged gradients are those of one process
    with all 6 (each caption's negatives are the other process's captions too)."""
    from tiny import tiny_model_config

    from rc3.finetune.itr_model import ITRModel
    from rc3.modeling import RC3Model

    mp.spawn(_itr_worker, args=(str(tmp_path / "rdv"), str(tmp_path / "out.pt")), nprocs=2, join=True)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.manual_seed(0)
    model = ITRModel(RC3Model.from_config(tiny_model_config(), 64), "roi", embed_dim=8, itm_weight=0.0)
    # Reference on one process, written out: InfoNCE both ways over all 6 pairs, other captions of the
    # same image masked out.
    b = global_batch()
    img = model.image_embeddings({k: b[k] for k in ("roi", "boxes")})
    txt = model.text_embeddings(b["input_ids"], b["attention_mask"])
    logits = img @ txt.T * model.dual.scale()
    same = b["labels"][:, None] == b["labels"][None, :]
    logits = logits.masked_fill(same & ~torch.eye(6, dtype=torch.bool), float("-inf"))
    per_row = [-(torch.log_softmax(logits[i], 0)[i] + torch.log_softmax(logits[:, i], 0)[i]) / 2 for i in range(6)]
    want = torch.stack(per_row).mean()
    want.backward()
    # Each process averages over its own 3 anchors and DDP averages the two: the mean over 6.
    torch.testing.assert_close(got["loss"], want.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
        elif name in got["grads"]:
            assert not got["grads"][name].any(), name
    assert "dual.text_proj.weight" in got["grads"]


@pytest.mark.slow
def test_itr_on_two_processes_equals_one_process_evaluation(world: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """accelerate launch with 2 CPU processes: training with gathered negatives, dev and test evaluation
    sharded over both; the test rows equal a one-process evaluation of the saved model."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29733",
           *recipe_cmd("itr", world, tiny_model_dir, out, "itr.k=all", "data.dev=flickr30k/annotations/train_ann.jsonl",
                       "train.batch_size=8", "train.micro_batch_size=8")]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 x 2 processes x 1 accumulation" in proc.stdout  # micro-batch derived from 8 / 2 processes
    results = read_results(out)
    assert list(results) == ["en", "de", "ja"] and all(r["images"] == 12 for r in results.values())
    assert any("dev_mean_R@1" in r for r in metrics(out))
    single = run_recipe("itr", world, out / "model", tmp_path / "one", "itr.k=all", "train.epochs=0")
    for lang, row in single.items():
        for key in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@10", "mean_R@1", "dual_mean_R@1"):
            assert results[lang][key] == pytest.approx(row[key]), (lang, key)


@pytest.mark.slow(seconds=75)
def test_two_process_classification_killed_and_resumed_equals_uninterrupted(world: Path, tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    """XVNLI under accelerate launch with 2 processes: one process is killed at the start of step 5, the
    job resumes from the step-4 checkpoint (mid-epoch, every process's RNG state and data position) and
    ends as the uninterrupted 2-process run does."""
    extra = ["train.epochs=2", "train.max_steps=null", "train.save_every=2"]

    def launch(out: Path, *more: str, kill: str | None = None, port: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), *recipe_cmd("xvnli", world, tiny_model_dir, out, *extra, *more)]
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        if kill:
            env["RC3_KILL_AT"] = kill
        return subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO, env=env)

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc = launch(whole, port=29741)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = losses_by_step(whole)
    assert sorted(log) == [1, 2, 3, 4, 5, 6]  # 9 examples over 2 processes x 2: 3 steps per epoch
    proc = launch(cut, kill="5:1", port=29743)
    assert proc.returncode != 0
    assert (cut / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert {p.name for p in (cut / "checkpoints" / "step_00000004").iterdir()} == {  # no pickle
        "model.safetensors", "optimizer.safetensors", "rng_rank00000.safetensors", "rng_rank00001.safetensors",
        "trainer_state.json", "COMPLETE"}
    proc = launch(cut, "--resume", port=29745)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = losses_by_step(cut)
    assert all(resumed[s] == log[s] for s in log)
    assert read_results(cut) == read_results(whole)
    a, b = load_file(str(whole / "model" / "model.safetensors")), load_file(str(cut / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


class Stopped(Exception):
    """Raised in place of the SIGKILL of RC3_KILL_AT, so that the run stops in this process."""


def stop_at(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    from rc3.finetune import trainer

    def kill(step: int, rank: int) -> None:
        if step == at:
            raise Stopped(step)

    monkeypatch.setattr(trainer.fault_injection, "maybe_kill", kill)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def older_version_layout(tag_dir: Path) -> None:
    """Rewrite a checkpoint as the previous version wrote it through Accelerate's save_state: torch files
    optimizer.bin and random_states_0.pkl (Accelerate's keys), no COMPLETE, its own metrics-window fields."""
    import numpy as np
    from safetensors import safe_open

    state = json.loads((tag_dir / "trainer_state.json").read_text())
    window = state.pop("window")
    state.update(running=window["sums"], window=window["steps"], samples=window["samples"], wait=window["wait"])
    (tag_dir / "trainer_state.json").write_text(json.dumps(state))
    from rc3.checkpoints import tensor_state

    torch.save(tensor_state.load(tag_dir / "optimizer.safetensors"), tag_dir / "optimizer.bin")
    rng_path = tag_dir / "rng_rank00000.safetensors"
    with safe_open(str(rng_path), framework="pt") as f:
        meta = f.metadata()
    rng = load_file(str(rng_path))
    version, gauss = json.loads(meta["python"])
    np_name, np_pos, np_has_gauss, np_gauss = json.loads(meta["numpy"])
    # "step": Accelerate's micro-batch counter, 0 modulo the accumulation steps at a checkpoint
    torch.save({"step": 0, "random_state": (version, tuple(int(x) for x in rng["python"].tolist()), gauss),
                "numpy_random_seed": (np_name, rng["numpy"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss),
                "torch_manual_seed": rng["torch_cpu"]}, tag_dir / "random_states_0.pkl")
    for name in ("COMPLETE", "optimizer.safetensors", "rng_rank00000.safetensors"):
        (tag_dir / name).unlink()


@pytest.mark.slow(seconds=40)
def test_resume_skips_a_damaged_checkpoint_and_reads_an_older_versions(world: Path, tiny_model_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Through the shared checkpoint directory (rc3.checkpoints.store): a run stopped as step 5 begins has
    checkpoints 3 (epoch end) and 4, each sealed by COMPLETE with its manifest, no pickle in them. (1) Step
    4's weights changed after the save: the resume warns naming the file, resumes from step 3 and ends with
    the uninterrupted run's weights. (2) The same checkpoints in the layout an older version wrote
    (Accelerate's torch files, no COMPLETE, the old trainer_state.json fields) resume from step 4, read
    weights-only, with the same result."""
    run = [*ITR_RUN, "eval.select=last"]  # the saved model is the last step's, not an earlier best epoch's
    whole = tmp_path / "whole"
    run_recipe("itr", world, tiny_model_dir, whole, *run)
    reference, log = final_weights(whole), losses_by_step(whole)

    def stopped_run(out: Path) -> Path:
        with monkeypatch.context() as m:
            stop_at(m, 5)
            with pytest.raises(Stopped):
                run_recipe("itr", world, tiny_model_dir, out, *run)
        ckpt = out / "checkpoints"
        assert sorted(p.name for p in ckpt.glob("step_*")) == ["step_00000003", "step_00000004"]
        for tag in ("step_00000003", "step_00000004"):
            manifest = json.loads((ckpt / tag / "COMPLETE").read_text())["files"]
            assert set(manifest) == {"model.safetensors", "optimizer.safetensors", "rng_rank00000.safetensors",
                                     "trainer_state.json"}  # no pickle
        return ckpt

    damaged = tmp_path / "damaged"
    ckpt = stopped_run(damaged)
    weights = ckpt / "step_00000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # same size, other contents
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="rc3.checkpoint"):
        run_recipe("itr", world, tiny_model_dir, damaged, *run, "--resume")
    assert any(f"checkpoint {ckpt / 'step_00000004'} is damaged: model.safetensors has other contents" in r.message
               and "falling back to step_00000003" in r.message for r in caplog.records), caplog.text
    got = final_weights(damaged)
    assert set(got) == set(reference) and all(torch.equal(got[k], reference[k]) for k in reference)
    assert losses_by_step(damaged) == log  # steps 4-6 logged again after the resume, as uninterrupted

    older = tmp_path / "older"
    ckpt = stopped_run(older)
    for tag_dir in ckpt.glob("step_*"):
        older_version_layout(tag_dir)
    caplog.clear()
    with caplog.at_level("WARNING", logger="rc3.checkpoint"):
        run_recipe("itr", world, tiny_model_dir, older, *run, "--resume")
    assert any(f"checkpoint {ckpt / 'step_00000004'} has no file manifest" in r.message for r in caplog.records), caplog.text
    got = final_weights(older)
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    assert losses_by_step(older) == log
    assert read_results(older) == read_results(whole)
