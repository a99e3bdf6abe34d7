"""`laion-pipe demo` end to end: the command the README's first line runs. Its statistics must
agree with what the demo world was built with (world/truth.parquet records each image's kind)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    """The README's command, with a shorter training: 50 steps instead of the demo's 200 (a
    validation grid and a checkpoint at 25 and 50). Nothing here judges the model's quality
    (benchmarks/bench_curation.py does, against a baseline); the 150 steps left out were about
    110 CPU-s of the suite's time. Everything else is the demo's own workflow."""
    out = tmp_path_factory.mktemp("demo") / "laion_demo"
    t0 = time.time()
    shorter = ["train.max_steps=50", "train.lr_warmup_steps=5", "train.checkpoint_every=25", "train.validation_every=25"]
    cmd = [sys.executable, "-m", "laion_pipe", "demo", "--out", str(out), *[x for s in shorter for x in ("--set", s)]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    print(f"laion-pipe demo took {time.time() - t0:.0f}s")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return out, r.stdout + r.stderr


def _dataset(out: Path, name: str) -> pd.DataFrame:
    files = sorted((out / "dataset" / name).glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def test_demo_prints_funnel_table_and_report(demo_run):
    out, log = demo_run
    assert "report.html" in log and (out / "stats" / "report.html").is_file()
    stats = json.loads((out / "stats" / "table.json").read_text())
    rows = {r["subset"]: r for r in (stats if isinstance(stats, list) else stats["rows"])}
    for subset in ("en", "multi", "nolang"):
        assert rows[subset]["count"] == len(_dataset(out, subset)), subset
        assert str(rows[subset]["count"]) in log
    assert rows["total"]["count"] == sum(rows[s]["count"] for s in ("en", "multi", "nolang"))
    assert rows["en"]["count"] > 20 and rows["multi"]["count"] > 10


def test_demo_ends_with_the_search_page_command(demo_run):
    """The demo builds the kNN index and says how to open its search page (formerly its own
    `laion-pipe demo --no-train` run in test_cli_e2e: the same command, run once here)."""
    out, log = demo_run
    assert f"laion-pipe serve {out.resolve()}" in " ".join(log.split())
    assert (out / "index" / "clip" / "image.index").is_file()
    assert (out / "dataset" / "en").is_dir()


def test_demo_numbers_agree_with_the_world(demo_run):
    out, _ = demo_run
    truth = pd.read_parquet(out / "world" / "truth.parquet")
    kind_of = dict(zip(truth.url, truth.kind))  # duplicates reuse an earlier url, so url -> its first kind
    for url, kind in zip(truth.url, truth.kind):
        kind_of.setdefault(url, kind)
    kept = pd.concat([_dataset(out, s) for s in ("en", "multi", "nolang")], ignore_index=True)
    kept_kinds = kept.URL.map(kind_of)
    # nothing that must never reach the dataset does
    assert not set(kept_kinds) & {"small", "broken", "noai", "missing", "bad_source", "short"}
    assert kept.URL.is_unique  # dedup by url
    # NOLANG only gets pairs the language model is unsure of; EN/MULTI only confident ones
    cands = pd.concat([pd.read_parquet(p) for p in (out / "candidates").glob("*/*.parquet")], ignore_index=True)
    thr = 0.5
    assert (cands[cands.subset == "nolang"].language_score < thr).all()
    assert (cands[cands.subset != "nolang"].language_score >= thr).all()
    assert set(cands[cands.subset == "en"].language) == {"en"}
    assert all(u in set(cands[cands.subset == "nolang"].url) for u in truth[truth.kind == "nolang"].url)
    # the mismatching captions are mostly dropped by similarity, the matching ones mostly kept
    scores = pd.concat([pd.read_parquet(p) for p in (out / "scores").glob("*/*.parquet")], ignore_index=True)
    images = pd.concat([pd.read_parquet(p) for p in (out / "images").glob("*/*.parquet")], ignore_index=True)
    scored = images[images.status == "success"].merge(scores[["key", "similarity"]], on="key")
    scored["kind"] = scored.url.map(kind_of)
    en_multi = scored[scored.subset != "nolang"]
    mism, match = en_multi[en_multi.kind == "mismatch"], en_multi[en_multi.kind == "match"]
    assert len(mism) >= 5 and len(match) >= 20
    kept_urls = set(kept.URL)
    assert mism.url.isin(kept_urls).mean() <= 0.2, "mismatching captions must mostly be dropped"
    assert match.url.isin(kept_urls).mean() >= 0.8, "matching captions must mostly be kept"
    # every opted-out image that reached download was refused for that reason
    manifests = [json.loads(p.read_text()) for p in (out / "_state" / "download").glob("*.json") if not p.name.startswith("_")]
    opt_out = sum(m["drops"].get(s, {}).get("opt_out", 0) for m in manifests for s in m["drops"])
    unique = pd.concat([pd.read_parquet(p) for p in (out / "unique").glob("*/*.parquet")], ignore_index=True)
    assert opt_out == unique.url.map(kind_of).eq("noai").sum() > 0
    # the watermark and unsafe heads see the kinds they were built for
    wm = kept[kept_kinds == "watermark"].pwatermark.mean()
    clean = kept[kept_kinds == "match"].pwatermark.mean()
    assert wm > clean + 0.3
    assert kept[kept_kinds == "unsafe"].punsafe.mean() > kept[kept_kinds == "match"].punsafe.mean() + 0.3


def _run_notebook(name: str, out: Path, monkeypatch):
    """Execute notebooks/{name} on the run directory `out` (LAION_PIPE_RUN), as a person would;
    returns the executed notebook after checking no cell raised."""
    import nbformat
    from nbclient import NotebookClient

    nb_path = REPO / "notebooks" / name
    nb = nbformat.read(nb_path, as_version=4)
    monkeypatch.setenv("LAION_PIPE_RUN", str(out))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    return nb


def test_notebook_runs_on_the_demo_output(demo_run, monkeypatch):
    out, _ = demo_run
    _run_notebook("subset_statistics.ipynb", out, monkeypatch)


def test_demo_trains_and_evaluates_the_demo_model(demo_run):
    out, log = demo_run
    assert (out / "train" / "demo" / "final" / "unet").is_dir()
    assert (out / "train" / "demo" / "metrics.jsonl").stat().st_size > 0
    metrics = json.loads((out / "eval" / "demo" / "metrics.json").read_text())
    for key in ("clip_score", "retrieval_top1", "fd_clip"):
        assert metrics[key] is not None, key
    assert (out / "eval" / "demo" / "grid.png").is_file()
    assert "top-1 prompt retrieval" in log
    assert "Training and evaluation" in (out / "stats" / "report.html").read_text()


def test_training_feed_notebook_runs_on_the_demo_output(demo_run, monkeypatch):
    out, _ = demo_run
    nb = _run_notebook("training_feed.ipynb", out, monkeypatch)
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the batch, the loss curve and the sample grids
