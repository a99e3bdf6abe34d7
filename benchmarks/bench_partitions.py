"""A run with tens of thousands of partitions: planning, manifests, `laion-pipe status` and the
stats (funnel included), at 20,000 inputs against the same at 2,000.

    python benchmarks/bench_partitions.py [--inputs 2000,20000] [--workers 2]

A crawl is about 90,000 WAT files, one extract partition each. For each size, in a fresh child
process (so its peak memory is its own), the benchmark makes that many tiny input files and
times, on a LocalCluster of `--workers` processes whose scheduler runs in the driver, as
`laion-pipe run` does:
- plan: extract's planning (list the inputs, one identity each, `runner.write_plan`);
- run: `runner.run_stage` of a stand-in extract over the inputs (one Dask task per input, each
  writing a tiny candidates file and its manifest): the runner's own cost per partition;
- rerun: the same again with every partition done (what a resumed run pays before any work);
- dedup plan: the dedup stage's planning over the candidate files (`runner.current` + sizes);
- status: `laion-pipe status DIR --json` as a user runs it (a subprocess; its own peak memory);
- stats: `laion_pipe.stats.compute` of the run directory (the funnel of every manifest).
It prints seconds per step, the driver's peak memory (ru_maxrss: the plan, the scheduler's task
states and every step's lists), then, for the largest size against the smallest, the growth of
the total seconds and of the driver's peak memory, and as its last line
`ratio: <seconds growth / input growth>` of everything but the run's tasks (1 = linear; under 1: less).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _fake_extract(part, out, wf):
    """A stand-in for extract: a tiny candidates file and the counts a real one reports."""
    import pyarrow as pa

    from laion_pipe import fsio
    from laion_pipe.runner import Outcome
    from laion_pipe.schema import CANDIDATE_SCHEMA

    subset = ("en", "multi", "nolang")[int(part.key.rpartition("-")[2]) % 3]
    rel = f"candidates/{subset}/{part.key}.parquet"
    rows = [{"uid": f"{part.key}-{i}", "url": f"https://h{i}.example/{part.key}.jpg", "text": "a caption",
             "page_url": "https://p.example/", "language": "en", "language_score": 0.5, "subset": subset,
             "license": None} for i in range(2)]
    fsio.write_parquet_atomic(pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA), fsio.join(out, rel))
    o = Outcome(outputs=[rel])
    o.kept[subset] = 2
    o.drop("no_alt", n=3)
    o.counts["pages"] = 4
    return o


STATUS = """
import atexit, runpy, sys
atexit.register(lambda: print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0], file=sys.stderr))
sys.argv = ["laion-pipe", "status", sys.argv[1], "--json"]
runpy.run_module("laion_pipe", run_name="__main__")
"""
"""`laion-pipe status DIR --json`, printing its own peak memory (VmHWM, kB) last on stderr."""


def _hwm() -> int:
    """This process's peak resident memory in bytes (VmHWM: its own, not inherited at fork)."""
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) * 1024


def _size(n: int, workers: int, q) -> None:
    from distributed import Client, LocalCluster

    from laion_pipe import runner
    from laion_pipe.config import workflow_from_dict
    from laion_pipe.stages import dedup, extract
    from laion_pipe.stats import compute

    tmp = Path(tempfile.mkdtemp(prefix="bench_partitions_"))
    inputs = tmp / "inputs"
    inputs.mkdir()
    for i in range(n):
        (inputs / f"CC-MAIN-x-{i:06d}.warc.wat.gz").write_bytes(b"x" * 64)
    out = str(tmp / "run")
    wf = workflow_from_dict({"inputs": [str(inputs / "*.warc.wat.gz")], "runner": {"progress": False}})
    times: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        r = fn()
        times[name] = time.perf_counter() - t0
        return r

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        parts = timed("plan", lambda: extract.plan(out, wf))
        rep = timed("run", lambda: runner.run_stage("extract", parts, _fake_extract, out, wf, client))
        assert rep.done == n and not rep.failed, rep.failed[:3]
        rep = timed("rerun", lambda: runner.run_stage("extract", extract.plan(out, wf), _fake_extract, out, wf, client))
        assert rep.skipped == n
        buckets, _ = timed("dedup plan", lambda: dedup.plan_buckets(out, wf))
        assert sum(len(p.inputs) for p in buckets) == n
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", STATUS, out], capture_output=True, text=True, check=False)
        times["status"] = time.perf_counter() - t0
        status = json.loads(proc.stdout)
        status_peak = int(proc.stderr.strip().splitlines()[-1]) * 1024
        assert len(status["extract"]["done"]) == n, {k: len(v) for k, v in status["extract"].items()}
        result = timed("stats", lambda: compute(out, wf.stats, client))
        funnel = {f.stage: f for f in result.funnel}
        assert funnel["extract"].done == n and sum(funnel["extract"].kept.values()) == 2 * n
    q.put({"n": n, "times": times, "driver_peak": _hwm(), "status_peak": status_peak})
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def bookkeeping(r: dict) -> float:
    """Seconds of everything but the run's tasks themselves (Dask's cost per task, not the pipeline's)."""
    return sum(v for k, v in r["times"].items() if k != "run")


def measure(n: int, workers: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_size, args=(n, workers, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", default="2000,20000", help="comma-separated numbers of inputs (partitions)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    sizes = [int(float(x)) for x in args.inputs.split(",")]
    results = []
    for n in sizes:
        r = measure(n, args.workers)
        results.append(r)
        t = r["times"]
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in t.items())
        print(f"{n:,} inputs: {steps}; plan + rerun + dedup plan + status + stats {bookkeeping(r):.1f}s "
              f"({bookkeeping(r) / n * 1e3:.2f} ms per input); the run's Dask tasks {t['run'] / n * 1e3:.1f} ms per input")
        print(f"  driver peak memory {r['driver_peak'] / 2**20:,.0f} MiB; `laion-pipe status` peak memory "
              f"{r['status_peak'] / 2**20:,.0f} MiB")
    small, big = results[0], results[-1]
    k = big["n"] / small["n"]
    secs = bookkeeping(big) / bookkeeping(small)
    mem = big["driver_peak"] / small["driver_peak"]
    print(f"{big['n']:,} against {small['n']:,} inputs ({k:.0f}x): seconds {secs:.2f}x, driver peak memory {mem:.2f}x, "
          f"status peak memory {big['status_peak'] / small['status_peak']:.2f}x; per step: "
          + ", ".join(f"{s} {big['times'][s] / max(small['times'][s], 1e-9):.1f}x" for s in big["times"]))
    print(f"ratio: {secs / k:.2f}")  # seconds growth of the bookkeeping / input growth


if __name__ == "__main__":
    main()
