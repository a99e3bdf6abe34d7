"""holdout.json: the samples of the training sources that training never sees.

The loader leaves out every sample whose key `is_holdout` (a hash of the key, the same in every
process and run); this file lists them so the evaluate stage can take its prompts (and real
images for FD-CLIP) from data the model was not trained on. Keys and captions come from the
parquet beside each shard (the select stage writes one), or from the shard itself when a source
has none.

Format: `{"fraction": f, "keys": [...], "captions": {key: caption}, "items": [{"key", "caption",
"shard"}]}`. `items` keeps every held-out sample with its shard, since two dataset folders may
use the same keys (each recipe numbers its samples from 0).
"""
from __future__ import annotations

from collections.abc import Iterator

import pyarrow.parquet as pq

from .. import fsio
from .loader import is_holdout
from .loader_sources import resolve_source, tar_samples

HOLDOUT = "holdout.json"


def _parquet_of(shard: str) -> str | None:
    """The parquet beside a shard, when it exists (never for HTTP sources, which cannot be listed)."""
    if not shard.endswith(".tar") or shard.startswith(("http://", "https://")):
        return None
    p = shard[: -len(".tar")] + ".parquet"
    return p if fsio.exists(p) else None


def shard_captions(shard: str) -> Iterator[tuple[str, str]]:
    """(key, caption) of every sample of a shard: from its parquet when there is one."""
    pqp = _parquet_of(shard)
    if pqp is not None:
        fs, p = fsio.fs_and_path(pqp)
        with fs.open(p, "rb") as f:
            table = pq.read_table(f, columns=None)
        cols = set(table.column_names)
        text_col = "TEXT" if "TEXT" in cols else ("caption" if "caption" in cols else "text")
        if "key" in cols and text_col in cols:
            for key, text in zip(table.column("key").to_pylist(), table.column(text_col).to_pylist()):
                if key is not None:
                    yield str(key), text or ""
            return
    for s in tar_samples([shard], lambda e: True):
        txt = s.get("txt", b"")
        yield s.get("__key__", ""), (txt.decode("utf-8", "replace") if isinstance(txt, bytes) else str(txt)).strip()


def holdout_items(sources: list[str], run_dir: str, fraction: float) -> list[dict]:
    if fraction <= 0:
        return []
    items = []
    shards = sorted({s for src in sources for s in resolve_source(src, run_dir)})
    for shard in shards:
        for key, caption in shard_captions(shard):
            if is_holdout(key, fraction):
                items.append({"key": key, "caption": caption, "shard": shard})
    return items


def write_holdout(path: str, sources: list[str], run_dir: str, fraction: float) -> dict:
    items = holdout_items(sources, run_dir, fraction)
    captions: dict[str, str] = {}
    for it in items:
        captions.setdefault(it["key"], it["caption"])
    doc = {"fraction": fraction, "keys": list(captions), "captions": captions, "items": items}
    fsio.write_json_atomic(path, doc)
    return doc
