"""Hugging Face-native model directories: `config.json`, the Auto classes, and a reduced-vocabulary tokenizer.

Every RC3 model directory (`RC3Model.save_pretrained`, hence every pretrained, converted or finetuned
one) also holds:

* `config.json` with `model_type: "rc3"` (the RC3 model config and the mBART config inside it), which
  `AutoConfig.from_pretrained` reads and `AutoModel.from_pretrained` turns into
  `rc3.modeling.model.RC3HFModel` once `rc3.modeling.register_auto_classes()` has registered both
  classes in the process (`AutoConfig.register` / `AutoModel.register`; no remote code is ever run).
  Loading or saving an RC3 model (`RC3Model.from_pretrained` / `save_pretrained`, hence every task
  model) registers them; `import rc3` does not, so that a process which never builds a model does
  not import transformers. `RC3HFModel` holds the same modules under the same names as `RC3Model`
  (so `model.safetensors` loads as is) and gives the `RC3Model` with `.rc3` for encode / vtr / tr /
  generate.
* `tokenizer.json` + `tokenizer_config.json` that `AutoTokenizer.from_pretrained` loads with plain
  transformers (`PreTrainedTokenizerFast`): mBART-50's Unigram segmentation restricted to the
  pieces the model kept (`id_map.json`), their ids being the model's reduced ids, so its ids are
  `RC3Tokenizer`'s. Special tokens and language codes keep their strings; no template is applied
  (RC3's encoder format is `[BOS] pieces [LANG]`: add `<s>` and the language code, e.g. `de_DE`,
  around `tokenizer(text, add_special_tokens=False)`).
  `RC3Tokenizer` segments with this same restricted model, so the two give the same ids on every
  text (tests/test_tokenizer_agreement.py), including texts that need a piece the vocabulary
  dropped: both pick the best segmentation into kept pieces, and a run of characters no kept piece
  covers becomes one `<unk>`.
* `rc3_segmentation.json`: mBART-50's full segmentation (the tokenizer.json transformers writes for
  the full vocabulary), which `RC3Tokenizer.from_dir` reads before applying id_map.json.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from transformers import PretrainedConfig

from rc3 import atomic
from rc3.tokenization import SEGMENTATION_FILE, reduced_tokenizer_json

MODEL_TYPE = "rc3"
HF_MODEL_CLASS = "RC3HFModel"  # rc3.modeling.model.RC3HFModel, named in config.json's `architectures`
HF_CONFIG_FILE = "config.json"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                  "mask_token": "<mask>"}


class RC3Config(PretrainedConfig):
    """`config.json` of an RC3 model directory: the RC3 model config (`rc3`) and the mBART config (`mbart`)."""

    model_type = MODEL_TYPE

    def __init__(self, rc3: Optional[dict] = None, mbart: Optional[dict] = None, **kwargs: Any) -> None:
        self.rc3 = dict(rc3 or {})
        self.mbart = dict(mbart or {})
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            if self.mbart.get(key) is not None:
                kwargs.setdefault(key, self.mbart[key])
        super().__init__(**kwargs)
        self.vocab_size = self.mbart.get("vocab_size")
        self.hidden_size = self.mbart.get("d_model")


# ---- writing the files ---------------------------------------------------------------------
_atomic_write = atomic.write_text


def write_hf_config(rc3_config: dict, directory: str | os.PathLike) -> Path:
    """`config.json` from the content of rc3_config.json ({"model": ..., "mbart": ...})."""
    config = RC3Config(rc3=rc3_config["model"], mbart=rc3_config["mbart"], architectures=[HF_MODEL_CLASS])
    path = Path(directory) / HF_CONFIG_FILE
    _atomic_write(path, config.to_json_string(use_diff=False))
    return path


def write_hf_tokenizer(directory: str | os.PathLike, full_tokenizer_json: dict,
                       kept_old_ids: Optional[list[int]]) -> Path:
    """Write `tokenizer.json` / `tokenizer_config.json` (reduced vocabulary, plain transformers) and
    `rc3_segmentation.json` (the full segmentation RC3Tokenizer reads) into `directory`."""
    d = Path(directory)
    _atomic_write(d / SEGMENTATION_FILE, json.dumps(full_tokenizer_json, ensure_ascii=False))
    reduced = reduced_tokenizer_json(full_tokenizer_json, kept_old_ids)
    _atomic_write(d / HF_TOKENIZER_FILE, json.dumps(reduced, ensure_ascii=False))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **SPECIAL_TOKENS, "model_max_length": 1024,
              "clean_up_tokenization_spaces": False, "rc3_reduced_vocabulary": len(reduced["model"]["vocab"])}
    _atomic_write(d / HF_TOKENIZER_CONFIG, json.dumps(config, indent=2))
    return d / HF_TOKENIZER_FILE


def write_hf_files(directory: str | os.PathLike, rc3_config: dict) -> None:
    """Add config.json (from `rc3_config`, the content of rc3_config.json) and, when the directory has a
    tokenizer, the transformers tokenizer files to a finished RC3 model directory's contents."""
    from rc3.tokenization import SPM_FILE, RC3Tokenizer

    d = Path(directory)
    write_hf_config(rc3_config, d)
    if not (d / SPM_FILE).is_file():
        return  # no tokenizer saved with the model (a bare architecture card)
    tok = RC3Tokenizer.from_dir(d)
    full = json.loads(tok.hf.backend_tokenizer.to_str())
    kept = tok.id_map.kept.tolist() if tok.id_map is not None else None
    write_hf_tokenizer(d, full, kept)
