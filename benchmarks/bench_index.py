"""kNN index build time, query latency, recall and memory on synthetic CLIP-like embeddings.

    python benchmarks/bench_index.py [--sizes 1000000 10000000] [--dim 512] [--queries 200]

For each size, 512-d embeddings are written as float16 `.npy` shards of 100k rows (the layout the
score stage writes, clip-retrieval's `img_emb/`), drawn around 20,000 random centres so that
neighbourhoods exist (cosine to the centre ~0.75), as CLIP embeddings cluster. The index is built
the way the index stage builds it (`laion_pipe.knn`: the `knn.choose` rule, IVF-PQ trained on a
seeded sample, each Dask task encoding a slice of the files, lists merged), never holding the
float matrix. Then, for held-out queries of the same distribution:

- recall@10 against exact search (a streamed float32 scan over the files), for the index's own
  scores and after re-scoring its top 100 from the stored embeddings (what `serve` does);
- latency p50 / p95 of one query at a time on one thread (as `serve` runs them), with and
  without that re-scoring;
- the baseline, measured in the same run: exact search, as a flat index in memory at 1M (its
  latency; ratio = flat p95 / IVF p95), and as the streamed scan per query at 10M (a flat index
  of 10M x 512 floats would need 20 GB);
- memory: the index's size, the query process's RSS growth when loading it, the Dask workers'
  peak RSS while building.

Published reference (autofaiss's README, as clip-retrieval uses it): 200M vectors, 1 TB of
embeddings, built in about 3 hours in 15 GB of memory, queries in about 10 ms. The machine this
runs on is shared with other jobs: timings vary between runs; the ratio is measured in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from laion_pipe import knn
from laion_pipe.config.index import IndexConfig

ROWS_PER_FILE = 100_000
N_CENTRES = 20_000
NOISE = 0.039  # per-dimension sd at 512-d: cosine to the centre ~ 1/sqrt(1 + 0.039^2 * 512) ~ 0.75


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def centres(dim: int, seed: int = 0) -> np.ndarray:
    return _normalise(np.random.default_rng(seed).standard_normal((N_CENTRES, dim)).astype(np.float32))


def draw(c: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(len(c), size=n)
    noise = rng.standard_normal((n, c.shape[1]), dtype=np.float32) * np.float32(NOISE * np.sqrt(512 / c.shape[1]))
    return _normalise(c[idx] + noise)


def write_embeddings(folder: Path, n: int, dim: int) -> list[str]:
    """float16 shards img_emb_NNNNN.npy of ROWS_PER_FILE rows (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    c = centres(dim)
    paths = []
    for i in range(-(-n // ROWS_PER_FILE)):
        p = folder / f"img_emb_{i:05d}.npy"
        rows = min(ROWS_PER_FILE, n - i * ROWS_PER_FILE)
        if not p.exists() or knn.npy_shape(str(p)) != (rows, dim):
            np.save(p, draw(c, rows, np.random.default_rng(1000 + i)).astype(np.float16))
        paths.append(str(p))
    return paths


def exact_topk(srcs: list[knn.Source], q: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-k ids by a streamed scan (float32 math on the float16 files); also its seconds."""
    t0 = time.perf_counter()
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for first, block in knn.iter_chunks(srcs):
        s = q @ block.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else np.tile(np.arange(s.shape[1]), (len(q), 1))
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, top + first], axis=1)
        keep = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_i, keep, axis=1)
    return best_i, time.perf_counter() - t0


def recall(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train(spec_json: dict, sources: list, path: str, seed: int) -> float:
    spec = knn.IndexSpec(**spec_json)
    srcs = [knn.Source(*s) for s in sources]
    t = time.perf_counter()
    ids = knn.sample_ids(spec.rows, spec.train_rows, seed)
    knn.write_index(knn.train(spec, knn.read_rows(srcs, ids), seed=seed), path)
    return time.perf_counter() - t


def _add(trained: str, sources: list, path: str) -> float:
    t = time.perf_counter()
    index = knn.read_index(trained)
    knn.add_sources(index, [knn.Source(*s) for s in sources], with_ids=True)
    knn.write_index(index, path)
    return time.perf_counter() - t


def build(client, spec: knn.IndexSpec, srcs: list[knn.Source], work: Path, rows_per_task: int) -> dict:
    """Train on a worker, add slices on the workers, merge here; seconds per phase."""
    t0 = time.perf_counter()
    trained = str(work / "trained.index")
    as_tuples = [(s.path, s.rows, s.offset) for s in srcs]
    client.submit(_train, spec.to_json(), as_tuples, trained, 0, pure=False).result()
    t_train = time.perf_counter() - t0
    chunks, cur, n = [], [], 0
    for s in as_tuples:
        if cur and n + s[1] > rows_per_task:
            chunks.append(cur)
            cur, n = [], 0
        cur.append(s)
        n += s[1]
    chunks.append(cur)
    parts = [str(work / f"part-{i:05d}.index") for i in range(len(chunks))]
    futs = [client.submit(_add, trained, c, p, pure=False) for c, p in zip(chunks, parts)]
    client.gather(futs)
    t_add = time.perf_counter() - t0 - t_train
    index = knn.merge(knn.read_index(trained), (knn.read_index(p) for p in parts))
    final = str(work / "image.index")
    knn.write_index(index, final)
    t_total = time.perf_counter() - t0
    peak = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"train_s": round(t_train, 1), "add_s": round(t_add, 1), "merge_s": round(t_total - t_train - t_add, 1),
            "build_s": round(t_total, 1), "add_tasks": len(chunks), "worker_peak_rss_mb": round(max(peak.values())),
            "index_path": final}  # fmt: skip


def latencies(fn, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    ids, times = [], []
    for q in queries:
        t = time.perf_counter()
        ids.append(fn(q[None, :]))
        times.append((time.perf_counter() - t) * 1000)
    return np.array(ids), times


def pct(times: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2)}


def read_rows_warm(srcs: list[knn.Source]) -> None:
    """Touch every embedding file once, as a page that has served a few queries has: the re-scoring
    reads 100 rows from the embedding files, which should be measured from the page cache, not
    from a disk the build has just evicted."""
    for _ in knn.iter_chunks(srcs):
        pass


def bench_size(n: int, dim: int, n_queries: int, root: Path, client, cfg: IndexConfig, nprobes: list[int]) -> dict:
    print(f"--- {n:,} x {dim} embeddings", flush=True)
    t = time.perf_counter()
    paths = write_embeddings(root / f"emb_{n}_{dim}", n, dim)
    srcs = knn.sources(paths)
    print(f"embeddings ready ({len(paths)} files, {sum(os.path.getsize(p) for p in paths) / 2**30:.1f} GiB float16) "
          f"in {time.perf_counter() - t:.0f}s", flush=True)  # fmt: skip
    spec = knn.choose(n, dim, cfg)
    print(f"index: {spec.factory} (nlist {spec.nlist}, {spec.pq_m} bytes/vector, train on {spec.train_rows:,}, nprobe {spec.nprobe})", flush=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix="build-"))
    result: dict = {"rows": n, "dim": dim, "factory": spec.factory, "nprobe": spec.nprobe}
    result.update(build(client, spec, srcs, work, cfg.rows_per_task))
    print(f"built in {result['build_s']}s (train {result['train_s']}s, add {result['add_s']}s on {result['add_tasks']} tasks, "
          f"merge {result['merge_s']}s); worker peak RSS {result['worker_peak_rss_mb']} MB", flush=True)  # fmt: skip

    rng = np.random.default_rng(7)
    queries = draw(centres(dim), n_queries, rng)
    truth, scan_s = exact_topk(srcs, queries, 10)
    result["exact_scan_ms_per_query"] = round(scan_s / n_queries * 1000, 1)
    rss0 = _rss_mb()
    index = knn.read_index(result.pop("index_path"))
    result["index_mb"] = round(os.path.getsize(work / "image.index") / 2**20)
    result["query_rss_growth_mb"] = round(_rss_mb() - rss0)

    import faiss

    faiss.omp_set_num_threads(1)  # as serve queries: one at a time, one thread (see serve/searcher.py)
    from laion_pipe.serve.searcher import rerank

    def reranked(q, nprobe=None):
        _, ids = knn.search(index, q, 100, nprobe=nprobe)
        ids = ids[0][ids[0] >= 0]
        return rerank(srcs, q, ids)[1][:10]

    read_rows_warm(srcs)
    # the latency / recall trade-off a user sets with index.nprobe (or per query on the page); the
    # default nprobe's entry is the headline figure
    result["nprobe_sweep"] = []
    for nprobe in sorted({p for p in nprobes if p <= spec.nlist} | {spec.nprobe}):
        f1, t1 = latencies(lambda q: knn.search(index, q, 10, nprobe=nprobe)[1][0], queries)
        f2, t2 = latencies(lambda q: reranked(q, nprobe), queries)
        entry = {"nprobe": nprobe, "ivf": {**pct(t1), "recall@10": round(recall(f1, truth), 4)},
                 "ivf_rerank100": {**pct(t2), "recall@10": round(recall(f2, truth), 4)}}
        result["nprobe_sweep"].append(entry)
        if nprobe == spec.nprobe:
            result["ivf"], result["ivf_rerank100"] = entry["ivf"], entry["ivf_rerank100"]
        print(f"  nprobe {nprobe:4d}: p95 {entry['ivf']['p95_ms']:7.2f} ms recall@10 {entry['ivf']['recall@10']:.3f}; "
              f"re-scored p95 {entry['ivf_rerank100']['p95_ms']:7.2f} ms recall@10 {entry['ivf_rerank100']['recall@10']:.3f}",
              flush=True)  # fmt: skip

    if n * dim * 4 <= 4 * 2**30:  # an exact flat index fits in memory: the baseline is its latency
        flat = knn.build_flat(knn.IndexSpec("flat", "Flat", n, dim), srcs)
        found, times = latencies(lambda q: flat.search(q, 10)[1][0], queries)
        result["flat_baseline"] = {**pct(times), "recall@10": round(recall(found, truth), 4)}
        result["ratio_flat_p95_over_ivf_p95"] = round(result["flat_baseline"]["p95_ms"] / max(result["ivf"]["p95_ms"], 1e-6), 1)
        del flat
    else:
        result["ratio_exact_scan_over_ivf_p95"] = round(result["exact_scan_ms_per_query"] / max(result["ivf"]["p95_ms"], 1e-6), 1)
    result["driver_peak_rss_mb"] = round(_peak_rss_mb())
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1), flush=True)
    return result


def plot(results: list[dict], path: str) -> None:
    """Recall@10 against p95 latency over the nprobe sweep, one line per size and mode: where a
    user would set index.nprobe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        sweep = r.get("nprobe_sweep") or []
        for mode, style in (("ivf", "o-"), ("ivf_rerank100", "s--")):
            xs = [p[mode]["p95_ms"] for p in sweep]
            ys = [p[mode]["recall@10"] for p in sweep]
            ax.plot(xs, ys, style, label=f"{r['rows']:,} {'re-scored top 100' if mode != 'ivf' else 'PQ scores'}")
            for p, x, y in zip(sweep, xs, ys):
                ax.annotate(str(p["nprobe"]), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.axvline(50, color="grey", lw=0.8, ls=":", label="50 ms (the p95 bound at 1M)")
    ax.set_xscale("log")
    ax.set_xlabel("query p95 (ms, one thread)")
    ax.set_ylabel("recall@10 vs exact search")
    ax.set_title("IVF-PQ: recall against latency by nprobe (labels)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--work", default=None, help="folder for the embeddings (kept for later runs); default: a temporary one")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nprobes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256], help="IVF lists per query to sweep")
    ap.add_argument("--plot", default="bench_index.png", help="where the recall / latency plot goes")
    ap.add_argument("--train-rows", type=int, default=None, help="index.train_rows (default: the index config's)")
    ap.add_argument("--nlist", type=int, default=None, help="index.nlist (default: the rule)")
    args = ap.parse_args()
    cfg = IndexConfig(**{k: v for k, v in (("train_rows", args.train_rows), ("nlist", args.nlist)) if v is not None})
    if small := [n for n in args.sizes if n <= cfg.exact_max_rows]:
        ap.error(f"--sizes {small}: up to index.exact_max_rows={cfg.exact_max_rows:,} rows the index is exact (nothing to "
                 f"train, no recall to measure); this benchmark measures the IVF index: give sizes above it")
    from distributed import Client, LocalCluster

    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-index-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared with other jobs); work in {root}")
    results = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit="8GB",
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
        for n in args.sizes:
            results.append(bench_size(n, args.dim, args.queries, root, client, cfg, args.nprobes))
    for r in results:
        base = r.get("flat_baseline")
        line = (f"{r['rows']:,} x {r['dim']}: build {r['build_s']}s, query p50 {r['ivf']['p50_ms']} ms p95 {r['ivf']['p95_ms']} ms "
                f"(recall@10 {r['ivf']['recall@10']}); with rerank p95 {r['ivf_rerank100']['p95_ms']} ms "
                f"(recall@10 {r['ivf_rerank100']['recall@10']}); index {r['index_mb']} MB")  # fmt: skip
        if base:
            line += f"; ratio: exact flat p95 {base['p95_ms']} ms / IVF p95 = {r['ratio_flat_p95_over_ivf_p95']}"
        else:
            line += f"; ratio: exact streamed scan {r['exact_scan_ms_per_query']} ms/query / IVF p95 = {r['ratio_exact_scan_over_ivf_p95']}"
        print(line)
    plot(results, args.plot)
    if not args.work:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
