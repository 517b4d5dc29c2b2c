"""Command line of the finetuning recipes, importable without torch so that `--help` answers at once."""
from __future__ import annotations

import argparse

DESCRIPTIONS: dict[str, str] = {
    "xvnli": "Finetune RC3 on XVNLI (English) and evaluate zero-shot on every test language.",
    "xgqa": "Finetune RC3 on GQA (English) and evaluate zero-shot on every xGQA test language.",
    "marvl": "Finetune RC3 on NLVR2 (English, two images per example) and evaluate zero-shot on MaRVL.",
    "itr": ("Finetune RC3 for image-text retrieval on English captions; evaluate on every xFlickr&CO "
            "language with FAISS candidates re-ranked by the ITM head."),
    "mmt": "Finetune RC3 for multimodal machine translation on Multi30K; evaluate with beam search and sacreBLEU.",
}


def build_parser(task: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"finetune/{task}.py", description=DESCRIPTIONS[task], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(f"Example: python finetune/{task}.py --config configs/finetune/{task}.yaml --init MODEL_DIR "
                f"--set train.max_steps=10\nMulti-process (DDP, bf16 on GPU): accelerate launch finetune/{task}.py ...\n"
                "Writes OUTPUT_DIR/results.json, results.md, metrics.jsonl, tb/ (TensorBoard), checkpoints/,\n"
                "finetune_config.yaml and model/ (the epoch with the best dev score unless eval.select=last)."))
    p.add_argument("--config", help=f"finetuning YAML (default: Table 6 defaults only), e.g. configs/finetune/{task}.yaml")
    p.add_argument("--init", help="RC3 model directory to start from (save_pretrained layout); overrides `init`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=1 --set data.test_langs=[en,de] (repeatable)")
    p.add_argument("--output-dir", help="overrides `output_dir`")
    p.add_argument("--no-save", action="store_true", help="do not write the finetuned model")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT_DIR/checkpoints/latest (model, optimizer, schedule, data position, RNG)")
    return p
