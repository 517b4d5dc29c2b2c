"""What a classification head reads (`model.head_pool`): [CLS] or the mean top state of the text positions."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import tiny_model_config

from rc3.config import ConfigError
from rc3.finetune.config import finetune_config_from_dict
from rc3.finetune.heads import ClassificationModel, TaskModel, load_head, pooled_state
from rc3.modeling import RC3Model


def test_pooled_state_is_the_mean_of_the_marked_text_positions() -> None:
    # 2 sequences, 3 visual positions then 4 text positions, d = 2; values are position numbers
    hidden = torch.tensor([[[10.0 * b + p, -(10.0 * b + p)] for p in range(7)] for b in range(2)])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    got = pooled_state(hidden, 3, mask, "mean_text")
    # by hand: row 0 averages positions 3, 4, 5; row 1 averages 13, 14
    assert got.tolist() == [[4.0, -4.0], [13.5, -13.5]]
    assert pooled_state(hidden, 3, mask, "cls").tolist() == [[0.0, -0.0], [10.0, -10.0]]
    with pytest.raises(ValueError, match="unknown head pool 'max'"):
        pooled_state(hidden, 3, mask, "max")


def _model(tokenizer, pool: str, seed: int = 0) -> ClassificationModel:
    torch.manual_seed(seed)
    rc3 = RC3Model.from_config(tiny_model_config(), tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id,
                               tokenizer.eos_id)
    return ClassificationModel(rc3, "roi", "xvnli", 3, pool=pool).eval()


def _roi(n_regions: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    roi, boxes = torch.rand(1, 36, 2048, generator=g), torch.rand(1, 36, 5, generator=g)
    return {"roi": roi, "boxes": boxes, "roi_mask": (torch.arange(36) < n_regions)[None]}


def test_the_head_reads_the_text_states_of_each_sequence_alone(tokenizer) -> None:
    """The head's input, caught at its first Linear, against each (image, text) encoded alone with no
    padding: the mean over the text positions of the top states, or the VtR at [CLS]."""
    texts = [("The circle is red.", "en", 5), ("Le carré est à gauche de la grande image bleue.", "fr", 20)]
    ids = [tokenizer.encode(t, lang, 40) for t, lang, _ in texts]
    width = max(map(len, ids))
    batch = {"input_ids": torch.tensor([i + [tokenizer.pad_id] * (width - len(i)) for i in ids]),
             "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}
    visual = [_roi(n, s) for s, (_, _, n) in enumerate(texts)]
    batch.update({k: torch.cat([v[k] for v in visual]) for k in visual[0]})
    assert len(ids[0]) < width  # the first sequence is padded
    for pool in ("mean_text", "cls"):
        model = _model(tokenizer, pool)
        seen: list[torch.Tensor] = []
        hook = model.head.net[1].register_forward_hook(lambda m, args, out, seen=seen: seen.append(args[0].detach()))
        with torch.no_grad():
            model(batch)
            hook.remove()
            for row, (one, vis) in enumerate(zip(ids, visual)):
                alone = torch.tensor([one])
                enc = model.rc3.encode(alone, torch.ones_like(alone), vis, "roi")
                assert enc.hidden.shape[1] == 1 + 36 + len(one)  # [CLS], the 36 regions, then the text
                want = enc.hidden[0, 37:].mean(0) if pool == "mean_text" else model.rc3.vtr(alone, torch.ones_like(alone), vis, "roi")[0]
                torch.testing.assert_close(seen[0][row], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown head pool"):
        _model(tokenizer, "avg")


def test_the_pool_travels_with_the_saved_head_and_a_mismatch_is_refused(tokenizer, tmp_path: Path) -> None:
    model = _model(tokenizer, "mean_text")
    out = model.save_pretrained(tmp_path / "xvnli", tokenizer)
    again = TaskModel.from_pretrained(out)
    assert isinstance(again, ClassificationModel) and again.pool == "mean_text"
    other = _model(tokenizer, "cls", seed=1)
    with pytest.raises(ValueError, match="reads 'mean_text', this model 'cls'; set model.head_pool=mean_text"):
        load_head(other, out)
    base = ["data.test=x", "data.train=y", "data.features=[f.h5]"]
    assert finetune_config_from_dict({}, "xvnli", base).model.head_pool == "cls"  # the paper's VtR by default
    assert finetune_config_from_dict({}, "xvnli", base + ["model.head_pool=mean_text"]).model.head_pool == "mean_text"
    with pytest.raises(ConfigError, match="model.head_pool"):
        finetune_config_from_dict({}, "xvnli", base + ["model.head_pool=max"])
