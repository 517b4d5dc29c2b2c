"""Save a one-rank DeepSpeed checkpoint as pretraining does, tamper with it, and resume from it.

Run by tests/test_safe_load.py in its own process (one CPU rank, gloo; the preset as pretraining resolves
it). For each preset: a few steps, CheckpointManager.save, then CheckpointManager.load into a fresh
engine (the weights must come back); then each of DeepSpeed's state files in turn gets a pickled object
whose unpickling would create MARKER, and the load must be refused naming that file. Prints one JSON
line per preset.

    python tests/ds_resume_probe.py --out DIR --marker FILE ds_configs/zero2.json ds_configs/zero3.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from pickle_payload import tamper  # this folder is the script's sys.path[0]
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--marker", required=True)
    ap.add_argument("presets", nargs="+", type=Path)
    args = ap.parse_args()

    import deepspeed

    from rc3 import distributed
    from rc3.pretrain.checkpoints import CheckpointError, CheckpointManager
    from rc3.pretrain.config import load_config
    from rc3.pretrain.engine import build_optimizer, resolve_ds_config

    distributed.init_from_launcher(120.0)
    for preset in args.presets:
        cfg = load_config(None, [f"train.deepspeed_config={preset}", "train.precision=fp32",
                                 "train.global_batch_size=2", "train.micro_batch_size=2", "optim.warmup_steps=1",
                                 "data.ds_shards=unused", "data.dw_shards=unused", "data.dt_shards=unused"])
        ds_config, _, _ = resolve_ds_config(cfg, 1, on_gpu=False)

        def engine(seed: int, cfg=cfg, ds_config=ds_config):
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
            optimizer, scheduler = build_optimizer(model, cfg, on_gpu=False, offload=False)
            return deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)[0]

        def weights(e) -> dict[str, torch.Tensor]:
            if e.zero_optimization_stage() == 3:
                return {k: v.clone() for k, v in e._zero3_consolidated_16bit_state_dict().items()}
            return {k: v.detach().clone() for k, v in e.module.state_dict().items()}

        trained = engine(0)
        for _ in range(2):
            loss = trained(torch.randn(2, 4)).pow(2).mean()
            trained.backward(loss)
            trained.step()
        manager = CheckpointManager(args.out / preset.stem)
        tag = manager.save(trained, 2, client_state={"objectives": {}}, data_state={"position": 1})
        saved = weights(trained)

        fresh = engine(1)
        resumed = manager.load(fresh, restore_rng=False)
        restored = weights(fresh)
        intact = resumed.step == 2 and all(torch.equal(saved[k], restored[k]) for k in saved)

        refusals = {}
        files = sorted(p for p in (manager.dir / tag).glob("*.pt"))
        for f in files:
            backup = f.with_suffix(".orig")
            shutil.copy2(f, backup)
            tamper(f, args.marker)
            try:  # the tag named: past the manifest check, as when a tamperer also rewrote COMPLETE
                manager.load(engine(2), tag=tag, restore_rng=False)
                refusals[f.name] = None
            except CheckpointError as err:
                refusals[f.name] = str(err)
            os.replace(backup, f)
        print(json.dumps({"preset": preset.name, "intact": intact, "files": [f.name for f in files],
                          "refusals": refusals, "marker": os.path.exists(args.marker)}), flush=True)
    distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
