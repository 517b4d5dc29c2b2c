r"""Consolidate a DeepSpeed ZeRO checkpoint of a pretraining run into a plain RC3 model directory (fp32).

    python tools/zero_to_safetensors.py runs/rc3 models/rc3-step100k [--tag step_100000] [--overwrite]

Reads RUN_DIR/checkpoints/<tag> (default: the newest intact complete one, as --resume picks it: a tag whose
files differ from the manifest in its COMPLETE marker is passed over with a one-line warning naming the
file; a named --tag that differs is refused) written under any ZeRO stage, rebuilds the architecture
from RUN_DIR/model_card (rc3_config.json + tokenizer files), fills
it with DeepSpeed's consolidated fp32 weights, checks every tensor is there, and writes OUT_DIR
(rc3_config.json, model.safetensors, tokenizer files), which RC3Model.from_pretrained loads without
DeepSpeed. The checkpoint files are read with torch.load(weights_only=True) (rc3.safe_load); only the
few DeepSpeed bookkeeping classes a ZeRO checkpoint stores are allowed through, anything else is refused
naming the file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rc3.modeling.files import RC3_CONFIG_FILE

if TYPE_CHECKING:  # torch, DeepSpeed and the model are imported where used, so that `--help` answers at once
    import torch

    from rc3.modeling import RC3Model


class CheckpointError(ValueError):
    """A run directory or checkpoint that cannot be consolidated, with what to do about it."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def resolve_tag(run_dir: Path, tag: str | None) -> Path:
    """The checkpoint directory to read: RUN_DIR/checkpoints/<tag>, checked to look complete and, when its
    COMPLETE holds a manifest, to match it."""
    from rc3.pretrain.checkpoints import CheckpointManager

    ckpt_root = run_dir / "checkpoints"
    if not ckpt_root.is_dir():
        raise CheckpointError(f"{run_dir}: no checkpoints/ directory; is this a pretraining run directory?")
    manager = CheckpointManager(run_dir)
    named = tag is not None
    if tag is None:
        # the rule --resume follows: `latest` when it names a complete tag, else the newest complete one;
        # a damaged one is passed over for the newest intact one
        tag = manager.newest_intact(warn)
        if tag is None:
            damaged = manager.complete_tags()
            raise CheckpointError(f"{ckpt_root}: no complete checkpoint (no tag holds COMPLETE; incomplete: "
                                  f"{', '.join(manager.incomplete_tags()) or 'none'}); name one with --tag "
                                  f"(found: {', '.join(available_tags(ckpt_root)) or 'none'})" if not damaged else
                                  f"{ckpt_root}: every complete checkpoint is damaged ({', '.join(damaged)}, see the "
                                  "warnings above); restore the named files")
    tag_dir = ckpt_root / tag
    if not tag_dir.is_dir():
        raise CheckpointError(f"checkpoint {tag_dir} does not exist (found: {', '.join(available_tags(ckpt_root)) or 'none'})")
    if named and (tag_dir / "COMPLETE").is_file():  # the default tag was verified by newest_intact
        found = manager.problems(tag)
        if found:
            raise CheckpointError(f"checkpoint {tag_dir} is damaged: {found[0]}"
                                  + (f" (and {len(found) - 1} more file(s))" if len(found) > 1 else "")
                                  + "; pick another --tag or restore the file")
    model_states = sorted(tag_dir.glob("*model_states.pt"))
    optim_states = sorted(tag_dir.glob("*optim_states.pt"))
    if not model_states or not optim_states:
        raise CheckpointError(f"checkpoint {tag_dir} is incomplete: it needs *model_states.pt and *optim_states.pt "
                              "files of a ZeRO run; pick another --tag")
    return tag_dir


def available_tags(ckpt_root: Path) -> list[str]:
    return sorted(p.name for p in ckpt_root.iterdir() if p.is_dir())


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """DeepSpeed's fp32 consolidation of a ZeRO 1/2/3 checkpoint, errors naming the checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from rc3.safe_load import UnsafeCheckpointError, weights_only_loading

    try:
        with weights_only_loading():
            return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except UnsafeCheckpointError as err:
        raise CheckpointError(str(err)) from None
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {tag_dir} cannot be consolidated ({type(err).__name__}: {err}); "
                              "it may be incomplete (a rank did not finish writing): pick another --tag") from None


def model_state(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's fp32 weights and buffers under the model's names: DeepSpeed's consolidation, with
    the flat tensors of a perf.flat_params run split back (flat_params.json) and its buffers added."""
    state = consolidated_state_dict(tag_dir)
    if any(k.startswith("flat.") for k in state):
        from rc3.pretrain.flat_params import LAYOUT_FILE, unflatten

        try:
            state = unflatten(state, tag_dir / LAYOUT_FILE)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        state = {**module_buffers(tag_dir, state), **state}
    return state


def module_buffers(tag_dir: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of DeepSpeed's module file that `state` lacks. Under perf.flat_params DeepSpeed lists
    the buffers of the module it wraps, which holds none of its own (the model's sit below it, unlisted),
    so its consolidation leaves them out; the module file holds them under the model's names."""
    import torch

    from rc3 import safe_load

    files = sorted(tag_dir.glob("*model_states.pt"))
    try:
        module = safe_load.load(files[0])["module"]
    except safe_load.UnsafeCheckpointError as err:
        raise CheckpointError(str(err)) from None
    except (IndexError, KeyError, OSError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {tag_dir}: cannot read the module file for its buffers ({err})") from None
    return {k: v for k, v in module.items() if k not in state and torch.is_tensor(v)}


def load_into(model: RC3Model, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy `state` into `model`, requiring every parameter and buffer and nothing else."""
    expected = model.state_dict()
    if state and not any(k in expected for k in state) and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # engines that wrap the model once more
    tied = {"mbart.lm_head.weight", "mbart.model.encoder.embed_tokens.weight", "mbart.model.decoder.embed_tokens.weight"}
    missing = [k for k in expected if k not in state and k not in tied]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {source} does not match the model card: missing {missing[:5]} "
                              f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise CheckpointError(f"checkpoint {source} has tensors of other shapes than the model card: "
                              + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:5]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False)
    model.mbart.tie_weights()


def convert(run_dir: Path, out_dir: Path, tag: str | None = None, overwrite: bool = False) -> Path:
    """RUN_DIR's checkpoint -> an RC3 model directory at OUT_DIR (written to a temp dir, renamed into place)."""
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    card = run_dir / "model_card"
    if not (card / RC3_CONFIG_FILE).is_file():
        raise CheckpointError(f"{card}/{RC3_CONFIG_FILE} is missing: the run directory needs its model card "
                              "(written by the training engine at start-up)")
    from rc3.modeling import RC3Model

    tag_dir = resolve_tag(run_dir, tag)
    model = RC3Model.from_pretrained(card, load_weights=False)
    load_into(model, model_state(tag_dir), tag_dir)
    return model.save_pretrained(out_dir, tokenizer_dir=card, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="pretraining run directory (model_card/ and checkpoints/)")
    ap.add_argument("out_dir", type=Path, help="RC3 model directory to write")
    ap.add_argument("--tag", default=None, help="checkpoint tag (default: the newest complete one, as --resume picks it)")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    args = ap.parse_args(argv)
    if not args.run_dir.is_dir():
        ap.error(f"RUN_DIR {args.run_dir} is not a directory")
    try:
        out = convert(args.run_dir, args.out_dir, args.tag, args.overwrite)
    except (CheckpointError, FileExistsError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
