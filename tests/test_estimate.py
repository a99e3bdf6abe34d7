"""The cost estimate's arithmetic (figures worked out by hand below, not by the code under test),
how inputs are counted without network, and the cost file's round trip."""
from __future__ import annotations

import gzip
import importlib.util
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from laion_pipe import costs as costs_mod
from laion_pipe.config import workflow_from_dict
from laion_pipe.costs import UnitCost, load_unit_costs, record_unit_cost
from laion_pipe.estimate import (
    ESTIMATED_STAGES,
    InputCount,
    cluster_for,
    count_inputs,
    dry_run_estimate,
    estimate,
    wat_files_for_pairs,
)

# Injected figures, round so that the expected values below can be checked by hand.
FIGURES = {
    "crawl.wat_files_per_crawl": 90_000,
    "crawl.bytes_per_wat": 2_000,  # 1,000 + 2,000 + 3,000 bytes of local files = 3 real-size WAT files
    "extract.core_seconds_per_wat": 36,
    "extract.unique_pairs_per_wat": 1_000,
    "extract.output_bytes_per_wat": 1_000_000,
    "dedup.unique_fraction": 0.5,
    "dedup.core_seconds_per_million_candidates": 600,
    "dedup.spill_bytes_per_candidate_byte": 2.0,
    "download.success_fraction": 0.8,
    "download.core_seconds_per_thousand_images": 15,
    "download.wire_bytes_per_image": 10_000,
    "download.bytes_per_image_256": 1_000,
    "download.bytes_per_image_512": 4_000,
    "download.dns_queries_per_image": 1.0,
    "score.cpu_core_seconds_per_thousand_images": 1_500,
    "score.gpu_images_per_second": 2,
    "score.feed_core_seconds_per_thousand_images": 150,
    "select.final_fraction_of_unique": 0.1,
    "cc2dataset.core_seconds_per_wat": 50,
    "img2dataset.core_seconds_per_thousand_images": 12,
}


def injected(**changes: float) -> dict[str, UnitCost]:
    figures = {**FIGURES, **changes}
    return {k: UnitCost(k, float(v), "unit", "published: test figure") for k, v in figures.items()}


@pytest.fixture
def three_wats(tmp_path: Path) -> Path:
    d = tmp_path / "wats"
    d.mkdir()
    for i, size in enumerate((1_000, 2_000, 3_000)):
        (d / f"part-{i}.warc.wat.gz").write_bytes(b"x" * size)
    return d


def test_three_local_wat_files_by_hand(three_wats: Path) -> None:
    counted = count_inputs([str(three_wats / "*.warc.wat.gz")], injected())
    assert counted.files == 3
    assert counted.wat_equivalents == pytest.approx(3.0)  # 6,000 bytes / 2,000

    est = estimate(counted, injected())
    # pairs: 3 WAT x 1,000 unique; candidates before dedup 3,000 / 0.5; 80% downloaded; 10% kept
    assert est.unique == pytest.approx(3_000)
    assert est.candidates == pytest.approx(6_000)
    assert est.downloaded == pytest.approx(2_400)
    assert est.final == pytest.approx(300)
    # core-hours: extract 3 x 36 s; dedup 0.006 M x 600 s; download 2.4 k x 15 s; score CPU 2.4 k x 1,500 s
    assert est.stage("extract").core_hours == pytest.approx(108 / 3600)
    assert est.stage("dedup").core_hours == pytest.approx(3.6 / 3600)
    assert est.stage("download").core_hours == pytest.approx(36 / 3600)
    assert est.stage("score").core_hours == pytest.approx(1.0)
    assert est.stage("score").gpu_hours == pytest.approx(1_200 / 3600)  # 2,400 images at 2/s
    assert est.stage("score").feed_core_hours == pytest.approx(360 / 3600)  # 2.4 k x 150 s decoding for the GPU
    assert est.core_hours == pytest.approx((108 + 3.6 + 36 + 360) / 3600)  # scoring on GPUs
    assert est.core_hours_cpu_only == pytest.approx((108 + 3.6 + 36 + 3_600) / 3600)
    # bytes: candidates 3 x 1 MB; images 2,400 x 1 kB (256 px); dataset 300 x 1 kB; fetched 2,400 x 10 kB
    assert est.candidates_bytes == pytest.approx(3_000_000)
    assert est.images_bytes == pytest.approx(2_400_000)
    assert est.dataset_bytes == pytest.approx(300_000)
    assert est.wire_bytes == pytest.approx(24_000_000)
    assert est.dns_queries == pytest.approx(3_000)
    # dedup with its defaults: one task per 256 MiB, one bucket per 64 MiB, a flush every 1M rows:
    # 3 MB -> 1 task (1 run file, 1 flush), 1 bucket = 1 reduce task (3 survivor files)
    assert est.dedup_shuffle.files == pytest.approx(4.0) and est.dedup_shuffle.ranged_reads == pytest.approx(2.0)
    comparisons = {what: hours for what, hours, _ in est.comparisons}
    assert comparisons["cc2dataset extract"] == pytest.approx(150 / 3600)
    assert comparisons["img2dataset download"] == pytest.approx(28.8 / 3600)


def test_one_week_cluster_by_hand() -> None:
    est = estimate(InputCount(files=3, wat_equivalents=3.0), injected())
    c = cluster_for(est, hours=0.01)  # 36 seconds
    assert c.cores["extract"] == pytest.approx(108 / 36)
    assert c.cores["download"] == pytest.approx(36 / 36)
    assert c.cores["score feed"] == pytest.approx(360 / 36)
    assert c.gpus == pytest.approx(1_200 / 36)
    assert c.score_cores_without_gpus == pytest.approx(3_600 / 36)
    assert c.disk_bytes == pytest.approx(3_000_000 + 2_400_000 + 300_000)
    assert c.network_bits_per_second == pytest.approx(24_000_000 * 8 / 36)
    assert c.dns_queries_per_second == pytest.approx(3_000 / 36)


def test_files_needed_for_a_dataset_size() -> None:
    # 5.85B pairs at 1,000 unique pairs per WAT of which 10% stay: 58.5M WAT files
    assert wat_files_for_pairs(5.85e9, injected()) == pytest.approx(5.85e7)


def test_image_size_and_resize_mode_choose_the_bytes_figure() -> None:
    one = InputCount(files=1, wat_equivalents=1.0)
    assert estimate(one, injected(), image_size=512).images_bytes == pytest.approx(800 * 4_000)
    assert estimate(one, injected(), image_size=256).images_bytes == pytest.approx(800 * 1_000)
    assert estimate(one, injected(), resize_mode="no").images_bytes == pytest.approx(800 * 10_000)


def test_only_the_stages_asked_for() -> None:
    est = estimate(InputCount(files=1, wat_equivalents=1.0), injected(), stages=["download", "score"])
    assert [s.stage for s in est.stages] == ["download", "score"]
    assert [what for what, _, _ in est.comparisons] == ["img2dataset download"]
    text = est.render()
    # 800 images: download 800 x 15 ms = 12 s; GPU feed 800 x 150 ms = 120 s; CPU scoring 800 x 1.5 s = 1,200 s
    assert "dedup shuffle" not in text and "total 0.0367 core-hours with scoring on GPUs (0.337 with scoring on CPUs)" in text
    assert "total 0.00333 core-hours\n" in estimate(InputCount(files=1, wat_equivalents=1.0), injected(),
                                                    stages=["download"]).render()


def test_crawl_id_is_counted_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("count_inputs read a remote listing")

    monkeypatch.setattr("laion_pipe.estimate.crawl_files", no_network)
    capped = count_inputs(["CC-MAIN-2023-14"], injected(), max_files=10)
    assert (capped.files, capped.wat_equivalents) == (10, 10.0)
    assert "first 10 files" in capped.notes[0]

    whole = count_inputs(["CC-MAIN-2023-14"], injected())  # default base: Common Crawl over HTTPS
    assert (whole.files, whole.wat_equivalents) == (90_000, 90_000.0)
    assert "typical size of a recent crawl" in whole.notes[0]


def test_crawl_id_on_a_local_mirror_is_counted_from_its_listing(tmp_path: Path) -> None:
    listing = tmp_path / "crawl-data" / "CC-MAIN-2023-14" / "wat.paths.gz"
    listing.parent.mkdir(parents=True)
    lines = [f"crawl-data/CC-MAIN-2023-14/segments/s/wat/f-{i}.warc.wat.gz" for i in range(4)]
    listing.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    counted = count_inputs(["CC-MAIN-2023-14"], injected(), crawl_base_url=str(tmp_path))
    assert (counted.files, counted.wat_equivalents) == (4, 4.0)


def test_remote_files_and_missing_local_files(tmp_path: Path) -> None:
    counted = count_inputs(["s3://commoncrawl/a.warc.wat.gz", "s3://bucket/*.gz", str(tmp_path / "nope.wat")], injected())
    assert (counted.files, counted.wat_equivalents) == (1, 1.0)
    notes = " | ".join(counted.notes)
    assert "remote glob" in notes and "no such local file" in notes


def test_dry_run_text_for_a_small_workflow(three_wats: Path) -> None:
    wf = workflow_from_dict({"name": "small", "inputs": [str(three_wats)]})
    text = dry_run_estimate(wf, stages=["extract", "dedup", "download", "score", "select"], costs=injected())
    assert "3 files = 3.00 real-size WAT files" in text
    assert "6.00k candidates -> 3.00k unique -> 2.40k images downloaded -> 300 in dataset/" in text
    extract_line = next(line for line in text.splitlines() if line.strip().startswith("extract"))
    assert "0.0300" in extract_line  # 108 core-s
    assert "not estimated: select" in text
    assert dry_run_estimate(workflow_from_dict({}), costs=injected()).endswith("nothing to estimate")


def test_shipped_cost_file_has_every_figure_the_estimate_reads() -> None:
    shipped = load_unit_costs()
    missing = set(FIGURES) - set(shipped)
    assert not missing
    assert {c.kind for c in shipped.values()} <= {"measured here", "published", "derived", "assumed"}
    # the keys the benchmarks refresh
    for key in ("extract.core_seconds_per_wat", "dedup.core_seconds_per_million_candidates",
                "download.core_seconds_per_thousand_images", "score.cpu_core_seconds_per_thousand_images"):
        assert key in shipped
    est = estimate(InputCount(files=1, wat_equivalents=1.0), shipped)
    assert [s.stage for s in est.stages] == list(ESTIMATED_STAGES)


def test_record_unit_cost_round_trip_on_a_copy(tmp_path: Path) -> None:
    shipped = costs_mod.DEFAULT_PATH
    before = shipped.read_bytes()
    copy = tmp_path / "unit_costs.json"
    shutil.copyfile(shipped, copy)

    record_unit_cost("dedup.core_seconds_per_million_candidates", 7.5, "core-s per million candidate rows",
                     "measured here: test on 2026-01-01, 2-core machine", path=copy)
    record_unit_cost("test.new_figure", 3, "things", "published: a test", path=copy)
    loaded = load_unit_costs(copy)
    assert loaded["dedup.core_seconds_per_million_candidates"] == UnitCost(
        "dedup.core_seconds_per_million_candidates", 7.5, "core-s per million candidate rows",
        "measured here: test on 2026-01-01, 2-core machine")
    assert loaded["dedup.core_seconds_per_million_candidates"].kind == "measured here"
    assert loaded["test.new_figure"].value == 3.0
    # every other entry kept as it was
    others = {k: v for k, v in load_unit_costs(shipped).items() if k != "dedup.core_seconds_per_million_candidates"}
    assert {k: loaded[k] for k in others} == others
    assert list(json.loads(copy.read_text())) == sorted(loaded)  # stable order for diffs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no temporary left
    assert shipped.read_bytes() == before


@pytest.mark.parametrize(
    "key, value, source",
    [
        ("a.b", 1.0, "somewhere on the web"),  # no kind
        ("a.b", 1.0, "measured: bench"),  # not one of the kinds
        ("a.b", -1.0, "published: x"),
        ("a.b", float("nan"), "published: x"),
        ("a b", 1.0, "published: x"),
    ],
)
def test_record_unit_cost_refuses_unlabelled_or_bad_figures(tmp_path: Path, key, value, source) -> None:
    copy = tmp_path / "unit_costs.json"
    shutil.copyfile(costs_mod.DEFAULT_PATH, copy)
    before = copy.read_bytes()
    with pytest.raises(ValueError):
        record_unit_cost(key, value, "unit", source, path=copy)
    assert copy.read_bytes() == before


def test_a_broken_cost_file_names_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "unit_costs.json"
    bad.write_text(json.dumps({"x.y": {"value": 1, "unit": "u", "source": "guess"}}))
    with pytest.raises(ValueError, match="x.y"):
        load_unit_costs(bad)


def _cli() -> list[str]:
    module = "laion_pipe" if importlib.util.find_spec("laion_pipe.__main__") else "laion_pipe.cli"
    return [sys.executable, "-m", module]


def test_run_dry_run_prints_the_estimate_as_a_user_runs_it(three_wats: Path, tmp_path: Path) -> None:
    from laion_pipe import cli

    if "dry_run_estimate" not in inspect.getsource(cli.cmd_run):
        pytest.skip("cmd_run's --dry-run branch does not call dry_run_estimate yet (laion_pipe/cli.py)")
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"name: small\ninputs: ['{three_wats}/*.warc.wat.gz']\n")
    r = subprocess.run([*_cli(), "run", str(wf), "--out", str(tmp_path / "run"), "--dry-run"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "estimate for workflow 'small'" in out
    # 6,000 bytes against the shipped 374.7 MB real WAT file
    assert "3 files = " in out and "real-size WAT files" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_estimate_module_as_a_user_runs_it(tmp_path: Path) -> None:
    """`python -m laion_pipe.estimate --wat-files 3 --hours 1` (docs/scaling.md's command) on injected figures."""
    figures = tmp_path / "costs.json"
    for key, value in FIGURES.items():
        record_unit_cost(key, value, "unit", "published: test figure", path=figures)
    r = subprocess.run([sys.executable, "-m", "laion_pipe.estimate", "--wat-files", "3", "--hours", "1", "--costs", str(figures)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "6.00k candidates -> 3.00k unique -> 2.40k images downloaded -> 300 in dataset/" in r.stdout
    # one hour: extract 108 core-s / 3,600 s; scoring 1,200 GPU-s / 3,600 s
    assert "extract       0.0300 cores" in r.stdout
    assert "score          0.333 GPUs + 0.100 cores to feed them (or 1.00 cores without GPUs)" in r.stdout
    pairs = subprocess.run([sys.executable, "-m", "laion_pipe.estimate", "--pairs", "300", "--costs", str(figures)],
                           capture_output=True, text=True, timeout=120)
    assert pairs.returncode == 0, pairs.stderr
    assert "= 3.00 real-size WAT files" in pairs.stdout  # 300 / (1,000 x 0.1)


def test_dedup_shuffle_grows_linearly_with_the_input() -> None:
    from laion_pipe.config.dedup import DedupConfig

    cfg = DedupConfig(group_target_bytes=1_000_000, bucket_target_bytes=100_000, flush_rows=1_000, coarse_buckets=10)
    est = estimate(InputCount(files=3, wat_equivalents=3.0), injected(), dedup=cfg)
    # 3 MB of candidates (6,000 rows): 3 tasks of 2,000 rows = 2 flushes each; 30 buckets in 10 reduce
    # tasks: 3 run files + 3 x 10 survivor files; each reduce task reads 3 index slices + 6 segments
    d = est.dedup_shuffle
    assert (d.tasks, d.flushes, d.buckets, d.reduce_tasks) == (3, 6, 30, 10)
    assert d.files == pytest.approx(33) and d.ranged_reads == pytest.approx(90)
    assert d.scratch_bytes_per_task == pytest.approx(600_000)  # 3 MB / 10 tasks, spilled at 2 bytes per byte
    ten = estimate(InputCount(files=30, wat_equivalents=30.0), injected(), dedup=cfg).dedup_shuffle
    # 10x the input: 10x the run files and ranged reads (the reduce tasks stay at coarse_buckets), 10x the spill per task
    assert (ten.tasks, ten.flushes, ten.reduce_tasks) == (30, 60, 10)
    assert ten.ranged_reads == pytest.approx(10 * d.ranged_reads) and ten.files == pytest.approx(30 + 30)
    assert cluster_for(estimate(InputCount(files=30, wat_equivalents=30.0), injected(), dedup=cfg), 1).shuffle == ten


def test_url_lists_are_counted_by_their_rows(tmp_path):
    """A URL list is no WAT file: it counts as its rows' worth of unique pairs, said so."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    costs = injected()
    pairs_per_wat = costs["extract.unique_pairs_per_wat"].value
    pq.write_table(pa.table({"url": [f"http://img.example/{i}.jpg" for i in range(5000)], "caption": ["a photo"] * 5000}),
                   tmp_path / "list.parquet")
    text = "".join(f"http://img.example/{i:06d}.jpg\ta photo of a thing\n" for i in range(20000))
    (tmp_path / "list.tsv.gz").write_bytes(gzip.compress(text.encode()))
    counted = count_inputs([str(tmp_path / "list.parquet"), str(tmp_path / "list.tsv.gz")], costs)
    assert counted.files == 2
    assert counted.wat_equivalents == pytest.approx((5000 + 20000) / pairs_per_wat, rel=0.05)
    assert any("a URL list of about 5.00k rows" in n for n in counted.notes)
