"""The ITR finetuning loss (rc3.finetune.itr_model): which negatives the ITM head is trained on."""
from __future__ import annotations

import torch
from tiny import tiny_model_config

from rc3.finetune.itr_model import ITRModel
from rc3.modeling import RC3Model

VOCAB = 64


def itr_model(hard: bool = True, uniform_share: float = 0.0) -> ITRModel:
    torch.manual_seed(0)
    return ITRModel(RC3Model.from_config(tiny_model_config(), VOCAB), "roi", embed_dim=16, hard_negatives=hard,
                    uniform_negative_share=uniform_share)


def test_hard_negatives_follow_the_softmax_of_the_logits_and_skip_the_same_image() -> None:
    model = itr_model()
    torch.manual_seed(1)
    logits = torch.tensor([[9.0, 5.0, 0.0, 0.0],    # column 0 is its own image: never drawn; 1 dominates the rest
                           [0.0, 9.0, 0.0, 0.0],    # uniform over the other images 0, 2, 3
                           [0.0, 0.0, 9.0, 0.0]])   # only same-image columns: the row is dropped
    same = torch.tensor([[True, False, False, False], [False, True, False, False], [True, True, True, True]])
    draws = [model._negatives(logits, same) for _ in range(3000)]
    assert all(rows.tolist() == [0, 1] for rows, _ in draws)
    first = torch.bincount(torch.stack([cols[0] for _, cols in draws]), minlength=4).float() / len(draws)
    second = torch.bincount(torch.stack([cols[1] for _, cols in draws]), minlength=4).float() / len(draws)
    expected = torch.softmax(torch.tensor([5.0, 0.0, 0.0]), 0)
    assert first[0] == 0 and torch.allclose(first[1:], expected, atol=0.02)
    assert second[1] == 0 and torch.allclose(second[[0, 2, 3]], torch.full((3,), 1 / 3), atol=0.04)


def test_uniform_negatives_ignore_the_logits() -> None:
    model = itr_model(hard=False)
    logits = torch.tensor([[0.0, 50.0, -50.0]])
    same = torch.tensor([[True, False, False]])
    cols = torch.stack([model._negatives(logits, same)[1][0] for _ in range(2000)])
    share = torch.bincount(cols, minlength=3).float() / len(cols)
    assert share[0] == 0 and abs(share[1] - 0.5) < 0.05


def test_a_uniform_share_mixes_uniform_draws_into_the_hard_ones() -> None:
    model = itr_model(uniform_share=0.5)
    torch.manual_seed(2)
    logits = torch.tensor([[0.0, 30.0, 0.0, 0.0]])  # hard draws alone would always take column 1
    same = torch.tensor([[True, False, False, False]])
    cols = torch.stack([model._negatives(logits, same)[1][0] for _ in range(3000)])
    share = torch.bincount(cols, minlength=4).float() / len(cols)
    expected = torch.tensor([0.0, 0.5 + 0.5 / 3, 0.5 / 3, 0.5 / 3])
    assert share[0] == 0 and torch.allclose(share, expected, atol=0.03)


def test_training_draws_negatives_from_the_temperature_scaled_similarities() -> None:
    """Raw cosines lie in [-1, 1], where a softmax is nearly uniform; the draw must use sim / temperature."""
    model = itr_model()
    seen: list[torch.Tensor] = []
    inner = model._negatives

    def spy(logits: torch.Tensor, same: torch.Tensor):
        seen.append(logits.detach().clone())
        return inner(logits, same)

    model._negatives = spy  # type: ignore[method-assign]
    b = 4
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(4, VOCAB, (b, 6), generator=g), "attention_mask": torch.ones(b, 6, dtype=torch.bool),
             "labels": torch.tensor([0, 1, 2, 2]), "roi": torch.randn(b, 36, 2048, generator=g),
             "boxes": torch.rand(b, 36, 5, generator=g), "roi_mask": torch.ones(b, 36, dtype=torch.bool)}
    out = model(batch)
    assert torch.isfinite(out["loss"])
    with torch.no_grad():
        sim = model.image_embeddings({k: batch[k] for k in ("roi", "boxes", "roi_mask")}) @ \
            model.text_embeddings(batch["input_ids"], batch["attention_mask"]).T
        scale = model.dual.scale()
    assert scale > 10  # CLIP-style 1 / 0.07
    torch.testing.assert_close(seen[0], sim * scale)
    torch.testing.assert_close(seen[1], (sim * scale).T)
