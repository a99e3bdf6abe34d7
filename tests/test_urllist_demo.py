"""The demo pipeline started from the demo world's URL list instead of its WAT files (issue 20):
the same pages give the same dataset (same keys, same images and captions, same LAION columns);
every list format gives the same download shards; the list's own columns arrive in the download's
parquet and `.json` and in the dataset's; a list's published scores can replace computed ones.

One small world (the dataset digest's spec) on a loopback server serves every run here."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_pipe.demo.run import demo_workflow
from laion_pipe.pipeline import PIPELINE_STAGES, run_stages
from test_urllist import console_command

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SPEC = {"n_pages": 12, "images_per_page": 6, "n_wat_files": 3, "seed": 7}
OVERRIDES = ["dedup.rows_per_part=12", "select.samples_per_shard=20", "runner.progress=false"]
COMPARED = ("URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark", "LANGUAGE", "aesthetic", "subset")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def dataset(out: Path) -> dict[str, dict[str, tuple]]:
    """{recipe: {key: (image sha, caption sha, the parquet row's compared columns)}}."""
    found: dict[str, dict[str, list]] = {}
    for tar in sorted((out / "dataset").glob("*/*.tar")):
        recipe = found.setdefault(tar.parent.name, {})
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                entry = recipe.setdefault(key, [None, None, None])
                data = tf.extractfile(m).read()
                if ext == "txt":
                    entry[1] = _sha(data)
                elif ext != "json":
                    entry[0] = _sha(data)
    for f in sorted((out / "dataset").glob("*/*.parquet")):
        for row in pq.read_table(f).to_pylist():
            found[f.parent.name][row["key"]][2] = tuple(round(v, 4) if isinstance(v, float) else v for v in (row[c] for c in COMPARED))
    return {r: {k: tuple(v) for k, v in keys.items()} for r, keys in found.items()}


def downloads(out: Path) -> dict[str, tuple]:
    """{subset/key: (url, image sha256, status)} over every download shard."""
    found = {}
    for f in sorted((out / "images").glob("*/*.parquet")):
        for r in pq.read_table(f).to_pylist():
            found[f"{f.parent.name}/{r['key']}"] = (r["url"], r["sha256"], r["status"])
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dask_client):
    """The world, then the pipeline from its WAT files and from its URL list (with a published
    similarity column added, as LAION's parquet has one)."""
    from laion_pipe.demo.imageserver import ImageServer
    from laion_pipe.demo.world import WorldSpec, build_world

    root = tmp_path_factory.mktemp("urllist-demo")
    server = ImageServer().start()
    try:
        world = build_world(root / "world", WorldSpec(**SPEC), server=server)
        listed = pq.read_table(world.list_path)
        published = pa.array([0.5 + i / 1000 for i in range(len(listed))], pa.float64())
        pq.write_table(listed.append_column("similarity", published), root / "laion-like.parquet", row_group_size=16)
        out = {}
        for name, inputs in (("wat", world.wat_paths), ("list", [str(root / "laion-like.parquet")])):
            out[name] = root / name
            reports = run_stages(demo_workflow(inputs, str(out[name]), OVERRIDES), str(out[name]), PIPELINE_STAGES, dask_client)
            assert not [r.failed for r in reports if r.failed]
        yield world, out, root
    finally:
        server.stop()


def test_the_list_gives_the_wat_runs_dataset(runs):
    """Same recipes, keys, image bytes, captions and LAION columns. (`uid` is left out: it hashes
    the page a pair was found on, and for a URL several pages share, a WAT file's in-file dedup
    keeps the first page's copy while a list's repeats all reach the global dedup.)"""
    _, out, _ = runs
    wat, lst = dataset(out["wat"]), dataset(out["list"])
    assert sum(len(v) for v in wat.values()) > 50
    assert sorted(lst) == sorted(wat)
    for recipe in wat:
        assert lst[recipe] == wat[recipe], recipe


def test_the_lists_own_columns_arrive_in_download_and_dataset(runs):
    world, out, _ = runs
    listed = {r["SAMPLE_ID"]: r for r in pq.read_table(world.list_path).to_pylist()}
    by_page = {(r["url"], " ".join(r["caption"].split()), r["page_url"]): i for i, r in listed.items()}

    def consistent(row: dict, url: str, text: str) -> bool:
        """The row's carried values are those of a list row with its URL and caption (a URL
        several pages share keeps one of their rows)."""
        src = listed[row["SAMPLE_ID"]]
        return (src["url"], " ".join(src["caption"].split())) == (url, text) and row["kind"] == src["kind"] and \
            abs(row["source_similarity"] - (0.5 + row["SAMPLE_ID"] / 1000)) < 1e-9

    images = [pq.read_table(f) for f in sorted((out["list"] / "images").glob("*/*.parquet"))]
    assert all(t.schema.field("SAMPLE_ID").type == pa.int64() and t.schema.field("kind").type == pa.string() for t in images)
    # the list's `similarity` is not ours: it travels as source_similarity and ours stays computed
    assert all(t.schema.field("source_similarity").type == pa.float64() for t in images)
    for t in images:
        for r in t.to_pylist():
            assert r["SAMPLE_ID"] == by_page[(r["url"], r["text"], r["page_url"])] and consistent(r, r["url"], r["text"])
    rows = [r for f in sorted((out["list"] / "dataset").glob("*/*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) > 50 and all(consistent(r, r["URL"], r["TEXT"]) and r["similarity"] != r["source_similarity"] for r in rows)
    for tar in sorted((out["list"] / "dataset").glob("*/*.tar"))[:2]:
        with tarfile.open(tar) as tf:
            docs = [orjson.loads(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".json")]
        assert docs and all(consistent(d, d["url"], d["caption"]) for d in docs)
    with tarfile.open(sorted((out["list"] / "images").glob("*/*.tar"))[0]) as tf:
        doc = next(orjson.loads(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".json"))
    assert consistent(doc, doc["url"], doc["caption"])


def test_published_scores_replace_computed_ones_on_request_and_the_stats_say_so(runs, dask_client):
    _, out, root = runs
    run = out["list"]
    wf = demo_workflow([str(root / "laion-like.parquet")], str(run), [*OVERRIDES, "score.published={similarity: similarity}",
                                                                    "select.similarity={en: 0.0, multi: 0.0, nolang: 0.0}"])
    reports = run_stages(wf, str(run), ["score", "select", "stats"], dask_client)
    assert not [r.failed for r in reports if r.failed]
    rows = [r for f in sorted((run / "dataset" / "en").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert rows and all(abs(r["similarity"] - (0.5 + r["SAMPLE_ID"] / 1000)) < 1e-6 for r in rows)
    score = reports[0]
    scored = score.counts["published.similarity"]
    assert scored > 50 and score.counts["computed.similarity"] == 0 and score.counts.get("published.punsafe", 0) == 0
    table = (run / "stats" / "table.md").read_text()
    assert f"similarity: published by the URL list for {scored:,} pairs, computed for 0" in table


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_every_list_format_gives_the_same_download_shards(runs, dask_client, fmt):
    world, out, root = runs
    rows = pq.read_table(world.list_path).select(["url", "caption", "page_url"]).to_pylist()
    path = root / f"demo-list.{fmt}.gz"
    if fmt == "jsonl":
        data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["url", "caption", "page_url"], delimiter="," if fmt == "csv" else "\t")
        w.writeheader()
        w.writerows(rows)
        data = buf.getvalue().encode()
    import gzip

    path.write_bytes(gzip.compress(data))
    run = root / f"run-{fmt}"
    reports = run_stages(demo_workflow([str(path)], str(run), OVERRIDES), str(run), ["extract", "dedup", "download"], dask_client)
    assert not [r.failed for r in reports if r.failed]
    assert downloads(run) == downloads(out["list"]) != {}


def test_cli_run_from_a_list_and_demo_from_list(runs, tmp_path, monkeypatch):
    """`laion-pipe run WORKFLOW --set inputs=[LIST]` as a user types it; `laion-pipe demo
    --from-list` reaches the demo with the flag set (its full run is the fixture's list run)."""
    import yaml

    world, _, root = runs
    wf_path = tmp_path / "wf.yaml"
    wf_path.write_text(yaml.safe_dump(demo_workflow([world.list_path], str(tmp_path / "run"), OVERRIDES).model_dump(mode="json")))
    r = subprocess.run([console_command(), "run", str(wf_path), "--stages", "extract,dedup", "--no-progress",
                        "--set", "cluster.n_workers=1"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    plan = json.loads((tmp_path / "run" / "_state" / "extract" / "_plan.json").read_text())
    assert [p["inputs"] for p in plan["partitions"]] == [[world.list_path]]
    from laion_pipe import cli
    from laion_pipe.demo import run as demo_run

    seen = {}
    monkeypatch.setattr(demo_run, "main_demo", lambda **kw: seen.update(kw) or 0)
    assert cli.main(["demo", "--from-list", "--no-train", "--out", str(tmp_path / "d")]) == 0
    assert seen["from_list"] is True and seen["train"] is False
    help_text = subprocess.run([console_command(), "demo", "--help"], capture_output=True, text=True,
                               timeout=120, cwd=REPO).stdout
    assert "--from-list" in help_text
