"""Cross-lingual alignment of a model's xGQA inputs on the synthetic world, before finetuning
(rc3.synthetic.repro.transfer): TR and VtR of English vs each language's questions, anisotropy; with
--probe also linear probes of the frozen model (answer and question type, fitted on English, tested
on every language): what a task head can read.

    python tools/transfer_diagnostics.py MODEL_DIR --world work/synthetic [--langs de,id,zh] [--probe]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a model directory (zero_to_safetensors output or save_pretrained)")
    ap.add_argument("--world", type=Path, default=Path("work/synthetic"), help="the synthetic world's directory")
    ap.add_argument("--langs", default="de,id,zh", help="comma-separated xGQA languages to compare with English")
    ap.add_argument("--probe", action="store_true", help="also fit linear probes on the frozen model (about a minute)")
    args = ap.parse_args(argv)
    questions = args.world / "downstream" / "xGQA" / "annotations" / "few_shot"
    missing = [lang for lang in ["en", *args.langs.split(",")] if not (questions / lang / "test.json").is_file()]
    if missing:
        print(f"error: {questions}: no test.json for {', '.join(missing)}; is --world a synthetic world?", file=sys.stderr)
        return 2
    if not (args.model / "rc3_config.json").is_file():
        print(f"error: {args.model}: no rc3_config.json; point at a model directory "
              "(tools/zero_to_safetensors.py RUN_DIR MODEL_DIR writes one)", file=sys.stderr)
        return 2
    from rc3.modeling import RC3Model
    from rc3.synthetic.repro.transfer import xgqa_alignment, xgqa_probe
    from rc3.tokenization import RC3Tokenizer

    model, tokenizer, langs = RC3Model.from_pretrained(args.model), RC3Tokenizer.from_dir(args.model), args.langs.split(",")
    out = xgqa_alignment(model, tokenizer, args.world, langs)
    if args.probe:
        out["probe"] = xgqa_probe(model, tokenizer, args.world, langs)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
