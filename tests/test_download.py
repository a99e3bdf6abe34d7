"""The download stage end to end on the misbehaving loopback world: every sample ends with the
right status and reason, the shard is in img2dataset's format, resume and --retry-failed."""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations: no update check

import io  # noqa: E402
import json
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from laion_pipe import runner
from laion_pipe.config import workflow_from_dict
from laion_pipe.demo import imageserver as srv
from laion_pipe.schema import CANDIDATE_SCHEMA, DROP_REASONS
from laion_pipe.stages import download
from servers import ALLOW, MAX_BYTES, jpeg, misbehaving_world
from shards import record_done

pytestmark = pytest.mark.timeout(300)

IMG2DATASET_COLUMNS = ["url", "caption", "key", "status", "error_message", "width", "height", "original_width", "original_height", "sha256"]


def workflow(**download):
    base = dict(
        allow_cidrs=ALLOW, timeout=3.0, connect_timeout=1.0, read_timeout=0.6, retries=1, backoff=0.01,
        max_retry_wait=2.0, max_bytes=MAX_BYTES, max_redirects=4, threads=16, per_host=8,
    )
    base.update(download)
    return workflow_from_dict({"download": base, "runner": {"progress": False, "retries": 0}})


def write_part(out: Path, subset: str, index: int, urls: list[str | None]) -> Path:
    n = len(urls)
    table = pa.table(
        {
            "uid": [f"{subset}-{index}-{i}" for i in range(n)],
            "url": [u if u is not None else "" for u in urls],
            "text": [f"caption number {i} ünïcode" for i in range(n)],
            "page_url": [f"https://example.org/page{i}.html" for i in range(n)],
            "language": ["en" if subset == "en" else "de"] * n,
            "language_score": pa.array([0.93] * n, pa.float32()),
            "subset": [subset] * n,
            "license": [None] * n,
            "source": [None] * n,
        },
        schema=CANDIDATE_SCHEMA,
    )
    path = out / "unique" / subset / f"part-{index:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    record_done(out, "dedup", f"{subset}-part-{index:05d}", [f"unique/{subset}/part-{index:05d}.parquet"])
    return path


@pytest.fixture(scope="module")
def world_shard(tmp_path_factory):
    """The misbehaving world's URLs as one shard (shard number 7), downloaded once."""
    out = tmp_path_factory.mktemp("run")
    with misbehaving_world() as world:
        urls = [world.url(c.path) for c in world.cases] + [None]
        write_part(out, "en", 7, urls)
        wf = workflow()
        (part,) = download.plan(str(out), wf)
        outcome = download.process(part, str(out), wf)
        yield out, world, outcome, part


def rows_by_url(out: Path, subset="en", shard=7) -> dict[str, dict]:
    table = pq.read_table(out / "images" / subset / f"{shard:05d}.parquet")
    return {r["url"]: r for r in table.to_pylist()}


def test_every_sample_ends_with_the_right_status_and_reason(world_shard):
    out, world, outcome, _ = world_shard
    rows = rows_by_url(out)
    assert len(rows) == len(world.cases) + 1
    for case in world.cases:
        r = rows[world.url(case.path)]
        assert r["reason"] in case.reasons, (case.path, r["reason"], r["error_message"])
        expected = case.status if r["reason"] == case.reasons[0] else download._status_for(r["reason"])
        assert r["status"] == expected, (case.path, r["status"], r["reason"], r["error_message"])
        if r["status"] == "success":
            assert r["error_message"] is None and r["width"] and r["sha256"]
        else:
            assert r["error_message"], case.path
            assert r["reason"] in DROP_REASONS
    empty = rows[""]
    assert (empty["status"], empty["reason"]) == ("failed_to_download", "bad_url")
    assert world.outsider.connections == 0, "the redirect to 127.0.0.2 must be refused without connecting"
    n_ok = sum(c.status == "success" for c in world.cases)
    assert outcome.kept == {"en": n_ok}
    assert sum(outcome.drops["en"].values()) == len(world.cases) + 1 - n_ok
    assert outcome.counts["samples"] == len(world.cases) + 1


def test_shard_is_in_img2dataset_format(world_shard):
    out, world, _, _ = world_shard
    folder = out / "images" / "en"
    assert sorted(p.name for p in folder.iterdir()) == ["00007.parquet", "00007.tar", "00007_stats.json"]
    table = pq.read_table(folder / "00007.parquet")
    for col in IMG2DATASET_COLUMNS + [c for c in CANDIDATE_SCHEMA.names if c != "source"] + ["reason"]:  # source: expanded
        assert col in table.column_names, col
    frame = pd.read_parquet(folder / "00007.parquet")  # how img2dataset users load the metadata
    assert (frame["status"] == "success").sum() == sum(c.status == "success" for c in world.cases)
    assert frame.loc[frame["status"] == "success", ["width", "height"]].min().min() > 0
    rows = table.to_pylist()
    keys = [r["key"] for r in rows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(k.startswith("00007") and len(k) == 9 for k in keys), "img2dataset keys: 5-digit shard + 4-digit index"
    assert {r["status"] for r in rows} <= {"success", "failed_to_download", "failed_to_resize"}

    # The stats file has every field img2dataset's writer produces.
    from img2dataset.logger import CappedCounter, write_stats

    write_stats(str(out), 0, 1, 1, 0, 0, 0.0, 1.0, CappedCounter(), 5)
    reference = json.loads((out / "00000_stats.json").read_text())
    stats = json.loads((folder / "00007_stats.json").read_text())
    assert set(reference) <= set(stats)
    assert stats["count"] == len(rows)
    assert stats["successes"] == sum(r["status"] == "success" for r in rows)
    assert stats["successes"] + stats["failed_to_download"] + stats["failed_to_resize"] == stats["count"]
    assert stats["status_dict"]["success"] == stats["successes"]


def test_tar_reads_with_webdataset_and_tarfile(world_shard):
    out, world, _, _ = world_shard
    tar = out / "images" / "en" / "00007.tar"
    rows = {r["key"]: r for r in pq.read_table(out / "images" / "en" / "00007.parquet").to_pylist()}
    ok_keys = {k for k, r in rows.items() if r["status"] == "success"}

    # webdataset, decoded the way training code reads img2dataset shards
    ds = wds.WebDataset(str(tar), shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "txt", "json")
    seen = set()
    for key, image, text, meta in ds:
        seen.add(key)
        row = rows[key]
        assert isinstance(image, Image.Image) and image.size == (row["width"], row["height"])
        assert text == row["text"] == row["caption"]
        assert meta["key"] == key and meta["uid"] == row["uid"] and meta["status"] == "success"
        assert meta["sha256"] == row["sha256"] and meta["subset"] == "en" and meta["language"] == "en"
        assert min(image.size) == 256, "keep_ratio: the smallest side is the target size"
    assert seen == ok_keys

    # plain tarfile: exactly {key}.jpg/.txt/.json per success, nothing else
    with tarfile.open(tar) as t:
        names = sorted(m.name for m in t.getmembers())
    assert names == sorted(f"{k}.{ext}" for k in ok_keys for ext in ("jpg", "json", "txt"))


def test_keys_are_stable_and_reruns_skip_done_shards(tmp_path, dask_client):
    with srv.ImageServer() as s:
        for i in range(6):
            s.route(f"/{i}.jpg", srv.static(jpeg(400, 300, seed=i)))
        write_part(tmp_path, "en", 0, [s.url(f"/{i}.jpg") for i in range(6)])
        write_part(tmp_path, "multi", 0, [s.url(f"/{i}.jpg") for i in (5, 4)])
        wf = workflow(decode_threads=2)  # decoding in a pool (the default decodes on the loop's thread)
        report = download.run(str(tmp_path), wf, dask_client)
        assert report.complete and report.done == 2 and report.kept == {"en": 6, "multi": 2}
        first = {r["key"]: r["url"] for r in pq.read_table(tmp_path / "images" / "en" / "00000.parquet").to_pylist()}
        assert first == {f"00000{i:04d}": s.url(f"/{i}.jpg") for i in range(6)}
        requests = s.requests

        again = download.run(str(tmp_path), wf, dask_client)
        assert again.skipped == 2 and again.done == 0 and s.requests == requests, "done shards are not fetched again"
        # Concurrency or timeout changes do not redo finished shards...
        assert download.run(str(tmp_path), workflow(threads=3, timeout=7.0, decode_threads=3), dask_client).skipped == 2
        # ...output settings do, with the same keys.
        redo = download.run(str(tmp_path), workflow(image_size=128), dask_client)
        assert redo.done == 2
        second = {r["key"]: r["url"] for r in pq.read_table(tmp_path / "images" / "en" / "00000.parquet").to_pylist()}
        assert second == first
        with tarfile.open(tmp_path / "images" / "multi" / "00000.tar") as t:
            assert sorted(m.name for m in t.getmembers() if m.name.endswith(".jpg")) == ["000000000.jpg", "000000001.jpg"]
        member = wds.WebDataset(str(tmp_path / "images" / "en" / "00000.tar"), shardshuffle=False).decode("pil")
        assert all(min(x["jpg"].size) == 128 for x in member)
    status = runner.stage_status(str(tmp_path), "download")
    assert status["done"] == ["en-00000", "multi-00000"] and not status["pending"]


def test_retry_failed_refetches_only_transient_failures(tmp_path, dask_client):
    with srv.ImageServer() as s:
        good = [jpeg(500, 400, seed=i) for i in range(4)]
        for i, body in enumerate(good):
            s.route(f"/{i}.jpg", srv.static(body))
        # Fails for the whole first run (2 attempts), then recovers.
        s.route("/flaky.jpg", srv.sequence(srv.status(503), srv.status(503), srv.static(jpeg(600, 450, seed=9))))
        s.route("/slow-then-ok.jpg", srv.sequence(srv.stall(), srv.stall(), srv.static(jpeg(640, 480, seed=8))))
        s.route("/missing.jpg", srv.status(404))
        urls = [s.url(f"/{i}.jpg") for i in range(4)] + [s.url("/flaky.jpg"), s.url("/missing.jpg"), s.url("/slow-then-ok.jpg")]
        write_part(tmp_path, "en", 3, urls)
        wf = workflow(retries=1)
        first = download.run(str(tmp_path), wf, dask_client)
        assert first.kept == {"en": 4}
        assert first.drops["en"] == {"http_5xx": 1, "http_404": 1, "timeout": 1}
        stats = json.loads((tmp_path / "images" / "en" / "00003_stats.json").read_text())
        assert stats["transient_failures"] == 2
        hits = dict(s.hits)
        tar_before = (tmp_path / "images" / "en" / "00003.tar").read_bytes()

        retry = download.run(str(tmp_path), wf, dask_client, retry_failed=True)
        assert retry.done == 1
        assert retry.kept == {"en": 6} and retry.drops["en"] == {"http_404": 1}
        fetched = {p: s.hits[p] - hits.get(p, 0) for p in s.hits}
        assert {p: n for p, n in fetched.items() if n} == {"/flaky.jpg": 1, "/slow-then-ok.jpg": 1}, "only the transient failures are refetched"

        rows = {r["url"]: r for r in pq.read_table(tmp_path / "images" / "en" / "00003.parquet").to_pylist()}
        assert rows[s.url("/flaky.jpg")]["status"] == "success"
        assert rows[s.url("/missing.jpg")]["reason"] == "http_404"
        samples = {x["__key__"]: x for x in wds.WebDataset(str(tmp_path / "images" / "en" / "00003.tar"), shardshuffle=False)}
        assert len(samples) == 6 and set(samples) == {r["key"] for r in rows.values() if r["status"] == "success"}
        # The old members are copied byte for byte, not re-encoded.
        with tarfile.open(fileobj=io.BytesIO(tar_before)) as t:
            for m in t.getmembers():
                if m.name.endswith(".jpg"):
                    assert samples[m.name[:-4]]["jpg"] == t.extractfile(m).read()
        stats = json.loads((tmp_path / "images" / "en" / "00003_stats.json").read_text())
        assert stats["retried"] == 1 and stats["transient_failures"] == 0 and stats["successes"] == 6

        # A merged shard stays done for plain runs, and a second retry has nothing to do.
        requests = s.requests
        assert download.run(str(tmp_path), wf, dask_client).skipped == 1
        assert download.run(str(tmp_path), wf, dask_client, retry_failed=True).skipped == 1
        assert s.requests == requests


def test_bad_input_rows_do_not_crash_the_shard(tmp_path):
    with srv.ImageServer() as s:
        s.route("/a.jpg", srv.static(jpeg()))
        write_part(tmp_path, "nolang", 1, [s.url("/a.jpg"), "", "   ", "http://[::1", "mailto:x@y.z"])
        wf = workflow()
        (part,) = download.plan(str(tmp_path), wf)
        outcome = download.process(part, str(tmp_path), wf)
    assert outcome.kept == {"nolang": 1}
    assert outcome.drops["nolang"] == {"bad_url": 4}


def test_force_with_retry_failed_redoes_every_shard(tmp_path):
    """`--force` reaches the stage one way (the workflow's runner.force), so with
    `--retry-failed` a done shard is downloaded again from scratch, not merged."""
    import yaml

    from laion_pipe.cli import main

    with srv.ImageServer() as s:
        for i in range(3):
            s.route(f"/{i}.jpg", srv.static(jpeg(400, 300, seed=i)))
        ok = srv.static(jpeg(500, 400, seed=7))
        s.route("/a.jpg", srv.sequence(srv.status(503), srv.status(503), ok))  # recovers on the 3rd request
        s.route("/b.jpg", srv.sequence(*[srv.status(503)] * 4, ok))  # on the 5th
        write_part(tmp_path, "en", 0, [s.url(f"/{p}.jpg") for p in ("0", "1", "2", "a", "b")])
        wf_file = tmp_path / "wf.yaml"
        # generous timeouts: this test counts requests, and a read timed out on a loaded machine is one more
        data = workflow(retries=1, timeout=30.0, connect_timeout=10.0, read_timeout=10.0).model_dump(mode="json")
        data["cluster"].update(n_workers=1, processes=False)
        wf_file.write_text(yaml.safe_dump(data))
        stats_file = tmp_path / "images" / "en" / "00000_stats.json"

        assert main(["download", "--out", str(tmp_path), "--workflow", str(wf_file)]) == 0
        assert json.loads(stats_file.read_text())["transient_failures"] == 2
        hits = dict(s.hits)
        assert main(["download", "--out", str(tmp_path), "--retry-failed"]) == 0  # the run's saved workflow
        assert {p: s.hits[p] - hits.get(p, 0) for p in s.hits if s.hits[p] != hits.get(p, 0)} == {"/a.jpg": 1, "/b.jpg": 2}
        stats = json.loads(stats_file.read_text())
        assert (stats["retried"], stats["successes"], stats["transient_failures"]) == (1, 4, 1)

        hits = dict(s.hits)
        assert main(["download", "--out", str(tmp_path), "--retry-failed", "--force"]) == 0
        assert all(s.hits[f"/{p}.jpg"] == hits[f"/{p}.jpg"] + 1 for p in ("0", "1", "2", "a", "b")), "every image fetched again"
        stats = json.loads(stats_file.read_text())
        assert (stats["retried"], stats["successes"]) == (0, 5), "a fresh download, not a merge"
