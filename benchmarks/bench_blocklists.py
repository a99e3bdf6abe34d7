"""A URL-hash list at the size it comes in: the dedup stage with a list of `--hashes` SHA-256
digests, against loading the whole list into one process (what the stage did before issue 21).

    python benchmarks/bench_blocklists.py [--hashes 1e8] [--rows 200000]

Writes a list of `--hashes` random hex SHA-256 digests (65 bytes a line: 6.5 GB for 1e8) with
the digests of every 20th candidate URL among them, and `--rows` generated candidates, then:
- runs the whole dedup stage on a LocalCluster of `--workers` processes (1 thread, `--memory-limit`
  each): seconds of its phases, CPU, the peak memory of each worker (ru_maxrss) and that it
  removed exactly the listed URLs;
- the baseline, in a child process: the list read line by line into one set of digests (bytes),
  as `blocklists.load_url_hashes` did, for up to `--baseline-max` digests (its memory grows with
  the list; the figure per digest is given, so the full list's need can be read off).
Last line: `ratio: <the baseline's memory for the whole list / the stage's largest worker peak>`.
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def write_list(path: Path, n: int, listed: list[bytes], seed: int = 0) -> None:
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    rng = np.random.default_rng(seed)
    where = dict(zip(rng.choice(n, size=len(listed), replace=False).tolist(), listed))
    with open(path, "wb") as f:
        for start in range(0, n, 1_000_000):
            m = min(1_000_000, n - start)
            d = rng.integers(0, 256, size=(m, 32), dtype=np.uint8)
            for i in [i for i in where if start <= i < start + m]:
                d[i - start] = np.frombuffer(where[i], dtype=np.uint8)
            text = np.empty((m, 65), dtype=np.uint8)
            text[:, 0:64:2], text[:, 1:64:2], text[:, 64] = hexdigits[d >> 4], hexdigits[d & 15], ord("\n")
            f.write(text.tobytes())


def _old_load(path: str, limit: int, q) -> None:
    """The pre-issue-21 loader: every line into one Python set of digests."""
    start = _rss()
    t0, c0 = time.perf_counter(), time.process_time()
    found: set[bytes] = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if n >= limit:
                break
            line = line.strip()
            if line and not line.startswith("#"):
                found.add(bytes.fromhex(line.replace(",", " ").split()[0].lower()))
    q.put((len(found), time.perf_counter() - t0, time.process_time() - c0, _hwm() - start))


def old_load(path: Path, limit: int) -> tuple[int, float, float, int]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_old_load, args=(str(path), limit, q))
    p.start()
    r = q.get()
    p.join()
    return r


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split(f"{field}:")[1].split()[0]) * 1024


def _rss() -> int:
    return _status("VmRSS")


def _hwm() -> int:
    """This process's peak resident memory (VmHWM: its own, not inherited at fork)."""
    return _status("VmHWM")


def _base() -> int:
    """What a worker holds once the stage's code is imported, before any task."""
    import laion_pipe.stages.dedup  # noqa: F401

    return _rss()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hashes", type=float, default=1e8)
    ap.add_argument("--rows", type=int, default=200_000, help="candidates")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="2GB")
    ap.add_argument("--baseline-max", type=float, default=1e7, help="digests the one-process baseline loads at most")
    args = ap.parse_args()
    n = int(args.hashes)

    from distributed import Client, LocalCluster

    from laion_pipe import runner
    from laion_pipe.config import workflow_from_dict
    from laion_pipe.runner import Outcome
    from laion_pipe.schema import CANDIDATE_SCHEMA, SUBSETS
    from laion_pipe.stages import dedup

    import pyarrow as pa
    import pyarrow.compute as pc

    from laion_pipe import fsio

    tmp = Path(tempfile.mkdtemp(prefix="bench_blocklists_"))
    try:
        out = tmp / "run"
        rng = np.random.default_rng(1)
        u = rng.integers(0, args.rows, size=args.rows)
        urls = pc.binary_join_element_wise("https://h", pa.array(u % 1000).cast(pa.string()), ".example/",
                                           pa.array(u).cast(pa.string()), ".jpg", "")
        t = pa.table({"uid": pa.array(np.arange(args.rows)).cast(pa.string()), "url": urls,
                      "text": pa.array(["a caption"] * args.rows), "page_url": pa.array(["https://p/"] * args.rows),
                      "language": pa.array(["en"] * args.rows), "language_score": pa.array(np.full(args.rows, 0.5, np.float32)),
                      "subset": pa.array([SUBSETS[0]] * args.rows), "license": pa.nulls(args.rows, pa.string()),
                      "source": pa.nulls(args.rows, pa.string())},
                     schema=CANDIDATE_SCHEMA)
        fsio.write_parquet_atomic(t, str(out / "candidates/en/part-00000.parquet"))
        runner.write_manifest(str(out), "extract", "part-00000", fingerprint="x", inputs=[],
                              outcome=Outcome(outputs=["candidates/en/part-00000.parquet"]))
        runner.write_plan(str(out), "extract", [runner.Partition("part-00000", (), "x")])
        distinct = sorted(set(urls.to_pylist()))
        listed = distinct[::20]
        path = tmp / "sha256.txt"
        t0 = time.perf_counter()
        write_list(path, n, [hashlib.sha256(x.encode()).digest() for x in listed])
        print(f"list: {n:,} SHA-256 digests, {path.stat().st_size / 1e9:.2f} GB of text (written in "
              f"{time.perf_counter() - t0:.0f}s); {args.rows:,} candidates, {len(listed):,} of their URLs listed")

        wf = workflow_from_dict({"dedup": {"blocked_url_hashes": [str(path)]}, "runner": {"progress": False, "retries": 0}})
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=args.memory_limit,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            base = max(client.run(_base).values())
            pids = client.run(os.getpid)
            cpu0 = client.run(lambda: sum(os.times()[:2]))
            t0 = time.perf_counter()
            rep = dedup.run(str(out), wf, client)
            wall = time.perf_counter() - t0
            cpu = sum(v - cpu0[a] for a, v in client.run(lambda: sum(os.times()[:2])).items())
            peaks = client.run(_hwm)
            assert client.run(os.getpid) == pids, "a worker was restarted (over its memory limit)"
        assert rep.complete, rep.failed
        assert rep.counts["url_hash_matches"] == len(listed), rep.counts
        blocked = sum(c.get("blocked_url_hash", 0) for c in rep.drops.values())
        assert blocked == sum(x in set(listed) for x in urls.to_pylist())
        peak = max(peaks.values())
        phases = {r: runner.read_plan(str(out), r) for r in (dedup.LISTS_STAGE, dedup.HASHES_STAGE)}
        print(f"stage: {wall:.0f} s wall, {cpu:.0f} core-s in the workers ({cpu / n * 1e9 / 1e3:.2f} core-s per million "
              f"digests), {len(phases[dedup.HASHES_STAGE])} join tasks (digest ranges); removed {blocked:,} rows")
        print(f"  peak memory per worker {peak / 2**20:,.0f} MiB (a worker holds {base / 2**20:,.0f} MiB before any task; "
              f"limit {args.memory_limit}); no worker restarted")
        limit = int(min(n, args.baseline_max))
        got, bwall, bcpu, grown = old_load(path, limit)
        per = grown / got
        print(f"baseline, the list loaded into one process (as before): {got:,} digests in {bwall:.0f} s ({bcpu:.0f} CPU-s), "
              f"{grown / 2**20:,.0f} MiB more = {per:.0f} bytes per digest; the whole list: about "
              f"{(base + per * n) / 2**30:,.1f} GiB per worker process and {bcpu * n / got:,.0f} CPU-s per worker")
        print(f"ratio: {(base + per * n) / peak:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
