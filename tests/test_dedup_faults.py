"""The dedup stage survives being killed (issue 21): a worker SIGKILLed in the middle of a reduce
task, and the driver SIGKILLed (with its whole LocalCluster) between phases. Every phase is
resumable per partition, so the rerun redoes only what was not done, and `unique/` comes out
byte-identical to an undisturbed run's.

The candidates are generated (numpy, a fixed seed) with enough rows and partitions that the
stage is caught mid-way: one bucketing task per file, 12 reduce tasks that spill to local disk
(3 fine buckets each), about 60 parts.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_pipe import fsio, runfiles, runner
from laion_pipe.config import workflow_from_dict
from laion_pipe.runner import Outcome
from laion_pipe.schema import CANDIDATE_SCHEMA, SUBSETS
from laion_pipe.stages import dedup

pytestmark = pytest.mark.slow

SETTINGS = {"n_buckets": 36, "coarse_buckets": 12, "rows_per_part": 4000, "group_target_bytes": 1}
TIMEOUT = 300


def write_candidates(out: Path, files: int = 18, rows: int = 14_000, seed: int = 5) -> None:
    """Candidate files recorded as done extract partitions; about 40% of the rows repeat a URL."""
    rng = np.random.default_rng(seed)
    plan = []
    for f in range(files):
        subset = SUBSETS[f % 3]
        u = rng.integers(0, int(files * rows * 0.6), size=rows)
        us = pa.array(u).cast(pa.string())
        t = pa.table({
            "uid": pa.array(rng.integers(0, 2**62, size=rows)).cast(pa.string()),
            "url": pa.compute.binary_join_element_wise("https://h", pa.array(u % 997).cast(pa.string()), ".example/", us, ".jpg", ""),
            "text": pa.compute.binary_join_element_wise("caption ", us, ""),
            "page_url": pa.array(["https://p.example/"] * rows),
            "language": pa.array(["en"] * rows),
            "language_score": pa.array(np.full(rows, 0.5, np.float32)),
            "subset": pa.array([subset] * rows),
            "license": pa.nulls(rows, pa.string()),
            "source": pa.nulls(rows, pa.string()),
        }, schema=CANDIDATE_SCHEMA)
        key = f"part-{f:05d}"
        rel = f"candidates/{subset}/{key}.parquet"
        fsio.write_parquet_atomic(t, str(out / rel))
        runner.write_manifest(str(out), "extract", key, fingerprint=key, inputs=[], outcome=Outcome(outputs=[rel]))
        plan.append(runner.Partition(key, (), key))
    runner.write_plan(str(out), "extract", plan)


def unique_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "unique").rglob("*.parquet"))}


def finished(out: Path) -> dict[tuple[str, str], float]:
    """(phase, key) -> finish time of every done partition of the dedup stage's phases."""
    found = {}
    for phase in dedup.PHASES:
        for p in (out / "_state" / phase).glob("[!_.]*.json") if (out / "_state" / phase).exists() else ():
            m = fsio.read_json(str(p))  # manifests are written atomically: a final name is complete
            if m.get("status") == "done":
                found[(phase, p.stem)] = m["finished"]
    return found


def wf_of():
    return workflow_from_dict({"dedup": SETTINGS, "runner": {"progress": False, "retries": 2}})


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    from distributed import Client, LocalCluster

    out = tmp_path_factory.mktemp("reference")
    write_candidates(out)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        rep = dedup.run(str(out), wf_of(), client)
    assert rep.complete and rep.counts["scratch_files"] > 0  # the reduce tasks spilled
    parts = unique_bytes(out)
    assert len(parts) > 30
    return parts


def _wait_for(pred, what: str, timeout: float = TIMEOUT) -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_worker_sigkilled_mid_reduce_gives_the_same_unique(reference, tmp_path):
    from distributed import Client, LocalCluster

    out = tmp_path / "run"
    write_candidates(out)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="2GB",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        reports, errors = [], []

        def go():
            try:
                reports.append(dedup.run(str(out), wf_of(), client))
            except BaseException as e:  # noqa: BLE001 - surfaced below
                errors.append(e)

        th = threading.Thread(target=go)
        th.start()

        def busy_reducer():
            for addr, keys in client.processing().items():
                if any(str(k).startswith(f"{dedup.REDUCE_STAGE}-") for k in keys):
                    return addr
            return None

        _wait_for(lambda: busy_reducer() is not None or not th.is_alive(), "a reduce task on a worker")
        assert th.is_alive(), (reports, errors)
        before = finished(out)
        addr = busy_reducer()
        pid = client.run(os.getpid, workers=[addr])[addr]
        os.kill(pid, signal.SIGKILL)
        th.join(TIMEOUT)
    assert not th.is_alive() and not errors, errors
    assert reports[0].complete, reports[0].failed
    after = finished(out)
    assert {k: after.get(k) for k in before} == before, "a partition finished before the kill was redone"
    assert unique_bytes(out) == reference


def _cli(out: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "laion_pipe", "dedup", "--out", str(out), "--no-progress",
            "--set", "cluster.n_workers=2", "--set", "runner.retries=2",
            *[a for k, v in SETTINGS.items() for a in ("--set", f"dedup.{k}={v}")]]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)


def test_driver_sigkilled_mid_stage_then_rerun_redoes_only_unfinished(reference, tmp_path):
    out = tmp_path / "run"
    write_candidates(out)
    proc = _cli(out)

    def some_reduced():
        return any(phase == dedup.REDUCE_STAGE for phase, _ in finished(out))

    try:
        _wait_for(lambda: some_reduced() or proc.poll() is not None, "a finished reduce task")
        assert proc.poll() is None, proc.stdout.read()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its LocalCluster, at once
        proc.wait(30)
    before = finished(out)
    assert len([k for k in before if k[0] == dedup.REDUCE_STAGE]) < SETTINGS["coarse_buckets"], "the stage was not caught mid-way"
    for p in out.rglob("*"):  # no half-written file under a final name
        if p.is_file() and not p.name.startswith(".tmp-"):
            if p.suffix == ".parquet":
                pq.read_table(p)
            elif p.suffix == ".run":
                runfiles.read_info(str(p))
    rerun = _cli(out)
    log, _ = rerun.communicate(timeout=TIMEOUT)
    assert rerun.returncode == 0, log
    after = finished(out)
    assert {k: after.get(k) for k in before} == before, "a partition finished before the kill was redone"
    assert unique_bytes(out) == reference
    assert not (out / dedup.WORK_DIR).exists()  # complete: the work files are gone
