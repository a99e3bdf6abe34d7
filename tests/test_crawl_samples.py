"""The readers and the extract stage on real Common Crawl excerpts (../shared/data/cc-samples).

The 0pointer.de page is in both a real WAT and the real WARC it was made from: both must give the
same four images, and after LAION's rules the same two pairs."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from laion_pipe.config import workflow_from_dict
from laion_pipe.crawl.reader import iter_pages
from laion_pipe.crawl.stream import ReadError
from laion_pipe.schema import CANDIDATE_SCHEMA, SUBSETS
from laion_pipe.stages import extract

SAMPLES = Path(__file__).parents[2] / "shared/data/cc-samples"
PAGE = "http://0pointer.de/photos/?gallery=Australia&photo=496"
LICENSE = "http://creativecommons.org/licenses/by-sa/3.0/"
RAW_IMAGES = [
    ("./galleries/Australia/lq/img-496.jpg", "496"),
    ("./galleries/Australia/thumbs/img-495.jpg", "Previous"),
    ("./galleries/Australia/thumbs/img-497.jpg", "Next"),
    ("http://creativecommons.org/images/public/somerights20.png", "Creative Commons License"),
]
# LAION's rules: "496" and "Next" are shorter than 5 characters.
EXPECTED_PAIRS = {
    ("http://0pointer.de/photos/galleries/Australia/thumbs/img-495.jpg", "Previous"),
    ("http://creativecommons.org/images/public/somerights20.png", "Creative Commons License"),
}

pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/cc-samples is not present")


def _pages(name: str, stats: Counter | None = None) -> list:
    out = list(iter_pages(str(SAMPLES / name), stats))
    assert not [e for e in out if isinstance(e, ReadError)], "a real sample must read without errors"
    return out


def _extract(tmp_path: Path, name: str, **extract_cfg) -> list[dict]:
    wf = workflow_from_dict({"inputs": [str(SAMPLES / name)], "extract": extract_cfg})
    (part,) = extract.plan(str(tmp_path), wf)
    outcome = extract.process(part, str(tmp_path), wf)
    assert not outcome.errors
    rows = []
    for subset in SUBSETS:
        table = pq.read_table(tmp_path / "candidates" / subset / f"{part.key}.parquet")
        assert table.schema.equals(CANDIDATE_SCHEMA)
        assert table.num_rows == outcome.kept.get(subset, 0)
        rows += table.to_pylist()
    return rows


@pytest.mark.parametrize("name", ["CC-MAIN-2014-35-excerpt.warc.wat", "CC-MAIN-2014-35-excerpt.warc.wat.gz", "CC-MAIN-2014-35-excerpt.warc"])
def test_0pointer_page_images_same_from_wat_and_warc(name):
    (page,) = [p for p in _pages(name) if p.page_url == PAGE]
    assert page.images == RAW_IMAGES
    assert page.base is None
    assert page.license == LICENSE


@pytest.mark.parametrize("name", ["CC-MAIN-2014-35-excerpt.warc.wat.gz", "CC-MAIN-2014-35-excerpt.warc"])
def test_0pointer_pairs_after_laion_rules(tmp_path, name):
    rows = [r for r in _extract(tmp_path, name) if r["page_url"] == PAGE]
    assert {(r["url"], r["text"]) for r in rows} == EXPECTED_PAIRS
    assert all(r["license"] == LICENSE for r in rows)
    assert len({r["uid"] for r in rows}) == 2


def test_0pointer_all_four_pairs_with_a_lower_minimum(tmp_path):
    wat = {(r["url"], r["text"], r["uid"]) for r in _extract(tmp_path / "wat", "CC-MAIN-2014-35-excerpt.warc.wat", min_text_chars=1)}
    warc = {(r["url"], r["text"], r["uid"]) for r in _extract(tmp_path / "warc", "CC-MAIN-2014-35-excerpt.warc", min_text_chars=1)
            if r["page_url"] == PAGE}
    assert wat == warc  # same pairs, same uids, from either format
    assert {u for u, _, _ in wat} == {
        "http://0pointer.de/photos/galleries/Australia/lq/img-496.jpg",
        "http://0pointer.de/photos/galleries/Australia/thumbs/img-495.jpg",
        "http://0pointer.de/photos/galleries/Australia/thumbs/img-497.jpg",
        "http://creativecommons.org/images/public/somerights20.png",
    }


def test_whirlwind_wat_is_valid_and_yields_zero_pairs(tmp_path):
    stats: Counter = Counter()
    assert _pages("CC-MAIN-2024-22-whirlwind.warc.wat.gz", stats) == []
    assert stats["records.wat"] == 1
    assert _extract(tmp_path, "CC-MAIN-2024-22-whirlwind.warc.wat.gz") == []
    for subset in SUBSETS:  # the three outputs exist, empty, so readers need no special case
        assert pq.read_metadata(tmp_path / "candidates" / subset / "part-00000.parquet").num_rows == 0


def test_warc_samples_image_counts_match_provenance():
    def alts(name):
        pages = _pages(name)
        return len(pages), sum(1 for p in pages for _, alt in p.images if alt)

    # PROVENANCE.md: 3 HTML responses with 861 <img> carrying alt; 16 responses, 32 non-empty alts;
    # whirlwind: one page, 13 <img>, 7 with alt.
    assert alts("CC-MAIN-2014-35-excerpt.warc") == (3, 861)
    assert alts("CC-MAIN-2020-34-excerpt.warc.gz") == (16, 32)
    (page,) = _pages("CC-MAIN-2024-22-whirlwind.warc.gz")
    assert len(page.images) == 13 and sum(1 for _, a in page.images if a) == 7
    assert page.license and "creativecommons.org/licenses/by-sa" in page.license


def test_warc_charset_from_http_header_decodes_cyrillic(tmp_path):
    """01spb.ru is served as windows-1251: read as UTF-8 its alts would be U+FFFD soup."""
    (page,) = [p for p in _pages("CC-MAIN-2020-34-excerpt.warc.gz") if p.page_url == "http://01spb.ru/company/"]
    texts = [a for _, a in page.images if a]
    assert texts and all("\ufffd" not in t for t in texts)
    assert any("безопасности" in t for t in texts)


def test_real_relative_urls_resolve_against_page(tmp_path):
    rows = _extract(tmp_path, "CC-MAIN-2024-22-whirlwind.warc.gz")
    assert rows and all(r["url"].startswith(("http://", "https://")) for r in rows)
    assert all(r["page_url"] == "https://an.wikipedia.org/wiki/Escopete" for r in rows)
