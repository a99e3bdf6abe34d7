"""Stats throughput against a named baseline, on a generated run directory.

    python benchmarks/bench_stats.py [--rows 1500000] [--files 12]

Baseline "pandas": read the needed columns of every metadata file of a subset into one
DataFrame and compute the same table values and top domains with pandas (what one writes without
the stage; it needs a whole subset in one process's memory). Ours: `laion_pipe.stats.compute` on
a LocalCluster of 2 worker processes: Dask sums per partition, nothing but the results reach the
driver. Both produce the same table (checked).

Same number of processes on both sides: the baseline runs one subset per process in a pool of
`--processes` (default 2, the Dask side's worker count; the 3 subsets are equal in size, so 2
processes do 2 then 1). `--processes 1` gives the single-process baseline (in one pool process
too, so its memory is measured the same way). Prints rows/s and
memory of each (baseline: peak RSS of its largest process; ours: the driver's peak RSS growth),
then `ratio: ours rows/s / baseline rows/s` (higher is better).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from laion_pipe.config.stats import StatsConfig
from laion_pipe.schema import DATASET_SCHEMA, SUBSETS
from laion_pipe.stats import compute
from laion_pipe.stats.partials import domains

WORDS = np.array("a photo of the red blue cat dog house tree on in with my new best cheap sale".split())


def make_run(root: Path, rows: int, files: int, seed: int = 0) -> None:
    """dataset/{subset}/NNNNN.parquet with `rows` pairs per subset over `files` files each."""
    rng = np.random.default_rng(seed)
    per_file = rows // files
    for subset in SUBSETS:
        d = root / "dataset" / subset
        d.mkdir(parents=True)
        for f in range(files):
            n = per_file
            nwords = rng.integers(1, 25, n)
            texts = [" ".join(WORDS[rng.integers(0, len(WORDS), k)]) for k in nwords]
            host = rng.zipf(1.5, n) % 20000
            urls = [f"https://{'www.' if h % 3 == 0 else ''}host{h}.example.com/img/{i}.jpg" for i, h in enumerate(host)]
            table = pa.table({
                "URL": urls, "TEXT": texts,
                "WIDTH": rng.integers(64, 3000, n).astype("int32"), "HEIGHT": rng.integers(64, 3000, n).astype("int32"),
                "similarity": rng.uniform(0.2, 0.45, n).astype("float32"),
                "hash": rng.integers(-2**62, 2**62, n), "punsafe": rng.uniform(0, 1, n).astype("float32"),
                "pwatermark": rng.uniform(0, 1, n).astype("float32"),
                "LANGUAGE": rng.choice(["de", "fr", "es", "ja"], n) if subset == "multi" else [subset if subset == "en" else None] * n,
                "aesthetic": rng.uniform(3, 7, n).astype("float32"), "key": [f"{f:05d}{i:04d}" for i in range(n)],
                "uid": [f"{f}-{i}" for i in range(n)], "subset": [subset] * n,
            }, schema=DATASET_SCHEMA)
            pq.write_table(table, d / f"{f:05d}.parquet", row_group_size=100_000)


def pandas_subset(root: Path, subset: str, cfg: StatsConfig) -> tuple[dict, int]:
    """One subset's table values, computed by loading it whole into one pandas DataFrame, and
    this process's peak RSS in bytes."""
    df = pd.read_parquet(root / "dataset" / subset, columns=["URL", "TEXT", "WIDTH", "HEIGHT", "punsafe", "pwatermark"])
    w, h = df["WIDTH"], df["HEIGHT"]
    ps = df["punsafe"].dropna()
    pw = df["pwatermark"].dropna()
    row = {
        "count": len(df),
        **{f"gt{n}": int(((w >= n) & (h >= n)).sum()) for n in (256, 512, 1024)},
        "nsfw_pct": round(100 * float((ps > np.float32(cfg.nsfw_threshold)).mean()), 4),
        "watermark_pct": round(100 * float((pw > np.float32(cfg.watermark_threshold)).mean()), 4),
        "avg_text_len": round(float(df["TEXT"].str.len().mean()), 4),
        "top_domain": domains(df["URL"]).value_counts().index[0],
    }
    return row, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _warm(_: int) -> None:
    time.sleep(0.2)  # so each pool process gets one: all started and importing before the clock starts


def pandas_baseline(root: Path, cfg: StatsConfig, processes: int) -> tuple[dict[str, dict], int, float]:
    """The table, one subset per process in a pool of `processes`, the largest peak RSS of a
    process that did the work (bytes) and the seconds it took. The pool is started before the
    clock starts, as the Dask side's workers are."""
    # spawn: a fresh interpreter per process, so its peak RSS is its own work's
    with cf.ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_warm, range(processes)))
        t = time.perf_counter()
        rows = dict(zip(SUBSETS, pool.map(pandas_subset, [root] * len(SUBSETS), SUBSETS, [cfg] * len(SUBSETS))))
        seconds = time.perf_counter() - t
    return {s: r for s, (r, _) in rows.items()}, max(peak for _, peak in rows.values()), seconds


class PeakRSS:
    """The process's peak resident memory growth while the block runs (sampled every 10 ms)."""

    def __enter__(self):
        self.proc = psutil.Process(os.getpid())
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def grown_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_500_000, help="pairs per subset")
    ap.add_argument("--files", type=int, default=12, help="parquet files per subset")
    ap.add_argument("--processes", type=int, default=2, help="baseline processes (ours: 2 Dask worker processes)")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="bench-stats-"))
    try:
        t = time.perf_counter()
        make_run(tmp / "run", args.rows, args.files)
        total = args.rows // args.files * args.files * len(SUBSETS)
        print(f"generated {total:,} pairs in {args.files * len(SUBSETS)} files ({time.perf_counter() - t:.1f} s)")
        cfg = StatsConfig()

        base, base_peak, t_base = pandas_baseline(tmp / "run", cfg, args.processes)
        print(f"baseline pandas, one subset per process, {args.processes} process(es): {t_base:.2f} s, "
              f"{total / t_base:,.0f} rows/s, peak RSS of its largest process {base_peak / 2**20:,.0f} MiB")

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                          memory_limit="4GB") as cluster, Client(cluster) as client:
            client.run(lambda: None)  # workers up before timing
            with PeakRSS() as mem_ours:
                t = time.perf_counter()
                result = compute(str(tmp / "run"), cfg, client)
                t_ours = time.perf_counter() - t
        print(f"laion_pipe.stats.compute (LocalCluster 2x1): {t_ours:.2f} s, {total / t_ours:,.0f} rows/s, "
              f"driver RSS +{mem_ours.grown_mib:,.0f} MiB")

        for s in result.subsets:
            row = s.row()
            want = base[s.subset]
            got = {k: row[k] for k in want if k != "top_domain"} | {"top_domain": s.domains[0][0]}
            assert got == want, (s.subset, got, want)
        print("tables agree:", ", ".join(f"{s.subset} {s.counts.count:,}" for s in result.subsets))
        print(f"ratio: {t_base / t_ours:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
