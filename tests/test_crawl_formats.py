"""WAT and WARC readers on generated crawl files with realistic structure (request, response and
metadata records; relative, protocol-relative and `<base>` URLs; several languages; Common
Crawl's list-valued headers and unstable key order): format detection from content, and the
same pairs from a WAT and the WARC it describes."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from laion_pipe.config import workflow_from_dict
from laion_pipe.crawl.reader import iter_pages
from laion_pipe.crawl.stream import ReadError
from laion_pipe.demo.watgen import Img, Page, random_pages, write_warc, write_wat
from laion_pipe.schema import SUBSETS
from laion_pipe.stages import extract

PAGE = Page(
    url="https://news.example.org/2024/story.html?id=7",
    images=[
        Img("/img/a.jpg", "A lighthouse on a rocky coast at dusk"),
        Img("thumbs/b.png", "Ein Leuchtturm an der felsigen Küste"),
        Img("//cdn.example.net/c.webp", "Un phare sur une côte rocheuse"),
        Img("../up/d.jpg?w=1&h=2", "a lighthouse & the sea, seen from above"),
        Img("https://abs.example.com/e.jpeg", "海岸の灯台の写真です"),
        Img("/icons/f.svg", "an icon of a lighthouse"),
        Img("/anim/g.GIF?x=1", "an animation of a lighthouse"),
        Img("data:image/png;base64,AAAA", "inline lighthouse image"),
        Img("javascript:show()", "a scripted lighthouse"),
        Img("/img/h.jpg", None),
        Img("/img/i.jpg", "tiny"),
        Img("/img/a.jpg", "A lighthouse on a rocky coast at dusk"),
    ],
    license="https://creativecommons.org/licenses/by/4.0/",
    links=[("/about", "About us"), ("/contact", "Contact")],
)
EXPECTED_URLS = {
    "https://news.example.org/img/a.jpg",
    "https://news.example.org/2024/thumbs/b.png",
    "https://cdn.example.net/c.webp",
    "https://news.example.org/up/d.jpg?w=1&h=2",
    "https://abs.example.com/e.jpeg",
}
EXPECTED_DROPS = {"excluded_extension": 2, "data_url": 1, "javascript_url": 1, "no_alt": 1,
                  "text_too_short": 1, "duplicate_in_file": 1}


def _extract(path: Path, out: Path, **cfg) -> tuple[list[dict], object]:
    wf = workflow_from_dict({"inputs": [str(path)], "extract": cfg})
    (part,) = extract.plan(str(out), wf)
    outcome = extract.process(part, str(out), wf)
    rows = [r for s in SUBSETS for r in pq.read_table(out / "candidates" / s / f"{part.key}.parquet").to_pylist()]
    return rows, outcome


@pytest.mark.parametrize("name", ["p.wat", "p.wat.gz", "p.warc", "p.warc.gz", "p.bin"])
def test_one_page_every_format(tmp_path, name):
    """The format (WAT or WARC) and compression are found from the content, not the name."""
    path = tmp_path / name
    writer = write_warc if "warc" in name else write_wat
    writer([PAGE], str(path), compress=name.endswith(".gz") or name == "p.bin")
    rows, outcome = _extract(path, tmp_path / "out")
    assert {r["url"] for r in rows} == EXPECTED_URLS
    assert outcome.drops["*"] == EXPECTED_DROPS
    assert all(r["page_url"] == PAGE.url and r["license"] == PAGE.license for r in rows)
    by_url = {r["url"]: r for r in rows}
    assert by_url["https://news.example.org/img/a.jpg"]["subset"] == "en"
    assert by_url["https://news.example.org/2024/thumbs/b.png"]["language"] == "de"
    assert by_url["https://cdn.example.net/c.webp"]["language"] == "fr"
    assert by_url["https://news.example.org/up/d.jpg?w=1&h=2"]["text"] == "a lighthouse & the sea, seen from above"
    assert outcome.counts["images"] == len(PAGE.images)
    assert sum(outcome.drops["*"].values()) + len(rows) == len(PAGE.images)


@pytest.mark.parametrize("base,expected", [
    ("https://static.example.org/media/", "https://static.example.org/media/thumbs/b.png"),
    ("/assets/", "https://news.example.org/assets/thumbs/b.png"),
    ("//mirror.example.com/m/", "https://mirror.example.com/m/thumbs/b.png"),
])
def test_base_href_changes_resolution(tmp_path, base, expected):
    page = Page(PAGE.url, [Img("thumbs/b.png", "A lighthouse on a rocky coast"), Img("/abs/x.jpg", "Another lighthouse by the sea")], base=base)
    for writer, name in [(write_wat, "b.wat.gz"), (write_warc, "b.warc.gz")]:
        writer([page], str(tmp_path / name))
        rows, _ = _extract(tmp_path / name, tmp_path / f"out-{name}")
        urls = {r["url"] for r in rows}
        assert expected in urls
        assert len(urls) == 2


def test_generated_wat_has_the_real_structure(tmp_path):
    pages = list(random_pages(20, seed=4))
    path = tmp_path / "s.wat.gz"
    n = write_wat(pages, str(path), list_headers=True)
    assert n == 1 + 3 * len(pages)
    kinds = Counter()
    with path.open("rb") as f:
        for rec in ArchiveIterator(f, parse_http=False):
            if rec.record_type == WarcRecordType.warcinfo:
                continue
            assert rec.record_type == WarcRecordType.metadata
            assert rec.headers.get("Content-Type") == "application/json"
            env = orjson.loads(rec.reader.read())["Envelope"]
            whm = env["WARC-Header-Metadata"]
            kinds[whm["WARC-Type"]] += 1
            assert whm["WARC-Protocol"] == ["h2", "tls/1.3"]  # list-valued, as since CC-MAIN-2024-51
            resp = env["Payload-Metadata"].get("HTTP-Response-Metadata")
            if resp:
                for link in resp["HTML-Metadata"]["Links"]:
                    if link["path"] == "IMG@/src":
                        assert set(link) <= {"path", "url", "alt", "title"}
                        assert link.get("alt", "") is not None  # absent key = no attribute
    assert kinds == {"request": 20, "response": 20, "metadata": 20}


def test_wat_and_warc_of_a_random_crawl_give_the_same_pairs(tmp_path):
    pages = list(random_pages(150, seed=11))
    write_wat(pages, str(tmp_path / "r.wat.gz"), list_headers=True, shuffle_keys=True, seed=3)
    write_warc(pages, str(tmp_path / "r.warc.gz"))
    wat, o1 = _extract(tmp_path / "r.wat.gz", tmp_path / "o1")
    warc, o2 = _extract(tmp_path / "r.warc.gz", tmp_path / "o2")
    key = lambda r: (r["uid"], r["url"], r["text"], r["page_url"], r["license"], r["language"], r["subset"])  # noqa: E731
    assert sorted(map(key, wat)) == sorted(map(key, warc))
    assert o1.drops == o2.drops
    assert len(wat) > 300
    assert {r["subset"] for r in wat} == {"en", "multi", "nolang"}
    assert {r["language"] for r in wat} >= {"en", "de", "fr", "es", "ru"}


def test_list_headers_and_shuffled_keys_change_nothing(tmp_path):
    pages = list(random_pages(40, seed=2))
    write_wat(pages, str(tmp_path / "a.wat"))
    write_wat(pages, str(tmp_path / "b.wat"), list_headers=True, shuffle_keys=True, seed=9)
    sig = lambda p: (p.page_url, p.images, p.base, p.license)  # noqa: E731
    a = [sig(p) for p in iter_pages(str(tmp_path / "a.wat"))]
    b = [sig(p) for p in iter_pages(str(tmp_path / "b.wat"))]
    assert a == b and len(a) > 20


def test_envelope_target_uri_used_when_the_warc_header_lacks_it(tmp_path):
    """A WAT record whose own WARC header has no WARC-Target-URI falls back to the JSON envelope
    (a list there, as Common Crawl writes repeated headers since CC-MAIN-2024-51)."""
    from laion_pipe.demo.watgen import frame_record, wat_records

    recs = list(wat_records([PAGE], list_headers=True))
    headers, block = recs[2]  # the response's record
    doc = orjson.loads(block)
    doc["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"] = [PAGE.url, "https://other.example/"]
    headers = [(k, v) for k, v in headers if k != "WARC-Target-URI"]
    path = tmp_path / "fallback.wat"
    path.write_bytes(frame_record(*recs[0]) + frame_record(headers, orjson.dumps(doc)))
    (page,) = [p for p in iter_pages(str(path)) if not isinstance(p, ReadError)]
    assert page.page_url == PAGE.url


# ---------------------------------------------------------------------------------------------
# The WAT reader's fast path (msgspec structs) must read every record as the careful path does.

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from laion_pipe.crawl.pages import BadRecord  # noqa: E402
from laion_pipe.crawl.wat import page_from_doc, page_from_wat  # noqa: E402

_STR = st.sampled_from(["/a.jpg", "b.png?x=1&amp;y=2", "", "a &eacute; b", "http://creativecommons.org/licenses/by/4.0/", "x"])
_ANY = st.one_of(st.none(), _STR, st.integers(-5, 5), st.lists(_STR, max_size=2))
_LINK = st.one_of(
    st.fixed_dictionaries({"path": st.sampled_from(["IMG@/src", "A@/href", "LINK@/href", "IMG@/longdesc"])},
                          optional={"url": _ANY, "alt": _ANY, "text": _STR, "title": _STR}),
    _STR, st.integers(-5, 5),
)
_HEAD = st.one_of(st.fixed_dictionaries({}, optional={"Base": _ANY, "Title": _STR, "Link": st.lists(_LINK, max_size=2)}), _STR)
_HTML = st.fixed_dictionaries({}, optional={"Links": st.one_of(st.lists(_LINK, max_size=6), _STR, st.none()), "Head": _HEAD})
_DOC = st.fixed_dictionaries({}, optional={"Envelope": st.one_of(st.none(), _STR, st.fixed_dictionaries({}, optional={
    "WARC-Header-Metadata": st.fixed_dictionaries({}, optional={"WARC-Target-URI": _ANY}),
    "Payload-Metadata": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
        "HTTP-Response-Metadata": st.one_of(st.none(), _STR, st.fixed_dictionaries({}, optional={"HTML-Metadata": st.one_of(_HTML, _STR, st.none())})),
    })),
}))})


def _outcome(fn, payload: bytes, uri):
    try:
        page = fn(payload, uri, 0)
    except BadRecord as e:
        return ("error", e.kind)
    if page is None or not page.images and not page.warnings:
        return None  # nothing to extract either way
    return page.page_url, page.images, page.base, page.license, page.warnings


@settings(max_examples=400, deadline=None)
@given(_DOC, st.sampled_from([None, "https://p.example/x/y.html"]), st.booleans())
def test_fast_wat_path_reads_records_as_the_careful_path(doc, uri, utf8_damage):
    payload = orjson.dumps(doc)
    if utf8_damage:
        payload = payload.replace("é".encode(), b"\xe9")
    if b"IMG@" not in payload:
        payload = payload[:-1] + b', "note": "IMG@"}' if payload != b"{}" else b'{"note": "IMG@"}'
    assert _outcome(page_from_wat, payload, uri) == _outcome(page_from_doc, payload, uri)
