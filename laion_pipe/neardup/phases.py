"""Near-duplicate removal on Dask: the phases select runs before it plans its output shards.

Global (any pair of images in any subset and shard may be copies) and bounded in memory, as a
hash-partitioned shuffle through files, like the dedup stage:

0. (SemDeDup only) k-means centroids: a deterministic sample of the image embeddings (a hash of
   each key decides, so the sample does not depend on file order) is gathered on the driver, at
   most `kmeans_sample` rows, and clustered with faiss (spherical k-means, k = images /
   `cluster_size`, one thread, fixed seed: the same centroids on every rerun).
1. `select.neardup.map`, one task per input shard: its scored rows (key, similarity, original
   size, pHash and colour grid; computed from the tar for shards downloaded before the columns
   existed) go to bucket files under `_work/select/neardup/`: each pHash cut into
   `phash_max_distance + 1` bands, one entry per band into the bucket of (band, value); each
   embedding into the group of its nearest centroid.
2. `select.neardup`, one task per bucket: reads only that bucket's files (listed from the map
   manifests) and writes the rows it drops, with their survivors, to
   `neardup/{hash,semantic}-bNNNNN.parquet` (sorted by subset, shard, key). These files stay:
   they are select's input (`shard_drops`) and say which copy replaced which pair.

A pair of hashes within d bits shares at least one of d + 1 bands exactly, so every pair is
compared in some bucket; a row found in several buckets is dropped once. Memory per reduce task:
its bucket's rows (`rows_per_bucket`), compared in blocks (`match.py`).

Any change of the inputs or settings redoes every phase (a global dedup is not incremental);
when every reduce partition is done with the current fingerprints, nothing runs. The work files
are deleted when the reduce phase completes.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import clean, fsio, runner, shards
from ..runner import Outcome, Partition, StageReport
from ..schema import STATUS_OK, SUBSETS
from . import match
from .phash import COLOUR_BYTES, bands, colour_array, features_of_bytes

MAP_STAGE = "select.neardup.map"
STAGE = "select.neardup"
VERSION = 1
WORK_DIR = clean.work_dir("select") + "/neardup"
OUT_DIR = "neardup"
HASH, SEMANTIC = "hash", "semantic"
REASONS = {HASH: "near_duplicate", SEMANTIC: "semantic_duplicate"}
"""Drop reason of each detector, in priority order (a row both detectors drop counts as the first)."""

DROP_SCHEMA = pa.schema([
    ("subset", pa.string()), ("shard", pa.string()), ("key", pa.string()), ("reason", pa.string()),
    ("survivor_subset", pa.string()), ("survivor_shard", pa.string()), ("survivor_key", pa.string()),
    ("score", pa.float32()),
])  # fmt: skip
"""neardup/*.parquet: a dropped row, the copy that stays, and their Hamming distance or cosine."""


def _read(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return pq.read_table(f, columns=columns)


def _schema_names(path: str) -> list[str]:
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return pq.read_schema(f).names


def _order_key(subset: str, shard: str, key: str) -> str:
    """select's input order as one sortable string: subset (in SUBSETS order), shard, key."""
    return f"{SUBSETS.index(subset) if subset in SUBSETS else 9}/{shard}/{key}"


def _mix(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


# --- what one input shard contributes ---------------------------------------------------------------


def shard_rows(shard: Any) -> pa.Table:
    """The shard's scored rows: subset, shard, key, similarity, area, phash (int64) and
    colour_grid (12 bytes), null when the image has none. Shards downloaded before the phash
    column existed are hashed from the tar; those written before the colour grid have none (their
    hash matches go unconfirmed)."""
    scores = _read(shard.scores, ["key", "similarity", "status"])
    scores = scores.filter(pc.equal(scores["status"], STATUS_OK)).drop_columns(["status"])
    names = _schema_names(shard.meta)
    extra = [c for c in ("phash", "colour_grid") if c in names]
    meta = _read(shard.meta, ["key", "original_width", "original_height"] + extra)
    t = scores.join(meta, "key", join_type="left outer", use_threads=False).sort_by("key")
    w = pc.cast(t["original_width"], pa.int64())
    h = pc.cast(t["original_height"], pa.int64())
    if "phash" in names:
        phash = pc.cast(t["phash"], pa.int64()).combine_chunks()
        grid = (pc.cast(t["colour_grid"], pa.binary(COLOUR_BYTES)).combine_chunks() if "colour_grid" in names
                else pa.nulls(t.num_rows, pa.binary(COLOUR_BYTES)))
    else:
        found = _features_from_tar(shard.tar, t["key"].to_pylist())
        phash = pa.array([f[0] if f else None for f in found], pa.int64())
        grid = pa.array([f[1] if f else None for f in found], pa.binary(COLOUR_BYTES))
    n = t.num_rows
    return pa.table({
        "subset": pa.array([shard.subset] * n, pa.string()), "shard": pa.array([shard.shard] * n, pa.string()),
        "key": t["key"], "similarity": pc.cast(t["similarity"], pa.float32()),
        "area": pc.multiply(w, h), "phash": phash, "colour_grid": grid,
    })  # fmt: skip


def _features_from_tar(tar: str, keys: list[str]) -> list[tuple[int, bytes] | None]:
    wanted = set(keys)
    found: dict[str, tuple[int, bytes] | None] = {}
    for sample in shards.iter_tar_samples(tar):
        if sample["__key__"] in wanted:
            image = shards.image_member(sample)
            found[sample["__key__"]] = features_of_bytes(image[1]) if image else None
    return [found.get(k) for k in keys]


def _embeddings(out: str, shard: Any) -> tuple[list[str], np.ndarray]:
    """(keys, float32 embeddings) of a score shard, in clip-retrieval's layout (score.save_embeddings)."""
    paths = shards.score_shard(shard.subset, shard.shard)
    keys = _read(fsio.join(out, paths["metadata"]), ["key"])["key"].to_pylist()
    fs, p = fsio.fs_and_path(fsio.join(out, paths["img_emb"]))
    with fs.open(p, "rb") as f:
        emb = np.load(f).astype(np.float32)
    if len(emb) != len(keys):
        raise ValueError(f"{shard.name}: {len(emb)} image embeddings for {len(keys)} metadata rows")
    return keys, emb


def embedding_files(out: str, shard: Any) -> list[str]:
    paths = shards.score_shard(shard.subset, shard.shard)
    return [paths["img_emb"], paths["metadata"]]


# --- phase 0: centroids ------------------------------------------------------------------------------


def _sample(out: str, shard: Any, rate: float) -> np.ndarray:
    keys, emb = _embeddings(out, shard)
    take = [i for i, k in enumerate(keys) if _mix("kmeans", shard.subset, shard.shard, k) / 2.0**64 < rate]
    return emb[take]


def centroids(out: str, cfg: Any, inputs: list[Any], n_rows: int, client: Any) -> np.ndarray:
    """Spherical k-means centroids [k, d] of a deterministic sample of the embeddings."""
    k = max(1, math.ceil(n_rows / cfg.cluster_size))
    rate = min(1.0, cfg.kmeans_sample / max(n_rows, 1))
    if client is not None and inputs:
        parts = client.gather(client.map(_sample, [out] * len(inputs), inputs, [rate] * len(inputs), pure=False))
    else:
        parts = [_sample(out, s, rate) for s in inputs]
    sample = np.concatenate([p for p in parts if len(p)]) if any(len(p) for p in parts) else np.zeros((0, 1), np.float32)
    if k == 1 or len(sample) <= k:
        mean = sample.mean(axis=0, keepdims=True) if len(sample) else np.ones((1, sample.shape[1]), np.float32)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one thread: the same centroids on every run
    try:
        km = faiss.Kmeans(sample.shape[1], k, niter=cfg.kmeans_iterations, seed=cfg.seed, spherical=True,
                          verbose=False, max_points_per_centroid=max(256, math.ceil(len(sample) / k)))
        km.train(np.ascontiguousarray(sample, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(threads)
    return km.centroids.astype(np.float32)


# --- phase 1: map ------------------------------------------------------------------------------------


def _bucket_file(kind: str, bucket: int, subset: str, shard: str) -> str:
    return f"{WORK_DIR}/{kind}/b{bucket:05d}/{subset}-{shard}.parquet"


def process_map(part: Partition, out: str, wf: Any) -> Outcome:
    cfg = wf.select.neardup
    shard = part.param("shard")
    outcome = Outcome()
    rows = shard_rows(shard)
    outcome.counts["neardup.rows"] += rows.num_rows
    if cfg.phash:
        has = pc.is_valid(rows["phash"])
        t = rows.filter(has)
        outcome.counts["neardup.no_phash"] += rows.num_rows - t.num_rows
        n_bands = cfg.phash_max_distance + 1
        b = bands(t["phash"].to_numpy(), n_bands)  # [n, n_bands]
        n_buckets = part.param("hash_buckets")
        bucket = band_bucket(b, n_buckets)
        for bk in np.unique(bucket):
            r, j = np.nonzero(bucket == bk)
            sub = t.take(pa.array(r)).append_column("band", pa.array(j, pa.int8())).append_column(
                "value", pa.array(b[r, j], pa.uint64()))
            rel = _bucket_file(HASH, int(bk), shard.subset, shard.shard)
            fsio.write_parquet_atomic(sub, fsio.join(out, rel))
            outcome.outputs.append(rel)
    if cfg.semantic:
        keys, emb = _embeddings(out, shard)
        scored = {k: i for i, k in enumerate(rows["key"].to_pylist())}
        keep = [i for i, k in enumerate(keys) if k in scored]
        emb = emb[keep]
        t = rows.take(pa.array([scored[keys[i]] for i in keep], pa.int64()))
        outcome.counts["neardup.embeddings"] += len(keep)
        cent = np.load(fsio.join(out, part.param("centroids"))) if part.param("centroids") else None
        cluster = (_normalise(emb) @ cent.T).argmax(axis=1) if cent is not None and len(emb) else np.zeros(len(emb), np.int64)
        groups = part.param("semantic_buckets")
        for g in np.unique(cluster % groups):
            r = np.flatnonzero(cluster % groups == g)
            vec = pa.FixedSizeListArray.from_arrays(pa.array(emb[r].reshape(-1), pa.float32()), emb.shape[1])
            sub = t.take(pa.array(r)).append_column("cluster", pa.array(cluster[r], pa.int64())).append_column("emb", vec)
            rel = _bucket_file(SEMANTIC, int(g), shard.subset, shard.shard)
            fsio.write_parquet_atomic(sub, fsio.join(out, rel))
            outcome.outputs.append(rel)
    return outcome


def band_bucket(band_values: np.ndarray, n_buckets: int) -> np.ndarray:
    """[n, n_bands] bucket of each (band, value): splitmix64 of the value mixed with the band
    index, so equal bands of any two shards meet in the same bucket, and buckets fill evenly."""
    with np.errstate(over="ignore"):
        band = np.arange(band_values.shape[1], dtype=np.uint64)[None, :] + np.uint64(1)
        z = band_values.astype(np.uint64) ^ (band * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_buckets)).astype(np.int64)


def _normalise(e: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(n > 0, n, 1.0)


# --- phase 2: reduce ---------------------------------------------------------------------------------


def _drop_table(t: pa.Table, d: match.Drops, reason: str) -> pa.Table:
    if not len(d.dropped):
        return DROP_SCHEMA.empty_table()
    lost, kept = t.take(pa.array(d.dropped)), t.take(pa.array(d.survivor))
    return pa.table({
        "subset": lost["subset"], "shard": lost["shard"], "key": lost["key"], "reason": pa.array([reason] * len(d.dropped)),
        "survivor_subset": kept["subset"], "survivor_shard": kept["shard"], "survivor_key": kept["key"],
        "score": pa.array(d.score, pa.float32()),
    }, schema=DROP_SCHEMA)  # fmt: skip


def _ranked(t: pa.Table) -> np.ndarray:
    order_keys = [_order_key(s, h, k) for s, h, k in zip(*(t[c].to_pylist() for c in ("subset", "shard", "key")))]
    return match.rank_order(t["similarity"].to_numpy(zero_copy_only=False), t["area"].to_numpy(zero_copy_only=False),
                            order_keys)


def process_reduce(part: Partition, out: str, wf: Any) -> Outcome:
    cfg = wf.select.neardup
    kind = part.param("kind")
    outcome = Outcome()
    files = part.param("files")
    t = pa.concat_tables([_read(fsio.join(out, f)) for f in files]) if files else None
    found: list[pa.Table] = []
    if t is not None and t.num_rows:
        has_grid = "colour_grid" in t.column_names and cfg.colour_max_difference is not None
        rank = np.empty(t.num_rows, dtype=np.int64)
        rank[_ranked(t)] = np.arange(t.num_rows)  # position of each row, best first
        group_cols = ["band", "value"] if kind == HASH else ["cluster"]
        # rows of each group, via a sort on (group columns, rank)
        order = np.lexsort([rank] + [t[c].to_numpy(zero_copy_only=False) for c in reversed(group_cols)])
        gkey = np.stack([t[c].to_numpy(zero_copy_only=False).astype(np.uint64) for c in group_cols], axis=1)[order]
        starts = np.flatnonzero(np.r_[True, (gkey[1:] != gkey[:-1]).any(axis=1)])
        ends = np.r_[starts[1:], len(order)]
        outcome.counts[f"neardup.{kind}.groups"] += len(starts)
        for s, e in zip(starts, ends):
            members = order[s:e]  # best first
            if len(members) < 2:
                continue
            local = np.arange(len(members))
            if kind == HASH:
                grids = colour_array(t["colour_grid"].take(pa.array(members)).to_pylist()) if has_grid else None
                d = match.hash_drops(t["phash"].to_numpy()[members], local, cfg.phash_max_distance, grids,
                                     cfg.colour_max_difference)
            else:
                emb = t["emb"].take(pa.array(members)).combine_chunks().flatten().to_numpy().reshape(len(members), -1)
                d = match.cosine_drops(emb, local, cfg.eps)
            if len(d.dropped):
                found.append(_drop_table(t, match.Drops(members[d.dropped], members[d.survivor], d.score), REASONS[kind]))
    table = _dedupe(found)
    rel = f"{OUT_DIR}/{kind}-b{part.param('bucket'):05d}.parquet"
    fsio.write_parquet_atomic(table, fsio.join(out, rel))
    outcome.outputs.append(rel)
    outcome.counts[f"neardup.{kind}.dropped_entries"] += table.num_rows
    return outcome


def _dedupe(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return DROP_SCHEMA.empty_table()
    # a row found through several bands: once (its first survivor in (subset, shard, key) order)
    t = pa.concat_tables(tables).sort_by([("subset", "ascending"), ("shard", "ascending"), ("key", "ascending"),
                                          ("survivor_subset", "ascending"), ("survivor_shard", "ascending"),
                                          ("survivor_key", "ascending")])
    keys = [f"{a}/{b}/{c}" for a, b, c in zip(*(t[c].to_pylist() for c in ("subset", "shard", "key")))]
    first = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    return t.take(pa.array(first, pa.int64()))


# --- the phases together -----------------------------------------------------------------------------


def _base(cfg: Any, inputs: list[Any]) -> str:
    settings = cfg.model_dump(mode="json")
    idents = [(s.name, s.upstream, s.identity()) for s in inputs]
    return runner.fingerprint(STAGE, VERSION, settings, idents)


def _bucket_counts(cfg: Any, n_rows: int) -> tuple[int, int]:
    hash_buckets = max(1, math.ceil(n_rows * (cfg.phash_max_distance + 1) / cfg.rows_per_bucket)) if cfg.phash else 0
    sem_buckets = max(1, math.ceil(n_rows / cfg.rows_per_bucket)) if cfg.semantic else 0
    return hash_buckets, sem_buckets


def plan_reduce(cfg: Any, base: str, n_rows: int, files: dict[tuple[str, int], list[str]] | None = None) -> list[Partition]:
    hash_buckets, sem_buckets = _bucket_counts(cfg, n_rows)
    parts = []
    for kind, n in ((HASH, hash_buckets), (SEMANTIC, sem_buckets)):
        for b in range(n):
            mine = tuple(sorted((files or {}).get((kind, b), [])))
            parts.append(Partition(
                key=f"{kind}-b{b:05d}", inputs=tuple(mine), fingerprint=runner.fingerprint(base, kind, b, n),
                params=(("kind", kind), ("bucket", b), ("files", mine)),
            ))  # fmt: skip
    return parts


def reference(out: str, wf: Any, inputs: list[Any]) -> tuple[str, str, str] | None:
    """The upstream reference select's partitions record for the near-duplicate results of these
    inputs and settings (None when near-duplicate removal is off)."""
    cfg = wf.select.neardup
    if not cfg.enabled:
        return None
    return runner.stage_ref(STAGE, plan_reduce(cfg, _base(cfg, inputs), count_rows(inputs)))


def count_rows(inputs: list[Any]) -> int:
    """Rows of the inputs' score files (their parquet footers): what sizes the buckets."""
    total = 0
    for s in inputs:
        fs, p = fsio.fs_and_path(s.scores)
        with fs.open(p, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def run(out: str, wf: Any, client: Any, inputs: list[Any]) -> StageReport | None:
    """Find the near-duplicates of `inputs` (select's input shards); None when the feature is off
    (and any earlier results are removed)."""
    cfg = wf.select.neardup
    if not cfg.enabled:
        for stage in (MAP_STAGE, STAGE):
            if runner.read_plan(out, stage) is not None:
                runner.write_plan(out, stage, [])
                runner.remove_stale(out, stage)
        return None
    n = count_rows(inputs)
    base = _base(cfg, inputs)
    planned = plan_reduce(cfg, base, n)
    if not wf.runner.force and all(runner.is_done(out, STAGE, p.key, p.fingerprint) for p in planned) and \
            runner.read_plan(out, STAGE) is not None and {e["key"] for e in runner.read_plan(out, STAGE)} == {p.key for p in planned}:
        report = StageReport(stage=STAGE, planned=len(planned), skipped=len(planned))
        return report
    hash_buckets, sem_buckets = _bucket_counts(cfg, n)
    cent_rel, cent_digest = None, None
    if cfg.semantic:
        cent = centroids(out, cfg, inputs, n, client)
        cent_rel = f"{WORK_DIR}/centroids.npy"
        with fsio.atomic_open(fsio.join(out, cent_rel)) as f:
            np.save(f, cent)
        cent_digest = hashlib.sha256(cent.tobytes()).hexdigest()[:16]
    maps = []
    for s in inputs:
        extra = tuple(fsio.join(out, r) for r in embedding_files(out, s)) if cfg.semantic else ()
        maps.append(Partition(
            key=s.name.replace("/", "-"), inputs=(s.scores, s.meta, s.tar) + extra,
            fingerprint=runner.fingerprint(base, s.name, cent_digest, hash_buckets, sem_buckets),
            params=(("shard", s), ("hash_buckets", hash_buckets), ("semantic_buckets", sem_buckets), ("centroids", cent_rel)),
            upstream=(s.upstream,) if s.upstream else (),
        ))  # fmt: skip
    report = runner.run_stage(MAP_STAGE, maps, process_map, out, wf, client)
    if report.failed:
        return report
    files: dict[tuple[str, int], list[str]] = {}
    for p in maps:
        m = runner.done_manifest(out, MAP_STAGE, p.key, p.fingerprint) or {}
        for rel in m.get("outputs", []):
            kind, folder = rel.split("/")[-3], rel.split("/")[-2]
            files.setdefault((kind, int(folder[1:])), []).append(rel)
    reduce_report = runner.run_stage(STAGE, plan_reduce(cfg, base, n, files), process_reduce, out, wf, client)
    reduce_report.counts.update(report.counts)
    if not reduce_report.failed:
        runner.write_plan(out, MAP_STAGE, [])
        runner.remove_stale(out, MAP_STAGE)
        clean.remove_work(out, "select")
    return reduce_report


# --- reading the results -----------------------------------------------------------------------------


def drop_files(out: str) -> list[str]:
    """The current near-duplicate result files (the reduce phase's current partitions)."""
    return runner.current_outputs(out, STAGE)


def shard_drops(out: str, names: Iterable[str], files: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Input shard name ("subset/shard") -> {key: drop reason} of the rows near-duplicate removal
    drops there (the first reason in REASONS order when both detectors drop a row)."""
    wanted = {tuple(n.split("/")) for n in names}
    if not wanted:
        return {}
    priority = {r: i for i, r in enumerate(REASONS.values())}
    found: dict[str, dict[str, str]] = {}
    subsets = sorted({s for s, _ in wanted})
    shard_ids = sorted({h for _, h in wanted})
    for path in drop_files(out) if files is None else files:
        fs, p = fsio.fs_and_path(path)
        with fs.open(p, "rb") as f:
            t = pq.read_table(f, columns=["subset", "shard", "key", "reason"],
                              filters=[("subset", "in", subsets), ("shard", "in", shard_ids)])
        for subset, shard, key, reason in zip(*(t[c].to_pylist() for c in ("subset", "shard", "key", "reason"))):
            if (subset, shard) not in wanted:
                continue
            mine = found.setdefault(f"{subset}/{shard}", {})
            if key not in mine or priority[reason] < priority[mine[key]]:
                mine[key] = reason
    return found


def counts_by_reason(drops: dict[str, dict[str, str]]) -> Counter:
    c: Counter = Counter()
    for d in drops.values():
        c.update(d.values())
    return c
