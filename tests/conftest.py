"""Shared pytest fixtures and markers."""
from __future__ import annotations

import os
from pathlib import Path

# One compute thread per test process, set before torch is imported, and inherited by every process a
# test starts (deepspeed ranks, recipes, tools): `make test` runs several workers on two cores, and
# torch's default (a thread per core in every process) oversubscribes them, with OpenMP threads spinning
# for cores another process holds. Measured on the whole suite (2 cores, 2 workers): 1164 s -> 1064 s
# wall, 29.6 -> 25.8 min of user CPU. A value set by the caller is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from rc3.synthetic.repro.release import full_release, real_texts, release_dir

REPO = Path(__file__).resolve().parents[1]


SLOW_DEFAULT_S, FAST_S = 10.0, 0.5  # assumed seconds of a `slow` test without seconds=, and of any other


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow(seconds=N): multi-process or end-to-end tests (still part of make test); "
                                       "N, about what it takes on two cores, orders the files (see below)")


def expected_seconds(item: pytest.Item) -> float:
    """About how many seconds `item` takes: the largest `slow(seconds=...)` on it, else a default."""
    marks = list(item.iter_markers("slow"))
    if not marks:
        return FAST_S
    return max(float(m.kwargs.get("seconds", SLOW_DEFAULT_S)) for m in marks)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Most expensive test files first, each file's tests in their own order.

    `make test` hands whole files to its workers (`--dist loadfile`, so a module's fixtures are built
    once), the next file to whichever finishes first. Started last, the longest file (the quick
    reproduction, ~10 min) used to run alone for its whole length while the other worker sat idle;
    longest first leaves the short files to fill the gaps."""
    cost: dict[Path, float] = {}
    for item in items:
        cost[item.path] = cost.get(item.path, 0.0) + expected_seconds(item)
    items.sort(key=lambda item: -cost[item.path])  # stable: a file keeps its own order


@pytest.fixture(scope="session")
def release_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Released Multi30K and IGLUE text (multi30k/, iglue/): the excerpt in tests/data, or the full
    release at $RC3_DATA. The excerpt starts every file the tests read as the release does."""
    return release_dir(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="session")
def is_full_release() -> bool:
    """True when $RC3_DATA names the full release (tests then check the published sizes)."""
    return full_release() is not None


@pytest.fixture(scope="session")
def tokenizer_dir(release_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentencepiece model in mBART-50's layout, trained here on real text in 10 languages."""
    from tiny import train_tiny_spm

    out = tmp_path_factory.mktemp("tokenizer")
    train_tiny_spm(out, real_texts(release_data), vocab_size=2000)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from rc3.tokenization import RC3Tokenizer

    return RC3Tokenizer.from_dir(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer, tokenizer_dir: Path) -> Path:
    """A randomly initialised tiny RC3 model directory (torch seeded with 0), read-only for the tests."""
    import torch
    from tiny import tiny_model_config

    from rc3.modeling import RC3Model

    torch.manual_seed(0)
    model = RC3Model.from_config(tiny_model_config(), tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id,
                                 tokenizer.eos_id)
    return model.save_pretrained(tmp_path_factory.mktemp("tiny-model") / "rc3-tiny", tokenizer_dir=tokenizer_dir)
