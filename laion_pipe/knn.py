"""faiss kNN indexes over CLIP embeddings: which index, training on a sample, adding in chunks,
merging, and searching with filters. The index stage, `laion-pipe serve` and the benchmark all
build and query through these functions, so what is measured is what runs.

Why it is built this way:
- Embeddings are L2-normalised (`models.clip`), so inner product is cosine: every index uses
  faiss's inner-product metric and a score is a cosine (approximate under PQ).
- The type follows the size, as autofaiss chooses for clip-retrieval: a flat index (exact) while a
  full scan stays within milliseconds, else IVF-PQ with an HNSW coarse quantizer (assigning a vector
  to its list costs a graph walk instead of a scan over every centroid, which is what makes adding
  10M vectors on a few cores feasible). `choose` states the rule.
- Large indexes are never built from one matrix in memory: the quantizers train on a seeded
  uniform sample read row by row from the embedding files (positioned reads, never mapped), then each Dask
  task encodes a slice of the files into its own copy of the trained, empty index, and the copies'
  inverted lists are merged (`merge_from`), ids being the rows' global positions. Peak memory is
  one slice's float32 vectors plus the PQ codes, not the float matrix.
- Filters (subset, kept/dropped, score ranges) are exact: the allowed rows go to faiss as a bitmap
  (`IDSelectorBitmap`), so a filtered query returns the k nearest allowed rows, not the allowed
  survivors of an unfiltered top k.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from . import fsio

# --- embedding files ---------------------------------------------------------------------------------


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the `.npy` file open at its start; leaves `f` at the data."""
    major, _ = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    return tuple(shape), fortran, np.dtype(dtype)


def npy_shape(path: str) -> tuple[int, ...]:
    """The shape of a `.npy` file from its header alone (works on any fsspec path)."""
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return _read_header(f)[0]


def open_npy(path: str) -> np.ndarray:
    """A whole `.npy` file from any fsspec path (remote files: the rows are read from this copy)."""
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return np.load(f)


@dataclass(frozen=True)
class _NpyLayout:
    """Where a local C-ordered 2-D `.npy` file keeps its rows."""

    offset: int  # bytes before the first row
    dtype: np.dtype
    dim: int

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize


@functools.lru_cache(maxsize=4096)
def _layout(path: str, mtime_ns: int, size: int) -> _NpyLayout:
    """One header parse per file version (a query touching 100 files must not reparse them)."""
    with open(path, "rb") as f:
        shape, fortran, dtype = _read_header(f)
        offset = f.tell()
    if fortran or len(shape) != 2:
        raise ValueError(f"{path}: expected a C-ordered 2-D array of embeddings, got shape {shape}"
                         f"{' in Fortran order' if fortran else ''}")  # fmt: skip
    return _NpyLayout(offset, dtype, int(shape[1]))


def _local_layout(path: str) -> _NpyLayout:
    st = os.stat(path)
    return _layout(path, st.st_mtime_ns, st.st_size)


def _pread_rows(path: str, local_rows: np.ndarray) -> np.ndarray:
    """Rows of a local `.npy` file (sorted row numbers), read with positioned reads, one per run
    of consecutive rows: nothing is memory-mapped. A mapping would keep every page it touched in
    the process's resident memory, which Dask's memory monitor counts: training on a 100,000-row
    sample of 10M embeddings (rows spread over 10 GB of files) took a worker past its limit and
    the nanny restarted it, though the pages were only file cache."""
    lay = _local_layout(path)
    out = np.empty((len(local_rows), lay.dim), dtype=lay.dtype)
    if not len(local_rows):
        return out
    flat = out.reshape(-1).view(np.uint8)
    rb = lay.row_bytes
    # runs of consecutive rows: [start, end) positions in local_rows
    breaks = np.flatnonzero(np.diff(local_rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(local_rows)]])
    fd = os.open(path, os.O_RDONLY)
    try:
        for a, b in zip(starts.tolist(), ends.tolist()):
            want = (b - a) * rb
            pos = lay.offset + int(local_rows[a]) * rb
            got = os.preadv(fd, [memoryview(flat[a * rb : b * rb])], pos)
            if got != want:
                raise OSError(f"{path}: short read ({got} of {want} bytes at {pos}): the file changed or is truncated")
    finally:
        os.close(fd)
    return out


def _local(path: str) -> str | None:
    """The local path of `path`, or None when it is on another filesystem."""
    from fsspec.implementations.local import LocalFileSystem

    fs, p = fsio.fs_and_path(path)
    return p if isinstance(fs, LocalFileSystem) else None


@dataclass(frozen=True)
class Source:
    """One embedding file and the global id of its first row."""

    path: str
    rows: int
    offset: int


def sources(paths: Sequence[str], rows: Sequence[int] | None = None) -> list[Source]:
    """Files in the given order with their global row offsets (ids = concatenation order, as
    clip-retrieval numbers the rows of its `img_emb_N.npy` files)."""
    rows = list(rows) if rows is not None else [npy_shape(p)[0] for p in paths]
    out, at = [], 0
    for p, n in zip(paths, rows):
        out.append(Source(p, int(n), at))
        at += int(n)
    return out


def _dim(path: str) -> int:
    """The row width of an embedding file (a local file's header is parsed once per version:
    every query of the search page reads rows)."""
    local = _local(path)
    return _local_layout(local).dim if local is not None else npy_shape(path)[1]


def _file_rows(path: str, local_rows: np.ndarray) -> np.ndarray:
    """Rows (sorted row numbers) of one embedding file, in its own dtype."""
    local = _local(path)
    if local is not None:
        return _pread_rows(local, local_rows)
    return open_npy(path)[local_rows]


def read_rows(srcs: Sequence[Source], ids: np.ndarray) -> np.ndarray:
    """float32 rows of the given global ids (any order), read from the files."""
    ids = np.asarray(ids, dtype=np.int64)
    offsets = np.array([s.offset for s in srcs], dtype=np.int64)
    which = np.searchsorted(offsets, ids, side="right") - 1
    first = next((s for s in srcs if s.rows), None)
    dim = _dim(first.path) if first is not None else 0
    out = np.empty((len(ids), dim), dtype=np.float32)
    for f in np.unique(which):
        sel = np.flatnonzero(which == f)
        local = ids[sel] - srcs[f].offset
        order = np.argsort(local)
        out[sel[order]] = _file_rows(srcs[f].path, local[order])
    return out


def iter_chunks(srcs: Sequence[Source], rows: int = 262_144):
    """(first global id, float32 block) over the files in order, at most `rows` rows at a time
    (read, not mapped: a block's memory is freed when the caller drops it)."""
    for s in srcs:
        if not s.rows:
            continue
        local = _local(s.path)
        whole = None if local is not None else open_npy(s.path)
        for start in range(0, s.rows, rows):
            stop = min(start + rows, s.rows)
            block = _pread_rows(local, np.arange(start, stop)) if local is not None else whole[start:stop]
            yield s.offset + start, np.ascontiguousarray(block, dtype=np.float32)


def sample_ids(total: int, k: int, seed: int) -> np.ndarray:
    """Sorted, distinct global ids of a seeded uniform sample of `k` rows (all when k >= total)."""
    if k >= total:
        return np.arange(total, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(total, size=k, replace=False)).astype(np.int64)


# --- the index type ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexSpec:
    """What kind of index a space gets (recorded in `{image,text}.json` beside the index)."""

    kind: str  # "flat" (exact) or "ivf" (IVF-PQ by default, or the configured IVF factory)
    factory: str  # the faiss index_factory string
    rows: int
    dim: int
    nlist: int = 0
    pq_m: int = 0
    nprobe: int = 0
    train_rows: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def _pow2_near(x: float) -> int:
    return 1 << max(0, round(math.log2(max(x, 1.0))))


def default_pq_m(dim: int) -> int:
    """The largest divisor of `dim` that is at most dim/8 (64 bytes per 512-d vector)."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1


def choose(rows: int, dim: int, cfg) -> IndexSpec:
    """The index for `rows` embeddings of `dim` dimensions under `cfg` (an `IndexConfig`):
    exact up to `cfg.exact_max_rows`, else IVF-PQ (or `cfg.factory`)."""
    if rows <= cfg.exact_max_rows:
        return IndexSpec("flat", "Flat", rows, dim)
    train = min(rows, cfg.train_rows)
    if cfg.factory:
        nlist = _factory_nlist(cfg.factory)
        if not nlist:
            raise ValueError(f"index.factory {cfg.factory!r}: an IVF index is needed for a large space (e.g. 'IVF4096_HNSW32,PQ64x8'); "
                             f"raise index.exact_max_rows for exact search instead")
        return IndexSpec("ivf", cfg.factory, rows, dim, nlist=nlist, nprobe=min(cfg.nprobe, nlist), train_rows=train)
    nlist = cfg.nlist or max(64, min(_pow2_near(2 * math.sqrt(rows)), _pow2_floor(train // 39)))
    m = cfg.pq_m or default_pq_m(dim)
    if dim % m:
        raise ValueError(f"index.pq_m={m} does not divide the embedding dimension {dim}")
    return IndexSpec("ivf", f"IVF{nlist}_HNSW32,PQ{m}x8", rows, dim, nlist=nlist, pq_m=m,
                     nprobe=min(cfg.nprobe, nlist), train_rows=train)  # fmt: skip


def _pow2_floor(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1) if x >= 1 else 1


def _factory_nlist(factory: str) -> int:
    head = factory.split(",")[0]
    if head.startswith("IVF"):
        digits = "".join(ch for ch in head[3:].split("_")[0] if ch.isdigit())
        return int(digits) if digits else 0
    return 0


# --- building ----------------------------------------------------------------------------------------


def new_index(spec: IndexSpec) -> faiss.Index:
    return faiss.index_factory(spec.dim, spec.factory, faiss.METRIC_INNER_PRODUCT)


def train(spec: IndexSpec, sample: np.ndarray, seed: int = 0) -> faiss.Index:
    """An empty index of `spec` whose quantizers are trained on `sample` (float32 rows)."""
    index = new_index(spec)
    ivf = _ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = max(256, -(-len(sample) // max(1, ivf.nlist)))
        ivf.nprobe = spec.nprobe or 1
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    if pq is not None:
        pq.cp.seed = seed
        # 64 points per codebook centroid (16,384 rows for 8-bit codes) train the codebooks as well
        # as faiss's default 256 for a quarter of the time: one k-means per sub-vector, serial
        pq.cp.max_points_per_centroid = 64
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def add_sources(index: faiss.Index, srcs: Sequence[Source], with_ids: bool) -> faiss.Index:
    """Add the files' rows to `index` in chunks (with their global ids for an IVF index)."""
    for first, block in iter_chunks(srcs):
        if with_ids:
            index.add_with_ids(block, np.arange(first, first + len(block), dtype=np.int64))
        else:
            index.add(block)
    return index


def build_flat(spec: IndexSpec, srcs: Sequence[Source]) -> faiss.Index:
    """The exact index of every row, in id order."""
    index = new_index(spec)
    return add_sources(index, srcs, with_ids=False)


def merge(trained: faiss.Index, parts: Sequence[faiss.Index]) -> faiss.Index:
    """One IVF index holding the inverted lists of every part (each built from a copy of
    `trained`, with global ids): lists are moved, codes are not recomputed."""
    index = faiss.clone_index(trained)
    ivf = _ivf(index)
    for part in parts:
        ivf.merge_from(_ivf(part), 0)
    return index


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


# --- (de)serialising through fsspec --------------------------------------------------------------------


def write_index(index: faiss.Index, path: str) -> None:
    fsio.write_bytes_atomic(path, faiss.serialize_index(index).tobytes())


def read_index(path: str) -> faiss.Index:
    local = _local(path)
    if local is not None:
        return faiss.read_index(local)
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))


# --- searching -----------------------------------------------------------------------------------------


def search_params(index: faiss.Index, allowed: np.ndarray | None = None, nprobe: int | None = None):
    """faiss search parameters: the allowed rows as a bitmap (None: every row) and, for IVF
    indexes, how many lists to visit. Returns (params, keep-alive): the bitmap's memory must
    live as long as the parameters are used."""
    bitmap = None
    sel = None
    if allowed is not None:
        bitmap = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
        sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
    ivf = _ivf(index)
    if ivf is not None:
        params = faiss.SearchParametersIVF(sel=sel, nprobe=int(nprobe or ivf.nprobe)) if sel is not None else \
            faiss.SearchParametersIVF(nprobe=int(nprobe or ivf.nprobe))  # fmt: skip
    else:
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
    return params, (bitmap, sel)


def search(index: faiss.Index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
           nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k nearest allowed rows per query; missing results have id -1."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    params, _keep = search_params(index, allowed, nprobe)
    k = max(1, min(int(k), max(1, index.ntotal)))
    return index.search(q, k, params=params) if params is not None else index.search(q, k)


def range_search(index: faiss.Index, query: np.ndarray, min_score: float, allowed: np.ndarray | None = None,
                 nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of every allowed row with score > `min_score`, best first (clip-retrieval's
    `filter`: a query and a threshold make a subset)."""
    q = np.ascontiguousarray(np.atleast_2d(query)[:1], dtype=np.float32)
    params, _keep = search_params(index, allowed, nprobe)
    lims, scores, ids = index.range_search(q, float(min_score), params=params) if params is not None else \
        index.range_search(q, float(min_score))  # fmt: skip
    order = np.argsort(-scores[lims[0] : lims[1]], kind="stable")
    return scores[order], ids[order]
