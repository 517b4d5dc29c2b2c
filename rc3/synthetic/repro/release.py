"""Where the reproduction runs, the benchmarks and the tests find released text: Multi30K and IGLUE annotations.

By default, the excerpt shipped in a checkout's tests/data/release-excerpt.tar.gz (cut by
tools/make_test_excerpt.py; sources and licences in tests/data/NOTICE), unpacked into a folder of
the caller's choice. With RC3_DATA set, the full release in that folder (`multi30k/` and `iglue/`
as published), for checks against the published sizes.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

# rc3/synthetic/repro/release.py -> the checkout root (the excerpt is not in the wheel)
EXCERPT = Path(__file__).resolve().parents[3] / "tests" / "data" / "release-excerpt.tar.gz"
ENV = "RC3_DATA"


def full_release() -> Path | None:
    """The folder named by $RC3_DATA (checked to hold multi30k/ and iglue/), or None when it is unset."""
    value = os.environ.get(ENV)
    if not value:
        return None
    root = Path(value).expanduser()
    missing = [sub for sub in ("multi30k", "iglue") if not (root / sub).is_dir()]
    if missing:
        raise FileNotFoundError(f"{ENV}={value} has no {' or '.join(m + '/' for m in missing)} folder; point it at the full "
                                f"release (multi30k/ and iglue/ as published) or unset it to use {EXCERPT}")
    return root


def unpack_excerpt(dest: Path) -> Path:
    """Unpack the excerpt into `dest` (once: a finished unpack is marked and reused) and return `dest`."""
    done = dest / ".unpacked"
    if done.is_file():
        return dest
    if not EXCERPT.is_file():
        raise FileNotFoundError(f"{EXCERPT} is missing; restore it from git or rebuild it with "
                                "tools/make_test_excerpt.py --release DIR")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(EXCERPT) as tar:
        members = tar.getmembers()
        for m in members:  # plain files and folders only, nothing outside dest
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                raise ValueError(f"{EXCERPT}: unexpected member {m.name!r}; rebuild it with tools/make_test_excerpt.py")
        # The "data" filter where this Python has it (3.10.12+, 3.11.4+): the same checks, by tarfile.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)
    done.write_text(f"{EXCERPT.name}\n", encoding="utf-8")  # written last: an interrupted unpack is redone
    return dest


def release_dir(scratch: Path) -> Path:
    """The full release at $RC3_DATA when set, else the excerpt unpacked under `scratch`."""
    return full_release() or unpack_excerpt(scratch)


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
