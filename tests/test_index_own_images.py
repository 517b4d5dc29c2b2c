"""`rc3 index --image-dir DIR --detector W`: regions extracted into a resumable store beside the index,
an interrupted command resumed without redoing finished images, unreadable files skipped and listed.

The detector is a narrow random-weight bottom-up-attention one saved the way tools/convert_butd_weights.py
saves; the reference embeddings come from `embed_images` with the detector run on each file on the fly."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_butd import save_tiny_butd, tiny_butd

from rc3 import cli

TINY = tiny_butd(min_size=64, max_size=100)
N_GOOD = 9


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own")
    weights = save_tiny_butd(root / "butd.safetensors", TINY)
    photos = root / "photos"
    (photos / "trip").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(N_GOOD):
        # the same file name in two folders: two images, two keys
        where = photos / "trip" if i >= 5 else photos
        Image.fromarray(rng.integers(0, 256, (40 + 4 * i, 56, 3), dtype=np.uint8)).save(where / f"img{i % 5}.jpg")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (photos / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # passes the header check
    (photos / "notes.txt").write_text("not an image")
    return {"weights": weights, "model": tiny_model_dir, "photos": photos}


def good_files(photos: Path) -> list[Path]:
    return sorted(p for p in photos.rglob("*.jpg") if p.name != "truncated.jpg")


def test_interrupted_index_resumes_without_redoing_images(setup: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from rc3.inference import load

    out = tmp_path / "photos.index"
    argv = ["index", str(setup["model"]), "--image-dir", str(setup["photos"]), "--detector", str(setup["weights"]),
            "--out", str(out), "--chunk-size", "2", "--loader-workers", "0"]
    env = {**os.environ, "RC3_KILL_AFTER_IMAGES": "4", "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-m", "rc3.cli", *argv], capture_output=True, text=True, timeout=600,
                            env=env)
    assert killed.returncode == -9, f"the index command was to be killed after 4 images: {killed.stderr[-2000:]}"
    assert "worker 0/1" in killed.stderr  # the progress bar
    store = cli.features_store_of(out)
    parts = store.with_name(store.name + ".parts")
    assert len(list(parts.glob("part-r*.h5"))) == 2 and not store.exists() and not out.exists()

    cli.main([*argv, "--quiet"])
    err = capsys.readouterr().err
    files = good_files(setup["photos"])
    assert len(files) == N_GOOD
    assert f"regions: {N_GOOD - 4} images extracted" in err and "4 done earlier, 1 unreadable" in err, err
    assert "truncated.jpg" in err and "notes.txt" in err  # listed, both
    assert store.is_file() and not parts.exists() and "truncated.jpg" in store.with_name(
        store.name + ".skipped.tsv").read_text()

    from rc3.inference import ImageIndex

    index = ImageIndex.load(out)
    assert sorted(index.names) == sorted(map(str, files))
    m = load(setup["model"], detector_weights=setup["weights"], progress=False)
    want = m.embed_images([Path(n) for n in index.names])  # the detector run on each file, now
    torch.testing.assert_close(index.embeddings, want, rtol=1e-4, atol=1e-5)

    # run again: the finished store is reused, nothing is extracted
    cli.main([*argv, "--quiet", "--overwrite"])
    assert "regions: 0 images extracted" in capsys.readouterr().err
    torch.testing.assert_close(ImageIndex.load(out).embeddings, index.embeddings)


def test_an_existing_index_is_refused_before_any_extraction(setup: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "idx"
    out.mkdir()
    (out / "index.json").write_text("{}")
    with pytest.raises(SystemExit):
        cli.main(["index", str(setup["model"]), "--image-dir", str(setup["photos"]), "--detector",
                  str(setup["weights"]), "--out", str(out), "--quiet"])
    assert "--out" in capsys.readouterr().err and not cli.features_store_of(out).exists()
