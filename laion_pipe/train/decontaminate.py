"""Decontamination: training never sees a near-duplicate of an evaluation image.

The holdout is chosen by a hash of the key, so the same picture under another URL (another key,
another recipe folder) could be trained on and then "evaluated". Before training, the train stage
compares every training sample's perceptual hash (laion_pipe.neardup.phash; the dataset parquet's
`phash` column, or hashed from the tar) with the evaluation images':

- `holdout_copy`: a copy of one of the run's own held-out samples;
- `eval_set_copy`: a copy of an image of an evaluation set named in `train.eval_sets` (a folder
  of images, WebDataset shards, or a text file of image URLs, one per line, fetched here).

A sample within `train.decontamination_max_distance` bits of any evaluation image is removed from
training (the loader skips it by (shard, key) and counts it). What was removed, and why (the
evaluation image it copies and the distance), is `train/{name}/decontamination.json`, and the
counts go to the train manifest. The comparison is by hash bands (as select's near-duplicate
phases), so it costs one pass over the training hashes whatever the number of evaluation images.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .. import fsio
from ..neardup.phash import bands, hamming, phash_of_bytes
from ..shards import image_member
from .holdout import _parquet_of
from .loader import is_holdout
from .loader_sources import resolve_source, tar_samples

FILE = "decontamination.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _shard_hashes(shard: str) -> Iterator[tuple[str, int | None]]:
    """(key, pHash) of every sample of a shard: from its parquet's `phash` column when it has one
    with no gaps, else from the images."""
    pqp = _parquet_of(shard)
    if pqp is not None:
        fs, p = fsio.fs_and_path(pqp)
        with fs.open(p, "rb") as f:
            names = pq.read_schema(f).names
            if "phash" in names and "key" in names:
                f.seek(0)
                t = pq.read_table(f, columns=["key", "phash"])
                if not t["phash"].null_count:
                    yield from zip(t["key"].to_pylist(), t["phash"].to_pylist())
                    return
    for s in tar_samples([shard], lambda e: True):
        image = image_member(s)
        yield s.get("__key__", ""), (phash_of_bytes(image[1]) if image else None)


def eval_set_hashes(spec: str) -> list[tuple[str, int]]:
    """(name, pHash) of the images of one evaluation set: a folder of images, WebDataset shards
    (a tar, a folder of tars or a glob), or a text file of image URLs."""
    items: list[tuple[str, int | None]] = []
    p = Path(spec)
    if p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.rglob("*")):
        for f in sorted(p.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((str(f), phash_of_bytes(f.read_bytes())))
    elif p.is_file() and p.suffix.lower() in (".txt", ".urls", ".lst"):
        items = _url_list_hashes(p)
    else:
        for shard in resolve_source(spec, None):
            for s in tar_samples([shard], lambda e: True):
                image = image_member(s)
                items.append((f"{shard}#{s.get('__key__', '')}", phash_of_bytes(image[1]) if image else None))
    found = [(n, h) for n, h in items if h is not None]
    if not found:
        raise ValueError(f"train.eval_sets: {spec} holds no readable image")
    return found


def _url_list_hashes(path: Path) -> list[tuple[str, int | None]]:
    import urllib.request

    out = []
    for url in (line.strip() for line in path.read_text().splitlines()):
        if not url or url.startswith("#"):
            continue
        try:
            with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - the user's own evaluation list
                out.append((url, phash_of_bytes(r.read())))
        except OSError:
            out.append((url, None))
    return out


def _matches(train: np.ndarray, evals: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train index, eval index, distance) of the closest evaluation image within max_distance
    bits of each training hash that has one: candidates share a band (pigeonhole), then checked."""
    n_bands = max_distance + 1
    tb, eb = bands(train, n_bands), bands(evals, n_bands)
    best: dict[int, tuple[int, int]] = {}
    for j in range(n_bands):
        index: dict[int, list[int]] = {}
        for e, v in enumerate(eb[:, j].tolist()):
            index.setdefault(v, []).append(e)
        for t, v in enumerate(tb[:, j].tolist()):
            for e in index.get(v, ()):
                d = int(hamming(train[t], evals[e]))
                if d <= max_distance and (t not in best or d < best[t][1]):
                    best[t] = (e, d)
    ts = np.array(sorted(best), dtype=np.int64)
    return ts, np.array([best[t][0] for t in ts], dtype=np.int64), np.array([best[t][1] for t in ts], dtype=np.int64)


def decontaminate(sources: list[str], run_dir: str, fraction: float, eval_sets: list[str], max_distance: int) -> dict:
    """What to remove from training, and why: {"removed": [...], "counts": {...}, ...}."""
    shards = sorted({s for src in sources for s in resolve_source(src, run_dir)})
    train_ids: list[tuple[str, str]] = []
    train_h: list[int] = []
    eval_names: list[str] = []
    eval_h: list[int] = []
    eval_kind: list[str] = []
    no_hash = 0
    for shard in shards:
        for key, h in _shard_hashes(shard):
            if h is None:
                no_hash += 1
                continue
            if is_holdout(key, fraction):
                eval_names.append(f"{shard}#{key}")
                eval_h.append(h)
                eval_kind.append("holdout_copy")
            else:
                train_ids.append((shard, key))
                train_h.append(h)
    for spec in eval_sets:
        for name, h in eval_set_hashes(spec):
            eval_names.append(name)
            eval_h.append(h)
            eval_kind.append("eval_set_copy")
    removed = []
    if train_h and eval_h:
        ts, es, ds = _matches(np.array(train_h, np.int64), np.array(eval_h, np.int64), max_distance)
        for t, e, d in zip(ts.tolist(), es.tolist(), ds.tolist()):
            shard, key = train_ids[t]
            removed.append({"shard": shard, "key": key, "reason": eval_kind[e], "of": eval_names[e], "distance": d})
    counts = Counter(r["reason"] for r in removed)
    return {"max_distance": max_distance, "eval_images": len(eval_h), "training_samples": len(train_h),
            "without_hash": no_hash, "counts": dict(counts), "removed": removed}


def write(path: str, doc: dict) -> None:
    fsio.write_json_atomic(path, doc)


def excluded(path: str | Path) -> frozenset[str]:
    """The (shard, key) pairs a decontamination.json removes, as "shard\\x1fkey" strings (what
    the loader's `exclude` holds); empty when there is no file."""
    p = str(path)
    if not fsio.exists(p):
        return frozenset()
    doc = fsio.read_json(p)
    return frozenset(f"{r['shard']}\x1f{r['key']}" for r in doc.get("removed", []))  # type: ignore[union-attr]

