"""Files fastwarc cannot parse but warcio can: the lenient fallback reads them whole.

The case from the field: a WAT of CC-MAIN-2023-06 republished with WARC header lines ending in
LF instead of CRLF (gzip per record). fastwarc reads such records as header-less, so nothing
came out of the file; warcio reads it. Files are built here the same way (watgen's records,
framed with LF), and the fallback must not duplicate or lose a record wherever it starts."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from laion_pipe.config import workflow_from_dict
from laion_pipe.crawl import stream
from laion_pipe.crawl.reader import iter_pages
from laion_pipe.crawl.stream import NotAWarcError, ReadError
from laion_pipe.demo.watgen import Img, Page, frame_record, random_pages, warc_records, wat_records

FASTWARC_ITERATOR = stream.ArchiveIterator
from laion_pipe.schema import SUBSETS
from laion_pipe.stages import extract

CRAWL = "CC-MAIN-2023-06"
PAGE = Page("https://www.example.org/gallery/harbour.html", [
    Img("/photos/boats.jpg", "Fishing boats in the harbour at sunrise"),
    Img("photos/lighthouse.jpg", "The old lighthouse on the north pier &amp; the breakwater"),
    Img("/icons/logo.png", None),
    Img("//cdn.example.org/nets.webp", "Nets drying on the quay"),
])
PAIRS = {
    ("https://www.example.org/photos/boats.jpg", "Fishing boats in the harbour at sunrise"),
    ("https://www.example.org/gallery/photos/lighthouse.jpg", "The old lighthouse on the north pier & the breakwater"),
    ("https://cdn.example.org/nets.webp", "Nets drying on the quay"),
}
PAGES = list(random_pages(10, seed=11))


def lf_record(headers, block: bytes, compress: bool) -> bytes:
    """A record framed like the field file: every header line (and the blank line) ends in LF."""
    head = "WARC/1.0\n" + "".join(f"{k}: {v}\n" for k, v in headers) + f"Content-Length: {len(block)}\n\n"
    rec = head.encode() + block + b"\r\n\r\n"
    return gzip.compress(rec) if compress else rec


def _records(pages) -> list:
    return list(wat_records(pages, seed=3, crawl=CRAWL))


def _html_record(page: Page):
    """The metadata record holding the page's HTML-Metadata (the one with the image links)."""
    (rec,) = [(h, b) for h, b in _records([page]) if b"HTML-Metadata" in b]
    return rec


def _read(path: Path) -> tuple[list, list[ReadError], Counter]:
    stats: Counter = Counter()
    items = list(iter_pages(str(path), stats))
    return ([i for i in items if not isinstance(i, ReadError)], [i for i in items if isinstance(i, ReadError)], stats)


def _signature(page) -> tuple:
    return page.page_url, tuple(page.images), page.base, page.license


def _expected() -> list[tuple]:
    data = b"".join(frame_record(h, b) for h, b in _records(PAGES))
    return [_signature(p) for p in iter_pages_bytes(data)]


def iter_pages_bytes(data: bytes, tmp=Path("/dev/null")) -> list:
    import io

    from laion_pipe.crawl.reader import page_of

    pages = []
    for item in stream._iter_file(io.BytesIO(data), data[:2] == b"\x1f\x8b", 1 << 27):
        assert not isinstance(item, ReadError)
        page = page_of(item, Counter())
        if page is not None:
            pages.append(page)
    return pages


EXPECTED = _expected()


@pytest.mark.parametrize("compress", [True, False])
def test_single_lf_record_with_alt_texts_gives_its_pairs(tmp_path, compress):
    path = tmp_path / ("one.warc.wat.gz" if compress else "one.warc.wat")
    path.write_bytes(lf_record(*_html_record(PAGE), compress))
    pages, errors, stats = _read(path)
    (page,) = pages
    assert page.page_url == PAGE.url and len(page.images) == 4
    assert [(e.kind, e.offset) for e in errors] == [("lenient_reader", 0)]
    assert "LF" in errors[0].message and "warcio" in errors[0].message
    assert stats["records.read_by_warcio"] == 1

    wf = workflow_from_dict({"inputs": [str(path)], "runner": {"progress": False}})
    (part,) = extract.plan(str(tmp_path / "run"), wf)
    outcome = extract.process(part, str(tmp_path / "run"), wf)
    rows = [r for s in SUBSETS for r in pq.read_table(tmp_path / "run" / "candidates" / s / "part-00000.parquet").to_pylist()]
    assert {(r["url"], r["text"]) for r in rows} == PAIRS
    assert outcome.counts["records.read_by_warcio"] == 1
    assert [e["kind"] for e in outcome.errors] == ["lenient_reader"]


@pytest.mark.parametrize("compress", [True, False])
def test_whole_lf_file_reads_like_the_crlf_one(tmp_path, compress):
    path = tmp_path / "lf.wat"
    path.write_bytes(b"".join(lf_record(h, b, compress) for h, b in _records(PAGES)))
    pages, errors, stats = _read(path)
    assert [_signature(p) for p in pages] == EXPECTED
    assert [(e.kind, e.offset) for e in errors] == [("lenient_reader", 0)]
    assert stats["records.read_by_warcio"] == 3 * len(PAGES)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("switch", [1, 4, 17])
def test_fallback_after_good_records_neither_duplicates_nor_loses(tmp_path, compress, switch):
    """CRLF records read by fastwarc, then LF ones: warcio takes over at the first LF record."""
    recs = _records(PAGES)
    head = b"".join(frame_record(h, b, compress) for h, b in recs[:switch])
    path = tmp_path / "mixed.wat"
    path.write_bytes(head + b"".join(lf_record(h, b, compress) for h, b in recs[switch:]))
    pages, errors, stats = _read(path)
    assert [_signature(p) for p in pages] == EXPECTED
    assert [(e.kind, e.offset) for e in errors] == [("lenient_reader", len(head))]
    assert stats["records.read_by_warcio"] == len(recs) - switch


@pytest.mark.parametrize("compress", [True, False])
def test_lf_warc_responses_read_like_the_crlf_ones(tmp_path, compress):
    """The lenient reader also reads WARC responses: HTTP headers, charset, the HTML body."""
    recs = list(warc_records(PAGES, seed=4))
    crlf, lf = tmp_path / "crlf.warc", tmp_path / "lf.warc"
    crlf.write_bytes(b"".join(frame_record(h, b, compress) for h, b in recs))
    lf.write_bytes(b"".join(lf_record(h, b, compress) for h, b in recs))
    expected, no_errors, _ = _read(crlf)
    pages, errors, stats = _read(lf)
    assert not no_errors and [(e.kind, e.offset) for e in errors] == [("lenient_reader", 0)]
    assert [_signature(p) for p in pages] == [_signature(p) for p in expected] and len(pages) == len(PAGES)
    assert stats["records.read_by_warcio"] == 2 * len(PAGES)  # responses and metadata (requests are not wanted)


class _FailingIterator:
    """fastwarc's iterator, made to raise at the record starting at `offset`: while parsing its
    header (`where="header"`, after the previous record was used) or while reading its payload."""

    def __init__(self, offset: int, where: str):
        self.offset, self.where = offset, where

    def __call__(self, f, **kwargs):
        for rec in FASTWARC_ITERATOR(f, **kwargs):
            if rec.stream_pos == self.offset:
                if self.where == "header":
                    raise ValueError("simulated parse error")
                yield _PayloadFails(rec)
            else:
                yield rec


class _PayloadFails:
    def __init__(self, rec):
        self._rec = rec
        self.reader = self

    def __getattr__(self, name):
        return getattr(self._rec, name)

    def read(self, *args):
        raise ValueError("simulated payload error")

    consume = read


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("where", ["header", "payload"])
@pytest.mark.parametrize("k", [0, 5, 30])
def test_parse_error_mid_file_resumes_with_warcio_at_the_right_record(tmp_path, monkeypatch, compress, where, k):
    members = [frame_record(h, b, compress) for h, b in _records(PAGES)]
    offset = sum(len(m) for m in members[:k])
    path = tmp_path / "x.wat"
    path.write_bytes(b"".join(members))
    monkeypatch.setattr(stream, "ArchiveIterator", _FailingIterator(offset, where))
    pages, errors, stats = _read(path)
    assert [_signature(p) for p in pages] == EXPECTED
    assert [(e.kind, e.offset) for e in errors] == [("lenient_reader", offset)]
    assert "fastwarc cannot parse" in errors[0].message
    assert stats["records.read_by_warcio"] == len(members) - max(k, 1)  # record 0, warcinfo, is not counted


def test_no_record_from_fastwarc_at_all_falls_back(tmp_path, monkeypatch):
    path = tmp_path / "x.wat.gz"
    path.write_bytes(b"".join(frame_record(h, b, True) for h, b in _records(PAGES)))
    monkeypatch.setattr(stream, "ArchiveIterator", lambda f, **kw: iter(()))
    pages, errors, _ = _read(path)
    assert [_signature(p) for p in pages] == EXPECTED
    assert [e.kind for e in errors] == ["lenient_reader"]


def test_damaged_lf_record_is_reported_and_the_rest_still_read(tmp_path):
    recs = _records(PAGES)
    members = [lf_record(h, b, True) for h, b in recs]
    bad = bytearray(members[7])
    bad[len(bad) // 2] ^= 0x55
    members[7] = bytes(bad)
    path = tmp_path / "x.wat.gz"
    path.write_bytes(b"".join(members))
    pages, errors, _ = _read(path)
    offsets = [sum(len(m) for m in members[:i]) for i in range(len(members))]
    assert [(e.kind, e.offset) for e in errors] == [("lenient_reader", 0), ("corrupt", offsets[7])]
    lost = {_signature(p) for p in iter_pages_bytes(b"".join(frame_record(h, b) for h, b in recs[7:8]))}
    assert [_signature(p) for p in pages] == [s for s in EXPECTED if s not in lost]


def test_a_record_warcio_cannot_read_either_is_reported_not_switched(tmp_path):
    recs = _records(PAGES)
    broken = b"WARC/1.0\nWARC-Type: metadata\nContent-Length: 5000\n\n{\"Envelope\": {}}\r\n\r\n"  # cut short
    path = tmp_path / "x.wat.gz"
    members = [frame_record(h, b, True) for h, b in recs[:4]] + [gzip.compress(broken)]
    members += [frame_record(h, b, True) for h, b in recs[4:]]
    path.write_bytes(b"".join(members))
    pages, errors, stats = _read(path)
    assert [_signature(p) for p in pages] == EXPECTED
    assert [e.kind for e in errors] == ["truncated_record"] and errors[0].offset == sum(len(m) for m in members[:4])
    assert not stats["records.read_by_warcio"]


def test_text_that_is_no_warc_still_fails(tmp_path):
    path = tmp_path / "x.wat"
    path.write_bytes(b"WARC/1.0 is a format for web archives\n" * 30)
    with pytest.raises(NotAWarcError):
        list(iter_pages(str(path)))


@pytest.mark.slow
def test_cli_extracts_an_lf_wat_and_notes_the_reader_in_the_manifest(tmp_path):
    import importlib.util

    path = tmp_path / f"{CRAWL}-lf.warc.wat.gz"
    path.write_bytes(lf_record(*_html_record(PAGE), True))
    module = "laion_pipe" if importlib.util.find_spec("laion_pipe.__main__") else "laion_pipe.cli"
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", module, "extract", str(path), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "_state" / "extract" / "part-00000.json").read_text())
    assert manifest["status"] == "done" and manifest["counts"]["records.read_by_warcio"] == 1
    (note,) = manifest["errors"]
    assert note["kind"] == "lenient_reader" and note["offset"] == 0 and "LF" in note["message"]
    rows = [r for s in SUBSETS for r in pq.read_table(out / "candidates" / s / "part-00000.parquet").to_pylist()]
    assert {(r["url"], r["text"]) for r in rows} == PAIRS
