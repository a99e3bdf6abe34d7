"""Peak memory per worker on inputs ten times larger than the tests' usual ones.

    python benchmarks/bench_memory.py [--scale 10]

Builds a demo world `--scale` times the size of the one the fault tests use (72 image
references) and runs every stage on a LocalCluster of 2 worker processes with the default
per-worker budget (`cluster.memory_limit`, 2 GB). Each worker's peak resident memory is read from
the kernel (`ru_maxrss`) at the end, so short spikes count too. Prints the peaks per worker and,
as its last line, `ratio: <largest worker peak / budget>` (must stay below 1).

A worker the nanny restarted (over 95% of its budget, or crashed) starts a new process whose
peak knows nothing of the old one's, so the ratio alone would hide exactly the failure measured
here: every worker that left the scheduler during the run is counted (a scheduler plugin) and
any restart fails the benchmark (exit status 1, `ratio: inf`).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from dask.utils import parse_bytes
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from laion_pipe.demo.run import demo_workflow
from laion_pipe.demo.world import WorldSpec, build_world
from laion_pipe.pipeline import PIPELINE_STAGES, run_stages


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


class WorkerExits(SchedulerPlugin):
    """Counts the workers that leave the scheduler (restarted by their nanny, or dead)."""

    name = "bench-memory-worker-exits"

    def __init__(self) -> None:
        self.exits: list[str] = []

    def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
        self.exits.append(worker)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10, help="world size relative to the fault tests' (12 pages x 6 images)")
    ap.add_argument("--budget", default="2GB", help="per-worker memory budget (cluster.memory_limit)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    budget = parse_bytes(args.budget)
    try:
        spec = WorldSpec(n_pages=12 * args.scale, images_per_page=6, n_wat_files=3 * args.scale, seed=7)
        t = time.perf_counter()
        with build_world(tmp / "world", spec) as world:
            print(f"world: {len(world.truth)} image references in {len(world.wat_paths)} WAT files "
                  f"(built in {time.perf_counter() - t:.0f}s)")
            wf = demo_workflow(world.wat_paths, str(tmp / "run"), ["runner.progress=false", f"cluster.memory_limit={args.budget}"])
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=budget,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
                exits = WorkerExits()
                cluster.scheduler.add_plugin(exits)  # the scheduler runs in this process
                pids = client.run(os.getpid)
                t = time.perf_counter()
                reports = run_stages(wf, str(tmp / "run"), PIPELINE_STAGES, client)
                elapsed = time.perf_counter() - t
                peaks = client.run(peak_rss)
                now = client.run(os.getpid)
                restarts = sorted(set(exits.exits) | {a for a in pids if now.get(a) != pids[a]})
        assert not any(r.failed for r in reports), [r.failed for r in reports]
        for r in reports:
            print(f"  {r.stage:>8}: {r.planned} partitions, kept {sum(r.kept.values()):,}, {r.seconds:.1f}s")
        print(f"all stages in {elapsed:.0f}s; per-worker budget {budget / 2**30:.2f} GiB")
        for addr, peak in sorted(peaks.items()):
            print(f"  worker {addr}: peak RSS {peak / 2**20:,.0f} MiB")
        print(f"driver peak RSS {peak_rss() / 2**20:,.0f} MiB")
        print(f"worker restarts during the run: {len(restarts)}" + (f" ({', '.join(restarts)})" if restarts else ""))
        if restarts:
            print("FAILED: a restarted worker's peak is lost, and its budget was exceeded or it crashed")
            print("ratio: inf")
            return 1
        print(f"ratio: {max(peaks.values()) / budget:.2f}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
