"""Adding a language to a trained RC3 model by sentence-embedding alignment on parallel text.

`distill` (the alignment loop and `add_language`, the whole job), `vocab_extension` (new pieces and their
embedding rows), `parallel_text` (reading the pairs and the sentences to keep), `options`
(`AddLanguageOptions`). The names below load their module on first use, so `import rc3.add_language`
imports no torch (the `rc3-add-language` command's `--help` reads only `options`).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rc3.add_language.distill import INFO_FILE, add_language, distill, distillation_loss
    from rc3.add_language.options import TRAINABLE, AddLanguageOptions
    from rc3.add_language.parallel_text import ParallelTextError, read_keep, read_parallel, read_tsv_or_pair
    from rc3.add_language.vocab_extension import (
        VocabExtension,
        candidate_pieces,
        extend_tokenizer,
        known_characters,
        resize_embeddings,
        row_sources,
    )

# name -> the module that defines it
_LAZY = {
    **dict.fromkeys(["INFO_FILE", "add_language", "distill", "distillation_loss"], "rc3.add_language.distill"),
    **dict.fromkeys(["TRAINABLE", "AddLanguageOptions"], "rc3.add_language.options"),
    **dict.fromkeys(["ParallelTextError", "read_keep", "read_parallel", "read_tsv_or_pair"], "rc3.add_language.parallel_text"),
    **dict.fromkeys(["VocabExtension", "candidate_pieces", "extend_tokenizer", "known_characters", "resize_embeddings",
                     "row_sources"], "rc3.add_language.vocab_extension"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rc3.add_language' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


__all__ = ["AddLanguageOptions", "INFO_FILE", "ParallelTextError", "TRAINABLE", "VocabExtension", "add_language",
           "candidate_pieces", "distill", "distillation_loss", "extend_tokenizer", "known_characters", "read_keep",
           "read_parallel", "read_tsv_or_pair", "resize_embeddings", "row_sources"]
