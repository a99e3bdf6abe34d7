"""Extract's shortcuts change no output: the whole stage run with its fast paths (msgspec structs
for WAT records, ftfy and `is_bad` skipped on texts they cannot change, the per-worker language
cache) writes exactly the rows and counts of a run on the careful paths (every WAT record
through plain orjson objects, every text through `ftfy.fix_text`, no language cache), on a
generated crawl with dirty texts and on the real Common Crawl samples."""
from __future__ import annotations

from pathlib import Path
from unittest import mock

import ftfy
import pyarrow.parquet as pq
import pytest

from laion_pipe import rules
from laion_pipe.config import workflow_from_dict
from laion_pipe.crawl import reader, wat
from laion_pipe.demo.watgen import Mix, random_pages, write_wat
from laion_pipe.lang import LanguageID
from laion_pipe.schema import SUBSETS
from laion_pipe.stages import extract


def _run(path: Path, out: Path) -> tuple[dict, dict]:
    wf = workflow_from_dict({"inputs": [str(path)], "runner": {"progress": False}})
    (part,) = extract.plan(str(out), wf)
    outcome = extract.process(part, str(out), wf)
    rows = {s: pq.read_table(out / "candidates" / s / f"{part.key}.parquet").to_pylist() for s in SUBSETS}
    return rows, {"counts": dict(outcome.counts), "drops": {k: dict(v) for k, v in outcome.drops.items()},
                  "kept": dict(outcome.kept), "errors": outcome.errors}


def _careful(path: Path, out: Path) -> tuple[dict, dict]:
    no_cache = lambda model_path, threshold, english: LanguageID(model_path, threshold, english)  # noqa: E731
    with mock.patch.object(reader, "page_from_wat", wat.page_from_doc), \
            mock.patch.object(rules, "repair", ftfy.fix_text), \
            mock.patch.object(extract, "_language_id", no_cache):
        return _run(path, out)


def _pages(result: tuple[dict, dict]) -> int:
    """Pop the page count: the careful path counts every HTML page, the fast one only pages
    whose record holds an image link (the others never reach a parser); nothing else differs."""
    return result[1]["counts"].pop("pages", 0)


def _same(path: Path, tmp_path: Path) -> tuple[dict, dict]:
    extract._language_id.cache_clear()
    fast = _run(path, tmp_path / "fast")
    again = _run(path, tmp_path / "again")  # the worker's language cache now warm
    careful = _careful(path, tmp_path / "careful")
    assert _pages(fast) == _pages(again) <= _pages(careful)
    assert fast == careful
    assert again == careful
    return fast


def test_generated_crawl_fast_equals_careful(tmp_path):
    path = tmp_path / "dirty.warc.wat.gz"
    mix = Mix(dirty_text=0.3, nolang_alt=0.15, duplicate=0.1, license=0.3)  # many texts for ftfy to repair
    write_wat(random_pages(400, seed=5, mix=mix), str(path), seed=5, list_headers=True, shuffle_keys=True)
    rows, outcome = _same(path, tmp_path)
    assert sum(len(r) for r in rows.values()) > 1000
    assert any(r["license"] for rs in rows.values() for r in rs)
    assert outcome["drops"]["*"]["duplicate_in_file"] > 0


@pytest.mark.parametrize("name", ["CC-MAIN-2014-35-excerpt.warc.wat.gz", "CC-MAIN-2024-22-whirlwind.warc.wat.gz",
                                  "CC-MAIN-2014-35-excerpt.warc", "CC-MAIN-2020-34-excerpt.warc.gz"])
def test_real_samples_fast_equals_careful(tmp_path, cc_samples, name):
    rows, outcome = _same(cc_samples / name, tmp_path)
    counts = outcome["counts"]
    assert counts.get("records.wat", 0) + counts.get("records.warc_response", 0) > 0
