"""Bad input never stops extract: each kind of damage is counted in the manifest with its record
offset, and every good record of the same file is kept. Damaged records are put between good
ones of a generated WAT; a property-based test mutates record contents at random."""
from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from laion_pipe.config import workflow_from_dict
from laion_pipe.demo.watgen import Img, Page, frame_record, random_pages, wat_records
from laion_pipe.schema import SUBSETS
from laion_pipe.stages import extract

PAGES = list(random_pages(8, seed=21))
RECORDS = list(wat_records(PAGES, seed=2))  # warcinfo, then request / response / metadata per page
RESPONSE = 2  # index of the first page's response record


def _doc(i: int = RESPONSE) -> dict:
    return orjson.loads(RECORDS[i][1])


def _write(path: Path, records, compress: bool = True) -> list[int]:
    """Write framed records; returns each record's offset."""
    offsets, data = [], b""
    for headers, block in records:
        offsets.append(len(data))
        data += frame_record(headers, block, compress)
    path.write_bytes(data)
    return offsets


def _run(path: Path, out: Path, **cfg):
    wf = workflow_from_dict({"inputs": [str(path)], "extract": cfg})
    (part,) = extract.plan(str(out), wf)
    outcome = extract.process(part, str(out), wf)
    rows = {(r["page_url"], r["url"], r["text"]) for s in SUBSETS
            for r in pq.read_table(out / "candidates" / s / f"{part.key}.parquet").to_pylist()}
    return outcome, rows


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    d = tmp_path_factory.mktemp("clean")
    _write(d / "clean.wat.gz", RECORDS)
    outcome, rows = _run(d / "clean.wat.gz", d / "out")
    assert not outcome.errors and len(rows) > 20
    return rows


def _page_rows(rows, page: Page):
    return {r for r in rows if r[0] == page.url}


def _bad(block: bytes) -> tuple[list, bytes]:
    return RECORDS[RESPONSE][0], block


def _damaged_cases():
    d = _doc()
    links = d["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Links"]
    no_env = {k: v for k, v in d.items() if k != "Envelope"} | {"x": "IMG@/src"}
    links_not_list = orjson.loads(RECORDS[RESPONSE][1])
    links_not_list["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Links"] = {"path": "IMG@/src"}
    meta_str = orjson.loads(RECORDS[RESPONSE][1])
    meta_str["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"] = "IMG@/src"
    return {
        "not_json": b'IMG@/src {"Envelope": nope',
        "truncated_json": RECORDS[RESPONSE][1][: len(RECORDS[RESPONSE][1]) // 2],
        "missing_envelope": orjson.dumps(no_env),
        "links_not_a_list": orjson.dumps(links_not_list),
        "metadata_not_an_object": orjson.dumps(meta_str),
        "top_level_array": orjson.dumps([{"path": "IMG@/src", "url": "/x.jpg", "alt": "an array record"}]),
        "bad_link_types": orjson.dumps(_with_links(d, links[:3] + [
            "IMG@/src", {"path": "IMG@/src", "url": 7, "alt": "numeric url here"},
            {"path": "IMG@/src", "url": "/list.jpg", "alt": ["a", "list"]}])),
    }


def _with_links(doc: dict, links: list) -> dict:
    doc = orjson.loads(orjson.dumps(doc))
    doc["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]["Links"] = links
    return doc


EXPECTED_KIND = {
    "not_json": "not_json", "truncated_json": "not_json", "missing_envelope": "missing_field",
    "links_not_a_list": "bad_structure", "metadata_not_an_object": "bad_structure",
    "top_level_array": "bad_structure", "bad_link_types": "bad_link",
}


@pytest.mark.parametrize("case", list(EXPECTED_KIND))
def test_damaged_record_is_counted_and_the_rest_kept(tmp_path, clean, case):
    block = _damaged_cases()[case]
    records = list(RECORDS)
    records.insert(RESPONSE + 3, _bad(block))  # after the first page's records
    offsets = _write(tmp_path / "x.wat.gz", records)
    outcome, rows = _run(tmp_path / "x.wat.gz", tmp_path / "out")
    assert [(e["kind"], e["offset"]) for e in outcome.errors] == [(EXPECTED_KIND[case], offsets[RESPONSE + 3])]
    assert outcome.counts["bad_records"] == 1 and outcome.counts[f"bad_records.{EXPECTED_KIND[case]}"] == 1
    assert clean <= rows  # every good record's pairs


def test_invalid_utf8_is_noted_and_the_page_salvaged(tmp_path):
    page = Page("https://u.example/p.html", [Img("/a.jpg", "caf\u00e9 on the corner of the street"), Img("/b.jpg", "a second good caption")])
    (info, req, resp, meta) = list(wat_records([page]))
    block = resp[1].replace("caf\u00e9".encode(), b"caf\xe9")  # latin-1 byte inside UTF-8 JSON
    offsets = _write(tmp_path / "u.wat", [info, req, (resp[0], block), meta], compress=False)
    outcome, rows = _run(tmp_path / "u.wat", tmp_path / "out")
    assert [(e["kind"], e["offset"]) for e in outcome.errors] == [("invalid_utf8", offsets[2])]
    assert {r[2] for r in rows} == {"caf\ufffd on the corner of the street", "a second good caption"}


def test_truncated_gzip_keeps_earlier_records(tmp_path, clean):
    offsets = _write(tmp_path / "t.wat.gz", RECORDS)
    data = (tmp_path / "t.wat.gz").read_bytes()
    cut = offsets[-5] + 100  # inside the 7th page's response record
    (tmp_path / "t.wat.gz").write_bytes(data[:cut])
    outcome, rows = _run(tmp_path / "t.wat.gz", tmp_path / "out")
    assert [e["offset"] for e in outcome.errors] == [offsets[-5]]
    assert outcome.errors[0]["kind"] in {"truncated", "truncated_record"}
    for page in PAGES[:6]:
        assert _page_rows(clean, page) <= rows


def test_record_too_large_is_skipped(tmp_path, clean):
    offsets = _write(tmp_path / "l.wat.gz", RECORDS)
    sizes = [len(b) for _, b in RECORDS]
    limit = sorted(sizes)[-2]  # only the largest record is over
    outcome, rows = _run(tmp_path / "l.wat.gz", tmp_path / "out", max_record_bytes=limit)
    big = max(range(len(sizes)), key=sizes.__getitem__)
    assert [(e["kind"], e["offset"]) for e in outcome.errors] == [("record_too_large", offsets[big])]
    assert len(rows) < len(clean)


def test_list_valued_headers_are_not_errors(tmp_path, clean):
    _write(tmp_path / "h.wat.gz", list(wat_records(PAGES, seed=2, list_headers=True)))
    outcome, rows = _run(tmp_path / "h.wat.gz", tmp_path / "out")
    assert not outcome.errors and rows == clean


def test_fifty_megabyte_alt(tmp_path, clean):
    """A 50 MB alt text: noted with its record offset, truncated to 2000 characters, kept; the
    other records of the file are untouched."""
    huge = Page("https://huge.example/p.html", [Img("/huge.jpg", "lighthouse " * ((50 << 20) // 11)), Img("/ok.jpg", "an ordinary caption")])
    records = list(RECORDS) + list(wat_records([huge]))[1:]
    offsets = _write(tmp_path / "huge.wat.gz", records)
    outcome, rows = _run(tmp_path / "huge.wat.gz", tmp_path / "out")
    assert [(e["kind"], e["offset"]) for e in outcome.errors] == [("oversized_text", offsets[-2])]
    assert clean <= rows
    (long_text,) = [t for p, _, t in rows if p == huge.url and t.startswith("lighthouse")]
    assert len(long_text) <= 2000


_MUTATION = st.one_of(
    st.tuples(st.just("cut"), st.floats(0, 1)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=20)),
    st.tuples(st.just("set"), st.floats(0, 1), st.integers(0, 255)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(victims=st.lists(st.tuples(st.integers(0, len(PAGES) - 1), _MUTATION), min_size=1, max_size=3))
def test_mutated_record_contents_never_stop_the_file(tmp_path, clean, victims):
    records = list(RECORDS)
    touched = set()
    for page_i, mutation in victims:
        i = 2 + 3 * page_i  # that page's response record
        block = bytearray(records[i][1])
        pos = int(mutation[1] * len(block))
        if mutation[0] == "cut":
            block = block[:pos]
        elif mutation[0] == "insert":
            block[pos:pos] = mutation[2]
        elif pos < len(block):
            block[pos] = mutation[2]
        records[i] = (records[i][0], bytes(block))
        touched.add(page_i)
    path = tmp_path / "m.wat.gz"
    offsets = _write(path, records)
    outcome, rows = _run(path, tmp_path / "out")
    for k, page in enumerate(PAGES):
        if k not in touched:
            assert _page_rows(clean, page) <= rows
    assert all(e["offset"] in offsets for e in outcome.errors)
