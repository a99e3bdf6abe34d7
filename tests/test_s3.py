"""Run directories on S3: the runner's atomic writes, manifests and resume through s3fs,
against a moto S3 server on 127.0.0.1 (no traffic leaves the machine)."""
from __future__ import annotations

import pytest

from laion_pipe import fsio
from laion_pipe.config import workflow_from_dict
from laion_pipe.runner import Outcome, Partition, fingerprint, run_stage, stage_status
from s3_stub import moto_s3


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3("laion-test") as endpoint:
        yield endpoint


def _stage(part: Partition, out: str, wf) -> Outcome:
    src = part.inputs[0]
    fs, p = fsio.fs_and_path(src)
    with fs.open(p, "rb") as f:
        data = f.read()
    rel = f"toy/{part.key}.bin"
    with fsio.atomic_open(fsio.join(out, rel)) as f:
        f.write(data[::-1])
    o = Outcome()
    o.kept["en"] += 1
    o.outputs.append(rel)
    return o


def test_run_directory_on_s3(s3_endpoint, dask_client):
    import s3fs

    fs = s3fs.S3FileSystem(anon=False)
    for i in range(2):
        fs.pipe(f"laion-test/in/{i}.bin", f"payload-{i}".encode())
    inputs = fsio.glob("s3://laion-test/in/*.bin")
    assert inputs == ["s3://laion-test/in/0.bin", "s3://laion-test/in/1.bin"]
    parts = [Partition(f"part-{i:05d}", (p,), fingerprint(fsio.fingerprint_of(p))) for i, p in enumerate(inputs)]
    out = "s3://laion-test/run"
    wf = workflow_from_dict({"runner": {"progress": False}})
    rep = run_stage("toy", parts, _stage, out, wf, dask_client)
    assert rep.done == 2 and not rep.failed
    assert fs.cat("laion-test/run/toy/part-00001.bin") == b"1-daolyap"
    assert not [k for k in fs.find("laion-test/run") if k.rpartition("/")[2].startswith(fsio.TMP_PREFIX)]
    assert stage_status(out, "toy")["done"] == ["part-00000", "part-00001"]
    rep2 = run_stage("toy", parts, _stage, out, wf, dask_client)
    assert (rep2.done, rep2.skipped) == (0, 2)


def test_extract_then_dedup_on_an_s3_run_directory(s3_endpoint, dask_client, cc_samples, tmp_path):
    """The real stages on `s3://` (inputs and run directory): the same unique/ rows as a local run,
    no temporary file left, dedup's work files gone once it completes, resumable (a rerun skips)."""
    import s3fs
    import pyarrow.parquet as pq

    from laion_pipe.pipeline import run_stages

    fs = s3fs.S3FileSystem(anon=False)
    names = ["CC-MAIN-2014-35-excerpt.warc.wat.gz", "CC-MAIN-2024-22-whirlwind.warc.wat.gz"]
    for name in names:
        fs.put(str(cc_samples / name), f"laion-test/wat/{name}")

    def run(out: str, inputs: list[str]):
        wf = workflow_from_dict({"inputs": inputs, "runner": {"progress": False, "retries": 0}})
        return run_stages(wf, out, ["extract", "dedup"], dask_client)

    def unique(out: str) -> list[dict]:
        rows = []
        for path in fsio.glob(fsio.join(out, "unique", "*", "*.parquet")):
            f, p = fsio.fs_and_path(path)
            with f.open(p, "rb") as fh:
                rows += pq.read_table(fh).to_pylist()
        return sorted(rows, key=lambda r: r["uid"])

    out = "s3://laion-test/run-ed"
    reports = run(out, ["s3://laion-test/wat/*.wat.gz"])
    assert all(not r.failed for r in reports) and reports[0].planned == 2
    local = str(tmp_path / "local")
    assert all(not r.failed for r in run(local, [str(cc_samples / n) for n in names]))
    got = unique(out)
    assert got and got == unique(local)
    assert not [k for k in fs.find("laion-test/run-ed") if k.rpartition("/")[2].startswith(fsio.TMP_PREFIX)]
    assert not fs.find("laion-test/run-ed/_work/dedup")
    assert stage_status(out, "dedup")["pending"] == [] and stage_status(out, "extract")["done"] == ["part-00000", "part-00001"]
    again = run(out, ["s3://laion-test/wat/*.wat.gz"])
    assert [r.done for r in again] == [0, 0] and unique(out) == got
