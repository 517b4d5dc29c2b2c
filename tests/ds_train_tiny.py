"""Train a tiny RC3Model for a few steps under DeepSpeed ZeRO and leave a run directory behind.

Launched by tests/test_zero_to_safetensors.py as ``deepspeed --num_gpus 2 tests/ds_train_tiny.py ...``
(CPU, gloo). It writes what a pretraining run keeps (model_card/, checkpoints/<tag>/ with COMPLETE, checkpoints/latest,
written by rc3.pretrain.checkpoints.CheckpointManager as the pretraining loop writes them)
and, for comparison, the engine's own consolidated weights in RUN_DIR/reference.safetensors (and the
weights before training in RUN_DIR/initial.safetensors).

    deepspeed --num_gpus 2 tests/ds_train_tiny.py --run-dir R --tokenizer-dir T --stage 3 --steps 3
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

TEXTS = ["A dog runs on the beach.", "Zwei Männer spielen Fußball.", "Un chat dort sur le canapé.",
         "Muž jede na kole.", "A woman in a red coat walks down the street.", "Kinder spielen im Park."]


def batch(tokenizer, rank: int, step: int, size: int = 2) -> dict[str, torch.Tensor]:
    """Text plus ROI and pixel input, different on every rank and step so the ranks' gradients differ."""
    texts = [TEXTS[(rank * 3 + step + i) % len(TEXTS)] for i in range(size)]
    ids = [tokenizer.encode(t, "en") for t in texts]
    width = max(map(len, ids))
    input_ids = torch.full((size, width), tokenizer.pad_id)
    mask = torch.zeros(size, width, dtype=torch.bool)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    g = torch.Generator().manual_seed(100 * rank + step)
    visual = {"roi": torch.randn(size, 4, 2048, generator=g), "boxes": torch.rand(size, 4, 5, generator=g),
              "roi_mask": torch.ones(size, 4, dtype=torch.bool), "pixels": torch.randn(size, 3, 224, 224, generator=g)}
    return {"ids": input_ids, "mask": mask, "visual": visual}


def loss_fn(model, b: dict) -> torch.Tensor:
    """Touches every trainable tensor (both visual front ends, [CLS]/[SEP], ITM, encoder, decoder, embeddings)."""
    enc = model.encode(b["ids"], b["mask"], b["visual"], "combined")
    vtr = enc.hidden[:, 0]
    logits = model.decode(b["ids"], b["mask"], enc)
    return vtr.pow(2).mean() + model.itm_logits(vtr).pow(2).mean() + 1e-3 * logits.pow(2).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--tokenizer-dir", type=Path, required=True)
    ap.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--local_rank", type=int, default=-1)  # set by the deepspeed launcher
    args = ap.parse_args()

    import deepspeed
    from safetensors.torch import save_file
    from tiny import tiny_model_config

    from rc3 import distributed
    from rc3.modeling import RC3Model
    from rc3.pretrain.checkpoints import CheckpointManager
    from rc3.tokenization import RC3Tokenizer

    distributed.init_from_launcher()
    tokenizer = RC3Tokenizer.from_dir(args.tokenizer_dir)
    torch.manual_seed(0)  # same initial weights on every rank
    model = RC3Model.from_config(tiny_model_config(), tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                                 bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    ds_config = {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": args.stage}, "zero_allow_untested_optimizer": True,
        "gradient_clipping": 1.0, "steps_per_print": 10 ** 6,
    }
    initial = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    rank = engine.global_rank
    for step in range(args.steps):
        loss = loss_fn(engine.module, batch(tokenizer, rank, step))
        engine.backward(loss)
        engine.step()

    # the pretraining loop's own checkpointer: DeepSpeed's files, per-rank RNG and data state, COMPLETE, latest
    CheckpointManager(args.run_dir).save(engine, args.steps, client_state={}, data_state={})
    if args.stage == 3:
        reference = engine._zero3_consolidated_16bit_state_dict()  # fp32 here: no fp16/bf16 in the config
    else:
        reference = engine.module.state_dict()
    if rank == 0:
        ref = {k: v.detach().clone().contiguous() for k, v in reference.items()}
        save_file(ref, str(args.run_dir / "reference.safetensors"))
        save_file(initial, str(args.run_dir / "initial.safetensors"))
        model_card = args.run_dir / "model_card"
        engine.module.save_pretrained(model_card, tokenizer_dir=args.tokenizer_dir, weights=False)
    deepspeed.comm.barrier()
    # Tear the gloo group down rather than leave it alive at interpreter exit: a ZeRO-3 rank once
    # aborted after training ("terminate called without an active exception", rc -6).
    distributed.destroy_process_group()


if __name__ == "__main__":
    main()
