"""laion_pipe.knn against brute force in numpy: the index rule, the distributed IVF-PQ build
(train on a sample, add per slice, merge), filtered and range search, reading rows by id."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from laion_pipe import knn
from laion_pipe.config.index import IndexConfig

# Several test processes share two cores: OpenMP teams spin-waiting for each other made this
# module take minutes instead of seconds (the Dask workers that build indexes get one thread too).
faiss.omp_set_num_threads(1)


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((max(4, n // 30), dim)).astype(np.float32)
    x = c[rng.integers(len(c), size=n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    x = _clustered(6000, 32, 0)
    paths, at = [], 0
    for i, n in enumerate((2500, 0, 1500, 2000)):  # an empty file too (a shard with no image scored)
        p = root / f"img_emb_{i:05d}.npy"
        np.save(p, x[at : at + n].astype(np.float16))
        paths.append(str(p))
        at += n
    return paths, x.astype(np.float16).astype(np.float32)


def test_the_index_rule():
    cfg = IndexConfig()
    assert knn.choose(200_000, 512, cfg).kind == "flat"
    big = knn.choose(1_000_000, 512, cfg)
    assert (big.kind, big.nlist, big.pq_m, big.factory) == ("ivf", 2048, 64, "IVF2048_HNSW32,PQ64x8")
    assert knn.choose(10_000_000, 512, cfg).nlist == 2048  # at most train_rows / 39 lists (100,000 / 39 -> 2048)
    assert knn.choose(10_000_000, 768, cfg).pq_m == 96 and knn.default_pq_m(100) == 10
    with pytest.raises(ValueError, match="IVF index is needed"):
        knn.choose(10**6, 512, IndexConfig(factory="HNSW32"))
    with pytest.raises(ValueError, match="does not divide"):
        knn.choose(10**6, 512, IndexConfig(pq_m=48))


def test_rows_by_id_in_any_order(files):
    paths, x = files
    srcs = knn.sources(paths)
    assert [s.offset for s in srcs] == [0, 2500, 2500, 4000] and sum(s.rows for s in srcs) == 6000
    ids = np.array([5999, 0, 2500, 2499, 4000, 17])
    np.testing.assert_array_equal(knn.read_rows(srcs, ids), x[ids])
    assert sorted(set(knn.sample_ids(6000, 100, 3).tolist())) == knn.sample_ids(6000, 100, 3).tolist()
    assert len(knn.sample_ids(6000, 100, 3)) == 100 and knn.sample_ids(10, 100, 3).tolist() == list(range(10))


def _brute(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    s = q @ x.T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def test_distributed_ivfpq_build_holds_every_row_once_and_finds_neighbours(files, tmp_path):
    paths, x = files
    srcs = knn.sources(paths)
    # 4-bit codes: the same build path as the default 8-bit ones, with codebooks 16x cheaper to train
    spec = knn.choose(6000, 32, IndexConfig(exact_max_rows=100, factory="IVF16_HNSW32,PQ8x4", train_rows=3000))
    trained = knn.train(spec, knn.read_rows(srcs, knn.sample_ids(6000, spec.train_rows, 0)), seed=0)
    knn.write_index(trained, str(tmp_path / "trained.index"))
    parts = []
    for chunk in (srcs[:2], srcs[2:]):  # as two Dask tasks would: each its own copy of the trained index
        part = knn.read_index(str(tmp_path / "trained.index"))
        parts.append(knn.add_sources(part, chunk, with_ids=True))
    index = knn.merge(trained, parts)
    assert index.ntotal == 6000
    ivf = faiss.extract_index_ivf(index)
    held = np.concatenate([faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i)).copy()
                           for i in range(ivf.nlist)])  # fmt: skip
    assert sorted(held.tolist()) == list(range(6000))
    q = _clustered(6000, 32, 0)[::97][:50]  # the same clusters, not the same points
    truth = _brute(x, q, 10)
    _, found = knn.search(index, q, 10, nprobe=16)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    from laion_pipe.serve.searcher import rerank

    reranked = [rerank(srcs, qi, knn.search(index, qi, 100, nprobe=16)[1][0])[1][:10] for qi in q]
    recall_rr = np.mean([len(set(f.tolist()) & set(t)) / 10 for f, t in zip(reranked, truth)])
    assert recall >= 0.3 and recall_rr >= 0.95, (recall, recall_rr)  # 4-bit codes are coarse; re-scoring is exact


def test_filtered_and_range_search_match_brute_force(files):
    paths, x = files
    flat = knn.build_flat(knn.IndexSpec("flat", "Flat", 6000, 32), knn.sources(paths))
    q = x[[10, 3000]]
    allowed = np.zeros(6000, dtype=bool)
    allowed[::3] = True
    scores, ids = knn.search(flat, q, 7, allowed)
    np.testing.assert_array_equal(ids, _brute(x, q, 7, allowed))
    assert allowed[ids].all()
    s, i = knn.range_search(flat, q[0], 0.6, allowed)
    expected = np.flatnonzero(((x @ q[0]) > 0.6) & allowed)
    assert sorted(i.tolist()) == sorted(expected.tolist()) and (np.diff(s) <= 0).all()


def test_reading_rows_maps_nothing_into_the_process(tmp_path):
    """A training sample spread over large embedding files must not leave those files resident in
    the reader: Dask's memory monitor counts a worker's mapped pages, and a memory-mapped read of a
    100,000-row sample of 10M embeddings took workers past their limit (the nanny restarted them)."""
    import psutil

    rows, dim = 131_072, 512  # 128 MiB of float16
    p = tmp_path / "img_emb_00000.npy"
    np.save(p, np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float16))
    srcs = knn.sources([str(p)])
    ids = knn.sample_ids(rows, 2000, seed=1)  # one row in 64: every 64 kB of the file
    proc = psutil.Process()
    before = proc.memory_info().rss
    got = knn.read_rows(srcs, ids)
    streamed = sum(len(b) for _, b in knn.iter_chunks(srcs, rows=16_384))  # each block dropped after use
    grown = proc.memory_info().rss - before
    np.testing.assert_array_equal(got, np.load(p)[ids].astype(np.float32))
    assert streamed == rows
    # the sample is 4 MiB of float32; a mapping with the kernel's fault-around would make the
    # whole 128 MiB file resident
    assert grown < 48 * 2**20, f"resident memory grew by {grown / 2**20:.0f} MiB"


def test_a_truncated_embedding_file_is_a_clear_error(tmp_path):
    p = tmp_path / "img_emb_00000.npy"
    np.save(p, np.ones((1000, 16), np.float16))
    srcs = knn.sources([str(p)])
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size - 100)
    with pytest.raises(OSError, match="short read"):
        knn.read_rows(srcs, np.array([999]))
