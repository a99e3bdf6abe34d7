"""The stats stage: exact table values on a hand-built run, the LAION-schema path, the funnel,
the stage's resume, and the `laion-pipe stats` entry point.

`build_run` (also used by test_report.py and test_notebook.py) writes a small run directory whose
every table value is worked out by hand in EXPECTED below.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_pipe.config import workflow_from_dict
from laion_pipe.config.stats import StatsConfig
from laion_pipe.schema import DATASET_SCHEMA
from laion_pipe.stages import stats as stage
from laion_pipe.stats import TABLE_KEYS, StatsInputError, StatsResult, compute
from laion_pipe.stats.partials import Spec, bin_counts, domains, partial_counts
from shards import record_done

# ---------------------------------------------------------------- the hand-built run

# (URL, TEXT, WIDTH, HEIGHT, similarity, punsafe, pwatermark, LANGUAGE)
EN_1 = [
    ("https://www.example.com/a.jpg", "a red cat", 256, 256, 0.30, 0.1, 0.9, "en"),  # 9 chars
    ("http://example.com:8080/b.png", "héllo wörld", 512, 300, 0.35, 0.6, 0.2, "en"),  # 11 chars
    ("https://cdn.other.org/c.jpg", "x" * 40, 1024, 1024, 0.29, 0.5, 0.8, "en"),  # thresholds are strict >
    ("https://img.other.org/d", "日本語テキスト", 255, 2000, 0.50, None, None, "en"),  # 7 chars, not scored
]
EN_2 = [("https://Example.com/e", "dog", 2048, 1536, 0.28, 0.99, 0.95, "en")]  # 3 chars
MULTI = [
    ("https://beispiel.de/1.jpg", "Ein Hund", 600, 600, 0.27, 0.7, 0.1, "de"),  # 8
    ("https://exemple.fr/2", "Un chat noir", 100, 800, 0.26, 0.2, 0.85, "fr"),  # 12
    ("https://www.beispiel.de/3", "Katze", 1200, 1100, 0.40, 0.1, 0.3, "de"),  # 5
]
NOLANG = [("https://example.com/x", "IMG_1234", 300, 200, 0.31, 0.9, 0.9, None)]  # 8

EXPECTED = {
    "en": {"subset": "en", "count": 5, "gt256": 4, "gt512": 2, "gt1024": 2,
           "nsfw_pct": 50.0, "watermark_pct": 50.0, "avg_text_len": 14.0},
    "multi": {"subset": "multi", "count": 3, "gt256": 2, "gt512": 2, "gt1024": 1,
              "nsfw_pct": 33.3333, "watermark_pct": 33.3333, "avg_text_len": 8.3333},
    "nolang": {"subset": "nolang", "count": 1, "gt256": 0, "gt512": 0, "gt1024": 0,
               "nsfw_pct": 100.0, "watermark_pct": 100.0, "avg_text_len": 8.0},
    "total": {"subset": "total", "count": 9, "gt256": 6, "gt512": 4, "gt1024": 3,
              "nsfw_pct": 50.0, "watermark_pct": 50.0, "avg_text_len": 11.4444},  # 103 chars / 9
    "laion2B-en": {"subset": "laion2B-en", "count": 4, "gt256": 3, "gt512": 1, "gt1024": 1,
                   "nsfw_pct": 33.3333, "watermark_pct": 33.3333, "avg_text_len": 16.75},
}
"""What the table must say about build_run's data, row by row (worked out by hand)."""

DISPLAYED = {
    "en": ["EN", "5", "4", "2", "2", "50.00", "50.00", "14.00"],
    "multi": ["MULTI", "3", "2", "2", "1", "33.33", "33.33", "8.33"],
    "nolang": ["NOLANG", "1", "0", "0", "0", "100.00", "100.00", "8.00"],
    "total": ["TOTAL", "9", "6", "4", "3", "50.00", "50.00", "11.44"],
    "laion2B-en": ["laion2B-en", "4", "3", "1", "1", "33.33", "33.33", "16.75"],
}
"""The same rows as the terminal, Markdown and report show them."""


def _table(rows, subset: str) -> pa.Table:
    cols = list(zip(*rows))
    n = len(rows)
    data = {
        "URL": cols[0], "TEXT": cols[1], "WIDTH": cols[2], "HEIGHT": cols[3], "similarity": cols[4],
        "hash": [i for i in range(n)], "punsafe": cols[5], "pwatermark": cols[6], "LANGUAGE": cols[7],
        "aesthetic": [5.0] * n, "key": [f"{i:09d}" for i in range(n)], "uid": [f"u{i}" for i in range(n)],
        "subset": [subset] * n, "phash": [None] * n,
    }
    return pa.Table.from_pydict(data, schema=DATASET_SCHEMA)


def _manifest(stage: str, key: str, kept: dict, drops: dict, status: str = "done", outputs: tuple = ()) -> dict:
    return {"version": 1, "stage": stage, "key": key, "status": status, "fingerprint": "x", "inputs": [],
            "counts": {"pairs_in": sum(kept.values())}, "kept": kept, "drops": drops, "errors": [], "outputs": list(outputs)}


def build_run(root: Path) -> Path:
    """A run directory: dataset/{en,multi,nolang,laion2B-en}/*.parquet and funnel manifests."""
    ds = root / "dataset"
    for sub in ("en", "multi", "nolang", "laion2B-en"):
        (ds / sub).mkdir(parents=True)
    pq.write_table(_table(EN_1, "en"), ds / "en/00000.parquet")
    pq.write_table(_table(EN_2, "en"), ds / "en/00001.parquet")
    pq.write_table(_table(MULTI, "multi"), ds / "multi/00000.parquet")
    pq.write_table(_table(NOLANG, "nolang"), ds / "nolang/00000.parquet")
    pq.write_table(_table(EN_1, "en"), ds / "laion2B-en/00000.parquet")  # a recipe: not in the total
    (ds / "en/00000.tar").write_bytes(b"not parquet")  # shards sit next to the parquet
    state = root / "_state"
    manifests = {
        "extract": [
            _manifest("extract", "part-00000", {"en": 10, "multi": 6, "nolang": 3},
                      {"*": {"bad_url": 2, "no_alt": 5}, "en": {"text_too_short": 1}}),
            {"version": 1, "stage": "extract", "key": "part-00001", "status": "failed", "error": "boom"},
        ],
        "dedup": [_manifest("dedup", "part-00000", {"en": 8, "multi": 5, "nolang": 2},
                            {"en": {"duplicate_url": 2}, "multi": {"duplicate_url": 1}, "nolang": {"duplicate_url": 1}})],
        "select": [  # the dataset files are the select partitions' outputs: what the statistics read
            _manifest("select", "part-00000", {"en": 3, "multi": 3}, {"en": {"low_similarity": 2}, "multi": {"low_similarity": 2}},
                      outputs=("dataset/en/00000.parquet", "dataset/en/00000.tar", "dataset/multi/00000.parquet",
                               "dataset/laion2B-en/00000.parquet")),
            _manifest("select", "part-00001", {"en": 2, "nolang": 1}, {"en": {"low_similarity": 1, "unsafe": 1},
                                                                      "nolang": {"low_similarity": 1}},
                      outputs=("dataset/en/00001.parquet", "dataset/nolang/00000.parquet")),
            _manifest("select", "old-part", {"en": 1000}, {}),  # not in the current plan: ignored
        ],
    }
    plans = {"extract": ["part-00000", "part-00001", "part-00002"], "dedup": ["part-00000"],
             "select": ["part-00000", "part-00001"]}
    for st, ms in manifests.items():
        (state / st).mkdir(parents=True)
        for m in ms:
            (state / st / f"{m['key']}.json").write_bytes(orjson.dumps(m))
        (state / st / "_plan.json").write_bytes(orjson.dumps({"stage": st, "partitions": [
            {"key": k, "inputs": [], "fingerprint": "x"} for k in plans[st]]}))
    return root


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return build_run(tmp_path / "run")


def _rows(result: StatsResult) -> dict[str, dict]:
    return {r["subset"]: r for r in result.to_json()}


# ---------------------------------------------------------------- exact values


def test_exact_table_on_hand_built_run(run_dir, dask_client):
    result = compute(str(run_dir), StatsConfig(), dask_client)
    rows = result.to_json()
    assert [r["subset"] for r in rows] == ["en", "multi", "nolang", "total", "laion2B-en"]
    for r in rows:
        assert tuple(r) == TABLE_KEYS
        assert r == EXPECTED[r["subset"]], r["subset"]
    assert result.total is not None and result.total.files == 4  # the recipe's file is not in the total


def test_top_languages_and_domains(run_dir, dask_client):
    result = compute(str(run_dir), StatsConfig(top_n=3), dask_client)
    by = {s.subset: s for s in result.all_rows()}
    assert by["multi"].languages == [("de", 2), ("fr", 1)]
    assert by["en"].languages == [("en", 5)]
    assert by["nolang"].languages == []  # LANGUAGE all null
    assert by["total"].languages == [("en", 5), ("de", 2), ("fr", 1)]
    # www. and port stripped, lower-cased; the total counts over all three subsets, top 3 only
    assert by["en"].domains == [("example.com", 3), ("cdn.other.org", 1), ("img.other.org", 1)]
    assert by["total"].domains == [("example.com", 4), ("beispiel.de", 2), ("cdn.other.org", 1)]


def test_histograms_are_exact_and_sum_to_rows(run_dir, dask_client):
    cfg = StatsConfig(similarity_range=(0.25, 0.35), similarity_bins=2, text_length_max=20, text_length_bins=2,
                      size_edges=[0, 256, 1024])
    result = compute(str(run_dir), cfg, dask_client)
    en = result.subsets[0]
    # similarity 0.30 0.35 0.29 0.50 0.28 over [0.25, 0.30) [0.30, 0.35]+: above the range -> last bin
    assert en.histograms["similarity"].counts == [2, 3]
    # text lengths 9 11 40 7 3 over [0,10) [10,20]+
    assert en.histograms["text_length"].counts == [3, 2]
    # widths 256 512 1024 255 2048 over [0,256) [256,1024]+; heights 256 300 1024 2000 1536
    assert en.histograms["width"].counts == [1, 4]
    assert en.histograms["height"].counts == [0, 5]
    for name in ("similarity", "text_length", "width", "height"):
        assert result.total.histograms[name].total == 9


def test_funnel_from_manifests(run_dir, dask_client):
    result = compute(str(run_dir), StatsConfig(), dask_client)
    f = {s.stage: s for s in result.funnel}
    assert list(f) == ["extract", "dedup", "select"]
    ex = f["extract"]
    assert (ex.done, ex.failed, ex.pending) == (1, 1, 1)
    assert ex.pairs_in("en") == 11 and ex.kept["en"] == 10 and ex.dropped("*") == 7
    assert ex.subsets() == ["en", "multi", "nolang", "*"]
    sel = f["select"]
    assert sel.kept == {"en": 5, "multi": 3, "nolang": 1}  # old-part is not in the plan
    assert sel.drops["en"] == {"low_similarity": 3, "unsafe": 1}
    assert sel.pairs_in("en") == 9 and sel.counts["pairs_in"] == 9


def test_empty_and_missing_subsets_are_rows_of_zeros(tmp_path, dask_client):
    run = tmp_path / "run"
    (run / "dataset/en").mkdir(parents=True)
    pq.write_table(_table(EN_2, "en"), run / "dataset/en/00000.parquet")
    (run / "dataset/multi").mkdir()
    pq.write_table(_table(EN_2, "multi").slice(0, 0), run / "dataset/multi/00000.parquet")
    rows = _rows(compute(str(run), StatsConfig(), dask_client))
    assert rows["multi"]["count"] == 0 and rows["multi"]["nsfw_pct"] is None
    assert rows["nolang"] == {"subset": "nolang", "count": 0, "gt256": 0, "gt512": 0, "gt1024": 0,
                              "nsfw_pct": None, "watermark_pct": None, "avg_text_len": None}
    assert rows["total"]["count"] == 1 and rows["total"]["nsfw_pct"] == 100.0


# ---------------------------------------------------------------- LAION's published schema


def _laion_file(path: Path, rows, swapped: bool) -> Path:
    """A file as LAION published them: float WIDTH/HEIGHT with NaN, no LANGUAGE (EN), and in the
    legacy files WIDTH and HEIGHT swapped."""
    cols = list(zip(*rows))
    w, h = (cols[3], cols[2]) if swapped else (cols[2], cols[3])
    df = pd.DataFrame({
        "URL": cols[0], "TEXT": cols[1], "WIDTH": np.array(w, dtype="float64"), "HEIGHT": np.array(h, dtype="float64"),
        "similarity": np.array(cols[4], dtype="float64"), "hash": np.arange(len(rows), dtype="int64"),
        "punsafe": np.array([np.nan if v is None else v for v in cols[5]], dtype="float32"),
        "pwatermark": np.array([np.nan if v is None else v for v in cols[6]], dtype="float32"),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return path


def test_laion_schema_files_with_label_and_swap(tmp_path, dask_client):
    d = tmp_path / "laion"
    _laion_file(d / "part-00000-a.snappy.parquet", EN_1, swapped=True)
    _laion_file(d / "part-00001-b.snappy.parquet", EN_2 + [("https://x.org/n", "no size", math.nan, 512, 0.3, 0.1, 0.1, None)],
                swapped=True)
    cfg = StatsConfig(size_edges=[0, 1000, 5000])
    plain = compute([str(d / "*.parquet")], cfg, dask_client, subset_label="laion2B-en")
    fixed = compute([str(d / "*.parquet")], cfg, dask_client, subset_label="laion2B-en", swap_wh=True)
    assert [r["subset"] for r in plain.to_json()] == ["laion2B-en"]  # one row, no total, no funnel
    assert plain.total is None and plain.funnel == []
    row = plain.to_json()[0]
    # the EN rows plus one with an unknown (NaN) WIDTH: counted as a pair, never as >= n
    assert row == {**EXPECTED["en"], "subset": "laion2B-en", "count": 6, "avg_text_len": round(77 / 6, 4), "nsfw_pct": 40.0, "watermark_pct": 40.0}
    assert fixed.to_json()[0] == row  # the table is symmetric in WIDTH and HEIGHT...
    # ...the size histograms are not: true widths 256 512 1024 255 2048 (NaN skipped)
    assert fixed.subsets[0].histograms["width"].counts == [3, 2]
    assert plain.subsets[0].histograms["width"].counts == [3, 3]  # the file's WIDTH: true heights 256 300 1024 2000 1536 512
    assert fixed.subsets[0].languages == []  # no LANGUAGE column in LAION's EN files


def test_laion_schema_default_label_and_folder_input(tmp_path, dask_client):
    d = tmp_path / "laion"
    _laion_file(d / "a.parquet", MULTI, swapped=False)
    result = compute([str(d)], StatsConfig(), dask_client)
    assert result.to_json()[0]["subset"] == "all" and result.to_json()[0]["count"] == 3


def test_missing_column_is_a_clear_error(tmp_path, dask_client):
    p = tmp_path / "bad.parquet"
    pd.DataFrame({"URL": ["u"], "TEXT": ["t"]}).to_parquet(p)
    with pytest.raises(StatsInputError, match="missing column.*WIDTH, HEIGHT"):
        compute([str(p)], StatsConfig(), dask_client)
    with pytest.raises(StatsInputError, match="no such file"):
        compute([str(tmp_path / "nope.parquet")], StatsConfig(), dask_client)
    with pytest.raises(StatsInputError, match="no parquet files"):
        compute([str(tmp_path / "*.nothing")], StatsConfig(), dask_client)


# ---------------------------------------------------------------- pure pieces


def test_partial_counts_one_partition():
    spec = Spec.from_config(StatsConfig())
    pdf = _table(EN_1, "en").to_pandas()
    row = partial_counts(pdf, spec).iloc[0]
    assert (row["count"], row["gt256"], row["gt512"], row["gt1024"]) == (4, 3, 1, 1)
    assert (row["nsfw"], row["nsfw_scored"], row["watermark"], row["watermark_scored"]) == (1, 3, 1, 3)
    assert (row["text_chars"], row["text_count"]) == (67, 4)
    assert list(partial_counts(pdf.iloc[:0], spec).iloc[0]) == [0] * len(spec.columns())


def test_bin_counts_edges_and_nan():
    edges = (0.0, 1.0, 2.0)
    assert list(bin_counts(np.array([-5, 0, 0.999, 1, 2, 7, np.nan]), edges)) == [3, 3]


def test_domains():
    urls = pd.Series(["https://WWW.Example.com/a", "http://user:pw@host.org:81/x?y", "http://[::1]:8080/", "data:xyz",
                      None, "https://www2.foo.net"])
    got = domains(urls).tolist()
    assert got[:3] == ["example.com", "host.org", "[::1]"] and pd.isna(got[3]) and pd.isna(got[4])
    assert got[5] == "foo.net"


def test_result_round_trips_through_json(run_dir, dask_client):
    result = compute(str(run_dir), StatsConfig(), dask_client)
    again = StatsResult.from_dict(json.loads(orjson.dumps(result.to_dict())))
    assert again == result


def test_config_rejects_bad_ranges():
    from laion_pipe.config import ConfigError

    with pytest.raises(ConfigError, match="similarity_range"):
        workflow_from_dict({"stats": {"similarity_range": [0.5, 0.1]}})
    with pytest.raises(ConfigError, match="size_edges"):
        workflow_from_dict({"stats": {"size_edges": [0, 512, 256]}})
    with pytest.raises(ConfigError, match="stats.top: unknown key"):
        workflow_from_dict({"stats": {"top": 3}})


# ---------------------------------------------------------------- the stage and the command


def test_stage_run_writes_stats_and_resumes(run_dir, dask_client):
    wf = workflow_from_dict({"runner": {"progress": False}})
    rep = stage.run(str(run_dir), wf, dask_client)
    assert (rep.done, rep.skipped, rep.failed) == (1, 0, [])
    out = run_dir / "stats"
    for name in stage.FILES:
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "domains.png", "funnel.png", "languages_multi.png", "similarity.png", "sizes.png", "text_length.png"]
    assert json.loads((out / "table.json").read_text()) == list(EXPECTED.values())
    csv_lines = (out / "table.csv").read_text().splitlines()
    assert csv_lines[0] == ",".join(TABLE_KEYS) and csv_lines[4] == "total,9,6,4,3,50.0,50.0,11.4444"
    md = (out / "table.md").read_text()
    assert "| TOTAL | 9 | 6 | 4 | 3 | 50.00 | 50.00 | 11.44 |" in md and "WIDTH >= n and HEIGHT >= n" in md
    m = json.loads((run_dir / "_state/stats/all.json").read_text())
    assert m["status"] == "done" and "stats/report.html" in m["outputs"] and m["counts"]["pairs.total"] == 9

    assert stage.run(str(run_dir), wf, dask_client).skipped == 1  # nothing changed
    pq.write_table(_table(EN_2, "nolang"), run_dir / "dataset/nolang/00001.parquet")  # select wrote more
    record_done(run_dir, "select", "nolang-00001", ["dataset/nolang/00001.parquet"])
    rep = stage.run(str(run_dir), wf, dask_client)
    assert rep.done == 1
    assert _rows(stage.load_result(str(run_dir)))["nolang"]["count"] == 2


def test_main_stats_json_on_run_dir(run_dir, dask_client, capsys):
    wf = workflow_from_dict({"stats": {"plots": False}})
    code = stage.main_stats(str(run_dir), as_json=True, wf=wf, client=dask_client)
    assert code == 0
    printed = json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else
    assert printed == list(EXPECTED.values())
    assert (run_dir / "stats/report.html").is_file() and "<img" not in (run_dir / "stats/report.html").read_text()
    assert not (run_dir / "stats/plots").exists()


def test_main_stats_table_on_laion_files(tmp_path, dask_client, capsys):
    f = _laion_file(tmp_path / "laion/x.parquet", MULTI, swapped=True)
    out = tmp_path / "out"
    code = stage.main_stats([str(f)], subset="laion2B-multi", swap_wh=True, out=str(out), client=dask_client)
    assert code == 0
    text = capsys.readouterr().out
    assert "laion2B-multi" in text and "33.33" in text and "8.33" in text and "punsafe > 0.5" in text
    assert (out / "report.html").is_file() and (out / "table.json").is_file()


def test_main_stats_bad_arguments(run_dir, tmp_path, dask_client, capsys):
    assert stage.main_stats(str(run_dir), subset="en", client=dask_client) == 2
    assert "--subset" in capsys.readouterr().err
    assert stage.main_stats(str(run_dir), swap_wh=True, client=dask_client) == 2
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"URL": ["u"]}).to_parquet(bad)
    assert stage.main_stats([str(bad)], client=dask_client) == 2
    assert "missing column" in capsys.readouterr().err
    assert not (run_dir / "stats").exists()
