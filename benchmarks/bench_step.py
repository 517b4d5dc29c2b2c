"""Training-step benchmark: one process, one config, N timed optimizer steps after warm-up.

    python benchmarks/bench_step.py --config configs/synthetic-tiny.yaml --data shards      # CPU, real pipeline
    python benchmarks/bench_step.py --config configs/paper.yaml --set model.vocab_size=250054  # GPU, random weights

Reports samples/s, encoder + decoder tokens/s, the share of step time spent waiting for data,
peak memory and, on GPU, MFU from the FLOPs of every encoder and decoder pass that ran (see
rc3/modeling/flops.py and BENCHMARKS.md), plus the projected wall time of the paper's schedule
(100k steps x 1024 samples per task) on 8 GPUs of the kind measured, assuming linear scaling.

`--data random` feeds pre-built random batches of the configured shapes (no pipeline: pure model
throughput); `--data shards` reads the configured shards through the real WebDataset pipeline.

The throughput levers are the run config's `perf.*` switches (`--set perf.compile=passes`, see
rc3/pretrain/perf.py); `benchmarks/bench_levers.py` runs the whole matrix. `--losses` records every step's loss
(read after the timed loop, so the recording adds no sync to it); `--check-syncs` runs one more step
counting the host syncs inside it (torch.cuda.set_sync_debug_mode on GPU, rc3.pretrain.perf.HostSyncCounter
on CPU). The engine gets the training loop's update guards (`rc3.pretrain.loop.guard_updates`: the gradient
watch and step gate, or with perf.sync_free_step the device-side step), as training sets them up.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import torch

from rc3 import atomic
from rc3 import distributed as dist
from rc3.modeling import RC3Model, build_model, load_tokenizer
from rc3.modeling import flops as flop_count
from rc3.pretrain import perf
from rc3.pretrain.config import load_config
from rc3.pretrain.engine import build_optimizer, optimizer_offloaded, preset_fused_adam, resolve_ds_config
from rc3.pretrain.loop import guard_updates, to_device
from rc3.pretrain.objectives import ObjectiveState, compute_losses
from rc3.pretrain.streams import ObjectiveStreams
from rc3.provenance import git_commit

# The tiny builders (configs, random batches, the naive R-XVtCL) live with the tests: tests/tiny.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import random_objective_batches  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--data", choices=("random", "shards"), default="random")
    ap.add_argument("--engine", choices=("deepspeed", "torch"), default="deepspeed")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder layers")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--profile", action="store_true", help="print the top operators of one extra profiled step")
    ap.add_argument("--seed", type=int, default=0, help="model initialisation, batches and objective draws")
    ap.add_argument("--losses", action="store_true", help="record each step's loss in the JSON ('losses')")
    ap.add_argument("--check-syncs", action="store_true", help="count the host syncs of one extra step")
    args = ap.parse_args()
    overrides = ["train.total_steps=100000", *args.set]
    if args.data == "random":
        overrides = ["data.ds_shards=unused", "data.dw_shards=unused", "data.dt_shards=unused", *overrides]
    cfg = load_config(args.config, overrides)
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    torch.manual_seed(args.seed)
    # On GPU the weights are initialised there (seconds instead of a minute for the paper model on the CPU).
    init_device = torch.device("cuda") if on_gpu and not (cfg.model.tokenizer or cfg.model.init_from) else None
    tokenizer = None
    if cfg.model.tokenizer or cfg.model.init_from:
        tokenizer = load_tokenizer(cfg.model)
        model = build_model(cfg.model, tokenizer)
    else:
        if cfg.model.vocab_size is None:
            raise SystemExit("config error: model.vocab_size: set it (no tokenizer given) to size the embeddings")
        with init_device or torch.device("cpu"):
            model = RC3Model.from_config(cfg.model, cfg.model.vocab_size)
    vocab = model.mbart.config.vocab_size
    perf.apply(model, cfg.perf)
    if args.compile:
        for layer in [*model.mbart.model.encoder.layers, *model.mbart.model.decoder.layers]:
            layer.compile(dynamic=True)
    micro = cfg.train.micro_batch_size
    if args.engine == "deepspeed":
        import deepspeed

        dist.init_from_launcher()
        cfg.train.global_batch_size = micro  # one process: accumulation 1, every micro-step an optimizer step
        ds_config, _, bf16 = resolve_ds_config(cfg, 1, on_gpu)
        module = perf.engine_module(model, cfg)  # perf.flat_params: the flat-parameter holder, as training wraps it
        optimizer, scheduler = build_optimizer(module, cfg, on_gpu, offload=optimizer_offloaded(ds_config),
                                               fused_adam=preset_fused_adam(cfg))
        _, _, device_step = guard_updates(optimizer, module, cfg)  # perf.sync_free_step, as training sets it up
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        if device_step is not None:
            device_step.attach(engine.optimizer)
        forward, backward, step = engine, engine.backward, engine.step
    else:
        bf16 = on_gpu and cfg.train.precision != "fp32"
        model.to(device, dtype=torch.bfloat16 if bf16 else torch.float32)
        optimizer, scheduler = build_optimizer(model, cfg, on_gpu)

        def backward(loss: torch.Tensor) -> None:
            loss.backward()

        def step() -> None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

        forward = model

    static_mem = torch.cuda.memory_allocated() / 2**30 if on_gpu else None  # weights, optimizer states
    fix = ((lambda b: perf.fix_batch_shapes(b, cfg.data.max_text_len, cfg.data.max_tgt_len, model.mbart.config.pad_token_id))
           if cfg.perf.fixed_shapes else (lambda b: b))
    streams: ObjectiveStreams | None = None
    if args.data == "random":
        pool = [to_device(fix(random_objective_batches(vocab, micro, cfg.data.max_text_len, seed=args.seed * 2 + i,
                                                  image_size=cfg.model.image_size, regions=cfg.model.num_regions)),
                          device)
                for i in range(2)]
        next_batches = lambda i: pool[i % 2]  # noqa: E731
        samples_per_step = micro * 4
    else:
        if tokenizer is None:
            raise SystemExit("--data shards needs model.tokenizer")
        streams = ObjectiveStreams(cfg, tokenizer, 0, 1)
        next_batches = lambda i: to_device(fix(streams.next_batches()), device)  # noqa: E731
        samples_per_step = streams.samples_per_step()

    state = ObjectiveState.create(cfg.objectives.p_avg_window, cfg.objectives.p_avg_scope)
    gen = torch.Generator().manual_seed(args.seed)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    data_wait = total = flops = tokens = 0.0
    step_losses: list[torch.Tensor] = []
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        batches = next_batches(i)
        t1 = time.perf_counter()
        counter = flop_count.FlopCounter()
        perf.mark_step_begin(cfg.perf)
        with counter:
            out = forward(compute_losses, batches, cfg.objectives, state, gen, None,
                          cfg.perf.fuse_encoder_calls)
            backward(out.loss)
        step()
        if args.losses:
            step_losses.append(out.loss.detach().float().clone())
        sync()
        t2 = time.perf_counter()
        if i >= args.warmup:
            data_wait += t1 - t0
            total += t2 - t0
            flops += counter.flops
            tokens += counter.encoder_tokens + counter.decoder_tokens
    syncs = None
    if args.check_syncs:
        syncs = count_step_syncs(on_gpu, lambda: (perf.mark_step_begin(cfg.perf), forward(
            compute_losses, next_batches(0), cfg.objectives, state, gen, None,
            cfg.perf.fuse_encoder_calls)), backward, step)
        for part, calls in syncs.items():
            print(f"host syncs, {part}: {len(calls)}" + "".join(f"\n  {c}" for c in calls[:12]))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
        with profile(activities=acts) as prof:
            out = forward(compute_losses, next_batches(0), cfg.objectives, state, gen, None,
            cfg.perf.fuse_encoder_calls)
            backward(out.loss)
            step()
            sync()
        key = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    if streams is not None:
        streams.close()
    n = args.steps
    peak = flop_count.peak_flops(cfg.train.peak_tflops) if on_gpu else None
    step_time = total / n
    # Paper schedule: 100k steps, 1024 samples per task per step, over 8 GPUs -> 128 per GPU per task.
    micro_steps_per_paper_step = (1024 / 8) / micro
    projected_days = 100_000 * micro_steps_per_paper_step * step_time / 86400
    commit = git_commit(["rc3", "benchmarks/bench_step.py"])
    figures = {
        "device": torch.cuda.get_device_name() if on_gpu else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
        "date": str(date.today()), "commit": commit, "config": args.config, "overrides": args.set,
        "engine": args.engine, "bf16": bool(bf16), "compile": args.compile, "data": args.data,
        "perf": dataclasses.asdict(cfg.perf), "fused_adam": preset_fused_adam(cfg) and on_gpu, "seed": args.seed,
        "params_M": round(model.num_parameters() / 1e6, 1), "vocab": vocab, "micro_batch_per_task": micro,
        "step_time_s": step_time, "samples_per_s": samples_per_step * n / total, "tokens_per_s": tokens / total,
        "data_wait_share": data_wait / total, "tflops_per_s": flops / total / 1e12,
        "mfu": (flops / total / peak) if peak else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        "static_mem_gib": static_mem, "gpu_mem_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if on_gpu else None,
        "host_syncs_micro_step": None if syncs is None else len(syncs["micro_step"]),
        "host_syncs_optimizer_step": None if syncs is None else len(syncs["optimizer_step"]), "host_syncs": syncs,
        "losses": [float(x) for x in step_losses] if args.losses else None,
        "projected_paper_days_8_gpus": projected_days,
    }
    for k, v in figures.items():
        if k in ("losses", "host_syncs"):
            continue
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    if args.json:
        atomic.write_json(args.json, figures, indent=2)


def count_step_syncs(on_gpu: bool, forward, backward, step) -> dict[str, list[str]]:
    """The host syncs of one micro-step (forward + backward) and, apart, of the optimizer step that
    follows it: on GPU each one torch reports in sync-debug mode "warn"; on CPU the calls that
    rc3.pretrain.perf.HostSyncCounter counts."""
    found: dict[str, list[str]] = {}

    def run(name: str, fn) -> Any:
        if on_gpu:
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    result = fn()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            found[name] = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
            return result
        with perf.HostSyncCounter() as counter:
            result = fn()
        found[name] = [f"{kind} at {where}" for kind, where in counter.calls]
        return result

    def micro_step() -> None:
        _, out = forward()
        backward(out.loss)

    run("micro_step", micro_step)
    run("optimizer_step", step)
    return found

if __name__ == "__main__":
    main()
