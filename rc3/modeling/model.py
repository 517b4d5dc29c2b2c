"""RC3Model: HF mBART encoder-decoder with visual front ends and the RC3 heads (paper Sec. 2.2).

Sequences (paper Fig. 2):

* visio-textual: ``[CLS] visual [BOS] text [LANG]``; VtR = top encoder state at [CLS] (position 0);
* text only: ``[BOS] text [LANG]``; TR = top encoder state at [BOS] (position 0);
* decoder: ``[EOS] [LANG] target`` in, ``[LANG] target [EOS]`` out (mBART-50's convention).

Heads: the MLM head is mBART's LM head (tied to the shared embeddings, plus `final_logits_bias`),
used on encoder states; ITM is an FC on VtR (a logit; the sigmoid lives in the loss); the decoder LM
is the same tied head on decoder states.

A model directory (`save_pretrained`) holds `rc3_config.json`, `model.safetensors` and the
tokenizer files, and loads back with `RC3Model.from_pretrained` without DeepSpeed; it also holds
`config.json` and transformers' tokenizer files (rc3.modeling.hf), so that transformers' Auto classes
load it as an `RC3HFModel` once `register_auto_classes()` has run in the process: loading or saving a
model directory here calls it (`import rc3` does not, so that it stays free of transformers).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, MBartConfig, MBartForConditionalGeneration, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from rc3 import atomic
from rc3.config import from_dict
from rc3.modeling import flops
from rc3.modeling.config import ModelConfig
from rc3.modeling.files import RC3_CONFIG_FILE, WEIGHTS_FILE, run_directory_hint
from rc3.modeling.hf import MODEL_TYPE, RC3Config, write_hf_files
from rc3.modeling.visual import PatchEmbedding, VisualFrontEnd, model_front_ends


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # [B, L, d] top encoder states
    mask: torch.Tensor  # [B, L] bool, True = real token
    text_start: int  # index of [BOS] in the sequence (0 for text-only input)


def mbart_config_from(cfg: ModelConfig, vocab_size: int, pad_id: int = 1, bos_id: int = 0, eos_id: int = 2) -> MBartConfig:
    """An mBART-50-shaped config (pre-LN, scaled embeddings) with the sizes of `cfg`."""
    return MBartConfig(
        vocab_size=vocab_size, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.attention_heads,
        decoder_attention_heads=cfg.attention_heads, encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim,
        max_position_embeddings=cfg.max_position_embeddings, dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout, activation_function="gelu", scale_embedding=True,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, decoder_start_token_id=eos_id,
        forced_eos_token_id=eos_id, tie_word_embeddings=True,
        attn_implementation=cfg.attn_implementation)  # type: ignore[call-arg]  # a PretrainedConfig keyword the stubs omit


def enable_activation_checkpointing(mbart: MBartForConditionalGeneration) -> None:
    """Recompute each layer's activations in the backward (non-reentrant: works with frozen inputs).

    transformers 5.x renamed the switch to `activation_checkpointing_enable` and deprecated the old
    name; setup.py still admits 4.x, which has only `gradient_checkpointing_enable`.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(mbart, "activation_checkpointing_enable"):
        mbart.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        mbart.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class RC3Model(nn.Module):
    def __init__(self, cfg: ModelConfig, mbart: MBartForConditionalGeneration) -> None:
        super().__init__()
        self.cfg = cfg
        self.mbart = mbart
        d = mbart.config.d_model
        self.visual = VisualFrontEnd(cfg, d)
        self.itm_head = nn.Linear(d, 1)
        # Throughput switches set by rc3.pretrain.perf.apply (perf.* of the run config); off = the plain path.
        self.lm_loss_chunk = 0  # > 0: LM-head losses in chunks of this many positions (rc3.pretrain.losses.chunked_lm_cross_entropy)
        self.prebuilt_masks = False  # True: pass 4D boolean masks, so transformers does not test them on the host
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(self.mbart)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: ModelConfig, vocab_size: int, pad_id: int = 1, bos_id: int = 0, eos_id: int = 2) -> RC3Model:
        """Random initialisation with the sizes in `cfg`."""
        return cls(cfg, MBartForConditionalGeneration(mbart_config_from(cfg, vocab_size, pad_id, bos_id, eos_id)))

    @classmethod
    def from_mbart(cls, mbart_dir: str | os.PathLike, cfg: ModelConfig) -> RC3Model:
        """Backbone from a local HF mBART(-50) directory; visual modules and heads freshly initialised."""
        path = Path(mbart_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not an HF model directory (no config.json); give a local mBART-50 directory")
        mbart = MBartForConditionalGeneration.from_pretrained(
            str(path), local_files_only=True, attn_implementation=cfg.attn_implementation)
        shape = mbart.config
        cfg = dataclasses.replace(cfg, d_model=shape.d_model, encoder_layers=shape.encoder_layers,
                                  decoder_layers=shape.decoder_layers, attention_heads=shape.encoder_attention_heads,
                                  ffn_dim=shape.encoder_ffn_dim, max_position_embeddings=shape.max_position_embeddings,
                                  vocab_size=shape.vocab_size)
        return cls(cfg, mbart)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, load_weights: bool = True, **overrides: Any) -> RC3Model:
        """Load an RC3 model directory written by `save_pretrained` (safetensors only).

        `load_weights=False` only rebuilds the architecture from `rc3_config.json` (randomly initialised),
        e.g. to receive weights consolidated from a DeepSpeed checkpoint."""
        from safetensors.torch import load_model

        register_auto_classes()  # a loaded directory can be read with AutoModel too in this process
        path = Path(directory)
        cfg_file = path / RC3_CONFIG_FILE
        if not cfg_file.is_file():
            if (path / "config.json").is_file():
                raise FileNotFoundError(f"{path} looks like a plain HF model; use RC3Model.from_mbart or "
                                        "tools/convert_mbart50.py to make an RC3 model directory")
            raise FileNotFoundError(run_directory_hint(path) or f"{path}: no {RC3_CONFIG_FILE}; not an RC3 model directory")
        meta = json.loads(cfg_file.read_text())
        saved = dict(meta["model"])
        if "front_ends" not in saved:  # written before a model recorded its front ends: it held every one there was
            saved["front_ends"] = list(FRONT_ENDS_BEFORE_RECORDING)
        held = model_front_ends(from_dict(ModelConfig, saved))
        cfg = from_dict(ModelConfig, {**saved, **overrides})
        # The model keeps the front ends it holds (their weights load as they are); those asked for by
        # `front_ends` or the visual mode that it lacks start from a random initialisation (what a model
        # that held every front end gave before).
        asked = model_front_ends(dataclasses.replace(cfg, front_ends=list(overrides.get("front_ends") or [])))
        added = [name for name in asked if name not in held]
        if added:
            logging.getLogger(__name__).warning(
                "%s holds no trained weights for the visual front end(s) %s: they start from a random "
                "initialisation", path, ", ".join(added))
        cfg = dataclasses.replace(cfg, front_ends=model_front_ends(dataclasses.replace(cfg, front_ends=[*held, *added])))
        mbart_cfg = MBartConfig(**meta["mbart"])
        mbart_cfg._attn_implementation = cfg.attn_implementation
        model = cls(cfg, MBartForConditionalGeneration(mbart_cfg))
        if not load_weights:
            return model
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE}")
        missing, unexpected = load_model(model, str(weights), strict=False)
        # The LM head is tied to the shared embeddings and saved once; anything else missing is an error.
        missing = [k for k in missing if k not in _tied_aliases(model) and not _fresh(k, set(added))]
        if missing or unexpected:
            raise ValueError(f"{weights}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
        model.mbart.tie_weights()
        return model

    def save_config(self, directory: str | os.PathLike) -> Path:
        """Write `rc3_config.json` (RC3 model config + the mBART config) into an existing directory."""
        meta = {"model": dataclasses.asdict(self.cfg), "mbart": _mbart_config_dict(self.mbart.config)}
        meta["model"].update(vocab_size=self.mbart.config.vocab_size, init_from=None, tokenizer=None,
                             front_ends=list(self.visual.front_ends))  # what it holds, whatever is registered later
        path = Path(directory) / RC3_CONFIG_FILE
        path.write_text(json.dumps(meta, indent=2))
        return path

    def save_pretrained(self, directory: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                        overwrite: bool = False, weights: bool = True) -> Path:
        """Write config, safetensors weights (and tokenizer files) into a temp dir renamed into place.

        `weights=False` writes only the config and tokenizer: the architecture card a run directory keeps
        so that its DeepSpeed checkpoints can be turned back into a model directory."""
        from safetensors.torch import save_model

        register_auto_classes()  # the directory written is readable with AutoModel in this process
        out = Path(directory)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
        with atomic.produced_dir(out) as tmp:
            self.save_config(tmp)
            if weights:
                save_model(self, str(tmp / WEIGHTS_FILE))
            if tokenizer_dir is not None:
                for f in Path(tokenizer_dir).iterdir():
                    if f.is_file() and f.name not in (RC3_CONFIG_FILE, WEIGHTS_FILE):
                        shutil.copy2(f, tmp / f.name)
            write_hf_files(tmp, json.loads((tmp / RC3_CONFIG_FILE).read_text()))
        return out

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(self, *args, **kwargs)` as this module's forward pass.

        RC3 has several entry points (encode, vtr, tr, decode); wrappers such as a DeepSpeed engine
        only see computations that go through `forward`, so training runs its objectives as
        `engine(compute_losses, batches, ...)`. Parameter names stay those of RC3Model."""
        return fn(self, *args, **kwargs)

    @contextlib.contextmanager
    def without_dropout(self) -> Iterator[None]:
        """Every submodule in eval mode inside the block, each restored to its own mode after it: for
        forward passes that produce targets (R-XVtCL's P_tr), which dropout noise would blur."""
        # Called every step (R-XVtCL's P_tr) over ~200 modules of the paper model: `training` is a plain
        # attribute, so it is set past nn.Module.__setattr__, whose checks for parameters, buffers and
        # submodules cost several times the assignment (what `Module.train` does, without its recursion).
        modes = [(m, m.training) for m in self.modules()]
        set_mode = object.__setattr__
        try:
            for m, _ in modes:
                set_mode(m, "training", False)
            yield
        finally:
            for m, mode in modes:
                set_mode(m, "training", mode)

    # ---- encoder ---------------------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return self.mbart.config.d_model

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.mbart.model.shared(input_ids)  # scaled by sqrt(d) as in mBART-50

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               visual: Optional[Mapping[str, torch.Tensor]] = None, mode: Optional[str] = None,
               visual_index: Optional[torch.Tensor] = None) -> EncoderOutput:
        """Encode `[CLS] visual [BOS] text [LANG]` (or text only when `visual` is None). The encoder numbers
        the positions of the whole sequence; with `model.text_positions=from_zero` the text's restart at 0.

        With `visual_index` ([B] image indices), `visual` holds distinct images and sequence s is paired
        with image `visual_index[s]`: the visual front end runs once per distinct image and its tokens
        are gathered (R-XVtCL and retrieval pair each image with many texts). Same result as indexing
        `visual` first, for a fraction of the front-end cost.
        """
        text = self.embed_text(input_ids)
        text_mask = attention_mask.bool()
        if visual is None:
            embeds, mask, start = text, text_mask, 0
        else:
            vis, vis_mask = self.visual(visual, mode or self.cfg.visual_mode)
            self.visual.count_flops(visual, mode or self.cfg.visual_mode)  # outside the (possibly compiled) front end
            if visual_index is not None:
                # index_select, not vis[visual_index]: the backward of advanced indexing accumulates with
                # several CPU threads in a nondeterministic order, which would break bit-exact resumes.
                vis, vis_mask = vis.index_select(0, visual_index), vis_mask.index_select(0, visual_index)
            start = vis.shape[1]
            if self.cfg.text_positions == "from_zero":
                text = text + self._restart_text_positions(start, text.shape[1]).to(text.dtype)
            embeds = torch.cat([vis.to(text.dtype), text], dim=1)
            mask = torch.cat([vis_mask, text_mask], dim=1)
        out = self.mbart.model.encoder(inputs_embeds=embeds, attention_mask=self._key_mask(mask))
        c = self.mbart.config
        flops.encoder_pass(embeds.shape[0], embeds.shape[1], c.d_model, c.encoder_ffn_dim, c.encoder_layers)
        return EncoderOutput(out.last_hidden_state, mask, start)

    def _restart_text_positions(self, start: int, length: int) -> torch.Tensor:
        """[length, d]: added to the text embeddings of a visio-textual input, turns the positions the
        encoder adds to them (start, start + 1, ...: it numbers the whole sequence) into 0, 1, ... (`model.
        text_positions=from_zero`). On the rows the encoder adds, the gradient of this term cancels the
        encoder's (exactly on CPU; up to the order of summation where a backward sums in another order), so the
        text trains rows 0, 1, ... alone."""
        table = self.mbart.model.encoder.embed_positions
        rows = torch.arange(length, device=table.weight.device) + table.offset
        # index_select, not table.weight[rows]: a deterministic backward (see `encode`)
        return table.weight.index_select(0, rows) - table.weight.index_select(0, rows + start)

    def vtr(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual: Mapping[str, torch.Tensor],
            mode: Optional[str] = None, visual_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Visio-textual representation: top state at [CLS] (`visual_index`: see `encode`)."""
        return self.encode(input_ids, attention_mask, visual, mode, visual_index).hidden[:, 0]

    def tr(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Textual representation: top state at [BOS] of a text-only input."""
        return self.encode(input_ids, attention_mask).hidden[:, 0]

    # ---- heads -----------------------------------------------------------------------------
    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied LM head (+ mBART's final_logits_bias); used for MLM on encoder states and for the decoder."""
        flops.linear(hidden.shape[:-1].numel(), hidden.shape[-1], self.mbart.config.vocab_size)
        return self.mbart.lm_head(hidden) + self.mbart.final_logits_bias.to(hidden.dtype)

    def mlm_logits(self, enc: EncoderOutput) -> torch.Tensor:
        """MLM logits at the text positions of an encoded sequence: [B, L_text, V]."""
        return self.lm_logits(enc.hidden[:, enc.text_start:])

    def itm_logits(self, vtr: torch.Tensor) -> torch.Tensor:
        return self.itm_head(vtr).squeeze(-1)

    def decode(self, decoder_input_ids: torch.Tensor, decoder_mask: Optional[torch.Tensor], enc: EncoderOutput) -> torch.Tensor:
        """Decoder LM logits [B, T, V] given the encoder output."""
        return self.lm_logits(self.decode_hidden(decoder_input_ids, decoder_mask, enc))

    def decode_hidden(self, decoder_input_ids: torch.Tensor, decoder_mask: Optional[torch.Tensor],
                      enc: EncoderOutput) -> torch.Tensor:
        """Top decoder states [B, T, d] given the encoder output (`decode` applies the LM head to them)."""
        self_mask: Optional[torch.Tensor]
        if self.prebuilt_masks:
            t = decoder_input_ids.shape[1]
            causal = torch.ones(t, t, dtype=torch.bool, device=decoder_input_ids.device).tril()
            self_mask = causal if decoder_mask is None else causal & decoder_mask.bool()[:, None, None, :]
            self_mask = self_mask.expand(decoder_input_ids.shape[0], 1, t, t)
        else:
            self_mask = decoder_mask.long() if decoder_mask is not None else None
        out = self.mbart.model.decoder(
            input_ids=decoder_input_ids, attention_mask=self_mask,
            encoder_hidden_states=enc.hidden, encoder_attention_mask=self._key_mask(enc.mask))
        c = self.mbart.config
        flops.decoder_pass(decoder_input_ids.shape[0], decoder_input_ids.shape[1], enc.hidden.shape[1], c.d_model,
                           c.decoder_ffn_dim, c.decoder_layers)
        return out.last_hidden_state

    def _key_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The key-padding mask as transformers takes it: [B, L] integers (transformers builds the 4D mask
        and, outside torch.compile, asks the host whether any key is padded: a device sync), or with
        `prebuilt_masks` a [B, 1, 1, L] boolean mask that it uses as given."""
        return mask.bool()[:, None, None, :] if self.prebuilt_masks else mask.long()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tgt_lang_id: int,
                 visual: Optional[Mapping[str, torch.Tensor]] = None, mode: Optional[str] = None,
                 num_beams: int = 4, max_new_tokens: int = 64, **kwargs: Any) -> torch.Tensor:
        """Beam search through HF `generate`, the decoder starting `[EOS] [LANG]` (forced target tag)."""
        enc = self.encode(input_ids, attention_mask, visual, mode)
        return self.mbart.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=enc.hidden), attention_mask=enc.mask.long(),
            decoder_start_token_id=self.mbart.config.eos_token_id, forced_bos_token_id=tgt_lang_id,
            num_beams=num_beams, max_new_tokens=max_new_tokens, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---- the transformers face: RC3HFModel and the Auto classes (files: rc3.modeling.hf) ------
@dataclass
class RC3HFOutput(ModelOutput):
    """`last_hidden_state`: top encoder states of `[CLS] visual [BOS] text [LANG]` (or the text alone);
    `pooled`: the state at position 0 (VtR with an image, TR without); `itm_logits` with an image."""

    last_hidden_state: Optional[torch.Tensor] = None
    pooled: Optional[torch.Tensor] = None
    itm_logits: Optional[torch.Tensor] = None


class RC3HFModel(PreTrainedModel):  # named by rc3.modeling.hf.HF_MODEL_CLASS
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
        # config.json written before a model recorded its front ends: it held every one there was
        cfg = from_dict(ModelConfig, {"front_ends": list(FRONT_ENDS_BEFORE_RECORDING), **config.rc3})
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


def register_auto_classes() -> None:
    """Make AutoConfig / AutoModel know `model_type: "rc3"` in this process (idempotent, cheap after the
    first call). Called where a model directory is loaded or saved (`RC3Model.from_pretrained`,
    `save_pretrained`); a process that reads a directory only through `AutoModel` calls it first."""
    global _auto_registered
    if _auto_registered:
        return
    try:
        AutoConfig.register(MODEL_TYPE, RC3Config)
    except ValueError:  # already registered (a reload of this module)
        pass
    try:
        AutoModel.register(RC3Config, RC3HFModel)
    except ValueError:
        pass
    _auto_registered = True


_auto_registered = False


# What every model held before `model.front_ends` was recorded (rc3_config.json without it).
FRONT_ENDS_BEFORE_RECORDING = ("roi", "patch")


def _fresh(key: str, front_ends: set[str]) -> bool:
    """Whether weight `key` belongs to one of `front_ends` (freshly initialised, not in the file)."""
    parts = key.split(".")
    return len(parts) > 2 and parts[0] == "visual" and parts[1] in front_ends


def _tied_aliases(model: RC3Model) -> set[str]:
    return {"mbart.lm_head.weight", "mbart.model.encoder.embed_tokens.weight", "mbart.model.decoder.embed_tokens.weight",
            "mbart.model.shared.weight"}


def _mbart_config_dict(config: MBartConfig) -> dict:
    d = config.to_dict()
    for k in ("_attn_implementation_autoset", "transformers_version", "architectures", "torch_dtype", "dtype"):
        d.pop(k, None)
    return d
