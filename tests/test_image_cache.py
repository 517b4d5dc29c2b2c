"""The finetuning loaders' image cache (VisualSource(cache_mb=...), data.image_cache_mb): the tensors of a
cached image are those of the store, each caller gets its own copy, the cache keeps within its bytes,
and an image over the whole budget is read every time."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from rc3.config import ConfigError
from rc3.finetune.config import finetune_config_from_dict
from rc3.modeling.visual_inputs import VisualSource

N_REGIONS, DIM = 4, 2048
IMAGE_BYTES = 36 * DIM * 4 + 36 * 5 * 4 + 36  # roi f32 + boxes f32 + roi_mask bool, padded to 36 regions


@pytest.fixture()
def store(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """An IGLUE-layout H5 store of three images, written here; their raw features."""
    rng = np.random.default_rng(0)
    raw = {}
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        for key in ("img-a", "img-b", "img-c"):
            g = f.create_group(key)
            raw[key] = rng.standard_normal((N_REGIONS, DIM)).astype(np.float32)
            g.create_dataset("features", data=raw[key], compression="gzip")
            g.create_dataset("boxes", data=np.tile(np.array([10, 20, 110, 70], np.float32), (N_REGIONS, 1)))
            g.create_dataset("img_w", data=np.int64(200))
            g.create_dataset("img_h", data=np.int64(100))
    return path, raw


def counting(source: VisualSource) -> list[str]:
    """The keys `source` reads from its store, in order."""
    reads: list[str] = []
    read = source._read

    def spy(key: str) -> dict[str, torch.Tensor]:
        reads.append(key)
        return read(key)

    source._read = spy  # type: ignore[method-assign]
    return reads


def test_cached_images_are_the_stores_and_read_once(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, raw = store
    cached, plain = VisualSource("roi", [path], cache_mb=64), VisualSource("roi", [path])
    reads = counting(cached)
    for _ in range(3):
        for key in raw:
            got, want = cached.load(key), plain.load(key)
            assert set(got) == set(want) == {"roi", "boxes", "roi_mask"}
            for name in got:
                assert torch.equal(got[name], want[name]), (key, name)
            # against the raw file, not only against the uncached path
            np.testing.assert_array_equal(got["roi"][:N_REGIONS].numpy(), raw[key])
            assert got["roi"][N_REGIONS:].abs().sum() == 0 and int(got["roi_mask"].sum()) == N_REGIONS
            np.testing.assert_allclose(got["boxes"][0].numpy(), [0.05, 0.2, 0.55, 0.7, 0.25], rtol=1e-6)
    assert reads == list(raw), "each image is read from the store once, then served from the cache"


def test_callers_get_their_own_tensors(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, raw = store
    source = VisualSource("roi", [path], cache_mb=64)
    first = source.load("img-a")
    first["roi"].fill_(7.0)  # a caller writing into its batch must not change what the next caller gets
    first["roi_mask"].zero_()
    again = source.load("img-a")
    np.testing.assert_array_equal(again["roi"][:N_REGIONS].numpy(), raw["img-a"])
    assert int(again["roi_mask"].sum()) == N_REGIONS


def test_the_cache_keeps_within_its_bytes_least_recent_out(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, raw = store
    source = VisualSource("roi", [path], cache_mb=2.5 * IMAGE_BYTES / 2**20)  # room for two images
    reads = counting(source)
    for key in ("img-a", "img-b", "img-a", "img-c"):  # c pushes out b, the least recently used
        source.load(key)
    assert source.cache is not None and source.cache.currsize <= source.cache.maxsize
    assert sorted(source.cache.keys()) == ["img-a", "img-c"]
    assert source.cache.currsize == 2 * IMAGE_BYTES
    source.load("img-b")
    assert reads == ["img-a", "img-b", "img-c", "img-b"]


def test_an_image_over_the_budget_is_read_every_time(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, raw = store
    source = VisualSource("roi", [path], cache_mb=0.5 * IMAGE_BYTES / 2**20)
    reads = counting(source)
    for _ in range(2):
        np.testing.assert_array_equal(source.load("img-b")["roi"][:N_REGIONS].numpy(), raw["img-b"])
    assert reads == ["img-b", "img-b"] and source.cache is not None and len(source.cache) == 0
    assert VisualSource("roi", [path], cache_mb=0).cache is None


def test_cache_size_is_validated(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    with pytest.raises(ValueError, match="cache size must be >= 0"):
        VisualSource("roi", [store[0]], cache_mb=-1)
    base = ["data.test=x", "data.train=y", "data.features=[f.h5]"]
    for bad in ("-1", "nan"):
        with pytest.raises(ConfigError, match="data.image_cache_mb"):
            finetune_config_from_dict({}, "xvnli", base + [f"data.image_cache_mb={bad}"])
    assert finetune_config_from_dict({}, "xvnli", base).data.image_cache_mb == 512
