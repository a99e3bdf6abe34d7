"""Dedup stage: global exact dedup of all candidates of a run, plus blocklists.

`candidates/{subset}/*.parquet` -> `unique/{subset}/part-NNNNN.parquet` (CANDIDATE_SCHEMA, exactly
`dedup.rows_per_part` rows per part except the last of each subset: one part = one download shard).

Why three phases: a global dedup of billions of rows cannot gather rows on one task, so it is a
hash-partitioned shuffle written to files, each phase a runner stage (resumable, with progress):

1. `dedup.bucket`: each task reads a group of input files in record batches and writes every
   `dedup.flush_rows` rows out to one file per bucket,
   `_work/dedup/buckets/bNNNNN/{task}-{flush}.parquet`, with the 64-bit hash `_h` of the URL added.
   Already-curated lists go through the same phase (only their url/text columns), so they are
   matched bucket by bucket too and are never loaded whole.
2. `dedup.reduce`: one task per bucket reads only that bucket's files, applies the blocklists and
   removes duplicates, and writes the survivors per subset to `_work/dedup/survivors/{subset}/bNNNNN.parquet`.
3. `dedup` (the stage proper): the survivors are cut into fixed-size parts per subset; each task
   reads only the row ranges of the survivor files that make its part.

The rules (what a user can rely on):
- Key: `url` (LAION-5B) or the (`url`, `text`) pair (`dedup.key`). Dedup is global across subsets:
  the same URL found in `en` and `multi` keeps one copy, in the survivor's subset.
- Buckets partition by the hash of the URL alone, under both keys: every copy of a URL (so of a
  pair too) lands in the same bucket, and so do its already-curated entries.
- Hash: MurmurHash3 x64-128 (first 64 bits, seed 0, unsigned) of the URL's UTF-8 bytes; buckets
  are contiguous ranges of that 64-bit space (bucket = h // ceil(2^64 / n_buckets)), so reading
  buckets in order reads rows in hash order.
- Each row gets at most one drop reason, checked in this order: `blocked_domain` (host is a listed
  domain or a subdomain of one), `blocked_url_hash` (MD5/SHA-1/SHA-256 of the URL is listed),
  `already_curated` (key found in an earlier run's list), then `duplicate_url` / `duplicate_pair`.
  So a blocked URL seen three times counts three blocked_domain drops, not one and two duplicates.
  Each drop is counted in the subset of the dropped row.
- Survivor: among the copies of a key, the smallest row by (uid, url, text, page_url, language,
  language_score, subset, license), nulls last. It depends only on the rows, not on file order,
  input grouping, `n_buckets` or `flush_rows`.
- Output order: survivors sorted by (hash of URL, then the survivor order above). Because buckets
  are hash ranges this is the same for any `n_buckets`, so the parts are identical for every
  partitioning, and a download shard gets URLs of many hosts mixed (no host hammered by one shard).
- Malformed candidate rows (missing uid/url/text/subset, an empty URL, an unknown subset) are
  bad records (`outcome.error`), not crashes; a file without the required columns fails its task.
- Any change of the inputs or settings redoes the phases after the bucketing of unchanged files:
  a global dedup cannot be updated incrementally. Partitions and their files that a new plan no
  longer has (fewer buckets, fewer parts) are removed by the runner (`runner.remove_stale`), so `unique/` never holds
  stale parts.

Why one module of ~590 lines (over the ~400 the other stages keep to): the three phases are one
algorithm. The hash, the bucket ranges, the survivor order and the file layout of one phase are
what the next phase relies on; kept side by side they can be read (and changed) together.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import blocklists, clean, fsio, runner, shards
from ..runner import Outcome, Partition, StageReport
from ..schema import CANDIDATE_SCHEMA, STAGE_DIRS, SUBSET, SUBSETS, TEXT, UID, URL

NAME = "dedup"
BUCKET_STAGE = "dedup.bucket"
REDUCE_STAGE = "dedup.reduce"
WORK_DIR = clean.work_dir(NAME)
HASH_COL = "_h"
HASH_VERSION = "mmh3_x64_128[0]/seed0/url-utf8/range-buckets/v1"
"""Part of every bucketing fingerprint: files bucketed by another hash must never be mixed."""

REQUIRED = (UID, URL, TEXT, SUBSET)
SURVIVOR_ORDER = tuple(CANDIDATE_SCHEMA.names)
"""Tie-break columns after the hash: uid first, then every other column, so the choice is total."""
_LOOSE_SCHEMA = pa.schema([f.with_nullable(True) for f in CANDIDATE_SCHEMA])
_BUCKET_SCHEMA = _LOOSE_SCHEMA.append(pa.field(HASH_COL, pa.uint64()))
READ_BATCH_ROWS = 65_536
SURVIVOR_ROW_GROUP = 65_536


# ---------------------------------------------------------------- hashing and buckets


def url_hash64(urls: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit MurmurHash3 of each URL (non-null strings)."""
    values = urls.to_pylist()
    return np.fromiter((mmh3.hash64(u, signed=False)[0] for u in values), dtype=np.uint64, count=len(values))


def bucket_of(h: np.ndarray, n_buckets: int) -> np.ndarray:
    """Range partitioning of the 64-bit hash space: bucket order is hash order."""
    width = np.uint64((2**64 - 1) // n_buckets + 1) if n_buckets > 1 else None
    if width is None:
        return np.zeros(len(h), dtype=np.int64)
    return (h // width).astype(np.int64)


def bucket_dir(b: int) -> str:
    return f"{WORK_DIR}/buckets/b{b:05d}"


def _key_columns(key: str) -> list[str]:
    return [URL, TEXT] if key == "url_text" else [URL]


def duplicate_reason(key: str) -> str:
    return "duplicate_pair" if key == "url_text" else "duplicate_url"


# ---------------------------------------------------------------- reading


def _read_parquet(path: str) -> pa.Table:
    """Every whole-file read of this stage goes through here (tests check which files a task reads)."""
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return pq.read_table(f)


def _read_rows(path: str, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of a parquet file, reading only the row groups that hold them."""
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        pf = pq.ParquetFile(f)
        groups, first, pos = [], None, 0
        for i in range(pf.metadata.num_row_groups if stop > start else 0):
            n = pf.metadata.row_group(i).num_rows
            if pos + n > start and pos < stop:
                groups.append(i)
                first = pos if first is None else first
            pos += n
        if not groups:
            return pf.schema_arrow.empty_table()
        t = pf.read_row_groups(groups)
    return t.slice(start - first, stop - start)


def _iter_batches(path: str) -> Iterator[pa.Table]:
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise ValueError(f"{path}: not a candidates file, missing column(s) {missing}")
        cols = [c for c in CANDIDATE_SCHEMA.names if c in names]
        for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=cols):
            yield pa.Table.from_batches([batch])


def _conform(t: pa.Table) -> pa.Table:
    """Candidate columns in schema order and types; absent optional columns become nulls."""
    cols = []
    for f in _LOOSE_SCHEMA:
        cols.append(t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type))
    return pa.Table.from_arrays(cols, schema=_LOOSE_SCHEMA)


def _valid_rows(t: pa.Table, outcome: Outcome, path: str, offset: int) -> pa.Table:
    """Drop and note the rows dedup cannot handle (see the module docstring)."""
    ok = pc.and_(pc.is_valid(t[UID]), pc.is_valid(t[URL]))
    ok = pc.and_(ok, pc.is_valid(t[TEXT]))
    ok = pc.and_(ok, pc.greater(pc.fill_null(pc.utf8_length(t[URL]), 0), 0))
    ok = pc.and_(ok, pc.is_in(t[SUBSET], value_set=pa.array(SUBSETS)))
    ok = pc.fill_null(ok, False)
    n_bad = len(t) - pc.sum(ok).as_py() if len(t) else 0
    if n_bad:
        bad_idx = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
        for i in bad_idx:
            row = t.slice(int(i), 1).to_pylist()[0]
            what = [c for c in REQUIRED if row[c] is None]
            if not what and not row[URL]:
                what = ["empty url"]
            msg = f"missing {', '.join(what)}" if what else f"unknown subset {row[SUBSET]!r}"
            outcome.error("bad_candidate", f"{path}: {msg}", offset + int(i))
        t = t.filter(ok)
    return t


# ---------------------------------------------------------------- planning


def _file_infos(paths: list[str]) -> list[tuple[str, str, int]]:
    """(path, identity, size) of each file."""
    out = []
    for path in paths:
        fs, p = fsio.fs_and_path(path)
        out.append((path, fsio.fingerprint_of(path), int(fs.size(p) or 0)))
    return out


def _group(files: list[tuple[str, str, int]], target: int) -> list[list[tuple[str, str, int]]]:
    """Consecutive files grouped up to `target` bytes (a bigger file is a group of its own), so
    appending files to a run only changes the last group."""
    groups: list[list[tuple[str, str, int]]] = []
    cur: list[tuple[str, str, int]] = []
    size = 0
    for f in files:
        if cur and size + f[2] > target:
            groups.append(cur)
            cur, size = [], 0
        cur.append(f)
        size += f[2]
    if cur:
        groups.append(cur)
    return groups


def candidate_files(out: str) -> dict[str, tuple[str, str, str]]:
    """The extract stage's current outputs, path -> the extract partition that wrote it
    (`runner.current`: never a folder listing, so a removed input's part is not read)."""
    found: dict[str, tuple[str, str, str]] = {}
    for done in runner.current(out, "extract"):
        for rel in done.outputs:
            if rel.endswith(".parquet"):
                found[fsio.join(out, rel)] = done.ref
    return dict(sorted(found.items()))


def curated_files(wf) -> list[str]:
    """Expand `dedup.already_curated`; a pattern that matches nothing is an error before any work."""
    found: list[str] = []
    for pattern in wf.dedup.already_curated:
        hits = fsio.glob(pattern)
        if not hits:
            raise FileNotFoundError(f"dedup.already_curated: {pattern!r} matches no file")
        found += hits
    return sorted(set(found))


def blocklist_identities(wf) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """((path, identity), ...) of the domain lists and of the URL-hash lists. Loads them once
    here, so a missing file or a malformed line is an error before any work starts."""
    found = []
    for field, loader in (("blocked_domains", blocklists.load_domains), ("blocked_url_hashes", blocklists.load_url_hashes)):
        ids = []
        for path in getattr(wf.dedup, field):
            try:
                ids.append((path, fsio.fingerprint_of(path)))
            except FileNotFoundError:
                raise FileNotFoundError(f"dedup.{field}: {path!r} not found") from None
        if ids:
            loader([p for p, _ in ids], [i for _, i in ids])
        found.append(tuple(ids))
    return found[0], found[1]


def _group_key(out: str, kind: str, first: str) -> str:
    """Named after the group's first file, not its index: adding a file to a run leaves the keys
    (and so the done manifests) of the other groups as they were."""
    prefix = fsio.join(out, STAGE_DIRS["extract"]) + "/"
    if kind == "cand" and first.startswith(prefix):
        return "cand-" + first[len(prefix) :].removesuffix(".parquet").replace("/", "-")
    return f"{kind}-{hashlib.sha1(first.encode()).hexdigest()[:16]}"


def plan_buckets(out: str, wf) -> tuple[list[Partition], int]:
    """Phase 1 partitions (groups of candidate / curated files) and the number of buckets."""
    cfg = wf.dedup
    blocklist_identities(wf)  # fail early on a bad list
    cand_refs = candidate_files(out)
    cands = _file_infos(list(cand_refs))
    curated = _file_infos(curated_files(wf))
    total = sum(f[2] for f in cands) + sum(f[2] for f in curated)
    n_buckets = cfg.n_buckets or max(1, math.ceil(total / cfg.bucket_target_bytes))
    parts = []
    for kind, files in (("cand", cands), ("curated", curated)):
        for group in _group(files, cfg.group_target_bytes):
            upstream = tuple(dict.fromkeys(cand_refs[p] for p, _, _ in group if p in cand_refs))
            fp = runner.fingerprint(
                BUCKET_STAGE, HASH_VERSION, kind, [(p, ident) for p, ident, _ in group], n_buckets,
                cfg.flush_rows, cfg.key if kind == "curated" else None, upstream,
            )  # fmt: skip
            parts.append(
                Partition(
                    key=_group_key(out, kind, group[0][0]),
                    inputs=tuple(p for p, _, _ in group),
                    fingerprint=fp,
                    params=(("kind", kind), ("n_buckets", n_buckets)),
                    upstream=upstream,
                )
            )
    return parts, n_buckets


def _done_manifests(out: str, stage: str, parts: list[Partition]) -> dict[str, dict]:
    found = {}
    for part in parts:
        m = runner.done_manifest(out, stage, part.key, part.fingerprint)
        if m is None:
            raise RuntimeError(f"{stage} partition {part.key} is not done: run the dedup stage's earlier phases first")
        found[part.key] = m
    return found


def _bucket_of_output(rel: str) -> int:
    return int(rel.split("/")[-2][1:])


def plan_reduce(out: str, wf, bucket_parts: list[Partition], n_buckets: int) -> list[Partition]:
    """Phase 2 partitions: one per bucket that holds candidates; its inputs are exactly the files
    phase 1 wrote for that bucket (from the manifests, not a glob: no stale file can sneak in)."""
    cfg = wf.dedup
    manifests = _done_manifests(out, BUCKET_STAGE, bucket_parts)
    cand: dict[int, list[str]] = {}
    cur: dict[int, list[str]] = {}
    for part in bucket_parts:
        target = cand if part.param("kind") == "cand" else cur
        for rel in manifests[part.key]["outputs"]:
            target.setdefault(_bucket_of_output(rel), []).append(rel)
    upstream = runner.stage_ref(BUCKET_STAGE, bucket_parts)
    domains, hashes = blocklist_identities(wf)
    parts = []
    for b in range(n_buckets):
        if b not in cand:
            continue
        c_files, k_files = tuple(sorted(cand[b])), tuple(sorted(cur.get(b, [])))
        fp = runner.fingerprint(REDUCE_STAGE, upstream, b, n_buckets, cfg.key, domains, hashes)
        parts.append(
            Partition(
                key=f"b{b:05d}",
                inputs=tuple(fsio.join(out, r) for r in c_files + k_files),
                fingerprint=fp,
                params=(
                    ("bucket", b),
                    ("candidates", c_files),
                    ("curated", k_files),
                    ("domains", domains),
                    ("url_hashes", hashes),
                ),
                upstream=(upstream,),
            )
        )
    return parts


def plan_parts(out: str, wf, reduce_parts: list[Partition]) -> list[Partition]:
    """Phase 3 partitions: fixed-size parts per subset, as row ranges of the survivor files."""
    rows = wf.dedup.rows_per_part
    manifests = _done_manifests(out, REDUCE_STAGE, reduce_parts)
    parts = []
    for subset in SUBSETS:
        pieces: list[tuple[str, int, str, str]] = []  # (survivor file, rows, its partition's key and fingerprint)
        for rp in reduce_parts:  # bucket order = hash order
            m = manifests[rp.key]
            n = int(m.get("kept", {}).get(subset, 0))
            if n:
                rel = next(o for o in m["outputs"] if o.split("/")[-2] == subset)
                pieces.append((rel, n, rp.key, rp.fingerprint))
        index, slices, fps, room = 0, [], [], rows
        refs: dict[str, str] = {}

        def emit() -> None:
            parts.append(
                Partition(
                    key=f"{subset}-part-{index:05d}",
                    inputs=tuple(fsio.join(out, s[0]) for s in slices),
                    fingerprint=runner.fingerprint(NAME, subset, index, slices, fps),
                    params=(("subset", subset), ("index", index), ("slices", tuple(slices))),
                    upstream=tuple((REDUCE_STAGE, k, f) for k, f in refs.items()),
                )
            )

        for rel, n, rkey, fp in pieces:
            start = 0
            while start < n:
                take = min(room, n - start)
                slices.append((rel, start, start + take))
                fps.append(fp)
                refs[rkey] = fp
                start += take
                room -= take
                if room == 0:
                    emit()
                    index, slices, fps, room = index + 1, [], [], rows
                    refs.clear()
        if slices:
            emit()
    return parts


def plan(out: str, wf) -> list[Partition]:
    """The final phase's partitions (phases 1 and 2 must be done: `run` does them first)."""
    bucket_parts, n_buckets = plan_buckets(out, wf)
    return plan_parts(out, wf, plan_reduce(out, wf, bucket_parts, n_buckets))


# ---------------------------------------------------------------- phase 1: bucketing


def _write_buckets(chunks: list[pa.Table], part: Partition, flush: int, out: str, outcome: Outcome) -> None:
    if not chunks:
        return
    t = pa.concat_tables(chunks).combine_chunks()  # one take over contiguous columns is faster
    if not len(t):
        return
    n_buckets = part.param("n_buckets")
    buckets = bucket_of(t[HASH_COL].to_numpy(), n_buckets)
    order = np.argsort(buckets, kind="stable")
    t = t.take(pa.array(order))
    sorted_b = buckets[order]
    bounds = np.flatnonzero(np.diff(sorted_b)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(t)]])
    for s, e in zip(starts, stops):
        b = int(sorted_b[s])
        rel = f"{bucket_dir(b)}/{part.key}-{flush:04d}.parquet"
        fsio.write_parquet_atomic(t.slice(int(s), int(e - s)), fsio.join(out, rel))
        outcome.outputs.append(rel)


def _bucket_batches(part: Partition, wf, outcome: Outcome) -> Iterator[pa.Table]:
    """The rows of a phase-1 partition, in batches, with the URL hash added."""
    with_text = wf.dedup.key == "url_text"
    for path in part.inputs:
        if part.param("kind") == "curated":
            for t in blocklists.iter_curated(path, with_text, READ_BATCH_ROWS):
                outcome.counts["curated_in"] += len(t)
                yield t.append_column(HASH_COL, pa.array(url_hash64(t[URL]), pa.uint64()))
            continue
        offset = 0
        for raw in _iter_batches(path):
            t = _valid_rows(_conform(raw), outcome, path, offset)
            offset += len(raw)
            outcome.counts["candidates_in"] += len(t)
            yield t.append_column(HASH_COL, pa.array(url_hash64(t[URL]), pa.uint64()))


def process_bucket(part: Partition, out: str, wf) -> Outcome:
    """Phase 1: write this group's rows to one file per bucket, every `flush_rows` rows."""
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    chunks: list[pa.Table] = []
    held = flush = 0
    for t in _bucket_batches(part, wf, outcome):
        chunks.append(t)
        held += len(t)
        if held >= wf.dedup.flush_rows:
            _write_buckets(chunks, part, flush, out, outcome)
            chunks, held, flush = [], 0, flush + 1
    _write_buckets(chunks, part, flush, out, outcome)
    return outcome


# ---------------------------------------------------------------- phase 2: one bucket


def _count_by_subset(subsets: pa.ChunkedArray | pa.Array) -> Counter:
    c: Counter = Counter()
    if len(subsets):
        for item in pc.value_counts(subsets).to_pylist():
            c[item["values"]] += item["counts"]
    return c


def dedup_table(
    t: pa.Table,
    key: str,
    outcome: Outcome,
    *,
    domains: frozenset[str] = frozenset(),
    url_hashes: blocklists.UrlHashList | None = None,
    curated: pa.Table | None = None,
) -> pa.Table:
    """Blocklists then exact dedup on one bucket's rows (CANDIDATE columns + `_h`), counting each
    dropped row once under its first reason. Returns the survivors in output order."""
    checks = [
        ("blocked_domain", lambda t: blocklists.domain_mask(t[URL], domains) if domains else None),
        ("blocked_url_hash", lambda t: blocklists.url_hash_mask(t[URL], url_hashes) if url_hashes else None),
        (
            "already_curated",
            lambda t: blocklists.curated_mask(
                blocklists.pair_keys(t[URL], t[TEXT] if key == "url_text" else None),
                blocklists.pair_keys(curated[URL], curated[TEXT] if key == "url_text" else None),
            )
            if curated is not None and len(curated)
            else None,
        ),
    ]
    for reason, check in checks:
        mask = check(t) if len(t) else None
        if mask is not None and mask.any():
            for subset, n in _count_by_subset(t[SUBSET].filter(pa.array(mask))).items():
                outcome.drop(reason, subset, n)
            t = t.filter(pa.array(~mask))
    before = _count_by_subset(t[SUBSET])
    t = t.sort_by([(HASH_COL, "ascending")] + [(c, "ascending") for c in SURVIVOR_ORDER])
    t = t.append_column("_row", pa.array(np.arange(len(t), dtype=np.int64)))
    firsts = t.group_by(_key_columns(key), use_threads=False).aggregate([("_row", "min")])["_row_min"]
    keep = np.sort(firsts.to_numpy())
    t = t.take(pa.array(keep)).drop_columns(["_row"])
    after = _count_by_subset(t[SUBSET])
    for subset in sorted(before):
        outcome.drop(duplicate_reason(key), subset, before[subset] - after.get(subset, 0))
    return t


def process_reduce(part: Partition, out: str, wf) -> Outcome:
    """Phase 2: dedup one bucket, reading only that bucket's files; survivors per subset."""
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    b = part.param("bucket")
    with_text = wf.dedup.key == "url_text"
    cand = [_read_parquet(fsio.join(out, r)) for r in part.param("candidates")]
    t = pa.concat_tables(cand).cast(_BUCKET_SCHEMA) if cand else _BUCKET_SCHEMA.empty_table()
    outcome.counts["bucket_rows"] += len(t)
    cur = [_read_parquet(fsio.join(out, r)) for r in part.param("curated")]
    curated = pa.concat_tables(cur).select([URL] + ([TEXT] if with_text else [])) if cur else None
    domain_files = part.param("domains")
    hash_files = part.param("url_hashes")
    domains = blocklists.load_domains([p for p, _ in domain_files], [i for _, i in domain_files]) if domain_files else frozenset()
    hashes = blocklists.load_url_hashes([p for p, _ in hash_files], [i for _, i in hash_files]) if hash_files else None
    t = dedup_table(t, wf.dedup.key, outcome, domains=domains, url_hashes=hashes, curated=curated)
    t = t.drop_columns([HASH_COL])
    for subset in SUBSETS:
        rows = t.filter(pc.equal(t[SUBSET], subset)).cast(CANDIDATE_SCHEMA)
        if len(rows):
            rel = f"{WORK_DIR}/survivors/{subset}/b{b:05d}.parquet"
            fsio.write_parquet_atomic(rows, fsio.join(out, rel), row_group_size=SURVIVOR_ROW_GROUP)
            outcome.outputs.append(rel)
            outcome.kept[subset] = len(rows)
    outcome.counts["unique"] += len(t)
    return outcome


# ---------------------------------------------------------------- phase 3: fixed-size parts


def part_path(subset: str, index: int) -> str:
    return shards.unique_part(subset, index)


def process(part: Partition, out: str, wf) -> Outcome:
    """Phase 3: concatenate this part's row ranges of the survivor files into one unique/ part."""
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    subset = part.param("subset")
    tables = [_read_rows(fsio.join(out, rel), start, stop) for rel, start, stop in part.param("slices")]
    t = pa.concat_tables(tables).cast(CANDIDATE_SCHEMA)
    rel = part_path(subset, part.param("index"))
    fsio.write_parquet_atomic(t, fsio.join(out, rel))
    outcome.outputs.append(rel)
    outcome.kept[subset] = len(t)
    outcome.counts["rows_out"] += len(t)
    return outcome


# ---------------------------------------------------------------- driver


def _merge(reports: list[StageReport], n_buckets: int) -> StageReport:
    """One report for the stage: the final phase's partitions and kept rows, every phase's counts,
    drops and failures (failure keys prefixed with their phase)."""
    final = reports[-1] if reports[-1].stage == NAME else StageReport(stage=NAME)
    merged = StageReport(stage=NAME, planned=final.planned, done=final.done, skipped=final.skipped)
    merged.kept.update(final.kept)
    merged.counts["n_buckets"] = n_buckets
    for r in reports:
        merged.counts.update(r.counts)
        for subset, reasons in r.drops.items():
            merged.drops.setdefault(subset, Counter()).update(reasons)
        merged.failed += [{**f, "key": f"{r.stage}/{f['key']}"} for f in r.failed]
        merged.seconds += r.seconds
    merged.seconds = round(merged.seconds, 3)
    return merged


def _all_done(out: str, wf, bucket_parts: list[Partition], n_buckets: int) -> bool:
    """Every partition of every phase done with the current plan (so nothing needs work files)."""
    if wf.runner.force or not all(runner.is_done(out, BUCKET_STAGE, p.key, p.fingerprint) for p in bucket_parts):
        return False
    reduce_parts = plan_reduce(out, wf, bucket_parts, n_buckets)
    if not all(runner.is_done(out, REDUCE_STAGE, p.key, p.fingerprint) for p in reduce_parts):
        return False
    return all(runner.is_done(out, NAME, p.key, p.fingerprint) for p in plan_parts(out, wf, reduce_parts))


def run(out: str, wf, client) -> StageReport:
    """All three phases; stops after a phase with failures (a global dedup needs all its input).

    The work files (`_work/dedup`) are deleted once every phase is done and kept while the stage
    is incomplete (resume needs them). A rerun after they are gone skips everything when nothing
    changed; when something must be redone, the phases start again from the candidates."""
    reports: list[StageReport] = []
    bucket_parts, n_buckets = plan_buckets(out, wf)
    if clean.work_removed(out, NAME) and not _all_done(out, wf, bucket_parts, n_buckets):
        runner.prune(out, BUCKET_STAGE, [])  # their outputs were the work files
        runner.prune(out, REDUCE_STAGE, [])
        clean.forget_work_removed(out, NAME)
    reports.append(runner.run_stage(BUCKET_STAGE, bucket_parts, process_bucket, out, wf, client))
    if reports[-1].failed:
        return _merge(reports, n_buckets)
    reduce_parts = plan_reduce(out, wf, bucket_parts, n_buckets)
    reports.append(runner.run_stage(REDUCE_STAGE, reduce_parts, process_reduce, out, wf, client))
    if reports[-1].failed:
        return _merge(reports, n_buckets)
    parts = plan_parts(out, wf, reduce_parts)
    reports.append(runner.run_stage(NAME, parts, process, out, wf, client))
    if not reports[-1].failed:
        clean.remove_work(out, NAME)
    return _merge(reports, n_buckets)
