"""Dedup stage: global exact dedup of all candidates of a run, plus blocklists.

`candidates/{subset}/*.parquet` (extract's current outputs) -> `unique/{subset}/part-NNNNN.parquet`
(CANDIDATE_SCHEMA, then any further column the candidates have; exactly `dedup.rows_per_part`
rows per part except the last of each subset: one part = one download shard).

Why this shape: a global dedup of billions of rows cannot gather rows on one task, so it is a
hash-partitioned shuffle written to files, each phase a runner stage (resumable per partition,
with progress). Its files, object-store requests and memory per task grow at most linearly with
the input (docs/scaling.md, section 5, has the measurements):

0. `dedup.lists` (only with `dedup.blocked_url_hashes`): one task per URL-hash list file streams
   it and writes one run file (`runfiles.py`) of its digests, cut into digest ranges.
1. `dedup.bucket`: one task per group of input files (`group_target_bytes`) reads them in record
   batches, notes bad rows, drops blocked domains, adds the URL hash `_h` and, every `flush_rows`
   rows, appends one round to ONE run file, cut into the coarse buckets. With URL-hash lists it
   also writes the digests of its distinct URLs, cut into digest ranges. Already-curated lists go
   through this phase too (their url/text columns), so they are matched bucket by bucket and never
   loaded whole.
2. `dedup.hashes` (only with URL-hash lists): one task per digest range joins that range of the
   lists with that range of the candidates' digests (a join: no task holds a whole list) and
   writes what matched, cut into coarse buckets.
3. `dedup.reduce`: one task per coarse bucket reads its segment of every run file (ranged reads,
   no listing), spills the rows to local disk by fine bucket, then, fine bucket by fine bucket,
   applies the URL-hash matches and the already-curated lists, removes duplicates
   (`dedup_rows.dedup_table`) and appends the survivors to one file per subset,
   `_work/dedup/survivors/{subset}/cNNNNN.parquet`.
4. `dedup` (the stage proper): the survivors are cut into fixed-size parts per subset; each task
   reads only the row ranges of the survivor files that make its part.

Sizes: `n_buckets` fine buckets (default: input bytes / `bucket_target_bytes`; one fine bucket is
what a reduce task holds in memory at once) grouped into `n_coarse` = min(n_buckets,
`coarse_buckets`) contiguous coarse buckets. Files: one run file per bucketing task, one survivor
file per (coarse bucket, subset), the parts. Ranged reads: about 2 x (flushes + run files) x
n_coarse in all, so per million candidates a constant for a given `coarse_buckets`. Local disk:
a reduce task spills its coarse bucket, about 1.6 x input bytes / n_coarse (zstd Arrow IPC; the
factor is `dedup.spill_bytes_per_candidate_byte` in unit_costs.json, measured by bench_dedup.py).

Rules (what a user can rely on; the row rules are `dedup_rows.py`'s):
- Key: `url` (LAION-5B) or the (`url`, `text`) pair (`dedup.key`). Dedup is global across subsets:
  the same URL found in `en` and `multi` keeps one copy, in the survivor's subset.
- Each row gets at most one drop reason, checked in this order: `blocked_domain` (host is a listed
  domain or a subdomain of one), `blocked_url_hash` (MD5/SHA-1/SHA-256 of the URL is listed),
  `already_curated` (key found in an earlier run's list), then `duplicate_url` / `duplicate_pair`.
  Each drop is counted in the subset of the dropped row.
- The survivor and the output order depend only on the rows: the parts are identical for every
  partitioning (`n_buckets`, `coarse_buckets`, `flush_rows`, input grouping).
- Malformed candidate rows (missing uid/url/text/subset, an empty URL, an unknown subset) are
  bad records (`outcome.error`), not crashes; a file without the required columns fails its task.
- Resume: every phase is resumable per partition. A killed run keeps every finished partition
  (its manifest says done, its files are complete: atomic writes); the rerun redoes only the
  partitions that were not done. A phase with failures stops the stage (a global dedup needs all
  its input); the rerun retries them and continues.
- Any change of the inputs or settings redoes the phases after the bucketing of unchanged files:
  a global dedup cannot be updated incrementally. Partitions and their files that a new plan no
  longer has are removed by the runner (`runner.remove_stale`), so `unique/` never holds stale parts.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import blocklists, clean, fsio, runfiles, runner, shards
from ..runner import Outcome, Partition, StageReport
from ..schema import STAGE_DIRS, SUBSET, SUBSETS, TEXT, URL
from .dedup_rows import (  # noqa: F401 - re-exported: the stage's row rules
    HASH_COL,
    HASH_VERSION,
    LOOSE_SCHEMA,
    READ_BATCH_ROWS,
    REQUIRED,
    SURVIVOR_ORDER,
    HashMatches,
    Layout,
    align,
    bucket_of,
    conform,
    count_by_subset,
    dedup_table,
    duplicate_reason,
    extras_of,
    output_schema,
    schema_from_text,
    schema_to_text,
    unify_extras,
    url_hash64,
    valid_rows,
)

NAME = "dedup"
LISTS_STAGE = "dedup.lists"
BUCKET_STAGE = "dedup.bucket"
HASHES_STAGE = "dedup.hashes"
REDUCE_STAGE = "dedup.reduce"
PHASES = (LISTS_STAGE, BUCKET_STAGE, HASHES_STAGE, REDUCE_STAGE, NAME)
WORK_DIR = clean.work_dir(NAME)
LAYOUT_VERSION = "runfiles-v1/coarse-spill-v1"
"""Part of every fingerprint of the shuffle: work files of another layout are never mixed in."""
SURVIVOR_ROW_GROUP = 65_536
SPILL_BUFFER_BYTES = 32 * 2**20
"""Rows a reduce task holds before appending them to its local spill files (bounds its memory)."""
PREFETCH = 4
"""Segments a reduce task reads ahead (ranged reads in flight: latency on an object store)."""


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
    """A candidates file in record batches, every column (extra ones pass through the stage)."""
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise ValueError(f"{path}: not a candidates file, missing column(s) {missing}")
        for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS):
            yield pa.Table.from_batches([batch])


def _read_segments(out: str, infos: list[runfiles.RunInfo], part: int, counts: Counter) -> Iterator[pa.Table]:
    """Part `part` of many run files, segment by segment in file order: first every file's index
    slice for the part, then the segments, PREFETCH of them in flight (ranged reads: latency on
    an object store). Memory: PREFETCH segments, each at most flush_rows / n_coarse rows."""
    real = [runfiles.RunInfo(fsio.join(out, i.path), i.index_offset, i.parts, i.rounds) for i in infos]
    with ThreadPoolExecutor(PREFETCH) as pool:
        entries = list(pool.map(lambda info: runfiles.part_entries(info, part), real))
        counts["ranged_reads"] += len(real)
        wanted = [(info, int(off), int(length)) for info, e in zip(real, entries) for off, length, _rows in e if length]

        def fetch(item: tuple[runfiles.RunInfo, int, int]) -> pa.Table:
            info, off, length = item
            fs, p = fsio.fs_and_path(info.path)
            return runfiles.decode(fs.cat_file(p, start=off, end=off + length))

        pending: collections.deque = collections.deque()
        it = iter(wanted)
        for item in it:
            pending.append(pool.submit(fetch, item))
            if len(pending) >= PREFETCH:
                break
        while pending:
            table = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fetch, nxt))
            counts["ranged_reads"] += 1
            yield table


# ---------------------------------------------------------------- planning


def _file_infos(paths: list[str]) -> list[tuple[str, str, int]]:
    """(path, identity, size) of each file (threads: on an object store each is a request)."""

    def one(path: str) -> tuple[str, str, int]:
        return (path, *fsio.fingerprint_and_size(path))

    if len(paths) < 64 or all(fsio.is_local(p) for p in paths):
        return [one(p) for p in paths]
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, paths))


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
    """((path, identity), ...) of the domain lists and of the URL-hash lists. A missing file is an
    error before any work; so is a malformed line in a domain list's load or in the first 64 kB
    of a URL-hash list (the task that streams the list checks every line)."""
    found = []
    for field in ("blocked_domains", "blocked_url_hashes"):
        ids = []
        for path in getattr(wf.dedup, field):
            try:
                ids.append((path, fsio.fingerprint_of(path)))
            except FileNotFoundError:
                raise FileNotFoundError(f"dedup.{field}: {path!r} not found") from None
        found.append(tuple(ids))
    for path, _ in found[1]:
        blocklists.check_digests(path)
    return found[0], found[1]


def _group_key(out: str, kind: str, first: str) -> str:
    """Named after the group's first file, not its index: adding a file to a run leaves the keys
    (and so the done manifests) of the other groups as they were."""
    prefix = fsio.join(out, STAGE_DIRS["extract"]) + "/"
    if kind == "cand" and first.startswith(prefix):
        return "cand-" + first[len(prefix) :].removesuffix(".parquet").replace("/", "-")
    return f"{kind}-{hashlib.sha1(first.encode()).hexdigest()[:16]}"


class Inputs:
    """What the stage reads, listed once per run: candidate files (with the extract partitions that
    wrote them), already-curated files, blocklists, and the layout their sizes give."""

    def __init__(self, out: str, wf):
        cfg = wf.dedup
        self.domains, self.hash_lists = blocklist_identities(wf)
        self.cand_refs = candidate_files(out)
        self.cands = _file_infos(list(self.cand_refs))
        self.curated = _file_infos(curated_files(wf))
        lists = _file_infos([p for p, _ in self.hash_lists])
        total = sum(f[2] for f in self.cands) + sum(f[2] for f in self.curated)
        n_buckets = cfg.n_buckets or max(1, math.ceil(total / cfg.bucket_target_bytes))
        n_coarse = min(n_buckets, cfg.coarse_buckets)
        list_bytes = sum(f[2] for f in lists)
        n_ranges = max(n_coarse, math.ceil(list_bytes / cfg.bucket_target_bytes)) if lists else n_coarse
        self.layout = Layout(n_buckets, n_coarse, n_ranges)


def plan_lists(out: str, wf, inputs: Inputs) -> list[Partition]:
    """Phase 0 partitions: one per URL-hash list file."""
    parts = []
    for path, ident in inputs.hash_lists:
        fp = runner.fingerprint(LISTS_STAGE, LAYOUT_VERSION, path, ident, inputs.layout.n_ranges, wf.dedup.flush_rows)
        parts.append(Partition(key=_group_key(out, "list", path), inputs=(path,), fingerprint=fp,
                               params=(("kind", "list"), *inputs.layout.as_params())))
    return parts


def list_algorithms(out: str) -> tuple[str, ...]:
    """The digest algorithms the current URL-hash lists hold (from their tasks' manifests)."""
    found = set()
    for d in runner.current(out, LISTS_STAGE):
        found |= {k.rpartition(".")[2] for k, v in d.manifest.get("counts", {}).items() if k.startswith("hash_list_entries.") and v}
    return tuple(sorted(found))


def plan_buckets(out: str, wf, inputs: Inputs | None = None, algos: tuple[str, ...] = ()) -> tuple[list[Partition], Layout]:
    """Phase 1 partitions (groups of candidate files, then already-curated files) and the layout.
    `algos`: the digests to compute for the URL-hash join (from phase 0)."""
    cfg = wf.dedup
    inputs = inputs or Inputs(out, wf)
    layout = inputs.layout
    parts = []
    for kind, files in (("cand", inputs.cands), ("curated", inputs.curated)):
        for group in _group(files, cfg.group_target_bytes):
            upstream = tuple(dict.fromkeys(inputs.cand_refs[p] for p, _, _ in group if p in inputs.cand_refs))
            fp = runner.fingerprint(
                BUCKET_STAGE, HASH_VERSION, LAYOUT_VERSION, kind, [(p, ident) for p, ident, _ in group], layout,
                cfg.flush_rows, cfg.key if kind == "curated" else None,
                inputs.domains if kind == "cand" else None, algos if kind == "cand" else None, upstream,
            )  # fmt: skip
            params = [("kind", kind), *layout.as_params()]
            if kind == "cand":
                params += [("domains", inputs.domains), ("algos", algos)]
            parts.append(
                Partition(
                    key=_group_key(out, kind, group[0][0]),
                    inputs=tuple(p for p, _, _ in group),
                    fingerprint=fp,
                    params=tuple(params),
                    upstream=upstream,
                )
            )
    return parts, layout


def _done_manifests(out: str, stage: str, parts: list[Partition]) -> dict[str, dict]:
    found = {}
    for part in parts:
        m = runner.done_manifest(out, stage, part.key, part.fingerprint)
        if m is None:
            raise RuntimeError(f"{stage} partition {part.key} is not done: run the dedup stage's earlier phases first")
        found[part.key] = m
    return found


RUNS_INDEX = f"{WORK_DIR}/runs.json"
MATCHES_INDEX = f"{WORK_DIR}/matches.json"


def _runs(done: Iterable[runner.DonePartition], name: str) -> list[list]:
    return [d.manifest["details"]["runs"][name] for d in done if name in d.manifest.get("details", {}).get("runs", {})]


def write_runs_index(out: str, list_parts: list[Partition], bucket_parts: list[Partition]) -> None:
    """Record which run files the current plans' done partitions wrote, with where their indexes
    lie: the one file later phases read instead of every manifest."""
    lists = runner.current(out, LISTS_STAGE) if list_parts else []
    buckets = runner.current(out, BUCKET_STAGE)
    kinds = {p.key: p.param("kind") for p in bucket_parts}
    algos = sorted(blocklists.DIGEST_BYTES)
    index = {
        "rows": _runs([d for d in buckets if kinds.get(d.key) == "cand"], "rows"),
        "curated": _runs([d for d in buckets if kinds.get(d.key) == "curated"], "rows"),
        "digests": {a: _runs(buckets, a) for a in algos},
        "lists": {a: _runs(lists, a) for a in algos},
    }
    fsio.write_json_atomic(fsio.join(out, RUNS_INDEX), index)


def _read_index(out: str, rel: str) -> dict:
    return fsio.read_json(fsio.join(out, rel))  # type: ignore[return-value]


def _infos(entries: list[list]) -> list[runfiles.RunInfo]:
    return [runfiles.RunInfo.from_json(e) for e in entries]


def plan_hashes(out: str, wf, layout: Layout, algos: tuple[str, ...], list_parts: list[Partition],
                bucket_parts: list[Partition]) -> list[Partition]:
    """Phase 2 partitions: one per digest range (none without URL-hash lists)."""
    if not algos:
        return []
    upstream = (runner.stage_ref(LISTS_STAGE, list_parts), runner.stage_ref(BUCKET_STAGE, bucket_parts))
    return [
        Partition(
            key=f"d{d:05d}",
            inputs=(fsio.join(out, RUNS_INDEX),),
            fingerprint=runner.fingerprint(HASHES_STAGE, LAYOUT_VERSION, upstream, d, layout, algos),
            params=(("range", d), ("algos", algos), *layout.as_params()),
            upstream=upstream,
        )
        for d in range(layout.n_ranges)
    ]


def write_matches_index(out: str, hash_parts: list[Partition]) -> None:
    done = runner.current(out, HASHES_STAGE) if hash_parts else []
    fsio.write_json_atomic(fsio.join(out, MATCHES_INDEX), {"matches": _runs(done, "matches")})


def unified_extras(out: str) -> pa.Schema:
    """The extra columns of every candidate file (one schema for all parts), from the bucketing
    manifests."""
    seen = [d.manifest.get("details", {}).get("extras") for d in runner.current(out, BUCKET_STAGE)]
    return unify_extras([schema_from_text(s) for s in dict.fromkeys(s for s in seen if s)])


def plan_reduce(out: str, wf, layout: Layout, bucket_parts: list[Partition], hash_parts: list[Partition] = (),
                extras: pa.Schema | None = None) -> list[Partition]:
    """Phase 3 partitions: one per coarse bucket. They read the run files the runs index names
    (written from the current manifests, not a glob: no stale file can sneak in)."""
    cfg = wf.dedup
    extras = unified_extras(out) if extras is None else extras
    schema = schema_to_text(output_schema(extras))
    upstream = (runner.stage_ref(BUCKET_STAGE, bucket_parts),) + (
        (runner.stage_ref(HASHES_STAGE, hash_parts),) if hash_parts else ())
    parts = []
    for c in range(layout.n_coarse):
        fine = layout.fine(c)
        fp = runner.fingerprint(REDUCE_STAGE, LAYOUT_VERSION, upstream, c, layout, cfg.key, schema)
        parts.append(
            Partition(
                key=f"c{c:05d}",
                inputs=(fsio.join(out, RUNS_INDEX),) + ((fsio.join(out, MATCHES_INDEX),) if hash_parts else ()),
                fingerprint=fp,
                params=(("coarse", c), ("fine", (fine.start, fine.stop)), ("schema", schema),
                        ("hashes", bool(hash_parts)), *layout.as_params()),
                upstream=upstream,
            )
        )
    return parts


def plan_parts(out: str, wf, reduce_parts: list[Partition]) -> list[Partition]:
    """Phase 4 partitions: fixed-size parts per subset, as row ranges of the survivor files."""
    rows = wf.dedup.rows_per_part
    manifests = _done_manifests(out, REDUCE_STAGE, reduce_parts)
    schema = reduce_parts[0].param("schema") if reduce_parts else None
    parts = []
    for subset in SUBSETS:
        pieces: list[tuple[str, int, str, str]] = []  # (survivor file, rows, its partition's key and fingerprint)
        for rp in reduce_parts:  # coarse bucket order = hash order
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
                    fingerprint=runner.fingerprint(NAME, subset, index, slices, fps, schema),
                    params=(("subset", subset), ("index", index), ("slices", tuple(slices)), ("schema", schema)),
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


# ---------------------------------------------------------------- phase 0: URL-hash lists


def process_list(part: Partition, out: str, wf) -> Outcome:
    """Stream one URL-hash list file into a run file per algorithm, cut into digest ranges."""
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    layout = Layout.of(part)
    path = part.inputs[0]
    held: dict[str, list[np.ndarray]] = {}
    sizes: Counter = Counter()
    with contextlib.ExitStack() as stack:
        writers: dict[str, runfiles.RunWriter] = {}

        def flush(algo: str) -> None:
            digests = np.concatenate(held.pop(algo))
            sizes[algo] = 0
            if algo not in writers:
                rel = f"{WORK_DIR}/lists/{part.key}.{algo}.run"
                writers[algo] = stack.enter_context(runfiles.RunWriter(fsio.join(out, rel), layout.n_ranges))
                outcome.outputs.append(rel)
            ranges = bucket_of(blocklists.digest_prefix(digests), layout.n_ranges)
            table = pa.table({"digest": blocklists.digest_array(digests)})
            writers[algo].write_round(runfiles.split_by_part(table, ranges, layout.n_ranges))

        for block in blocklists.iter_digests(path):
            for algo, digests in block.items():
                held.setdefault(algo, []).append(digests)
                sizes[algo] += len(digests)
                outcome.counts[f"hash_list_entries.{algo}"] += len(digests)
                outcome.counts["hash_list_entries"] += len(digests)
                if sizes[algo] >= wf.dedup.flush_rows:
                    flush(algo)
        for algo in list(held):
            flush(algo)
    outcome.details["runs"] = {a: _rel_info(out, w.info) for a, w in writers.items()}
    return outcome


def _rel_info(out: str, info: runfiles.RunInfo) -> list:
    rel = info.path[len(out.rstrip("/")) + 1 :] if info.path.startswith(out.rstrip("/") + "/") else info.path
    return runfiles.RunInfo(rel, info.index_offset, info.parts, info.rounds).to_json()


# ---------------------------------------------------------------- phase 1: bucketing


def _bucket_batches(part: Partition, wf, outcome: Outcome, domains) -> Iterator[pa.Table]:
    """The rows of a phase-1 partition, in batches, with the URL hash added; bad rows noted and
    blocked domains dropped (counted) on the way."""
    with_text = wf.dedup.key == "url_text"
    for path in part.inputs:
        if part.param("kind") == "curated":
            for t in blocklists.iter_curated(path, with_text, READ_BATCH_ROWS):
                outcome.counts["curated_in"] += len(t)
                yield t.append_column(HASH_COL, pa.array(url_hash64(t[URL]), pa.uint64()))
            continue
        offset = 0
        for raw in _iter_batches(path):
            t = valid_rows(conform(raw, path), outcome, path, offset)
            offset += len(raw)
            outcome.counts["candidates_in"] += len(t)
            if domains is not None and len(t):
                blocked = blocklists.domain_mask(t[URL], domains)
                if blocked.any():
                    for subset, n in count_by_subset(t[SUBSET].filter(pa.array(blocked))).items():
                        outcome.drop("blocked_domain", subset, n)
                    t = t.filter(pa.array(~blocked))
            yield t.append_column(HASH_COL, pa.array(url_hash64(t[URL]), pa.uint64()))


def _concat(chunks: list[pa.Table], where: str) -> pa.Table:
    try:
        return pa.concat_tables(chunks, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
        raise ValueError(f"{where}: the input files disagree on the type of a column: {e}") from None


def process_bucket(part: Partition, out: str, wf) -> Outcome:
    """Phase 1: this group's rows into one run file, every `flush_rows` rows one round cut into the
    coarse buckets (and, with URL-hash lists, the digests of its distinct URLs into another)."""
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    layout = Layout.of(part)
    algos = tuple(part.param("algos") or ())
    dom = part.param("domains") or ()
    domains = blocklists.load_domains([p for p, _ in dom], [i for _, i in dom]) if dom else None
    extras: list[pa.Schema] = []
    with contextlib.ExitStack() as stack:
        rel = f"{WORK_DIR}/runs/{part.key}.rows.run"
        rows_w = stack.enter_context(runfiles.RunWriter(fsio.join(out, rel), layout.n_coarse))
        outcome.outputs.append(rel)
        digest_w = {}
        for algo in algos:
            drel = f"{WORK_DIR}/runs/{part.key}.{algo}.run"
            digest_w[algo] = stack.enter_context(runfiles.RunWriter(fsio.join(out, drel), layout.n_ranges))
            outcome.outputs.append(drel)

        def flush(chunks: list[pa.Table]) -> None:
            t = _concat(chunks, part.key)  # zero-copy; the one copy is split_by_part's take
            chunks.clear()
            if part.param("kind") == "cand":
                extras.append(extras_of(t.schema))
            coarse = layout.coarse_of(bucket_of(t[HASH_COL].to_numpy(), layout.n_buckets))
            rows_w.write_round(runfiles.split_by_part(t, coarse, layout.n_coarse))
            if digest_w:
                urls = pc.unique(t[URL])
                h = pa.array(url_hash64(urls), pa.uint64())
                values = urls.to_pylist()
                for algo, w in digest_w.items():
                    digests = blocklists.url_digests(values, algo)
                    table = pa.table({"digest": blocklists.digest_array(digests), HASH_COL: h})
                    ranges = bucket_of(blocklists.digest_prefix(digests), layout.n_ranges)
                    w.write_round(runfiles.split_by_part(table, ranges, layout.n_ranges))
                    outcome.counts["digests_out"] += len(digests)

        chunks: list[pa.Table] = []
        held = 0
        for t in _bucket_batches(part, wf, outcome, domains):
            if len(t):
                chunks.append(t)
                held += len(t)
            if held >= wf.dedup.flush_rows:
                flush(chunks)
                held = 0
        if chunks:
            flush(chunks)
    outcome.counts["flushes"] += rows_w.rounds
    outcome.details["runs"] = {"rows": _rel_info(out, rows_w.info), **{a: _rel_info(out, w.info) for a, w in digest_w.items()}}
    if extras:
        outcome.details["extras"] = schema_to_text(unify_extras(extras))
    return outcome


# ---------------------------------------------------------------- phase 2: URL-hash join


def process_hashes(part: Partition, out: str, wf) -> Outcome:
    """Phase 2: one digest range of the URL-hash lists against the same range of the candidates'
    digests; the matches (URL hash and digest) go to one run file cut into coarse buckets."""
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    layout = Layout.of(part)
    d = part.param("range")
    index = _read_index(out, RUNS_INDEX)
    rel = f"{WORK_DIR}/matches/d{d:05d}.run"
    with runfiles.RunWriter(fsio.join(out, rel), layout.n_coarse) as w:
        for algo in part.param("algos"):
            listed = [blocklists.digests_of(t["digest"]) for t in _read_segments(out, _infos(index["lists"][algo]), d, outcome.counts)]
            if not listed:
                continue
            found = blocklists.SortedDigests(np.concatenate(listed))
            del listed
            outcome.counts["listed_digests"] += len(found)
            matched = []
            for t in _read_segments(out, _infos(index["digests"][algo]), d, outcome.counts):
                hit = found.contains(blocklists.digests_of(t["digest"]))
                outcome.counts["candidate_digests"] += len(t)
                if hit.any():
                    matched.append(t.filter(pa.array(hit)))
            if matched:
                m = pa.concat_tables(matched)
                outcome.counts["url_hash_matches"] += len(m)
                coarse = layout.coarse_of(bucket_of(m[HASH_COL].to_numpy(), layout.n_buckets))
                w.write_round(runfiles.split_by_part(m, coarse, layout.n_coarse))
    outcome.outputs.append(rel)
    outcome.details["runs"] = {"matches": _rel_info(out, w.info)}
    return outcome


# ---------------------------------------------------------------- phase 3: one coarse bucket


def _scratch_root(wf) -> str:
    """Local disk for a reduce task's spill: `dedup.scratch_dir`, else the Dask worker's local
    directory, else the system's temporary directory."""
    if wf.dedup.scratch_dir:
        return wf.dedup.scratch_dir
    try:
        from distributed import get_worker

        return get_worker().local_directory
    except (ValueError, ImportError):
        return tempfile.gettempdir()


class _Spill:
    """A reduce task's rows by fine bucket: held in memory up to SPILL_BUFFER_BYTES, then appended
    to one local file per (kind, fine bucket) (an Arrow IPC stream per append, zstd: 1.64x the
    candidates' parquet bytes at 16M rows in bench_dedup.py, lz4 took 2.72x), and read back one fine
    bucket at a time. With one fine bucket nothing goes to disk (it is bounded anyway)."""

    OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")

    def __init__(self, root: str, n: int):
        self.n = n
        self.dir = tempfile.mkdtemp(prefix="dedup-spill-", dir=root) if n > 1 else None
        self.buffer: dict[tuple[str, int], list[pa.Table]] = {}
        self.held = 0
        self.sizes: dict[str, int] = {}

    @property
    def files(self) -> int:
        return len(self.sizes)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    def add(self, kind: str, j: int, t: pa.Table) -> None:
        self.buffer.setdefault((kind, j), []).append(t)
        self.held += t.nbytes
        if self.dir is not None and self.held >= SPILL_BUFFER_BYTES:
            self.flush()

    def _path(self, kind: str, j: int) -> str:
        return os.path.join(self.dir, f"{kind}-{j:06d}.arrow")

    def flush(self) -> None:
        if self.dir is None:
            return
        for (kind, j), tables in self.buffer.items():
            path = self._path(kind, j)
            t = pa.concat_tables(tables)
            with open(path, "ab") as f, pa.ipc.new_stream(f, t.schema, options=self.OPTIONS) as w:
                w.write_table(t)
            self.sizes[path] = os.path.getsize(path)
        self.buffer.clear()
        self.held = 0

    def take(self, kind: str, j: int) -> list[pa.Table]:
        """Fine bucket j's tables of `kind` (spilled and still buffered), freeing them."""
        tables = self.buffer.pop((kind, j), [])
        if self.dir is not None and os.path.exists(self._path(kind, j)):
            with open(self._path(kind, j), "rb") as f:
                data = f.read()
            os.remove(self._path(kind, j))
            tables = list(runfiles.decode_all(data)) + tables
        return tables

    def close(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _matches_for(out: str, c: int, counts: Counter) -> HashMatches:
    """What the URL-hash join matched in coarse bucket `c`."""
    index = _read_index(out, MATCHES_INDEX)
    by_width: dict[int, list[pa.Table]] = {}
    for t in _read_segments(out, _infos(index["matches"]), c, counts):
        by_width.setdefault(t.schema.field("digest").type.byte_width, []).append(t)
    algo_of = {k: a for a, k in blocklists.DIGEST_BYTES.items()}
    found = {}
    for width, tables in by_width.items():
        m = pa.concat_tables(tables)
        found[algo_of[width]] = (np.unique(m[HASH_COL].to_numpy()), blocklists.SortedDigests(blocklists.digests_of(m["digest"])))
    return HashMatches(found)


def process_reduce(part: Partition, out: str, wf) -> Outcome:
    """Phase 3: dedup one coarse bucket, fine bucket by fine bucket; survivors per subset."""
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    layout = Layout.of(part)
    c = part.param("coarse")
    lo, hi = part.param("fine")
    schema = schema_from_text(part.param("schema"))
    key = wf.dedup.key
    cur_cols = [URL] + ([TEXT] if key == "url_text" else [])
    index = _read_index(out, RUNS_INDEX)
    matches = _matches_for(out, c, outcome.counts) if part.param("hashes") else None
    spill = _Spill(_scratch_root(wf), hi - lo)
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        with contextlib.ExitStack() as stack:
            for kind, entries in (("cand", index["rows"]), ("curated", index["curated"])):
                for t in _read_segments(out, _infos(entries), c, outcome.counts):
                    t = align(t, schema) if kind == "cand" else t.select([*cur_cols, HASH_COL])
                    j = bucket_of(t[HASH_COL].to_numpy(), layout.n_buckets) - lo
                    for k, piece in enumerate(runfiles.split_by_part(t, j, hi - lo)):
                        if piece is not None:
                            spill.add(kind, k, piece)
            spill.flush()
            outcome.counts["scratch_files"] += spill.files
            outcome.counts["scratch_bytes"] += spill.bytes
            empty = align(schema.empty_table(), schema).append_column(HASH_COL, pa.array([], pa.uint64()))
            for j in range(hi - lo):
                cand = spill.take("cand", j)
                t = pa.concat_tables(cand) if cand else empty
                cur = spill.take("curated", j)
                curated = pa.concat_tables(cur).select(cur_cols) if cur else None
                outcome.counts["bucket_rows"] += len(t)
                t = dedup_table(t, key, outcome, matches=matches, curated=curated).drop_columns([HASH_COL])
                del cand, cur, curated
                for subset in SUBSETS:
                    rows = t.filter(pc.equal(t[SUBSET], subset)).cast(schema)
                    if not len(rows):
                        continue
                    if subset not in writers:
                        rel = f"{WORK_DIR}/survivors/{subset}/c{c:05d}.parquet"
                        f = stack.enter_context(fsio.atomic_open(fsio.join(out, rel), "wb"))
                        writers[subset] = stack.enter_context(pq.ParquetWriter(f, schema, compression="zstd"))
                        outcome.outputs.append(rel)
                    writers[subset].write_table(rows, row_group_size=SURVIVOR_ROW_GROUP)
                    outcome.kept[subset] += len(rows)
                outcome.counts["unique"] += len(t)
    finally:
        spill.close()
    return outcome


# ---------------------------------------------------------------- phase 4: fixed-size parts


def part_path(subset: str, index: int) -> str:
    return shards.unique_part(subset, index)


def process(part: Partition, out: str, wf) -> Outcome:
    """Phase 4: concatenate this part's row ranges of the survivor files into one unique/ part."""
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    subset = part.param("subset")
    schema = schema_from_text(part.param("schema"))
    tables = [_read_rows(fsio.join(out, rel), start, stop) for rel, start, stop in part.param("slices")]
    t = pa.concat_tables(tables).cast(schema)
    rel = part_path(subset, part.param("index"))
    fsio.write_parquet_atomic(t, fsio.join(out, rel))
    outcome.outputs.append(rel)
    outcome.kept[subset] = len(t)
    outcome.counts["rows_out"] += len(t)
    return outcome


# ---------------------------------------------------------------- driver


def _merge(reports: list[StageReport], layout: Layout) -> StageReport:
    """One report for the stage: the final phase's partitions and kept rows, every phase's counts,
    drops and failures (failure keys prefixed with their phase)."""
    final = reports[-1] if reports and reports[-1].stage == NAME else StageReport(stage=NAME)
    merged = StageReport(stage=NAME, planned=final.planned, done=final.done, skipped=final.skipped)
    merged.kept.update(final.kept)
    merged.counts["n_buckets"] = layout.n_buckets
    merged.counts["n_coarse"] = layout.n_coarse
    for r in reports:
        merged.counts.update(r.counts)
        for subset, reasons in r.drops.items():
            merged.drops.setdefault(subset, Counter()).update(reasons)
        merged.failed += [{**f, "key": f"{r.stage}/{f['key']}"} for f in r.failed]
        merged.seconds += r.seconds
    merged.seconds = round(merged.seconds, 3)
    return merged


def _phase(stage: str, parts: list[Partition], fn, out: str, wf, client) -> StageReport | None:
    """Run one phase; a phase with no partitions and no earlier plan leaves no state at all."""
    if not parts and runner.read_plan(out, stage) is None:
        return None
    return runner.run_stage(stage, parts, fn, out, wf, client)


def _all_done(out: str, stages: list[tuple[str, list[Partition]]]) -> bool:
    return all(runner.is_done(out, s, p.key, p.fingerprint) for s, parts in stages for p in parts)


def _complete_without_work(out: str, wf, inputs: Inputs, list_parts: list[Partition]) -> bool:
    """Whether every phase is done with the current plan, so that nothing needs the work files."""
    if not _all_done(out, [(LISTS_STAGE, list_parts)]):
        return False
    algos = list_algorithms(out) if list_parts else ()
    bucket_parts, layout = plan_buckets(out, wf, inputs, algos)
    hash_parts = plan_hashes(out, wf, layout, algos, list_parts, bucket_parts)
    if not _all_done(out, [(BUCKET_STAGE, bucket_parts), (HASHES_STAGE, hash_parts)]):
        return False
    reduce_parts = plan_reduce(out, wf, layout, bucket_parts, hash_parts)
    if not _all_done(out, [(REDUCE_STAGE, reduce_parts)]):
        return False
    return _all_done(out, [(NAME, plan_parts(out, wf, reduce_parts))])


def run(out: str, wf, client) -> StageReport:
    """Every phase in order; stops after a phase with failures (a global dedup needs all its input).

    The work files (`_work/dedup`) are deleted once every phase is done and kept while the stage
    is incomplete (resume needs them). A rerun after they are gone skips everything when nothing
    changed; when something must be redone, the phases start again from the candidates."""
    inputs = Inputs(out, wf)
    layout = inputs.layout
    list_parts = plan_lists(out, wf, inputs)
    if clean.work_removed(out, NAME) and (wf.runner.force or not _complete_without_work(out, wf, inputs, list_parts)):
        for stage in (LISTS_STAGE, BUCKET_STAGE, HASHES_STAGE, REDUCE_STAGE):  # their outputs were the work files
            runner.prune(out, stage, [])
        clean.forget_work_removed(out, NAME)
    reports: list[StageReport] = []

    def step(stage: str, parts: list[Partition], fn) -> bool:
        r = _phase(stage, parts, fn, out, wf, client)
        if r is not None:
            reports.append(r)
        return r is None or not r.failed

    if not step(LISTS_STAGE, list_parts, process_list):
        return _merge(reports, layout)
    algos = list_algorithms(out) if list_parts else ()
    bucket_parts, _ = plan_buckets(out, wf, inputs, algos)
    if not step(BUCKET_STAGE, bucket_parts, process_bucket):
        return _merge(reports, layout)
    write_runs_index(out, list_parts, bucket_parts)
    hash_parts = plan_hashes(out, wf, layout, algos, list_parts, bucket_parts)
    if not step(HASHES_STAGE, hash_parts, process_hashes):
        return _merge(reports, layout)
    write_matches_index(out, hash_parts)
    reduce_parts = plan_reduce(out, wf, layout, bucket_parts, hash_parts)
    if not step(REDUCE_STAGE, reduce_parts, process_reduce):
        return _merge(reports, layout)
    parts = plan_parts(out, wf, reduce_parts)
    if not step(NAME, parts, process):
        return _merge(reports, layout)
    clean.remove_work(out, NAME)
    return _merge(reports, layout)


def plan(out: str, wf) -> list[Partition]:
    """The final phase's partitions (the earlier phases must be done: `run` does them first)."""
    inputs = Inputs(out, wf)
    list_parts = plan_lists(out, wf, inputs)
    algos = list_algorithms(out) if list_parts else ()
    bucket_parts, layout = plan_buckets(out, wf, inputs, algos)
    hash_parts = plan_hashes(out, wf, layout, algos, list_parts, bucket_parts)
    return plan_parts(out, wf, plan_reduce(out, wf, layout, bucket_parts, hash_parts))
