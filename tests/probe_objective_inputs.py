"""Run `rc3.pretrain.loop.train` for the config given and record what every pretraining objective encodes.

`python tests/probe_objective_inputs.py CONFIG OUT.json [KEY=VALUE ...]`: one real run (DeepSpeed
engine, shard loaders, optimizer steps) with spies on the objective functions of `rc3.pretrain.objectives` (the
generators of MCLM, ITM and R-XVtCL, XTCL's function) and on `RC3Model.encode`. OUT.json lists, per task,
the batch keys the task received and, per encoder call,
the number of sequences, how many of them hold <mask> among their real tokens, and whether the call
had a visual input. tests/test_objective_inputs.py reads it.
"""
from __future__ import annotations

import json
import sys

import torch

from rc3.modeling import RC3Model
from rc3.pretrain import objectives
from rc3.pretrain.config import load_config
from rc3.pretrain.loop import train
from rc3.tokenization import RC3Tokenizer


def main(config: str, out: str, overrides: list[str]) -> None:
    cfg = load_config(config, overrides)
    mask_id = RC3Tokenizer.from_dir(cfg.model.tokenizer).mask_id
    current: dict[str, str | None] = {"task": None}
    record: dict[str, dict] = {}

    def begin(name: str, batch) -> None:  # the task becomes current; its batch keys are recorded
        current["task"] = name
        entry = record.setdefault(name, {"batch_keys": sorted(batch), "calls": []})
        entry["batch_keys"] = sorted(set(entry["batch_keys"]) | set(batch))

    def spy_task(name_of, fn):
        def wrapped(model, batch, *args, **kwargs):
            begin(name_of(batch), batch)
            try:
                return fn(model, batch, *args, **kwargs)
            finally:
                current["task"] = None
        return wrapped

    def spy_steps(name_of, fn):
        # MCLM, ITM and R-XVtCL are generators that yield their encoder calls (rc3.pretrain.encode_requests):
        # the call is made while the generator waits at its yield, so the task stays current until it returns
        def wrapped(model, batch, *args, **kwargs):
            begin(name_of(batch), batch)
            try:
                return (yield from fn(model, batch, *args, **kwargs))
            finally:
                current["task"] = None
        return wrapped

    objectives.xtcl = spy_task(lambda _b: "xtcl", objectives.xtcl)
    for name in ("mclm", "itm"):
        setattr(objectives, f"{name}_steps", spy_steps(lambda _b, n=name: n, getattr(objectives, f"{name}_steps")))
    objectives.rxvtcl_steps = spy_steps(lambda b: "rxvtcl_ds" if "roi" in b else "rxvtcl_dw", objectives.rxvtcl_steps)
    real_encode = RC3Model.encode

    def encode(self, input_ids, attention_mask, visual=None, mode=None, visual_index=None):
        real = attention_mask.bool()
        with_mask = ((input_ids == mask_id) & real).any(dim=1)
        record.setdefault(current["task"] or "none", {"batch_keys": [], "calls": []})["calls"].append(
            {"rows": int(input_ids.shape[0]), "with_mask": int(with_mask.sum()), "visual": visual is not None,
             "masked_tokens": int(((input_ids == mask_id) & real).sum())})
        return real_encode(self, input_ids, attention_mask, visual, mode, visual_index)

    RC3Model.encode = encode
    steps = train(cfg)
    with open(out, "w") as f:
        json.dump({"steps": steps, "mask_id": mask_id, "tasks": record}, f, indent=1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
