"""Initialise a DeepSpeed engine with each given preset exactly as pretraining does, and take two steps.

Run by tests/test_ds_presets.py in its own process (one CPU rank, gloo): the run config's optimizer
(rc3.pretrain.engine.build_optimizer, DeepSpeedCPUAdam where the preset offloads the optimizer) and the
preset resolved by rc3.pretrain.engine.resolve_ds_config. Prints one JSON line per preset.

    python tests/ds_presets_probe.py --tokenizer-dir T ds_configs/zero1.json ds_configs/zero3_offload.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer-dir", type=Path, required=True)
    ap.add_argument("presets", nargs="+", type=Path)
    args = ap.parse_args()

    import deepspeed
    from tiny import tiny_model_config

    from rc3 import distributed
    from rc3.modeling import RC3Model
    from rc3.pretrain.config import load_config
    from rc3.pretrain.engine import build_optimizer, optimizer_offloaded, preset_fused_adam, resolve_ds_config
    from rc3.tokenization import RC3Tokenizer

    distributed.init_from_launcher(120.0)
    tokenizer = RC3Tokenizer.from_dir(args.tokenizer_dir)
    for preset in args.presets:
        precision = "bf16" if "bf16" in preset.stem else "fp32"
        cfg = load_config(None, [f"train.deepspeed_config={preset}", f"train.precision={precision}",
                                 "train.global_batch_size=2", "train.micro_batch_size=2", "optim.warmup_steps=1",
                                 "data.ds_shards=unused", "data.dw_shards=unused", "data.dt_shards=unused"])
        ds_config, _, bf16 = resolve_ds_config(cfg, 1, on_gpu=False)
        torch.manual_seed(0)
        model = RC3Model.from_config(tiny_model_config(), tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                                     bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
        optimizer, scheduler = build_optimizer(model, cfg, on_gpu=False, offload=optimizer_offloaded(ds_config),
                                               fused_adam=preset_fused_adam(cfg))
        engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                               lr_scheduler=scheduler, config=ds_config)
        ids = torch.tensor([tokenizer.encode("A dog runs on the beach.", "en")] * 2)
        mask = torch.ones_like(ids, dtype=torch.bool)
        g = torch.Generator().manual_seed(1)
        dtype = torch.bfloat16 if bf16 else torch.float32
        visual = {"roi": torch.randn(2, 4, 2048, generator=g).to(dtype), "boxes": torch.rand(2, 4, 5, generator=g).to(dtype),
                  "roi_mask": torch.ones(2, 4, dtype=torch.bool)}
        losses = []
        for _ in range(2):
            enc = engine.module.encode(ids, mask, visual, "roi")
            loss = enc.hidden[:, 0].float().pow(2).mean()
            engine.backward(loss)
            engine.step()
            losses.append(float(loss))
        print(json.dumps({"preset": preset.name, "stage": engine.zero_optimization_stage(),
                          "optimizer": type(engine.basic_optimizer).__name__, "bf16": bf16,
                          "offload": optimizer_offloaded(ds_config), "fused_adam": preset_fused_adam(cfg),
                          "optimizer_block_left": "optimizer" in ds_config,
                          "overlap_comm": bool(engine.zero_overlap_comm()), "losses": losses}), flush=True)
        if hasattr(engine, "destroy"):  # release the engine's hooks before the next preset's
            engine.destroy()
    distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
