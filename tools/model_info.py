"""Build the RC3 model of a run config and print its size per part.

    python tools/model_info.py --config configs/paper.yaml --set model.vocab_size=250054
"""
from __future__ import annotations

import argparse

from rc3.modeling import RC3Model, build_model, load_tokenizer
from rc3.pretrain.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    if cfg.model.init_from is None and cfg.model.tokenizer is None:
        if cfg.model.vocab_size is None:
            raise SystemExit("config error: model.vocab_size: set it (or model.tokenizer) to size the embeddings")
        model = RC3Model.from_config(cfg.model, cfg.model.vocab_size)
    else:
        model = build_model(cfg.model, load_tokenizer(cfg.model))
    parts = {"text embeddings (tied LM head)": model.mbart.model.shared, "encoder": model.mbart.model.encoder,
             "decoder": model.mbart.model.decoder, "visual front ends": model.visual, "ITM head": model.itm_head}
    shared = model.mbart.model.shared.weight.numel()
    for name, module in parts.items():
        n = sum(p.numel() for p in module.parameters())
        if name in ("encoder", "decoder"):
            n -= shared  # their embed_tokens is the shared matrix
        print(f"{name:32s} {n / 1e6:10.2f} M")
    print(f"{'total':32s} {model.num_parameters() / 1e6:10.2f} M")


if __name__ == "__main__":
    main()
