"""The dedup stage's row rules: the URL hash, hash-range buckets, which columns a candidate carries
through the stage, and the per-bucket algorithm (URL-hash and already-curated lists, then exact
dedup). Pure functions on Arrow tables; `dedup.py` says how rows reach them (the shuffle).

Rules a user can rely on (the stage's contract, README "What each stage does"):
- Hash: MurmurHash3 x64-128 (first 64 bits, seed 0, unsigned) of the URL's UTF-8 bytes. Buckets
  are contiguous ranges of that 64-bit space (bucket = h // ceil(2^64 / n_buckets)), so reading
  buckets in order reads rows in hash order; every copy of a URL lands in the same bucket.
- Survivor: among the copies of a key, the smallest row by (uid, url, text, page_url, language,
  language_score, subset, license), then by any further column the input has whose type sorts
  (numbers, strings, binary, booleans, dates and times; by name), nulls last. It depends only on
  the rows, not on file order or partitioning.
- Output order: survivors sorted by (hash of URL, then the survivor order).
- Columns: the candidates' columns in CANDIDATE_SCHEMA's order and types, then every further
  column the input files have, unchanged (a file without one gets nulls).
"""
from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import blocklists
from ..runner import Outcome
from ..schema import CANDIDATE_SCHEMA, SUBSET, SUBSETS, TEXT, UID, URL

HASH_COL = "_h"
RESERVED = (HASH_COL, "_row")
HASH_VERSION = "mmh3_x64_128[0]/seed0/url-utf8/range-buckets/v1"
"""Part of every bucketing fingerprint: files bucketed by another hash must never be mixed."""

REQUIRED = (UID, URL, TEXT, SUBSET)
SURVIVOR_ORDER = tuple(CANDIDATE_SCHEMA.names)
"""Tie-break columns after the hash: uid first, then every other column, so the choice is total."""
LOOSE_SCHEMA = pa.schema([f.with_nullable(True) for f in CANDIDATE_SCHEMA])
READ_BATCH_ROWS = 65_536


# ---------------------------------------------------------------- hashing and buckets


def url_hash64(urls: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit MurmurHash3 of each URL (non-null strings)."""
    values = urls.to_pylist()
    return np.fromiter((mmh3.hash64(u, signed=False)[0] for u in values), dtype=np.uint64, count=len(values))


def bucket_of(h: np.ndarray, n_buckets: int) -> np.ndarray:
    """Range partitioning of the 64-bit hash space: bucket order is hash order."""
    if n_buckets <= 1:
        return np.zeros(len(h), dtype=np.int64)
    width = np.uint64((2**64 - 1) // n_buckets + 1)
    return (np.asarray(h, dtype=np.uint64) // width).astype(np.int64)


@dataclass(frozen=True)
class Layout:
    """How the hash space is cut. `n_buckets` fine buckets (each one dedup unit, bounded by
    `dedup.bucket_target_bytes`) are grouped into `n_coarse` contiguous coarse buckets (one reduce
    task each, and the parts every bucketing task writes); URL digests are cut into `n_ranges`
    ranges for the URL-hash list join."""

    n_buckets: int
    n_coarse: int
    n_ranges: int

    def coarse_of(self, buckets: np.ndarray) -> np.ndarray:
        return (np.asarray(buckets, dtype=np.int64) * self.n_coarse) // self.n_buckets

    def fine(self, coarse: int) -> range:
        """The fine buckets of coarse bucket `coarse`, in hash order."""
        n, c = self.n_buckets, self.n_coarse
        return range(-(-coarse * n // c), -(-(coarse + 1) * n // c))

    def as_params(self) -> tuple[tuple[str, int], ...]:
        return (("n_buckets", self.n_buckets), ("n_coarse", self.n_coarse), ("n_ranges", self.n_ranges))

    @classmethod
    def of(cls, part) -> Layout:
        return cls(part.param("n_buckets"), part.param("n_coarse"), part.param("n_ranges"))


def key_columns(key: str) -> list[str]:
    return [URL, TEXT] if key == "url_text" else [URL]


def duplicate_reason(key: str) -> str:
    return "duplicate_pair" if key == "url_text" else "duplicate_url"


# ---------------------------------------------------------------- columns


def conform(t: pa.Table, where: str) -> pa.Table:
    """Candidate columns in schema order and (nullable) types, absent optional ones as nulls, then
    the input's other columns unchanged."""
    for name in RESERVED:
        if name in t.column_names:
            raise ValueError(f"{where}: column {name!r} is reserved by the dedup stage; rename it")
    cols, fields = [], []
    for f in LOOSE_SCHEMA:
        cols.append(t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type))
        fields.append(f)
    for f in t.schema:
        if f.name not in CANDIDATE_SCHEMA.names:
            cols.append(t[f.name])
            fields.append(f.with_nullable(True))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def extras_of(schema: pa.Schema) -> pa.Schema:
    """The fields beyond the candidate columns (and the stage's own hash column)."""
    return pa.schema([f for f in schema if f.name not in CANDIDATE_SCHEMA.names and f.name not in RESERVED])


def unify_extras(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for the extra columns of many files, in order of first appearance; a column whose
    types cannot be reconciled (a string here, a number there) is an error that names it."""
    if not schemas:
        return pa.schema([])
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
        raise ValueError(f"dedup: the candidate files disagree on the type of a column beyond the standard ones: {e}") from None


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def output_schema(extras: pa.Schema) -> pa.Schema:
    """What unique/ parts hold: CANDIDATE_SCHEMA, then the extra columns (nullable)."""
    return pa.schema(list(CANDIDATE_SCHEMA) + [f.with_nullable(True) for f in extras])


def align(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """`t` with exactly `schema`'s columns (plus the hash column when `t` has it): missing ones as
    nulls, the others cast (a column promoted between files, e.g. int32 -> int64)."""
    cols, fields = [], []
    for f in schema:
        cols.append(t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type))
        fields.append(f.with_nullable(True))
    if HASH_COL in t.column_names:
        cols.append(t[HASH_COL])
        fields.append(pa.field(HASH_COL, pa.uint64()))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def _sortable(t: pa.DataType) -> bool:
    return any(check(t) for check in (pa.types.is_integer, pa.types.is_floating, pa.types.is_string,
                                      pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary,
                                      pa.types.is_fixed_size_binary, pa.types.is_boolean, pa.types.is_temporal,
                                      pa.types.is_decimal))


def survivor_order(schema: pa.Schema) -> list[str]:
    """The survivor's tie-break columns: SURVIVOR_ORDER, then the sortable extra columns by name."""
    extras = sorted(f.name for f in extras_of(schema) if _sortable(f.type))
    return list(SURVIVOR_ORDER) + extras


def valid_rows(t: pa.Table, outcome: Outcome, path: str, offset: int) -> pa.Table:
    """Drop and note the rows dedup cannot handle: a missing uid/url/text/subset, an empty URL,
    an unknown subset (bad records, with their row offset in the file)."""
    ok = pc.and_(pc.is_valid(t[UID]), pc.is_valid(t[URL]))
    ok = pc.and_(ok, pc.is_valid(t[TEXT]))
    ok = pc.and_(ok, pc.greater(pc.fill_null(pc.utf8_length(t[URL]), 0), 0))
    ok = pc.and_(ok, pc.is_in(t[SUBSET], value_set=pa.array(SUBSETS)))
    ok = pc.fill_null(ok, False)
    n_bad = len(t) - pc.sum(ok).as_py() if len(t) else 0
    if n_bad:
        bad_idx = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
        for i in bad_idx:
            row = t.slice(int(i), 1).select(list(REQUIRED)).to_pylist()[0]
            what = [c for c in REQUIRED if row[c] is None]
            if not what and not row[URL]:
                what = ["empty url"]
            msg = f"missing {', '.join(what)}" if what else f"unknown subset {row[SUBSET]!r}"
            outcome.error("bad_candidate", f"{path}: {msg}", offset + int(i))
        t = t.filter(ok)
    return t


# ---------------------------------------------------------------- one bucket


def count_by_subset(subsets: pa.ChunkedArray | pa.Array) -> Counter:
    c: Counter = Counter()
    if len(subsets):
        for item in pc.value_counts(subsets).to_pylist():
            c[item["values"]] += item["counts"]
    return c


@dataclass(frozen=True)
class HashMatches:
    """Candidates the URL-hash join matched, for one coarse bucket: their URL hashes (sorted) and
    the listed digests, per algorithm. A row is blocked when its URL hash is here *and* a digest
    of its URL is listed (the digest check makes a 64-bit hash collision harmless)."""

    by_algo: dict[str, tuple[np.ndarray, blocklists.SortedDigests]]

    def mask(self, t: pa.Table) -> np.ndarray | None:
        if not self.by_algo or not len(t):
            return None
        h = t[HASH_COL].to_numpy()
        out = np.zeros(len(t), dtype=bool)
        for algo, (hashes, digests) in self.by_algo.items():
            maybe = np.flatnonzero(np.isin(h, hashes))
            if len(maybe):
                urls = t[URL].take(pa.array(maybe)).to_pylist()
                out[maybe[digests.contains(blocklists.url_digests(urls, algo))]] = True
        return out


def dedup_table(
    t: pa.Table,
    key: str,
    outcome: Outcome,
    *,
    domains: blocklists.DomainList | None = None,
    matches: HashMatches | None = None,
    curated: pa.Table | None = None,
) -> pa.Table:
    """Blocklists then exact dedup on one bucket's rows (candidate columns, extras, `_h`), counting
    each dropped row once under its first reason, in this order: blocked_domain, blocked_url_hash,
    already_curated, duplicate_url / duplicate_pair. Returns the survivors in output order. (The
    stage checks domains while bucketing, so blocked rows never enter the shuffle; `domains` here
    serves one-process use.)"""
    with_text = key == "url_text"
    checks = [
        ("blocked_domain", lambda t: blocklists.domain_mask(t[URL], domains) if domains is not None else None),
        ("blocked_url_hash", lambda t: matches.mask(t) if matches is not None else None),
        (
            "already_curated",
            lambda t: blocklists.curated_mask(
                blocklists.pair_keys(t[URL], t[TEXT] if with_text else None),
                blocklists.pair_keys(curated[URL], curated[TEXT] if with_text else None),
            )
            if curated is not None and len(curated)
            else None,
        ),
    ]
    for reason, check in checks:
        mask = check(t) if len(t) else None
        if mask is not None and mask.any():
            for subset, n in count_by_subset(t[SUBSET].filter(pa.array(mask))).items():
                outcome.drop(reason, subset, n)
            t = t.filter(pa.array(~mask))
    if not len(t):
        return t
    before = count_by_subset(t[SUBSET])
    t = t.take(survivor_rows(t, key))
    after = count_by_subset(t[SUBSET])
    for subset in sorted(before):
        outcome.drop(duplicate_reason(key), subset, before[subset] - after.get(subset, 0))
    return t


def survivor_rows(t: pa.Table, key: str) -> pa.Array:
    """Indices of the survivors of `t` (one per key), in output order: sort the row indices by
    (hash, survivor order), then keep the first row of each key. Only the key columns are
    reordered to find them; the whole table is taken once, by the caller."""
    n = len(t)
    keys = [(HASH_COL, "ascending", "at_end")] + [(c, "ascending", "at_end") for c in survivor_order(t.schema)]
    idx = pc.sort_indices(t, sort_keys=keys)
    h = t[HASH_COL].take(idx).to_numpy()
    if key == "url":
        first = np.ones(n, dtype=bool)
        first[1:] = h[1:] != h[:-1]
        run_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        urls = t[URL].take(idx)
        same = pc.equal(urls, urls.take(pa.array(run_start)))
        if pc.all(same).as_py():  # each run of equal hashes is one URL: its first row survives
            return idx.take(pa.array(np.flatnonzero(first)))
    cols = {c: t[c].take(idx) for c in key_columns(key)}  # a 64-bit hash collision, or (url, text) keys
    rows = pa.table({**cols, "_row": pa.array(np.arange(n, dtype=np.int64))})
    firsts = rows.group_by(key_columns(key), use_threads=False).aggregate([("_row", "min")])["_row_min"]
    return idx.take(pa.array(np.sort(firsts.to_numpy())))
