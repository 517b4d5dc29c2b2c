r"""Export an RC3 model directory's text backbone as a plain HF mBART directory, visual weights beside it.

    python tools/export_hf.py models/rc3-step100k exports/rc3-hf [--overwrite]

OUT_DIR then holds what `MBartForConditionalGeneration.from_pretrained(OUT_DIR)` loads with plain
transformers (config.json, model.safetensors; no custom code), the tokenizer files, and
`rc3_visual.safetensors`: the visual front ends and the ITM head under their RC3 names, with the RC3
model config in its metadata (key "rc3_config").

The tokenizer files are the model directory's (rc3.modeling.hf): `AutoTokenizer.from_pretrained(OUT_DIR)`
gives the model's own (reduced-vocabulary) ids. RC3's encoder input is `<s> pieces <lang code>`
and generation starts from `</s>` with the target language code forced first:

    tok = AutoTokenizer.from_pretrained(OUT_DIR); model = MBartForConditionalGeneration.from_pretrained(OUT_DIR)
    ids = [tok.bos_token_id, *tok(text, add_special_tokens=False).input_ids, tok.convert_tokens_to_ids("de_DE")]
    out = model.generate(input_ids=torch.tensor([ids]), decoder_start_token_id=tok.eos_token_id,
                         forced_bos_token_id=tok.convert_tokens_to_ids("en_XX"), num_beams=4)
    tok.decode(out[0], skip_special_tokens=True)     # the text RC3Model.generate gives (text-only input)
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rc3 import atomic
from rc3.modeling.files import RC3_CONFIG_FILE, WEIGHTS_FILE
from rc3.tokenization import ID_MAP_FILE

if TYPE_CHECKING:  # torch and the model are imported by `export`, so that `--help` answers at once
    import torch

    from rc3.modeling import RC3Model

VISUAL_FILE = "rc3_visual.safetensors"
BIAS_KEY = "final_logits_bias"
# Files of an RC3 directory that are not tokenizer files (the HF export writes its own config and weights).
NOT_TOKENIZER = {RC3_CONFIG_FILE, WEIGHTS_FILE, "config.json", "generation_config.json", "vocab_report.json",
                 "task_head.json", "task_head.safetensors"}


def visual_state(model: RC3Model) -> dict[str, torch.Tensor]:
    """Every tensor of the model outside the mBART backbone (visual front ends, ITM head), RC3 names."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if not k.startswith("mbart.")}
    if not state:
        raise ValueError("the model has no tensors outside the mBART backbone")
    return state


def text_state(model: RC3Model) -> dict[str, torch.Tensor]:
    """The mBART backbone's state dict as the export saves it.

    `final_logits_bias` is left out when it is zero, as in mBART-50 and every RC3 model (a buffer no
    training step changes): MBartForConditionalGeneration rebuilds it as zeros without a word
    (transformers lists it in `_keys_to_ignore_on_load_missing`), and `AutoModel` (MBartModel, no LM
    head) then finds no key it does not know. A nonzero bias is kept: generation needs it, and
    AutoModel reports it as unexpected because it belongs to the LM head MBartModel lacks."""
    state = dict(model.mbart.state_dict())
    bias = state.get(BIAS_KEY)
    if bias is not None and not bool(bias.any()):
        del state[BIAS_KEY]
    return state


def export(rc3_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Write OUT_DIR from the RC3 model directory RC3_DIR (temp dir renamed into place)."""
    from safetensors.torch import save_file

    from rc3.modeling import RC3Model

    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    if not (rc3_dir / RC3_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{rc3_dir}: no {RC3_CONFIG_FILE}; give an RC3 model directory "
                                "(from convert_mbart50.py, zero_to_safetensors.py or save_pretrained)")
    model = RC3Model.from_pretrained(rc3_dir).eval()
    with atomic.produced_dir(out_dir) as tmp:
        model.mbart.config.architectures = ["MBartForConditionalGeneration"]
        model.mbart.save_pretrained(str(tmp), state_dict=text_state(model))
        for f in sorted(rc3_dir.iterdir()):
            if f.is_file() and f.name not in NOT_TOKENIZER:
                shutil.copy2(f, tmp / f.name)
        meta = {"rc3_config": (rc3_dir / RC3_CONFIG_FILE).read_text(), "format": "pt"}
        save_file(visual_state(model), str(tmp / VISUAL_FILE), metadata=meta)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rc3_dir", type=Path, help="RC3 model directory (rc3_config.json + model.safetensors)")
    ap.add_argument("out_dir", type=Path, help="directory to write the HF mBART export into")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    args = ap.parse_args(argv)
    try:
        out = export(args.rc3_dir, args.out_dir, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    vocab = json.loads((out / "config.json").read_text())["vocab_size"]
    print(f"wrote {out} (vocabulary {vocab} ids)")
    if (out / ID_MAP_FILE).is_file():
        print(f"reduced vocabulary: AutoTokenizer.from_pretrained({str(out)!r}) gives the model's {vocab} ids")


if __name__ == "__main__":
    main()
