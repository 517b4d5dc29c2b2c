"""Writing a volta LMDB feature store (the layout of volta's ``h5_to_lmdb.py``, which IGLUE releases
some of its feature sets in, e.g. MaRVL's few-shot `marvl-<lang>_fewshot_boxes36.lmdb`).

One entry per image: key `img_id.encode()`, value a pickled dict of the H5 fields (`features`, `boxes`,
`img_w`, `img_h`, ...) plus `img_id`; the entry `b"keys"` holds the pickled list of ids. Reading is
rc3.data.features.LmdbFeatureStore (restricted unpickler).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable, Mapping


def write_volta_lmdb(path: Path, items: Iterable[tuple[str, Mapping[str, Any]]], map_size: int = 1 << 24) -> list[str]:
    """Write `items` ((image id, fields) pairs) as a new LMDB directory `path`; returns the ids written.
    `map_size` bounds the store's size in bytes."""
    import lmdb

    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=map_size, subdir=True)
    keys: list[str] = []
    try:
        with env.begin(write=True) as txn:
            for key, fields in items:
                item = {**fields, "img_id": key}
                # Writing a pickle is how volta stores items; RC3 reads them back with a restricted unpickler.
                txn.put(key.encode(), pickle.dumps(item))
                keys.append(key)
            txn.put(b"keys", pickle.dumps([k.encode() for k in sorted(keys)]))
    finally:
        env.close()
    return keys
