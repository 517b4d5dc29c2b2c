"""Hugging Face-native model directories: `config.json`, the Auto classes, and a reduced-vocabulary tokenizer.

Every RC3 model directory (`RC3Model.save_pretrained`, hence every pretrained, converted or finetuned
one) also holds:

* `config.json` with `model_type: "rc3"` (the RC3 model config and the mBART config inside it), which
  `AutoConfig.from_pretrained` reads and `AutoModel.from_pretrained` turns into `RC3HFModel` once
  `import rc3` has registered both classes in the process (`AutoConfig.register` /
  `AutoModel.register`; no remote code is ever run). `RC3HFModel` holds the same modules under the
  same names as `RC3Model` (so `model.safetensors` loads as is) and gives the `RC3Model` with
  `.rc3` for encode / vtr / tr / generate.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from rc3 import atomic
from rc3.tokenization import SEGMENTATION_FILE, reduced_tokenizer_json

MODEL_TYPE = "rc3"
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


@dataclass
class RC3HFOutput(ModelOutput):
    """`last_hidden_state`: top encoder states of `[CLS] visual [BOS] text [LANG]` (or the text alone);
    `pooled`: the state at position 0 (VtR with an image, TR without); `itm_logits` with an image."""

    last_hidden_state: Optional[torch.Tensor] = None
    pooled: Optional[torch.Tensor] = None
    itm_logits: Optional[torch.Tensor] = None


class RC3HFModel(PreTrainedModel):
    """The RC3 model as a transformers model. Its modules are those of an `RC3Model` (`.rc3`), under the
    same names, so the directory's `model.safetensors` loads unchanged."""

    config_class = RC3Config
    base_model_prefix = "rc3_hf"
    main_input_name = "input_ids"
    # Tied as in RC3Model (mBART-50's shared embeddings, saved once by save_model).
    _tied_weights_keys = {"mbart.lm_head.weight": "mbart.model.shared.weight",
                          "mbart.model.encoder.embed_tokens.weight": "mbart.model.shared.weight",
                          "mbart.model.decoder.embed_tokens.weight": "mbart.model.shared.weight"}

    def __init__(self, config: RC3Config) -> None:
        super().__init__(config)
        from transformers import MBartConfig, MBartForConditionalGeneration

        from rc3.config import ModelConfig, from_dict
        from rc3.modeling.model import RC3Model

        cfg = from_dict(ModelConfig, config.rc3)
        core = RC3Model(cfg, MBartForConditionalGeneration(MBartConfig(**config.mbart)))
        self.mbart, self.visual, self.itm_head = core.mbart, core.visual, core.itm_head
        # The RC3Model shares these modules; kept out of the module tree so that names stay RC3Model's.
        object.__setattr__(self, "_rc3", core)
        self.post_init()

    @property
    def rc3(self) -> Any:
        """The RC3Model over this model's modules (encode, vtr, tr, itm_logits, generate)."""
        return self._rc3

    def _init_weights(self, module: torch.nn.Module) -> None:
        from rc3.modeling.visual import PatchEmbedding

        # Non-persistent constants are not in the checkpoint: transformers re-creates them empty.
        if isinstance(module, PatchEmbedding):
            with torch.no_grad():
                module.mean.copy_(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
                module.std.copy_(torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.mbart.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                visual_mode: Optional[str] = None, **visual: torch.Tensor) -> RC3HFOutput:
        """Encode text (`input_ids` in RC3's `[BOS] pieces [LANG]`) with the image in `visual` tensors
        (roi/boxes/roi_mask, pixels, and the *2 keys of a second image) when given."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        vis = {k: v for k, v in visual.items() if v is not None} or None
        enc = self.rc3.encode(input_ids, attention_mask, vis, visual_mode)
        pooled = enc.hidden[:, 0]
        return RC3HFOutput(last_hidden_state=enc.hidden, pooled=pooled,
                           itm_logits=self.rc3.itm_logits(pooled) if vis is not None else None)


def register() -> None:
    """Make AutoConfig / AutoModel know `model_type: "rc3"` in this process (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, RC3Config)
    except ValueError:  # already registered (a reload of this module)
        pass
    try:
        AutoModel.register(RC3Config, RC3HFModel)
    except ValueError:
        pass


# ---- writing the files ---------------------------------------------------------------------
_atomic_write = atomic.write_text


def write_hf_config(rc3_config: dict, directory: str | os.PathLike) -> Path:
    """`config.json` from the content of rc3_config.json ({"model": ..., "mbart": ...})."""
    config = RC3Config(rc3=rc3_config["model"], mbart=rc3_config["mbart"], architectures=[RC3HFModel.__name__])
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


def write_hf_files(directory: str | os.PathLike) -> None:
    """Add config.json and (when the directory has a tokenizer) the transformers tokenizer files to a
    finished RC3 model directory's contents (rc3_config.json, tokenizer files)."""
    from rc3.modeling.model import RC3_CONFIG_FILE
    from rc3.tokenization import SPM_FILE, RC3Tokenizer

    d = Path(directory)
    write_hf_config(json.loads((d / RC3_CONFIG_FILE).read_text()), d)
    if not (d / SPM_FILE).is_file():
        return  # no tokenizer saved with the model (a bare architecture card)
    tok = RC3Tokenizer.from_dir(d)
    full = json.loads(tok.hf.backend_tokenizer.to_str())
    kept = tok.id_map.kept.tolist() if tok.id_map is not None else None
    write_hf_tokenizer(d, full, kept)
