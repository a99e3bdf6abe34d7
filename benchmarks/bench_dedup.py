"""Dedup stage at growing sizes: files, bytes, memory per worker and CPU per million candidates,
against pyarrow holding every row in one process.

    python benchmarks/bench_dedup.py --rows 1e6,4e6,16e6 [--dup 0.4] [--workers 2] [--record]

For each size it generates candidates (`--rows-per-file` rows a file, as extract writes them, each
recorded as a done extract partition) and runs the whole stage on a fresh LocalCluster of
`--workers` worker processes (1 thread each, `--memory-limit` each), then prints:
- files and bytes the stage wrote (its work files, survivors and parts; the reduce tasks' local
  spill files counted apart), files per million candidates, ranged reads of the work files;
- peak memory per worker (the kernel's ru_maxrss of each worker process: short spikes count);
- CPU seconds per million candidates (user + sys of the workers, plus the driver's planning);
- the baseline, "pyarrow in one process" (in a child process, so its peak is its own): every
  file in one table, the stage's own per-bucket rule (`dedup_rows.dedup_table`) on it, cut into
  parts: the cost of the shuffle, the files and Dask. Both must give the same rows per subset
  (checked), and `ratio` is baseline seconds / stage seconds (wall clock; higher is better).

The last line is `growth: files F, memory M`: files per million candidates and the largest
worker's peak memory at the largest size, each divided by the same at the smallest size (both
must stay <= 1.2: neither may grow with the input).
The defaults cut buckets small (`--bucket-target-mb 16`, `--coarse-buckets 4`) so that, as at
crawl scale, there are many more buckets than reduce tasks at the larger sizes and the reduce
tasks spill to local disk.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from laion_pipe import clean, fsio, runner
from laion_pipe.config import workflow_from_dict
from laion_pipe.runner import Outcome
from laion_pipe.schema import CANDIDATE_SCHEMA, SUBSETS
from laion_pipe.stages import dedup


def _hex16(rng: np.random.Generator, n: int) -> pa.Array:
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nib = rng.integers(0, 16, size=(n, 16), dtype=np.uint8)
    return pa.array(np.ascontiguousarray(digits[nib]).view("S16").ravel()).cast(pa.string())


def make_candidates(out: Path, rows: int, rows_per_file: int, dup: float, seed: int = 0) -> int:
    """`rows` candidates, `rows_per_file` a file over the three subsets; about `dup` of them repeat an
    earlier URL. Each file is recorded as a done extract partition (stages read their upstream's
    current plan). Returns the number of rows written."""
    rng = np.random.default_rng(seed)
    n_urls = max(1, int(rows * (1 - dup)))
    n_files = max(len(SUBSETS), -(-rows // rows_per_file))
    per_file = rows // n_files
    plan, written = [], 0
    for f in range(n_files):
        subset = SUBSETS[f % len(SUBSETS)]
        u = rng.integers(0, n_urls, size=per_file)
        us = pa.array(u).cast(pa.string())
        host = pc.binary_join_element_wise("https://host", pa.array(u % 5000).cast(pa.string()), "")
        t = pa.table({
            "uid": _hex16(rng, per_file),
            "url": pc.binary_join_element_wise(host, ".example.com/images/", us, "/photo.jpg", ""),
            "text": pc.binary_join_element_wise("a photo of item ", us, " number ",
                                                pa.array(rng.integers(0, 4, per_file)).cast(pa.string()), ""),
            "page_url": pc.binary_join_element_wise(host, ".example.com/p/", us, ""),
            "language": pa.array(["en" if subset == "en" else None] * per_file, pa.string()),
            "language_score": pa.array(np.full(per_file, 0.5, np.float32)),
            "subset": pa.array([subset] * per_file, pa.string()),
            "license": pa.nulls(per_file, pa.string()),
            "source": pa.nulls(per_file, pa.string()),
        }, schema=CANDIDATE_SCHEMA)
        key = f"part-{f:05d}"
        rel = f"candidates/{subset}/{key}.parquet"
        fsio.write_parquet_atomic(t, str(out / rel))
        runner.write_manifest(str(out), "extract", key, fingerprint=key, inputs=[], outcome=Outcome(outputs=[rel]))
        plan.append(runner.Partition(key, (), key))
        written += per_file
    runner.write_plan(str(out), "extract", plan)
    return written


def _baseline(out: str, rows_per_part: int, q) -> None:
    """pyarrow in one process (a child process: its peak memory is its own)."""
    t0, c0 = time.perf_counter(), time.process_time()
    t = pa.concat_tables([pq.read_table(p) for p in sorted(Path(out, "candidates").glob("*/*.parquet"))])
    t = t.append_column(dedup.HASH_COL, pa.array(dedup.url_hash64(t["url"]), pa.uint64()))
    t = dedup.dedup_table(t, "url", Outcome()).drop_columns([dedup.HASH_COL])
    kept = {}
    dest = Path(out, "baseline")
    dest.mkdir()
    for subset in SUBSETS:
        g = t.filter(pc.equal(t["subset"], subset))
        for i in range(0, len(g), rows_per_part):
            pq.write_table(g.slice(i, rows_per_part), dest / f"{subset}-{i // rows_per_part:05d}.parquet", compression="zstd")
        kept[subset] = len(g)
    q.put((time.perf_counter() - t0, time.process_time() - c0, kept, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def baseline(out: Path, rows_per_part: int) -> tuple[float, float, dict, int]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_baseline, args=(str(out), rows_per_part, q))
    p.start()
    result = q.get()
    p.join()
    shutil.rmtree(out / "baseline", ignore_errors=True)
    return result


def _p2p_reduce(df, out: str, n_buckets: int, partition_info=None):
    """One output partition of the p2p shuffle: the stage's per-bucket rule on each bucket in it,
    survivors written per subset; returns the rows kept per subset."""
    import pandas as pd

    t = pa.Table.from_pandas(df.drop(columns=["_bucket"]), preserve_index=False).cast(
        pa.schema(list(CANDIDATE_SCHEMA) + [pa.field(dedup.HASH_COL, pa.uint64())]))
    b = df["_bucket"].to_numpy()
    kept = {s: 0 for s in SUBSETS}
    for bucket in np.unique(b):
        rows = dedup.dedup_table(t.filter(pa.array(b == bucket)), "url", Outcome()).drop_columns([dedup.HASH_COL])
        for subset in SUBSETS:
            part = rows.filter(pc.equal(rows["subset"], subset))
            if len(part):
                fsio.write_parquet_atomic(part, f"{out}/p2p/{subset}/b{int(bucket):05d}.parquet")
                kept[subset] += len(part)
    return pd.DataFrame([kept])


def _p2p_read(path: str, n_buckets: int):
    import pandas as pd

    t = pq.read_table(path)
    h = dedup.url_hash64(t["url"])
    t = t.append_column(dedup.HASH_COL, pa.array(h, pa.uint64()))
    t = t.append_column("_bucket", pa.array(dedup.bucket_of(h, n_buckets), pa.int64()))
    return t.to_pandas(types_mapper=pd.ArrowDtype)


def p2p(out: Path, n_buckets: int, args) -> dict:
    """The same rows, buckets and per-bucket rule through Dask's p2p shuffle (dask.dataframe
    `shuffle(shuffle_method="p2p")`: workers exchange shards and spill them to local disk), on the
    same kind of cluster. Its spill files are counted by watching the workers' local directories."""
    import threading

    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    import dask

    files = sorted(str(p) for p in (out / "candidates").glob("*/*.parquet"))
    # A worker lost (over its memory limit) restarts the whole shuffle: report it instead of retrying.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=args.memory_limit,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        dirs = list(client.run(lambda dask_worker: dask_worker.local_directory).values())
        seen: set[str] = set()
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                for d in dirs:
                    for root, _, names in os.walk(d):
                        if "shuffle" in root:
                            seen.update(os.path.join(root, n) for n in names)
                stop.wait(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        cpu0, pids0 = client.run(_cpu), client.run(os.getpid)
        t0, c0 = time.perf_counter(), time.process_time()
        ddf = dd.from_map(_p2p_read, files, n_buckets=n_buckets)
        shuffled = ddf.shuffle(on="_bucket", npartitions=n_buckets, shuffle_method="p2p")
        kept = shuffled.map_partitions(_p2p_reduce, str(out), n_buckets, meta={s: "int64" for s in SUBSETS}).compute().sum()
        wall, dcpu = time.perf_counter() - t0, time.process_time() - c0
        cpu1, peaks, pids1 = client.run(_cpu), client.run(_peak_rss), client.run(os.getpid)
        stop.set()
        watcher.join()
    shutil.rmtree(out / "p2p", ignore_errors=True)
    restarts = len(set(pids0.values()) - set(pids1.values()))  # a restarted worker's CPU and peak are lost
    return {"wall": wall, "cpu": sum(cpu1[a] - cpu0.get(a, 0) for a in cpu1) + dcpu, "peak": max(peaks.values()),
            "spill_files": len(seen), "kept": {s: int(kept[s]) for s in SUBSETS}, "restarts": restarts}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def files_and_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def run_size(tmp: Path, rows: int, args) -> dict:
    out = tmp / f"run-{rows}"
    n = make_candidates(out, rows, args.rows_per_file, args.dup)
    cand_files, cand_bytes = files_and_bytes(out / "candidates")
    wf = workflow_from_dict({"dedup": {"rows_per_part": args.rows_per_part, "coarse_buckets": args.coarse_buckets,
                                       "bucket_target_bytes": int(args.bucket_target_mb * 2**20)},
                             "runner": {"progress": False, "retries": 0}})
    from distributed import Client, LocalCluster

    real_remove = clean.remove_work
    clean.remove_work = lambda out, stage: (0, 0)  # keep the work files to count them
    try:
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=args.memory_limit,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            cpu0, pids0 = client.run(_cpu), client.run(os.getpid)
            t0, c0 = time.perf_counter(), time.process_time()
            rep = dedup.run(str(out), wf, client)
            wall = time.perf_counter() - t0
            driver_cpu = time.process_time() - c0
            cpu1, peaks, pids1 = client.run(_cpu), client.run(_peak_rss), client.run(os.getpid)
    finally:
        clean.remove_work = real_remove
    assert rep.complete, rep.failed
    assert pids0 == pids1, "a worker was restarted (memory limit?): its figures are lost"
    work_files, work_bytes = files_and_bytes(out / dedup.WORK_DIR)
    part_files, part_bytes = files_and_bytes(out / "unique")
    stage_cpu = sum(cpu1[a] - cpu0[a] for a in cpu0) + driver_cpu
    result = {
        "rows": n, "candidate_files": cand_files, "candidate_bytes": cand_bytes, "wall": wall, "cpu": stage_cpu,
        "driver_cpu": driver_cpu,
        "files": work_files + part_files, "bytes": work_bytes + part_bytes, "work_files": work_files,
        "part_files": part_files, "scratch_files": rep.counts["scratch_files"], "scratch_bytes": rep.counts["scratch_bytes"],
        "ranged_reads": rep.counts["ranged_reads"], "peak": max(peaks.values()), "kept": dict(rep.kept),
        "n_buckets": rep.counts["n_buckets"], "n_coarse": rep.counts["n_coarse"],
    }
    report(result, args)
    if n <= args.baseline_max_rows:
        base_wall, base_cpu, base_kept, base_peak = baseline(out, args.rows_per_part)
        assert base_kept == result["kept"], (base_kept, result["kept"])
        print(f"  baseline pyarrow in one process: wall {base_wall:.1f} s, CPU {base_cpu:.1f} s, "
              f"peak memory {base_peak / 2**20:,.0f} MiB")
        print(f"  ratio: {base_wall / wall:.2f} (wall, pyarrow / stage); CPU {base_cpu / stage_cpu:.2f}", flush=True)
    if args.p2p:
        try:
            q = p2p(out, result["n_buckets"], args)
        except Exception as e:  # noqa: BLE001 - a failed alternative is a finding, not a crash of the benchmark
            print(f"  Dask p2p shuffle, same buckets and rule: FAILED ({type(e).__name__}: {str(e)[:300]})", flush=True)
        else:
            assert q["kept"] == result["kept"], (q["kept"], result["kept"])
            print(f"  Dask p2p shuffle, same buckets and rule: wall {q['wall']:.1f} s, CPU {q['cpu'] / n * 1e6:.2f} core-s per "
                  f"million rows, peak memory per worker {q['peak'] / 2**20:,.0f} MiB (restarts {q['restarts']}), "
                  f"{q['spill_files']:,} spill files seen (local, deleted at its end); stage / p2p: CPU "
                  f"{stage_cpu / q['cpu']:.2f}, wall {wall / q['wall']:.2f}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return result


def report(r: dict, args) -> None:
    m = r["rows"] / 1e6
    print(f"rows {r['rows']:,} ({r['candidate_files']} candidate files, {r['candidate_bytes'] / 1e6:,.0f} MB): "
          f"{r['n_buckets']} buckets in {r['n_coarse']} reduce tasks, unique {sum(r['kept'].values()):,}")
    print(f"  files written {r['files']:,} ({r['work_files']:,} work + {r['part_files']:,} parts; "
          f"{r['files'] / m:,.1f} per million rows), bytes written {r['bytes'] / 1e6:,.0f} MB; "
          f"local spill {r['scratch_files']:,} files, {r['scratch_bytes'] / 1e6:,.0f} MB; "
          f"ranged reads {r['ranged_reads']:,} ({r['ranged_reads'] / m:,.0f} per million rows)")
    print(f"  peak memory per worker {r['peak'] / 2**20:,.0f} MiB; CPU {r['cpu']:.1f} core-s = "
          f"{r['cpu'] / m:.2f} core-s per million rows (driver and scheduler {r['driver_cpu']:.1f}); "
          f"wall {r['wall']:.1f} s ({args.workers} workers x 1 thread)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1e6,4e6,16e6", help="comma-separated sizes (candidates)")
    ap.add_argument("--rows-per-file", type=int, default=125_000, help="candidates per file (a WAT file gives 60k-120k)")
    ap.add_argument("--dup", type=float, default=0.4, help="share of rows repeating a URL")
    ap.add_argument("--rows-per-part", type=int, default=10_000)
    ap.add_argument("--bucket-target-mb", type=float, default=16, help="dedup.bucket_target_bytes, in MiB")
    ap.add_argument("--coarse-buckets", type=int, default=4, help="dedup.coarse_buckets")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (1 thread each)")
    ap.add_argument("--memory-limit", default="3GB", help="per worker (the nanny restarts a worker over 95%%)")
    ap.add_argument("--baseline-max-rows", type=float, default=16e6, help="skip the one-process baseline above this size")
    ap.add_argument("--p2p", action="store_true",
                    help="also run the same rows, buckets and per-bucket rule through Dask's p2p shuffle (the alternative "
                         "design: it moves shards between workers and spills them to their local disks)")
    ap.add_argument("--record", action="store_true",
                    help="write the largest size's CPU seconds per million candidates to laion_pipe/unit_costs.json "
                         "(dedup.core_seconds_per_million_candidates, read by `laion-pipe run --dry-run`)")
    args = ap.parse_args()
    sizes = [int(float(x)) for x in args.rows.split(",")]
    args.baseline_max_rows = int(args.baseline_max_rows)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as tmp:
        for rows in sizes:
            results.append(run_size(Path(tmp), rows, args))
    if args.record:
        from laion_pipe.costs import measured_source, record_unit_cost

        big = results[-1]
        if big["scratch_bytes"]:
            record_unit_cost(
                "dedup.spill_bytes_per_candidate_byte", big["scratch_bytes"] / big["candidate_bytes"],
                "bytes a reduce task spills to local disk per byte of candidate parquet",
                measured_source(f"benchmarks/bench_dedup.py --rows {args.rows} --record",
                                f"local spill files of the stage's reduce tasks over the candidates' parquet bytes, "
                                f"{big['rows']:,} generated candidates"))
        record_unit_cost(
            "dedup.core_seconds_per_million_candidates", big["cpu"] / big["rows"] * 1e6, "core-s per million candidate rows",
            measured_source(f"benchmarks/bench_dedup.py --rows {args.rows} --record",
                            f"CPU seconds (user + sys) of the stage's worker processes ({args.workers} x 1 thread) and "
                            f"its driver over {big['rows']:,} generated candidates ({big['n_buckets']} buckets, "
                            f"{big['n_coarse']} reduce tasks, spilling to local disk)"))
        print("recorded dedup.core_seconds_per_million_candidates in laion_pipe/unit_costs.json")
    first, last = results[0], results[-1]
    growth_files = (last["files"] / last["rows"]) / (first["files"] / first["rows"])
    growth_memory = last["peak"] / first["peak"]
    print(f"growth: files {growth_files:.2f}, memory {growth_memory:.2f}")


if __name__ == "__main__":
    main()
