"""The dedup stage: exact results, determinism across partitionings, bounded per-task reads,
blocklists, bad input, resume and pruning. Everything runs through `dedup.run` on a real Dask client."""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_pipe import clean, fsio, runfiles, runner
from laion_pipe.config import ConfigError, workflow_from_dict
from laion_pipe.schema import CANDIDATE_SCHEMA, SUBSETS
from laion_pipe.stages import dedup
from laion_pipe.stages.dedup_rows import Layout
from shards import record_done

COLS = CANDIDATE_SCHEMA.names


def wf_of(**dedup_cfg):
    return workflow_from_dict({"dedup": dedup_cfg, "runner": {"progress": False, "retries": 0}})


def row(uid, url, text="a caption", subset="en", page="http://page.example/", language=None, score=None, license=None):
    lang = language or {"en": "en", "multi": "de", "nolang": None}[subset]
    return {"uid": uid, "url": url, "text": text, "page_url": page, "language": lang,
            "language_score": score if score is not None else 0.75, "subset": subset, "license": license, "source": None}


def write_candidates(out: Path, subset: str, index: int, rows: list[dict], schema=CANDIDATE_SCHEMA) -> str:
    path = str(out / "candidates" / subset / f"part-{index:05d}.parquet")
    fsio.write_parquet_atomic(pa.Table.from_pylist(rows, schema=schema), path)
    record_done(out, "extract", f"part-{index:05d}", [f"candidates/{subset}/part-{index:05d}.parquet"])
    return path


def write_split(out: Path, rows: list[dict], n_files: int) -> None:
    """The same rows, spread over `n_files` files per subset (round robin)."""
    for subset in SUBSETS:
        mine = [r for r in rows if r["subset"] == subset]
        for i in range(n_files):
            chunk = mine[i::n_files]
            if chunk:
                write_candidates(out, subset, i, chunk)


def unique_parts(out: Path, subset: str) -> list[pa.Table]:
    return [pq.read_table(p) for p in sorted((out / "unique" / subset).glob("part-*.parquet"))]


def unique_rows(out: Path) -> dict[str, list[dict]]:
    return {s: [r for t in unique_parts(out, s) for r in t.to_pylist()] for s in SUBSETS}


def h64(url: str) -> int:
    return mmh3.hash64(url, signed=False)[0]


def sort_key(r: dict) -> tuple:
    return tuple((v is None, v if v is not None else 0) for v in (r[c] for c in COLS))


def reference(rows: list[dict], key: str = "url") -> dict[str, list[dict]]:
    """What dedup must output, computed the obvious way in Python."""
    best: dict = {}
    for r in rows:
        k = r["url"] if key == "url" else (r["url"], r["text"])
        if k not in best or sort_key(r) < sort_key(best[k]):
            best[k] = r
    out = {s: [] for s in SUBSETS}
    for r in sorted(best.values(), key=lambda r: (h64(r["url"]), sort_key(r))):
        out[r["subset"]].append(r)
    return out


def random_rows(n: int, n_urls: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        u = rnd.randrange(n_urls)
        rows.append(row(f"{rnd.randrange(10**9):09d}-{i}", f"https://host{u % 17}.example/img/{u}.jpg",
                        text=f"caption {rnd.randrange(3)}", subset=rnd.choice(SUBSETS),
                        score=None if rnd.random() < 0.1 else rnd.randrange(8) / 8))  # exact in float32
    return rows


# ---------------------------------------------------------------- exact results on a hand-built set


@pytest.fixture
def hand_built(tmp_path: Path):
    out = tmp_path / "run"
    write_candidates(out, "en", 0, [
        row("05", "http://a.com/1.jpg", "cat"),
        row("02", "http://a.com/1.jpg", "dog"),            # same url, smaller uid: survives
        row("10", "http://b.com/x.jpg", "bee"),            # loses to the multi copy (uid 03)
    ])
    write_candidates(out, "multi", 0, [
        row("03", "http://b.com/x.jpg", "Biene", "multi"),
        row("20", "http://c.org/y.png", "Hund", "multi"),
        row("21", "http://c.org/y.png", "Hund", "multi"),  # exact pair duplicate
    ])
    write_candidates(out, "nolang", 1, [
        row("30", "http://blocked.net/z.jpg", subset="nolang"),
        row("31", "http://IMG.Blocked.NET./z.jpg", subset="nolang"),  # subdomain, odd case, trailing dot
        row("32", "http://notblocked.net/q.jpg", subset="nolang"),     # a suffix, not a subdomain
        row("33", "http://hashed.com/secret.jpg", subset="nolang"),
        row("40", "http://old.com/seen.jpg", subset="nolang"),
        row("41", "http://old.com/seen.jpg", subset="nolang"),
    ])
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "domains.txt").write_text("# policy\nblocked.net\n\n*.other.org\n")
    (lists / "hashes.txt").write_text(hashlib.sha256(b"http://hashed.com/secret.jpg").hexdigest() + "\n")
    pq.write_table(pa.table({"URL": ["http://old.com/seen.jpg", "http://unrelated.com/a.jpg"],
                             "TEXT": ["a caption", "x"]}), lists / "laion.parquet")
    cfg = dict(blocked_domains=[str(lists / "domains.txt")], blocked_url_hashes=[str(lists / "hashes.txt")],
               already_curated=[str(lists / "*.parquet")], rows_per_part=1, n_buckets=3)
    return out, cfg


def test_hand_built_exact_rows_parts_and_reasons(hand_built, dask_client):
    out, cfg = hand_built
    rep = dedup.run(str(out), wf_of(**cfg), dask_client)
    assert rep.complete and rep.stage == "dedup"
    got = {s: sorted((r["uid"], r["url"], r["subset"]) for r in rows) for s, rows in unique_rows(out).items()}
    assert got == {
        "en": [("02", "http://a.com/1.jpg", "en")],
        "multi": [("03", "http://b.com/x.jpg", "multi"), ("20", "http://c.org/y.png", "multi")],
        "nolang": [("32", "http://notblocked.net/q.jpg", "nolang")],
    }
    # one row per part (rows_per_part=1), named part-NNNNN, in the candidates' schema
    assert [len(t) for t in unique_parts(out, "multi")] == [1, 1]
    assert sorted(p.name for p in (out / "unique" / "multi").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert all(t.schema.equals(CANDIDATE_SCHEMA) for s in SUBSETS for t in unique_parts(out, s))
    assert {s: dict(c) for s, c in rep.drops.items()} == {
        "en": {"duplicate_url": 2},
        "multi": {"duplicate_url": 1},
        "nolang": {"blocked_domain": 2, "blocked_url_hash": 1, "already_curated": 2},
    }
    assert dict(rep.kept) == {"en": 1, "multi": 2, "nolang": 1}
    assert rep.counts["candidates_in"] == 12 and rep.counts["curated_in"] == 2 and rep.counts["rows_out"] == 4
    assert rep.planned == 4 and rep.counts["n_buckets"] == 3
    # the funnel closes: every candidate is kept or dropped with a reason
    assert sum(rep.kept.values()) + sum(sum(c.values()) for c in rep.drops.values()) == 12


def test_pair_key_keeps_different_texts(hand_built, dask_client):
    out, cfg = hand_built
    cfg["already_curated"] = [str(Path(cfg["already_curated"][0]).parent / "laion.parquet")]
    rep = dedup.run(str(out), wf_of(**{**cfg, "key": "url_text", "rows_per_part": 10}), dask_client)
    got = {s: sorted(r["uid"] for r in rows) for s, rows in unique_rows(out).items()}
    # cat/dog and bee/Biene are different pairs now; only the exact (c.org, Hund) pair repeats.
    # already-curated matches the pair: (old.com/seen.jpg, "a caption") is in the list.
    assert got == {"en": ["02", "05", "10"], "multi": ["03", "20"], "nolang": ["32"]}
    assert rep.drops["multi"] == {"duplicate_pair": 1}
    assert rep.drops["nolang"]["already_curated"] == 2


def test_matches_python_reference_and_fixed_part_size(tmp_path, dask_client):
    rows = random_rows(900, 300, seed=1)
    out = tmp_path / "run"
    write_split(out, rows, 3)
    rep = dedup.run(str(out), wf_of(rows_per_part=64, n_buckets=4), dask_client)
    ref = reference(rows)
    assert unique_rows(out) == ref  # same rows, same order (hash of url, then uid...)
    for s in SUBSETS:
        sizes = [len(t) for t in unique_parts(out, s)]
        assert sizes[:-1] == [64] * (len(sizes) - 1) and 0 < sizes[-1] <= 64
        assert sum(sizes) == len(ref[s]) == rep.kept[s]
    n_dups = 900 - sum(len(v) for v in ref.values())
    assert sum(c["duplicate_url"] for c in rep.drops.values()) == n_dups


# ---------------------------------------------------------------- determinism


def test_same_output_for_any_partitioning(tmp_path, dask_client):
    rows = random_rows(600, 150, seed=7)
    results = []
    for i, (n_files, cfg) in enumerate([
        (1, dict(n_buckets=1)),
        (5, dict(n_buckets=7, flush_rows=40, group_target_bytes=1)),
        (2, dict(n_buckets=13, flush_rows=1000)),
        (2, dict(n_buckets=13, flush_rows=1000)),  # the same again: runs are deterministic
        (4, dict()),  # n_buckets from input size
        (5, dict(n_buckets=7, coarse_buckets=2, flush_rows=40, group_target_bytes=1)),  # reduce tasks spill by fine bucket
        (3, dict(n_buckets=13, coarse_buckets=3, flush_rows=70)),
    ]):
        out = tmp_path / f"run{i}"
        write_split(out, rows, n_files)
        dedup.run(str(out), wf_of(rows_per_part=50, **cfg), dask_client)
        results.append({s: unique_parts(out, s) for s in SUBSETS})
    first = results[0]
    assert sum(len(t) for t in first["en"]) > 0
    for other in results[1:]:
        for s in SUBSETS:
            assert len(other[s]) == len(first[s])
            assert all(a.equals(b) for a, b in zip(first[s], other[s]))


# ---------------------------------------------------------------- bounded memory and files: run files, per-range reads


def test_tasks_read_only_their_bucket(tmp_path, dask_client, monkeypatch):
    monkeypatch.setattr(clean, "remove_work", lambda out, stage: (0, 0))  # keep the work files to inspect them
    monkeypatch.setattr(dedup, "READ_BATCH_ROWS", 16)  # several flushes per task
    rows = random_rows(800, 400, seed=3)
    out = tmp_path / "run"
    write_split(out, rows, 4)
    wf = wf_of(n_buckets=8, coarse_buckets=4, flush_rows=30, rows_per_part=50, group_target_bytes=1)
    reads: list[tuple[str, int, int]] = []
    parts_read: list[tuple[str, int]] = []
    real_read, real_rows, real_entries = dedup._read_parquet, dedup._read_rows, runfiles.part_entries
    monkeypatch.setattr(dedup, "_read_parquet", lambda p: reads.append((p, 0, -1)) or real_read(p))
    monkeypatch.setattr(dedup, "_read_rows", lambda p, a, b: reads.append((p, a, b)) or real_rows(p, a, b))
    monkeypatch.setattr(runfiles, "part_entries", lambda info, c: parts_read.append((info.path, c)) or real_entries(info, c))
    rep = dedup.run(str(out), wf, dask_client)
    assert rep.complete and unique_rows(out) == reference(rows)

    # phase 1: ONE run file per bucketing task, whatever its flushes (files grow with the tasks,
    # not tasks x buckets); each segment of coarse bucket c holds only c's fine buckets
    bucket_parts, layout = dedup.plan_buckets(str(out), wf)
    assert layout == Layout(n_buckets=8, n_coarse=4, n_ranges=4) and len(bucket_parts) == 12  # 4 files x 3 subsets
    runs = sorted((out / dedup.WORK_DIR / "runs").glob("*.run"))
    assert [p.name for p in runs] == sorted(f"{p.key}.rows.run" for p in bucket_parts)
    assert not list((out / dedup.WORK_DIR).rglob("*.parquet.*"))
    for f in runs:
        info = runfiles.read_info(str(f))
        assert info.parts == 4 and info.rounds >= 1
        for c in range(4):
            for t in runfiles.read_part(info, c):
                assert set(layout.coarse_of(dedup.bucket_of(t[dedup.HASH_COL].to_numpy(), 8))) == {c}
    assert sum(runfiles.read_info(str(f)).rounds for f in runs) == rep.counts["flushes"] > 12  # several flushes per task

    # phase 3: each task reads exactly its coarse bucket of every run file, spills it by fine bucket,
    # and no task sees all rows
    reduce_parts = dedup.plan_reduce(str(out), wf, layout, bucket_parts)
    assert [p.key for p in reduce_parts] == ["c00000", "c00001", "c00002", "c00003"]
    for part in reduce_parts:
        parts_read.clear()
        reads.clear()
        o = dedup.process_reduce(part, str(out), wf)
        c = part.param("coarse")
        assert sorted(parts_read) == sorted((str(f), c) for f in runs) and not reads  # its index slice of each run file
        assert o.counts["ranged_reads"] == len(runs) + sum(  # and its non-empty segments, nothing else
            int((runfiles.part_entries(runfiles.read_info(str(f)), c)[:, 1] > 0).sum()) for f in runs)
        assert 0 < o.counts["bucket_rows"] < len(rows) / 2
        assert o.counts["scratch_files"] == 2 and o.counts["scratch_bytes"] > 0  # its two fine buckets, on local disk

    # phase 4: a part reads only row ranges of survivor files, adding up to its own size
    for part in dedup.plan_parts(str(out), wf, reduce_parts):
        reads.clear()
        o = dedup.process(part, str(out), wf)
        assert all("/_work/dedup/survivors/" in p and b > a for p, a, b in reads)
        assert sum(b - a for _, a, b in reads) == sum(o.kept.values()) <= 50


# ---------------------------------------------------------------- resume


def _finished(out: Path, stage: str) -> dict[str, float]:
    return {p.stem: fsio.read_json(str(p))["finished"] for p in (out / "_state" / stage).glob("[!_]*.json")}


def test_rerun_skips_done_partitions_and_redoes_only_what_changed(tmp_path, dask_client, monkeypatch):
    # the work files stay, as after a crash that left the stage incomplete (the lifecycle of the
    # work files is test_work_files_go_when_dedup_completes's)
    monkeypatch.setattr(clean, "remove_work", lambda out, stage: (0, 0))
    rows = random_rows(300, 120, seed=5)
    out = tmp_path / "run"
    write_split(out, rows, 2)
    wf = wf_of(n_buckets=3, rows_per_part=40, group_target_bytes=1)
    first = dedup.run(str(out), wf, dask_client)
    before = {st: _finished(out, st) for st in (dedup.BUCKET_STAGE, dedup.REDUCE_STAGE, dedup.NAME)}
    parts_before = unique_rows(out)

    again = dedup.run(str(out), wf, dask_client)
    assert (again.done, again.skipped) == (0, first.planned)
    assert {st: _finished(out, st) for st in before} == before
    assert again.kept == first.kept and again.drops == first.drops
    assert unique_rows(out) == parts_before

    # a crash after the reduce of one bucket, before the parts: only that work is redone
    (out / "_state" / dedup.REDUCE_STAGE / "c00001.json").unlink()
    (out / "_state" / dedup.NAME / "en-part-00000.json").unlink()
    (out / "unique" / "en" / "part-00000.parquet").unlink()
    third = dedup.run(str(out), wf, dask_client)
    assert (third.done, third.skipped) == (1, first.planned - 1)
    now = {st: _finished(out, st) for st in before}
    assert now[dedup.BUCKET_STAGE] == before[dedup.BUCKET_STAGE]
    changed = {k for k in now[dedup.REDUCE_STAGE] if now[dedup.REDUCE_STAGE][k] != before[dedup.REDUCE_STAGE][k]}
    assert changed == {"c00001"}
    assert unique_rows(out) == parts_before

    # a new candidate file: only its bucketing task runs; every bucket is re-deduped
    extra = [row("000", r["url"], subset="en") for r in rows[:5]] + [row("999", "https://new.example/a.jpg")]
    write_candidates(out, "en", 7, extra)
    fourth = dedup.run(str(out), wf, dask_client)
    now = _finished(out, dedup.BUCKET_STAGE)
    assert {k for k in now if now.get(k) != before[dedup.BUCKET_STAGE].get(k)} == {"cand-en-part-00007"}
    assert unique_rows(out) == reference(rows + extra)
    assert fourth.counts["candidates_in"] == len(rows) + len(extra)


def test_fewer_parts_on_rerun_removes_stale_parts(tmp_path, dask_client):
    rows = random_rows(200, 100, seed=11)
    out = tmp_path / "run"
    write_split(out, rows, 1)
    dedup.run(str(out), wf_of(rows_per_part=10, n_buckets=4), dask_client)
    assert len(unique_parts(out, "en")) > 1
    dedup.run(str(out), wf_of(rows_per_part=1000, n_buckets=2), dask_client)
    for s in SUBSETS:
        assert [p.name for p in (out / "unique" / s).iterdir()] == ["part-00000.parquet"]
    assert not (out / "_state" / dedup.REDUCE_STAGE / "c00003.json").exists()  # buckets of the old plan are gone too
    assert runner.stage_status(str(out), dedup.NAME) == {
        "done": ["en-part-00000", "multi-part-00000", "nolang-part-00000"], "failed": [], "pending": []}
    assert unique_rows(out) == reference(rows)


def test_work_files_go_when_dedup_completes(tmp_path, dask_client):
    """Deleted when every phase is done; a rerun with nothing changed skips everything without
    them; a changed setting redoes the phases from the candidates; `clean` before completion
    makes the next run start again, with the same result."""
    rows = random_rows(300, 120, seed=8)
    out = tmp_path / "run"
    write_split(out, rows, 2)
    first = dedup.run(str(out), wf_of(n_buckets=3, rows_per_part=40), dask_client)
    assert first.complete and not (out / dedup.WORK_DIR).exists() and clean.work_removed(str(out), dedup.NAME)
    assert unique_rows(out) == reference(rows)
    before = {st: _finished(out, st) for st in (dedup.BUCKET_STAGE, dedup.REDUCE_STAGE, dedup.NAME)}

    again = dedup.run(str(out), wf_of(n_buckets=3, rows_per_part=40), dask_client)
    assert (again.done, again.skipped) == (0, first.planned) and again.kept == first.kept
    assert {st: _finished(out, st) for st in before} == before

    changed = dedup.run(str(out), wf_of(n_buckets=3, rows_per_part=25), dask_client)
    assert changed.complete and not (out / dedup.WORK_DIR).exists()
    assert unique_rows(out) == reference(rows) and all(len(t) <= 25 for t in unique_parts(out, "en"))

    # an incomplete stage keeps them; clean removes them (and leftover temporary files)
    (out / "_state" / dedup.NAME / "en-part-00000.json").unlink()
    clean.forget_work_removed(str(out), dedup.NAME)
    (out / dedup.WORK_DIR / "buckets").mkdir(parents=True)
    (out / dedup.WORK_DIR / "buckets" / "x.parquet").write_bytes(b"12345")
    (out / "unique" / "en" / ".tmp-0123-part-00000.parquet").write_bytes(b"half")
    assert clean.work_summary(str(out)) == [clean.WorkFiles("dedup", 1, 5)]
    # the part whose manifest is gone is no longer claimed by the plan: stale, removed with the rest
    assert clean.clean(str(out)) == {"work_files": 1, "work_bytes": 5, "temporary_files": 1,
                                     "stale_partitions": 0, "stale_files": 1}
    assert not (out / "unique" / "en" / "part-00000.parquet").exists()
    assert not (out / "_work").exists() or not any((out / "_work").iterdir())
    assert not list(out.rglob(".tmp-*"))
    last = dedup.run(str(out), wf_of(n_buckets=3, rows_per_part=25), dask_client)
    assert last.complete and unique_rows(out) == reference(rows)


def test_clean_and_status_as_a_user_runs_them(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    (out / "_state" / "dedup").mkdir(parents=True)
    (out / "_work" / "dedup" / "buckets").mkdir(parents=True)
    (out / "_work" / "dedup" / "buckets" / "b.parquet").write_bytes(b"x" * 10)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "laion_pipe", *args], capture_output=True, text=True, timeout=120)

    r = cli("status", str(out))
    assert "work files:" in r.stdout and "kept while dedup is incomplete" in r.stdout.replace("\n", " ")
    r = cli("clean", str(out), "--stage", "dedup")
    assert r.returncode == 0 and "removed 1 work files" in r.stderr
    assert "removed" in cli("status", str(out)).stdout and not (out / "_work" / "dedup").exists()
    assert cli("clean", str(tmp_path / "nowhere")).returncode == 2 and not (tmp_path / "nowhere").exists()
    assert cli("clean", str(out), "--stage", "bogus").returncode == 2


# ---------------------------------------------------------------- columns beyond the candidates'


def test_extra_columns_pass_through_unchanged(tmp_path, dask_client):
    """A URL list's own columns (issue 20) reach unique/ as they are: unified across files (a
    column missing from a file is null there, int32 and int64 promote), in order of first
    appearance, and a sortable one breaks ties between otherwise identical rows."""
    out = tmp_path / "run"
    a, b = row("01", "http://x.com/1.jpg"), row("02", "http://x.com/2.jpg")
    schema_a = CANDIDATE_SCHEMA.append(pa.field("site", pa.string())).append(pa.field("rank", pa.int32()))
    write_candidates(out, "en", 0, [a | {"site": "list-a", "rank": 5}, b | {"site": "list-a", "rank": 1}], schema=schema_a)
    schema_b = CANDIDATE_SCHEMA.append(pa.field("rank", pa.int64())).append(pa.field("tags", pa.list_(pa.string())))
    write_candidates(out, "en", 1, [a | {"rank": 2, "tags": ["t1", "t2"]}], schema=schema_b)
    write_candidates(out, "en", 2, [row("03", "http://x.com/3.jpg")])
    for cfg in (dict(), dict(n_buckets=5, coarse_buckets=2, group_target_bytes=1)):
        rep = dedup.run(str(out), wf_of(**cfg), dask_client)
        assert rep.complete
        [t] = unique_parts(out, "en")
        assert t.schema.names == [*CANDIDATE_SCHEMA.names, "site", "rank", "tags"]
        assert t.schema.field("rank").type == pa.int64() and t.schema.field("tags").type == pa.list_(pa.string())
        got = {r["uid"]: (r["site"], r["rank"], r["tags"]) for r in t.to_pylist()}
        # uid 01 twice, the same in every candidate column: rank 2 < 5 survives (the file without `source`)
        assert got == {"01": (None, 2, ["t1", "t2"]), "02": ("list-a", 1, None), "03": (None, None, None)}
        assert [r["url"] for r in t.to_pylist()] == sorted([r["url"] for r in t.to_pylist()], key=h64)
        assert rep.drops["en"] == {"duplicate_url": 1}


def test_reserved_or_conflicting_columns_fail_clearly(tmp_path, dask_client):
    out = tmp_path / "run"
    write_candidates(out, "en", 0, [row("01", "http://x.com/1.jpg") | {"_h": 3}],
                     schema=CANDIDATE_SCHEMA.append(pa.field("_h", pa.int64())))
    rep = dedup.run(str(out), wf_of(), dask_client)
    assert not rep.complete and "'_h' is reserved" in rep.failed[0]["error"]
    out = tmp_path / "run2"
    write_candidates(out, "en", 0, [row("01", "http://x.com/1.jpg") | {"x": "a"}], schema=CANDIDATE_SCHEMA.append(pa.field("x", pa.string())))
    write_candidates(out, "en", 1, [row("02", "http://x.com/2.jpg") | {"x": [1]}], schema=CANDIDATE_SCHEMA.append(pa.field("x", pa.list_(pa.int64()))))
    with pytest.raises(ValueError, match="disagree on the type"):
        dedup.run(str(out), wf_of(group_target_bytes=1), dask_client)


# ---------------------------------------------------------------- URL-hash lists: a join by digest range


def test_url_hash_lists_are_joined_by_digest_range(tmp_path, dask_client):
    """Lists in every algorithm, several list files and digest ranges: exactly the listed URLs go,
    every copy of them, counted once each; the lists are never loaded by one task."""
    rows = random_rows(600, 200, seed=12)
    out = tmp_path / "run"
    write_split(out, rows, 3)
    urls = sorted({r["url"] for r in rows})
    listed = {"md5": urls[0:10], "sha1": urls[10:15], "sha256": urls[15:40] + urls[0:3]}
    lists = []
    for i, (algo, us) in enumerate(listed.items()):
        f = tmp_path / f"list{i}.txt"
        f.write_text("# removal list\n" + "".join(hashlib.new(algo, u.encode()).hexdigest() + "\n" for u in us)
                     + "".join(hashlib.new(algo, f"http://other/{k}".encode()).hexdigest() + "\n" for k in range(300)))
        lists.append(str(f))
    blocked = set().union(*listed.values())
    want = reference([r for r in rows if r["url"] not in blocked])
    for cfg in (dict(n_buckets=4), dict(n_buckets=6, coarse_buckets=2, bucket_target_bytes=2000)):
        rep = dedup.run(str(out), wf_of(blocked_url_hashes=lists, rows_per_part=1000, **cfg), dask_client)
        assert rep.complete and unique_rows(out) == want
        assert sum(c.get("blocked_url_hash", 0) for c in rep.drops.values()) == sum(r["url"] in blocked for r in rows)
        assert rep.counts["hash_list_entries"] == 43 + 900 and rep.counts["url_hash_matches"] == 43  # per algorithm: 3 URLs are in two lists
    assert len(runner.read_plan(str(out), dedup.HASHES_STAGE)) > 2  # n_ranges from the lists' size: several join tasks
    # the lists removed from the workflow: their phases' state goes, nothing is blocked any more
    rep = dedup.run(str(out), wf_of(n_buckets=4, rows_per_part=1000), dask_client)
    assert unique_rows(out) == reference(rows) and runner.read_plan(str(out), dedup.HASHES_STAGE) == []


def test_hash_matches_need_the_digest_not_only_the_url_hash():
    """A 64-bit URL-hash collision cannot block a URL: the join's match is checked on the digest."""
    from laion_pipe import blocklists as bl
    from laion_pipe.stages.dedup_rows import HashMatches

    listed = "http://listed.example/a.jpg"
    t = pa.table({"url": [listed, "http://innocent.example/b.jpg"], "subset": ["en", "en"],
                  dedup.HASH_COL: pa.array([7, 7], pa.uint64())})  # the same (colliding) URL hash
    m = HashMatches({"sha256": (np.array([7], np.uint64), bl.SortedDigests(bl.url_digests([listed], "sha256")))})
    assert m.mask(t).tolist() == [True, False]


# ---------------------------------------------------------------- bad input


def test_bad_rows_are_counted_not_fatal(tmp_path, dask_client):
    loose = pa.schema([f.with_nullable(True) for f in CANDIDATE_SCHEMA])
    out = tmp_path / "run"
    write_candidates(out, "en", 0, [
        row("1", "http://ok.com/a.jpg"),
        row(None, "http://ok.com/b.jpg"),
        row("3", ""),
        row("4", "http://ok.com/c.jpg") | {"subset": "xx"},
        row("5", "http://ok.com/d.jpg") | {"text": None},
    ], schema=loose)
    # a file from an older extract without the optional columns still reads
    fsio.write_parquet_atomic(pa.table({"uid": ["6"], "url": ["http://ok.com/e.jpg"], "text": ["t t"],
                                        "subset": ["multi"]}), str(out / "candidates/multi/part-00000.parquet"))
    record_done(out, "extract", "part-00000", ["candidates/multi/part-00000.parquet"])
    rep = dedup.run(str(out), wf_of(), dask_client)
    assert rep.complete
    assert rep.counts["bad_records"] == 4 and rep.counts["candidates_in"] == 2
    assert {s: [r["uid"] for r in v] for s, v in unique_rows(out).items()} == {"en": ["1"], "multi": ["6"], "nolang": []}
    errors = fsio.read_json(str(out / "_state" / dedup.BUCKET_STAGE / "cand-en-part-00000.json"))["errors"]
    assert [e["offset"] for e in errors] == [1, 2, 3, 4]
    assert "unknown subset 'xx'" in errors[2]["message"]


def test_unreadable_file_fails_its_task_and_stops_before_dedup(tmp_path, dask_client):
    out = tmp_path / "run"
    write_candidates(out, "en", 0, [row("1", "http://ok.com/a.jpg")])
    fsio.write_parquet_atomic(pa.table({"uid": ["2"], "link": ["x"]}), str(out / "candidates/en/part-00001.parquet"))
    record_done(out, "extract", "part-00001", ["candidates/en/part-00001.parquet"])
    rep = dedup.run(str(out), wf_of(group_target_bytes=1), dask_client)
    assert not rep.complete
    assert [f["key"] for f in rep.failed] == ["dedup.bucket/cand-en-part-00001"]
    assert "missing column" in rep.failed[0]["error"]
    assert not (out / "unique").exists()
    assert list((out / dedup.WORK_DIR).rglob("*.run"))  # incomplete: the good file's run file stays for the rerun


def test_curated_glob_matching_nothing_is_an_error(tmp_path, dask_client):
    out = tmp_path / "run"
    write_candidates(out, "en", 0, [row("1", "http://ok.com/a.jpg")])
    with pytest.raises(FileNotFoundError, match="already_curated"):
        dedup.run(str(out), wf_of(already_curated=[str(tmp_path / "nope-*.parquet")]), dask_client)


def test_missing_or_malformed_blocklist_fails_before_any_work(tmp_path, dask_client):
    out = tmp_path / "run"
    write_candidates(out, "en", 0, [row("1", "http://ok.com/a.jpg")])
    with pytest.raises(FileNotFoundError, match="dedup.blocked_domains: .*nope.txt"):
        dedup.run(str(out), wf_of(blocked_domains=[str(tmp_path / "nope.txt")]), dask_client)
    (tmp_path / "h.txt").write_text("not-a-hash\n")
    with pytest.raises(ValueError, match="h.txt:1"):
        dedup.run(str(out), wf_of(blocked_url_hashes=[str(tmp_path / "h.txt")]), dask_client)
    assert sorted(p.name for p in (out / "_state").iterdir()) == ["extract"]  # what the test recorded, nothing of dedup's


def test_no_candidates_is_an_empty_result(tmp_path, dask_client):
    rep = dedup.run(str(tmp_path / "run"), wf_of(), dask_client)
    assert rep.complete and rep.planned == 0 and not (tmp_path / "run" / "unique").exists()


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ConfigError, match="dedup.keyy: unknown key"):
        workflow_from_dict({"dedup": {"keyy": "url"}})
    with pytest.raises(ConfigError, match="dedup.key"):
        workflow_from_dict({"dedup": {"key": "text"}})
    with pytest.raises(ConfigError, match="dedup.rows_per_part"):
        workflow_from_dict({"dedup": {"rows_per_part": 0}})


# ---------------------------------------------------------------- real Common Crawl data


def test_real_crawl_images_dedup_like_python(cc_samples, tmp_path, dask_client):
    """<img src alt> pairs of the real 2014 WARC excerpt (galleries repeat their navigation
    images on every page): dedup must agree with a plain Python dedup of the same pairs."""
    from urllib.parse import urljoin

    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    rows = []
    with open(cc_samples / "CC-MAIN-2014-35-excerpt.warc", "rb") as f:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.response):
            page = rec.headers.get("WARC-Target-URI")
            html = rec.reader.read().decode("utf-8", "replace")
            for img in HTMLParser(html).css("img"):
                src, alt = img.attributes.get("src"), img.attributes.get("alt")
                if src and alt:
                    url = urljoin(page, src)
                    uid = hashlib.sha1(f"{page}\n{url}\n{alt}".encode()).hexdigest()
                    rows.append(row(uid, url, alt, subset="en" if len(alt) % 2 else "nolang", page=page))
    assert len(rows) > 800
    ref = reference(rows)
    assert sum(map(len, ref.values())) < len(rows)  # the excerpt really has duplicate image URLs
    out = tmp_path / "run"
    write_split(out, rows, 3)
    rep = dedup.run(str(out), wf_of(rows_per_part=100, n_buckets=5), dask_client)
    assert unique_rows(out) == ref
    assert sum(c["duplicate_url"] for c in rep.drops.values()) == len(rows) - sum(map(len, ref.values()))


def test_read_rows_reads_only_the_row_groups_needed(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": list(range(10))}), path, row_group_size=3)
    asked = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, g, **kw: asked.append(list(g)) or real(self, g, **kw))
    for start, stop, groups in [(0, 3, [0]), (2, 7, [0, 1, 2]), (3, 6, [1]), (9, 10, [3]), (4, 4, [])]:
        asked.clear()
        assert dedup._read_rows(str(path), start, stop)["x"].to_pylist() == list(range(start, stop))
        assert asked == ([groups] if groups else [])


# ---------------------------------------------------------------- a URL-hash list at the size it comes in


@pytest.mark.slow
def test_ten_million_hashes_under_a_small_memory_limit(tmp_path):
    """A 10M-digest SHA-256 list (650 MB of text) against a worker process limited to 700 MB: no
    task holds the list (loaded whole as before, its digests alone were about 1 GB of Python
    objects), the worker is never restarted, and exactly the listed URLs go."""
    from distributed import Client, LocalCluster

    n, hexdigits = 10_000_000, np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    rows = random_rows(3000, 1500, seed=21)
    out = tmp_path / "run"
    write_split(out, rows, 2)
    listed = sorted({r["url"] for r in rows})[::25]
    rng = np.random.default_rng(0)
    lines_at = set(rng.choice(n, size=len(listed), replace=False).tolist())
    real = iter(hashlib.sha256(u.encode()).digest() for u in listed)
    path = tmp_path / "relaion-sha256.txt"
    with open(path, "wb") as f:
        f.write(b"# a removal list: one hex SHA-256 of a URL per line\n")
        for start in range(0, n, 1_000_000):
            d = rng.integers(0, 256, size=(1_000_000, 32), dtype=np.uint8)
            for i in [i for i in lines_at if start <= i < start + 1_000_000]:
                d[i - start] = np.frombuffer(next(real), dtype=np.uint8)
            text = np.empty((1_000_000, 65), dtype=np.uint8)
            text[:, 0:64:2], text[:, 1:64:2], text[:, 64] = hexdigits[d >> 4], hexdigits[d & 15], ord("\n")
            f.write(text.tobytes())
    assert path.stat().st_size > 650e6
    wf = wf_of(blocked_url_hashes=[str(path)], bucket_target_bytes=32 * 2**20, rows_per_part=1000)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="700MB",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        pid = client.run(os.getpid)
        rep = dedup.run(str(out), wf, client)
        assert client.run(os.getpid) == pid, "the worker was restarted (over its memory limit)"
    assert rep.complete, rep.failed
    assert rep.counts["hash_list_entries"] == n and rep.counts["url_hash_matches"] == len(listed)
    assert runner.read_plan(str(out), dedup.HASHES_STAGE) and len(runner.read_plan(str(out), dedup.HASHES_STAGE)) >= 20
    assert unique_rows(out) == reference([r for r in rows if r["url"] not in set(listed)])
