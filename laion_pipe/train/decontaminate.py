"""Decontamination: training never sees a near-duplicate of an evaluation image.

The holdout is chosen by a hash of the key, so the same picture under another URL (another key,
another recipe folder) could be trained on and then "evaluated". Before training, the train stage
compares every training sample's perceptual hash (laion_pipe.neardup.phash; the dataset parquet's
`phash` column, or hashed from the tar) with the evaluation images':

- `holdout_copy`: a copy of one of the run's own held-out samples;
- `eval_set_copy`: a copy of an image of an evaluation set named in `train.eval_sets` (a folder
  of images, WebDataset shards, or a text file of image URLs, one per line, fetched here).

Where the score stage saved its CLIP image embeddings (score.save_embeddings), copies pHash
misses (crops, overlays) are found on them too, as SemDeDup finds them at select (cosine at least
1 - select.neardup.eps): `holdout_semantic_copy` and `eval_set_semantic_copy` (evaluation images
are embedded here with the same CLIP; `train.decontaminate_semantic`).

A sample within `train.decontamination_max_distance` bits of any evaluation image is removed from
training, unless their colour grids differ by more than select.neardup.colour_max_difference (as at
select: pHash reads brightness only, and the same layout in other colours is another picture; only
the hash candidates are decoded to compare them) (the loader skips it by (shard, key) and counts it). What was removed, and why (the
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
from ..neardup.phash import bands, colour_difference, features_of_bytes, hamming, phash_of_bytes
from ..shards import image_member
from .holdout import _parquet_of
from .loader import is_holdout
from .loader_sources import resolve_source, tar_samples

FILE = "decontamination.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
URL_LIST_SUFFIXES = (".txt", ".urls", ".lst")


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


def eval_set_images(spec: str) -> list[tuple[str, bytes | None]]:
    """(name, encoded bytes) of the images of one evaluation set: a folder of images, WebDataset
    shards (a tar, a folder of tars or a glob), or a text file of image URLs (None for a URL that
    could not be fetched)."""
    items: list[tuple[str, bytes | None]] = []
    p = Path(spec)
    if p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.rglob("*")):
        for f in sorted(p.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((str(f), f.read_bytes()))
    elif p.is_file() and p.suffix.lower() in URL_LIST_SUFFIXES:
        items = _url_list_images(p)
    else:
        for shard in resolve_source(spec, None):
            for s in tar_samples([shard], lambda e: True):
                image = image_member(s)
                items.append((f"{shard}#{s.get('__key__', '')}", image[1] if image else None))
    return items


def eval_set_hashes(spec: str, images: list[tuple[str, bytes | None]] | None = None) -> list[tuple[str, int]]:
    """(name, pHash) of the images of one evaluation set (`eval_set_images`); an error when
    none is readable."""
    items = eval_set_images(spec) if images is None else images
    found = [(n, h) for n, h in ((n, phash_of_bytes(b) if b is not None else None) for n, b in items) if h is not None]
    if not found:
        raise ValueError(f"train.eval_sets: {spec} holds no readable image")
    return found


def eval_set_identity(spec: str) -> list:
    """What an evaluation set is, for the training fingerprint: each file's identity (path, size,
    mtime) of a folder of images or of shards; a URL list's own identity (the images behind its
    URLs are not fetched to fingerprint them)."""
    p = Path(spec)
    if p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.rglob("*")):
        files = [str(f) for f in sorted(p.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    elif p.is_file() and p.suffix.lower() in URL_LIST_SUFFIXES:
        files = [str(p)]
    else:
        try:
            files = resolve_source(spec, None)
        except ValueError:
            return [spec, None]  # preflight says what is wrong with it
    out = []
    for f in files:
        try:
            out.append((f, fsio.fingerprint_of(f)))
        except Exception:  # noqa: BLE001 - an HTTP shard without a length
            out.append((f, None))
    return [spec, out]


def _url_list_images(path: Path) -> list[tuple[str, bytes | None]]:
    import urllib.request

    out: list[tuple[str, bytes | None]] = []
    for url in (line.strip() for line in path.read_text().splitlines()):
        if not url or url.startswith("#"):
            continue
        try:
            with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - the user's own evaluation list
                out.append((url, r.read()))
        except OSError:
            out.append((url, None))
    return out


def _candidates(train: np.ndarray, evals: np.ndarray, max_distance: int) -> dict[int, list[tuple[int, int]]]:
    """Training index -> [(eval index, distance)] of every evaluation hash within max_distance
    bits, closest first: candidates share a band (pigeonhole), then checked."""
    n_bands = max_distance + 1
    tb, eb = bands(train, n_bands), bands(evals, n_bands)
    found: dict[int, dict[int, int]] = {}
    for j in range(n_bands):
        index: dict[int, list[int]] = {}
        for e, v in enumerate(eb[:, j].tolist()):
            index.setdefault(v, []).append(e)
        for t, v in enumerate(tb[:, j].tolist()):
            for e in index.get(v, ()):
                d = int(hamming(train[t], evals[e]))
                if d <= max_distance:
                    found.setdefault(t, {})[e] = d
    return {t: sorted(((e, d) for e, d in m.items()), key=lambda x: (x[1], x[0])) for t, m in sorted(found.items())}


def _colour_grids(names: set[str], images: dict[str, bytes | None]) -> dict[str, np.ndarray]:
    """The colour grids (`neardup.phash.features`) of the named images: evaluation-set images from
    their bytes, dataset samples ("shard#key") decoded from their tar; only these few (the hash
    candidates) are decoded."""
    out: dict[str, np.ndarray] = {}
    wanted: dict[str, set[str]] = {}
    for name in names:
        if name in images:
            f = features_of_bytes(images[name]) if images[name] is not None else None
            if f is not None:
                out[name] = np.frombuffer(f[1], np.uint8)
        else:
            shard, _, key = name.rpartition("#")
            wanted.setdefault(shard, set()).add(key)
    for shard, keys in sorted(wanted.items()):
        for sample in tar_samples([shard], lambda e: True):
            key = sample.get("__key__", "")
            if key in keys:
                image = image_member(sample)
                f = features_of_bytes(image[1]) if image else None
                if f is not None:
                    out[f"{shard}#{key}"] = np.frombuffer(f[1], np.uint8)
    return out


def decontaminate(sources: list[str], run_dir: str, fraction: float, eval_sets: list[str], max_distance: int,
                  wf=None) -> dict:
    """What to remove from training, and why: {"removed": [...], "counts": {...}, ...}. With `wf`
    (the workflow) and `wf.train.decontaminate_semantic`, also the semantic copies where the
    score stage saved its embeddings (`semantic_copies`)."""
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
    eval_images: dict[str, list[tuple[str, bytes | None]]] = {}
    for spec in eval_sets:
        eval_images[spec] = eval_set_images(spec)
        for name, h in eval_set_hashes(spec, eval_images[spec]):
            eval_names.append(name)
            eval_h.append(h)
            eval_kind.append("eval_set_copy")
    removed = []
    max_colour = wf.select.neardup.colour_max_difference if wf is not None else None
    apart = 0  # hash matches the colour grids tell apart
    if train_h and eval_h:
        found = _candidates(np.array(train_h, np.int64), np.array(eval_h, np.int64), max_distance)
        grids: dict[str, np.ndarray] = {}
        if max_colour is not None and found:
            names = {eval_names[e] for m in found.values() for e, _ in m}
            names |= {"#".join(train_ids[t]) for t in found}
            grids = _colour_grids(names, {n: b for imgs in eval_images.values() for n, b in imgs})
        for t, matches in found.items():
            shard, key = train_ids[t]
            mine = grids.get(f"{shard}#{key}")
            for e, d in matches:  # the closest match the colours confirm (or that has no grid to check)
                theirs = grids.get(eval_names[e])
                if mine is not None and theirs is not None and int(colour_difference(mine, theirs)) > max_colour:
                    continue
                removed.append({"shard": shard, "key": key, "reason": eval_kind[e], "of": eval_names[e], "distance": d})
                break
            else:
                apart += 1
    doc = {"max_distance": max_distance, "colour_max_difference": max_colour, "eval_images": len(eval_h),
           "training_samples": len(train_h), "without_hash": no_hash, "told_apart_by_colour": apart}
    if wf is not None and getattr(wf.train, "decontaminate_semantic", False):
        found, doc["semantic"] = semantic_copies(shards, run_dir, fraction, eval_images, wf.select.neardup.eps, wf,
                                                 {(r["shard"], r["key"]) for r in removed})
        removed += found
    doc.update(counts=dict(Counter(r["reason"] for r in removed)), removed=removed)
    return doc


# --- semantic copies, on the score stage's CLIP image embeddings --------------------------------------


def _dataset_uids(shards: list[str], fraction: float) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:
    """Training uid -> its (shard, key)s, and held-out uid -> its name, from the parquets beside the
    run's own dataset shards (the uid joins a sample to its score embedding)."""
    train: dict[str, list[tuple[str, str]]] = {}
    held: dict[str, str] = {}
    for shard in shards:
        pqp = _parquet_of(shard)
        if pqp is None:
            continue
        fs, p = fsio.fs_and_path(pqp)
        with fs.open(p, "rb") as f:
            if not {"key", "uid"} <= set(pq.read_schema(f).names):
                continue
            f.seek(0)
            t = pq.read_table(f, columns=["key", "uid"])
        for key, uid in zip(t["key"].to_pylist(), t["uid"].to_pylist()):
            if uid is None:
                continue
            if is_holdout(key, fraction):
                held.setdefault(uid, f"{shard}#{key}")
            else:
                train.setdefault(uid, []).append((shard, key))
    return train, held


def _embedding_files(run_dir: str, wf) -> dict[str, tuple[object, list[tuple[str, str]]]]:
    """CLIP space (its configuration, as JSON) -> (the CLIP's config, [(metadata, img_emb)]) of the
    run's current score shards that saved embeddings."""
    import json

    from ..models.scorer import clip_config_for
    from ..schema import SUBSETS
    from ..shards import score_shard, score_shards

    spaces: dict[str, tuple[object, list[tuple[str, str]]]] = {}
    for subset in SUBSETS:
        cfg = clip_config_for(wf, subset)
        space = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        for name, done in score_shards(run_dir, subset):
            paths = score_shard(subset, name)
            if paths["img_emb"] in done.outputs and paths["metadata"] in done.outputs:
                spaces.setdefault(space, (cfg, []))[1].append((fsio.join(run_dir, paths["metadata"]),
                                                               fsio.join(run_dir, paths["img_emb"])))
    return spaces


def _read_embeddings(meta: str, emb: str) -> tuple[list[str], np.ndarray]:
    fs, p = fsio.fs_and_path(meta)
    with fs.open(p, "rb") as f:
        uids = pq.read_table(f, columns=["uid"])["uid"].to_pylist()
    fs, p = fsio.fs_and_path(emb)
    with fs.open(p, "rb") as f:
        vectors = np.load(f).astype(np.float32)
    return uids, vectors


def _normalised(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def _embed_images(cfg, images: list[tuple[str, bytes | None]]) -> tuple[list[str], np.ndarray]:
    """The CLIP image embeddings of evaluation images (what the score stage computes for a pair)."""
    import io

    import torch
    from PIL import Image

    from ..models.clip import cached_clip

    clip = cached_clip(cfg, "cpu")
    names, vectors = [], []
    batch: list = []
    for i, (name, data) in enumerate(images + [("", None)]):
        if data is not None:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    batch.append(clip.preprocess(im.convert("RGB")))
                names.append(name)
            except Exception:  # noqa: BLE001 - an unreadable evaluation image has no embedding
                pass
        if batch and (len(batch) == 64 or i == len(images)):
            vectors.append(clip.encode_images(torch.stack(batch)).numpy())
            batch = []
    return names, (np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32))


def semantic_copies(shards: list[str], run_dir: str, fraction: float, eval_images: dict[str, list[tuple[str, bytes | None]]],
                    eps: float, wf, already: set[tuple[str, str]]) -> tuple[list[dict], dict]:
    """Training samples whose CLIP image embedding has cosine >= 1 - eps (select.neardup.eps, as
    SemDeDup) with a held-out sample's (`holdout_semantic_copy`) or an evaluation-set image's
    (`eval_set_semantic_copy`, embedded here with the same CLIP), where the score stage saved the
    embeddings (score.save_embeddings): pHash misses crops and overlays, a CLIP that sees content
    does not. Compared space by space (each CLIP its own), one score shard at a time against
    the reference images, so memory holds the references and one shard. Samples pHash already
    removed (`already`) keep their reason."""
    train, held = _dataset_uids(shards, fraction)
    stats = {"eps": eps, "training_samples_with_embeddings": 0, "reference_embeddings": 0}
    found: dict[tuple[str, str], dict] = {}
    if not train:
        return [], stats
    for cfg, files in _embedding_files(run_dir, wf).values():
        names, kinds, refs = [], [], []
        trained = False  # did this CLIP embed any training sample?
        for meta, emb in files:
            uids, vectors = _read_embeddings(meta, emb)
            rows = [i for i, u in enumerate(uids) if u in held]
            names += [held[uids[i]] for i in rows]
            kinds += ["holdout_semantic_copy"] * len(rows)
            refs.append(vectors[rows])
            trained = trained or any(u in train for u in uids)
        if not trained:
            continue  # nothing to compare (and no evaluation set to embed with this CLIP)
        for images in eval_images.values():
            n, v = _embed_images(cfg, images)
            names += n
            kinds += ["eval_set_semantic_copy"] * len(n)
            refs.append(v)
        refs = [r for r in refs if len(r)]
        if not refs:
            continue
        ref = _normalised(np.concatenate(refs).astype(np.float32))
        stats["reference_embeddings"] += len(ref)
        for meta, emb in files:
            uids, vectors = _read_embeddings(meta, emb)
            rows = [i for i, u in enumerate(uids) if u in train]
            stats["training_samples_with_embeddings"] += len(rows)
            if not rows:
                continue
            sims = _normalised(vectors[rows]) @ ref.T
            best = sims.argmax(axis=1)
            top = sims[np.arange(len(rows)), best]
            for r, j, c in zip(rows, best.tolist(), top.tolist()):
                if c < 1.0 - eps:
                    continue
                for shard, key in train[uids[r]]:
                    if (shard, key) not in already and (shard, key) not in found:
                        found[(shard, key)] = {"shard": shard, "key": key, "reason": kinds[j], "of": names[j],
                                               "cosine": round(float(c), 6)}
    return list(found.values()), stats


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

