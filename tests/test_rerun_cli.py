"""The three reruns issue 17 reported, as a user types them (`python -m laion_pipe ...` in a
subprocess, on a demo world on 127.0.0.1): each must leave the run as a fresh run with the final
settings would, and the funnel, statistics and report must describe that dataset only.

1. A URL-hash blocklist added (Re-LAION's use case) and `rows_per_part` changed, then
   `run --stages dedup:select`: the old plan's download shards, scores and dataset shards must not
   survive, so no blocked URL reaches the dataset and no URL appears twice.
2. `extract` + `dedup` on two WAT files, then on one: the removed file's candidates go.
3. `select` with `select.presets: []`: the preset folders go, the report stops showing them, and a
   training run naming one is refused instead of reading the stale folder.

The same rule under random sequences of changes and kills is tests/test_rerun_converges.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from laion_pipe import shards
from laion_pipe.demo.world import WorldSpec, build_world

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = str(REPO / "workflows" / "demo.yaml")
LOW = ["--set", "select.similarity.en=-1.0", "--set", "select.similarity.multi=-1.0", "--set", "select.similarity.nolang=-1.0"]
QUICK = ["--set", "stats.plots=false", "--set", "cluster.n_workers=1", "--no-progress"]
PRESETS = ("laion2B-en", "laion-high-resolution", "laion-improved-aesthetics", "laion-aesthetics-v2-5plus")


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    return subprocess.run([sys.executable, "-m", "laion_pipe", *args], capture_output=True, text=True, timeout=timeout, env=env)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-5000:]}"
    return r


def inputs(paths) -> list[str]:
    return ["--set", "inputs=[" + ", ".join(str(p) for p in paths) + "]"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("rerun-cli") / "world",
                    WorldSpec(n_pages=12, images_per_page=8, n_wat_files=2, seed=3, sides=(300, 400, 520)))
    yield w
    w.stop()


@pytest.fixture(scope="module")
def first_run(world, tmp_path_factory) -> Path:
    """The whole pipeline with small dedup parts (several download shards per subset) and
    thresholds low enough that nearly every downloaded pair is kept."""
    out = tmp_path_factory.mktemp("first") / "run"
    ok(cli("run", WORKFLOW, "--out", str(out), *inputs(world.wat_paths), "--set", "dedup.rows_per_part=8", *LOW, *QUICK))
    return out


def dataset(out: Path, name: str) -> dict[str, dict]:
    """The dataset folder's samples by key: parquet row and tar members."""
    rows = {r["key"]: r for p in sorted((out / "dataset" / name).glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    members = {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
               for t in sorted((out / "dataset" / name).glob("*.tar")) for s in shards.iter_tar_samples(str(t))}
    assert set(rows) == set(members), name
    return {k: {"row": rows[k], **members[k]} for k in rows}


def assert_reports_its_dataset(out: Path) -> None:
    """The statistics table, the funnel and `status` describe the rows of dataset/ only."""
    stats = json.loads((out / "stats" / "stats.json").read_text())
    table = {r["subset"]: r["count"] for r in stats["table"]}
    folders = sorted(p.name for p in (out / "dataset").iterdir() if p.is_dir())
    for name in folders:
        assert table.get(name, 0) == len(dataset(out, name)), (name, table)
    # every row is a folder of the dataset (a recipe that kept nothing has no row)
    assert set(table) - {"total"} == {f for f in folders if f in ("en", "multi", "nolang") or dataset(out, f)}, (table, folders)
    select = next(f for f in stats["funnel"] if f["stage"] == "select")
    assert sum(select["kept"].values()) == sum(len(dataset(out, s)) for s in ("en", "multi", "nolang"))
    status = json.loads(cli("status", str(out), "--json").stdout)
    assert not any(st.get("stale_files") or st.get("stale_manifests") for st in status.values()), status


def test_blocklist_and_new_parts_leave_no_stale_shard(first_run, world, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    assert len(list((out / "images" / "en").glob("*.tar"))) >= 4  # several shards of the old plan
    urls = sorted({r["URL"] for name in ("en", "multi", "nolang") for r in (v["row"] for v in dataset(out, name).values())})
    blocked = urls[:: max(1, len(urls) // 30)][:30]
    blocklist = tmp_path / "relaion-hashes.txt"
    blocklist.write_text("".join(hashlib.sha256(u.encode()).hexdigest() + "\n" for u in blocked))
    final = [*inputs(world.wat_paths), "--set", "dedup.rows_per_part=20", "--set", f"dedup.blocked_url_hashes=[{blocklist}]", *LOW, *QUICK]
    r = ok(cli("run", WORKFLOW, "--out", str(out), "--stages", "dedup:select", *final))
    assert f"blocked_url_hash {len(blocked)}" in r.stderr
    ok(cli("stats", str(out), "--no-progress"))

    fresh = tmp_path / "fresh"  # the reference: what it is compared on (index and statistics are checked on `out`)
    ok(cli("run", WORKFLOW, "--out", str(fresh), "--stages", "extract:select", *final))
    for top in ("unique", "images", "scores"):
        assert sorted(p.relative_to(out).as_posix() for p in (out / top).rglob("*.*")) == \
               sorted(p.relative_to(fresh).as_posix() for p in (fresh / top).rglob("*.*")), top
    for name in ("en", "multi", "nolang", *PRESETS):
        assert dataset(out, name) == dataset(fresh, name), name
    kept = [v["row"]["URL"] for name in ("en", "multi", "nolang") for v in dataset(out, name).values()]
    assert not set(kept) & set(blocked) and len(kept) == len(set(kept))
    assert_reports_its_dataset(out)


def test_an_input_removed_from_extract_and_dedup(world, tmp_path):
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    ok(cli("run", WORKFLOW, "--out", str(out), "--stages", "extract,dedup", *inputs(world.wat_paths), *QUICK))
    ok(cli("run", WORKFLOW, "--out", str(out), "--stages", "extract,dedup", *inputs(world.wat_paths[:1]), *QUICK))
    ok(cli("run", WORKFLOW, "--out", str(fresh), "--stages", "extract,dedup", *inputs(world.wat_paths[:1]), *QUICK))

    def unique(run: Path) -> dict[str, list[dict]]:
        return {p.relative_to(run).as_posix(): pq.read_table(p).to_pylist() for p in sorted((run / "unique").rglob("*.parquet"))}

    def candidates(run: Path) -> list[str]:
        return sorted(p.relative_to(run).as_posix() for p in (run / "candidates").rglob("*.parquet"))

    assert candidates(out) == candidates(fresh) and all("part-00000" in c for c in candidates(out))
    assert unique(out) == unique(fresh)
    status = json.loads(cli("status", str(out), "--json").stdout)
    assert status["extract"]["done"] == ["part-00000"] and "stale_files" not in status["extract"]


def test_presets_removed_from_select(first_run, world, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    assert all((out / "dataset" / p).is_dir() for p in PRESETS)
    ok(cli("select", "--out", str(out), "--set", "select.presets=[]", "--no-progress"))
    ok(cli("stats", str(out), "--no-progress"))
    assert sorted(p.name for p in (out / "dataset").iterdir()) == ["en", "multi", "nolang"]
    for name in ("en", "multi", "nolang"):
        assert dataset(out, name) == dataset(first_run, name)  # the subsets are what a fresh run writes
    report = (out / "stats" / "report.html").read_text()
    assert not any(p in report for p in PRESETS)
    assert_reports_its_dataset(out)
    r = cli("train", "--out", str(out), "--set", "train.sources=[laion2B-en]", "--set", "train.max_steps=1", "--no-progress")
    assert r.returncode == 2 and "laion2B-en" in r.stderr, r.stderr[-2000:]
