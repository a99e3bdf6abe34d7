"""Scaling: extract + dedup of the same generated WATs on a LocalCluster of 1 worker and of 2
workers (1 thread each, separate processes), in the same run.

    python benchmarks/bench_scale.py [--files 8] [--pages 4000]

The baseline is the 1-worker cluster; the last line is `ratio: <1-worker time / 2-worker time>`
(the speed-up; 2.0 is perfect on this 2-core machine). Both runs produce the same candidates and
unique parts (checked). Cluster start-up is excluded: it is paid once per job, not per file.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from distributed import Client, LocalCluster

from laion_pipe.config import workflow_from_dict
from laion_pipe.demo.watgen import random_pages, write_wat
from laion_pipe.pipeline import run_stages


def make_wats(root: Path, files: int, pages: int) -> list[str]:
    paths = []
    for i in range(files):
        p = root / f"gen-{i:05d}.warc.wat.gz"
        write_wat(random_pages(pages, seed=i), str(p), seed=i)
        paths.append(str(p))
    return paths


def one_run(inputs: list[str], out: Path, workers: int) -> float:
    # Dedup's defaults size tasks for crawl-scale input (256 MB groups, 64 MB buckets), which would
    # make this benchmark's few MB a single task; smaller groups and 8 buckets give both workers work.
    wf = workflow_from_dict({"inputs": inputs, "runner": {"progress": False},
                             "dedup": {"rows_per_part": 20_000, "n_buckets": 8, "group_target_bytes": 2_000_000}})
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit="4GB") as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        # warm each worker (imports, language model) so both runs pay the same fixed costs outside the timing
        from laion_pipe.lang import load_model

        client.run(lambda: load_model(None) and None)
        t0 = time.perf_counter()
        reports = run_stages(wf, str(out), ["extract", "dedup"], client)
        dt = time.perf_counter() - t0
    assert all(not r.failed for r in reports), [r.failed for r in reports]
    return dt


def rows(out: Path, folder: str) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in (out / folder).rglob("*.parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8, help="WAT files (partitions)")
    ap.add_argument("--pages", type=int, default=4000, help="pages per WAT file (enough that per-file work, not task overhead, dominates)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        t = time.perf_counter()
        inputs = make_wats(tmp / "wat", args.files, args.pages)
        size = sum(Path(p).stat().st_size for p in inputs)
        print(f"generated {args.files} WATs x {args.pages} pages ({size / 1e6:.1f} MB gz) in {time.perf_counter() - t:.1f}s")
        t1 = one_run(inputs, tmp / "run1", 1)
        t2 = one_run(inputs, tmp / "run2", 2)
        for folder in ("candidates", "unique"):
            a, b = rows(tmp / "run1", folder), rows(tmp / "run2", folder)
            assert a == b, f"{folder}: {a} != {b} rows"
        print(f"pairs extracted: {rows(tmp / 'run1', 'candidates'):,}; unique: {rows(tmp / 'run1', 'unique'):,}")
        print(f"1 worker (baseline): {t1:.2f}s")
        print(f"2 workers:           {t2:.2f}s")
        print(f"ratio: {t1 / t2:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
