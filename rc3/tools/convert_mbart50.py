r"""Turn a local HF mBART-50 directory into an RC3 model directory with a reduced vocabulary.

    python tools/convert_mbart50.py --mbart mbart-large-50/ --out models/rc3-init \
        --corpus cc3m.en.txt.gz:en train.de.gz train.fr.gz ... --coverage 0.9999 [--langs en de fr ...]

Counts mBART-50's pieces over the corpora (plain text, one sentence a line, optionally gzipped; the
language is given as FILE:lang or read from a `.<lang>` suffix), keeps per language the fewest most
frequent pieces reaching --coverage (plus <s> <pad> </s> <unk> <mask> and every language code), slices
the embedding rows and final_logits_bias, and writes model.safetensors, rc3_config.json, the tokenizer
files with id_map.json, and vocab_report.json. `model.init_from` can point at the result.
Nothing is fetched from a hub; weights are read from safetensors or (weights-only) from pytorch_model.bin.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from rc3.modeling.config import ModelConfig
from rc3.tokenization import ID_MAP_FILE, SPM_FILE, IdMap, RC3Tokenizer
from rc3.vocab import CorpusFile, always_kept_ids, count_pieces, coverage_of, iter_lines, parse_corpus_spec, select_vocabulary, slice_vocab_tensors

REPORT_FILE = "vocab_report.json"
# Config fields holding token ids: remapped to the reduced vocabulary.
TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                   "forced_bos_token_id", "forced_eos_token_id")


if TYPE_CHECKING:  # torch and the model are imported where used, so that `--help` answers at once
    import torch


def load_mbart_state(directory: Path) -> dict[str, torch.Tensor]:
    """The weights of an HF model directory: model.safetensors (single or sharded) or pytorch_model.bin."""
    import torch
    from safetensors.torch import load_file

    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in tqdm(shards, desc="loading weights", unit="shard"):
            state.update(load_file(str(directory / shard)))
        return state
    binary = directory / "pytorch_model.bin"
    if binary.is_file():
        loaded = torch.load(str(binary), map_location="cpu", weights_only=True)
        return loaded.get("state_dict", loaded)
    raise FileNotFoundError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def reduced_mbart(config, state: dict[str, torch.Tensor]):
    """An MBartForConditionalGeneration holding `state` (already sliced), tied, in fp32, without a random init."""
    import torch
    from transformers import MBartForConditionalGeneration

    with torch.device("meta"):  # the weights come from `state`: skip allocating and initialising 600M parameters
        mbart = MBartForConditionalGeneration(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    result = mbart.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ValueError(f"the mBART weights do not fit its config.json (missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]})")
    mbart.tie_weights()
    still_meta = [n for n, t in [*mbart.named_parameters(), *mbart.named_buffers()] if t.is_meta]
    if still_meta:
        raise ValueError(f"the mBART weights do not set {still_meta[:5]}")
    return mbart.eval()


def model_config_for(mbart_config) -> ModelConfig:
    """RC3's model config with the backbone's shape (visual sizes stay the paper's defaults)."""
    c = mbart_config
    return dataclasses.replace(
        ModelConfig(), d_model=c.d_model, encoder_layers=c.encoder_layers, decoder_layers=c.decoder_layers,
        attention_heads=c.encoder_attention_heads, ffn_dim=c.encoder_ffn_dim,
        max_position_embeddings=c.max_position_embeddings, dropout=float(c.dropout),
        attention_dropout=float(c.attention_dropout), vocab_size=c.vocab_size)


def count_corpora(tokenizer: RC3Tokenizer, corpora: list[CorpusFile], max_lines: int | None) -> dict[str, np.ndarray]:
    counts: dict[str, np.ndarray] = {}
    for corpus in corpora:
        with tqdm(desc=f"counting {corpus.path.name} [{corpus.lang}]", unit=" lines", unit_scale=True) as bar:
            try:
                c = count_pieces(tokenizer, iter_lines(corpus.path, max_lines), progress=bar)
            except UnicodeDecodeError as err:
                raise SystemExit(f"error: corpus {corpus.path} is not UTF-8 text: {err}") from None
        counts[corpus.lang] = counts[corpus.lang] + c if corpus.lang in counts else c
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mbart", type=Path, required=True,
                    help="local HF mBART-50 directory (config.json, weights, sentencepiece.bpe.model)")
    ap.add_argument("--corpus", nargs="+", required=True, metavar="FILE[:lang]",
                    help="text corpora, one sentence a line (.gz allowed); language from :lang or a .<lang> suffix")
    ap.add_argument("--coverage", type=float, default=0.9999,
                    help="share of each language's tokens the kept pieces must cover (default 0.9999)")
    ap.add_argument("--langs", nargs="+", default=None,
                    help="languages to count (default: every corpus language); corpora in others are skipped")
    ap.add_argument("--max-lines", type=int, default=None, help="read at most this many lines per corpus")
    ap.add_argument("--out", type=Path, required=True, help="RC3 model directory to write")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = ap.parse_args(argv)
    if not 0.0 < args.coverage <= 1.0:
        ap.error(f"--coverage must be in (0, 1], got {args.coverage}")
    if args.max_lines is not None and args.max_lines <= 0:
        ap.error("--max-lines must be positive")
    return args


def check_inputs(args: argparse.Namespace) -> list[CorpusFile]:
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise SystemExit(f"error: {args.out} exists and is not empty; pass --overwrite to replace it")
    if (args.mbart / ID_MAP_FILE).is_file():
        raise SystemExit(f"error: --mbart {args.mbart} already has a reduced vocabulary ({ID_MAP_FILE}); "
                         "convert from the original mBART-50 directory")
    for name in ("config.json", SPM_FILE):
        if not (args.mbart / name).is_file():
            raise SystemExit(f"error: --mbart {args.mbart}: no {name}; give a local HF mBART-50 directory")
    try:
        corpora = [parse_corpus_spec(s) for s in args.corpus]
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    if args.langs is not None:
        for lang in args.langs:
            if lang not in {c.lang for c in corpora}:
                raise SystemExit(f"error: --langs {lang}: no --corpus in that language")
        skipped = [c for c in corpora if c.lang not in args.langs]
        for c in skipped:
            print(f"skipping {c.path} ({c.lang} is not in --langs)")
        corpora = [c for c in corpora if c.lang in args.langs]
    return corpora


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    corpora = check_inputs(args)
    from transformers import MBartConfig

    from rc3.modeling import RC3Model

    tokenizer = RC3Tokenizer.from_dir(args.mbart)
    config = MBartConfig.from_json_file(str(args.mbart / "config.json"))
    old_vocab = len(tokenizer.hf)
    if config.vocab_size != old_vocab:
        raise SystemExit(f"error: {args.mbart}: config.json has vocab_size {config.vocab_size} but the tokenizer "
                         f"has {old_vocab} ids; they must come from the same mBART-50 release")

    counts = count_corpora(tokenizer, corpora, args.max_lines)
    unk = int(tokenizer.hf.convert_tokens_to_ids("<unk>"))
    try:
        kept = select_vocabulary(counts, args.coverage, always_kept_ids(tokenizer), unk)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    id_map = IdMap(kept, old_vocab, unk)

    state = load_mbart_state(args.mbart)
    try:
        sliced = slice_vocab_tensors(state, kept, old_vocab)
    except ValueError as err:
        raise SystemExit(f"error: {args.mbart}: {err}") from None
    del state
    config.vocab_size = len(kept)
    for field in TOKEN_ID_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int):
            setattr(config, field, id_map.to_new([value])[0])
    model = RC3Model(model_config_for(config), reduced_mbart(config, sliced))

    report = {"coverage_target": args.coverage, "old_vocab_size": old_vocab, "new_vocab_size": len(kept),
              "languages": {}}
    print(f"\nvocabulary: {old_vocab} -> {len(kept)} ids (coverage target {args.coverage})")
    print(f"{'lang':6s}{'tokens':>14s}{'pieces used':>13s}{'coverage':>12s}")
    for lang, c in sorted(counts.items()):
        cov = coverage_of(c, kept, unk)
        report["languages"][lang] = {"tokens": int(c.sum()), "pieces_used": int((c > 0).sum()), "coverage": cov}
        print(f"{lang:6s}{int(c.sum()):>14d}{int((c > 0).sum()):>13d}{cov:>12.6f}")
    after = model.num_parameters()
    before = after + (old_vocab - len(kept)) * config.d_model  # only the (tied) embedding matrix depends on V
    report.update(parameters_before=before, parameters_after=after)
    print(f"parameters (RC3 model with visual modules and ITM head): {before / 1e6:.2f}M -> {after / 1e6:.2f}M")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=f".{args.out.name}.tok") as tok_dir:
        RC3Tokenizer(tokenizer.hf, id_map).save(tok_dir)
        reloaded = RC3Tokenizer.from_dir(tok_dir)  # the files must load as training will load them
        if reloaded.vocab_size != len(kept) or reloaded.lang_id("en") != id_map.to_new([tokenizer.lang_id("en")])[0]:
            raise SystemExit("error: the written tokenizer does not reload with the reduced vocabulary")
        (Path(tok_dir) / REPORT_FILE).write_text(json.dumps(report, indent=2))
        model.save_pretrained(args.out, tokenizer_dir=tok_dir, overwrite=args.overwrite)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
