"""The fast WAT path (`page_from_wat`: byte pre-check, msgspec typed decode) against the careful
path (`page_from_doc`: every record through orjson, every level checked), on whole files rather
than hypothesis' small documents: a generated WAT (with shuffled keys and list-valued headers, as
Common Crawl writes since CC-MAIN-2024-51) and the real WAT excerpts in ../shared/data/cc-samples.

Record by record, both must find the same page, images (in order), base, licence and warnings
(a failure names the record's offset). That the whole stage then writes the same rows and counts
is tests/test_extract_fastpath.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from laion_pipe.crawl.pages import BadRecord
from laion_pipe.crawl.stream import ReadError, iter_records
from laion_pipe.crawl.wat import page_from_doc, page_from_wat
from laion_pipe.demo.watgen import random_pages, write_wat

SAMPLES = Path(__file__).parents[2] / "shared/data/cc-samples"
REAL_WATS = sorted(p for p in SAMPLES.glob("*.wat*")) if SAMPLES.is_dir() else []


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("fastpath")
    paths = []
    for i, (list_headers, shuffle) in enumerate([(False, False), (True, True)]):
        p = d / f"gen-{i}.warc.wat.gz"
        write_wat(random_pages(150, seed=40 + i), str(p), seed=i, list_headers=list_headers, shuffle_keys=shuffle)
        paths.append(p)
    return paths


def _outcome(fn, payload: bytes, uri: str | None):
    try:
        page = fn(payload, uri, 0)
    except BadRecord as e:
        return ("error", e.kind)
    if page is None or not page.images and not page.warnings:
        return None  # a record without images: the fast path skips it unparsed, the careful one says so
    return page.page_url, page.images, page.base, page.license, page.warnings


def _wat_records(path: Path) -> list:
    recs = [r for r in iter_records(str(path)) if not isinstance(r, ReadError)
            and not r.is_response and (r.content_type or "").lower().startswith("application/json")]
    assert recs, f"{path.name} holds no WAT record"
    return recs


def _same_records(path: Path) -> int:
    images = 0
    for rec in _wat_records(path):
        fast, careful = _outcome(page_from_wat, rec.payload, rec.target_uri), _outcome(page_from_doc, rec.payload, rec.target_uri)
        assert fast == careful, f"{path.name} record at offset {rec.offset}"
        images += len(fast[1]) if fast and fast[0] != "error" else 0
    return images


def test_generated_wat_same_pages_record_by_record(generated):
    for path in generated:
        assert _same_records(path) > 300


@pytest.mark.skipif(not REAL_WATS, reason="../shared/data/cc-samples is not present")
@pytest.mark.parametrize("name", [p.name for p in REAL_WATS])
def test_real_wat_same_pages_record_by_record(name):
    images = _same_records(SAMPLES / name)
    if "2014-35" in name:
        assert images > 0  # the excerpt with the 0pointer.de gallery
