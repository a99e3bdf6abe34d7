"""Every subcommand the way a user types it: `python -m laion_pipe ...` in a subprocess, on real
inputs (a small demo world served on 127.0.0.1), checking exit codes, what the terminal says and
what lands on disk. Unit tests call stage functions directly; these catch a handler that no longer
matches its parser, a missing `__main__`, or an import that only fails in a fresh process.

The commands run through `sys.executable -m laion_pipe`, never a `laion-pipe` found on PATH: a
virtual environment that is not activated keeps its scripts elsewhere.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from laion_pipe.demo.world import WorldSpec, build_world

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEMO_WORKFLOW = REPO / "workflows" / "demo.yaml"
LAION_COLUMNS = ["URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark", "LANGUAGE"]
# One local worker instead of the demo workflow's two: each command starts its own cluster, and
# each worker process imports the stack and, for score, loads the models (seconds each). The
# two-worker runs are test_demo's and test_faults'.
ONE_WORKER = ("--set", "cluster.n_workers=1")


def cli(*args: str, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    return subprocess.run([sys.executable, "-m", "laion_pipe", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-5000:]}"
    return r


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("e2e") / "world", WorldSpec(n_pages=12, images_per_page=8, n_wat_files=2, seed=3))
    yield w
    w.stop()


@pytest.fixture(scope="module")
def staged_run(world, tmp_path_factory) -> Path:
    """extract -> dedup -> download -> score -> select -> stats, one command each, as the README shows."""
    out = tmp_path_factory.mktemp("staged") / "run"
    ok(cli("extract", *world.wat_paths, "--out", str(out), "--workflow", str(DEMO_WORKFLOW), "--no-progress", *ONE_WORKER))
    assert "n_workers: 1" in (out / "_state" / "workflow.yaml").read_text()  # the later commands use the run's saved workflow
    for stage in ("dedup", "download", "score", "select"):
        r = ok(cli(stage, "--out", str(out), "--no-progress"))
        assert f"{stage}:" in r.stderr and "failed of" in r.stderr, r.stderr[-2000:]
    return out


def _parquets(folder: Path) -> pd.DataFrame:
    files = sorted(folder.glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def test_single_stage_commands_build_a_dataset(staged_run):
    out = staged_run
    assert sorted(p.name for p in (out / "candidates").iterdir()) == ["en", "multi", "nolang"]
    assert list((out / "unique").glob("*/part-*.parquet"))
    assert list((out / "images").glob("*/*.tar")) and list((out / "images").glob("*/*_stats.json"))
    assert list((out / "scores").glob("*/*.parquet"))
    en = _parquets(out / "dataset" / "en")
    assert len(en) > 5 and list(en.columns[:9]) == LAION_COLUMNS


def test_status_after_the_stages(staged_run):
    r = ok(cli("status", str(staged_run), "--json"))
    st = json.loads(r.stdout)
    for stage in ("extract", "dedup", "download", "score", "select"):
        assert st[stage]["done"] and not st[stage]["failed"] and not st[stage]["pending"], (stage, st[stage])
    r = ok(cli("status", str(staged_run)))
    assert "extract" in r.stdout and "select" in r.stdout


def test_stats_on_a_run_directory(staged_run):
    r = ok(cli("stats", str(staged_run), "--json"))
    rows = {row["subset"]: row for row in json.loads(r.stdout)}
    for subset in ("en", "multi", "nolang"):
        assert rows[subset]["count"] == len(_parquets(staged_run / "dataset" / subset)), subset
    assert (staged_run / "stats" / "report.html").is_file()
    r = ok(cli("stats", str(staged_run)))
    assert "en" in r.stdout and "report.html" in r.stdout


@pytest.fixture(scope="module")
def laion_parquets(staged_run, tmp_path_factory) -> tuple[Path, int]:
    """The run's EN dataset re-written as LAION-5B's published metadata files (their columns only)."""
    folder = tmp_path_factory.mktemp("laion2B-en")
    en = _parquets(staged_run / "dataset" / "en")[LAION_COLUMNS]
    half = len(en) // 2
    en.iloc[:half].to_parquet(folder / "part-00000.parquet")
    en.iloc[half:].to_parquet(folder / "part-00001.parquet")
    return folder, len(en)


def test_stats_on_laion_schema_files_as_a_shell_expands_them(laion_parquets):
    folder, n = laion_parquets
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    r = ok(cli("stats", *files, "--subset", "en", "--json"))
    rows = {row["subset"]: row for row in json.loads(r.stdout)}
    assert rows["en"]["count"] == n


def test_stats_on_a_quoted_glob(laion_parquets, tmp_path):
    folder, n = laion_parquets
    dest = tmp_path / "stats_out"
    r = ok(cli("stats", str(folder / "*.parquet"), "--subset", "en", "--json", "--out", str(dest)))
    rows = {row["subset"]: row for row in json.loads(r.stdout)}
    assert rows["en"]["count"] == n
    assert (dest / "report.html").is_file()


def test_run_a_workflow_by_stage_ranges(world, tmp_path):
    out = tmp_path / "run"
    inputs = "inputs=" + json.dumps(world.wat_paths)
    r = ok(cli("run", str(DEMO_WORKFLOW), "--out", str(out), "--set", inputs, "--stages", ":dedup", "--no-progress", *ONE_WORKER))
    assert "run summary" in r.stderr
    st = json.loads(ok(cli("status", str(out), "--json")).stdout)
    assert set(st) >= {"extract", "dedup"} and "download" not in st
    r = ok(cli("run", str(DEMO_WORKFLOW), "--out", str(out), "--set", inputs, "--stages", "extract", "--no-progress", *ONE_WORKER))
    assert "skipped" in r.stderr  # done partitions are not redone
    r = ok(cli("run", str(DEMO_WORKFLOW), "--out", str(out), "--set", inputs, "--dry-run"))
    assert "extract" in r.stdout + r.stderr


def test_run_reports_a_config_error_before_work(tmp_path):
    out = tmp_path / "run"
    r = cli("run", str(DEMO_WORKFLOW), "--out", str(out), "--set", "download.timout=5")
    assert r.returncode == 2 and "download.timout: unknown key" in r.stderr
    assert not out.exists()
