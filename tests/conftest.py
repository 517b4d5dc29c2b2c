"""Shared pytest fixtures and markers."""
from __future__ import annotations

from pathlib import Path

import pytest
from release_data import full_release, release_dir

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: multi-process or end-to-end tests (still part of make test)")


@pytest.fixture(scope="session")
def release_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Released Multi30K and IGLUE text (multi30k/, iglue/): the excerpt in tests/data, or the full
    release at $RC3_DATA. The excerpt starts every file the tests read as the release does."""
    return release_dir(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="session")
def is_full_release() -> bool:
    """True when $RC3_DATA names the full release (tests then check the published sizes)."""
    return full_release() is not None


def real_texts(data: Path, per_lang: int = 400) -> list[str]:
    """A few hundred real sentences per language: Multi30K (en, de, fr, cs) and xFlickr&CO (ja, zh, id, ...)."""
    import gzip
    import json

    texts: list[str] = []
    for lang in ("en", "de", "fr", "cs"):
        with gzip.open(data / "multi30k" / "raw" / f"test_2016_flickr.{lang}.gz", "rt", encoding="utf-8") as f:
            texts += [next(f).strip() for _ in range(per_lang)]
    for lang in ("ja", "zh", "id", "es", "ru", "tr"):
        with open(data / "iglue" / "xFlickrCO" / "annotations" / lang / "test.jsonl", encoding="utf-8") as f:
            texts += [json.loads(next(f))["sentences"][0] for _ in range(per_lang)]
    return texts


@pytest.fixture(scope="session")
def tokenizer_dir(release_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentencepiece model in mBART-50's layout, trained here on real text in 10 languages."""
    from rc3.synthetic.tiny import train_tiny_spm

    out = tmp_path_factory.mktemp("tokenizer")
    train_tiny_spm(out, real_texts(release_data), vocab_size=2000)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from rc3.tokenization import RC3Tokenizer

    return RC3Tokenizer.from_dir(tokenizer_dir)
