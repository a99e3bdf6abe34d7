"""The record stream survives damage: every intact record of a damaged file is still read, and
every damaged part is reported with its offset. Property-based (hypothesis) on byte flips,
truncation and inserted junk, over gzip and plain files."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from laion_pipe.crawl.reader import iter_pages
from laion_pipe.crawl.stream import NotAWarcError, ReadError, Record, find_boundary, iter_records
from laion_pipe.demo.watgen import Page, frame_record, random_pages, wat_records

PAGES = list(random_pages(12, seed=5))


def _members(compress: bool) -> list[bytes]:
    return [frame_record(h, b, compress) for h, b in wat_records(PAGES, seed=1)]


GZ = _members(True)
PLAIN = _members(False)


def _offsets(members: list[bytes]) -> list[int]:
    out, pos = [], 0
    for m in members:
        out.append(pos)
        pos += len(m)
    return out


def _read(path: Path) -> tuple[list, list[ReadError]]:
    items = list(iter_pages(str(path)))
    return [i for i in items if not isinstance(i, ReadError)], [i for i in items if isinstance(i, ReadError)]


def _signature(page) -> tuple:
    return page.page_url, tuple(page.images), page.base, page.license


def _expected(members: list[bytes], tmp: Path) -> dict[int, tuple]:
    path = tmp / "intact"
    path.write_bytes(b"".join(members))
    pages, errors = _read(path)
    assert not errors
    return {p.offset: _signature(p) for p in pages}


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("intact")
    return {True: _expected(GZ, tmp), False: _expected(PLAIN, tmp)}


def test_intact_files_read_every_page(expected):
    assert len(expected[True]) == len(expected[False]) > 5
    assert sorted(expected[True].values()) == sorted(expected[False].values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compress=st.booleans(), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4))
def test_byte_flips_lose_only_the_records_they_touch(tmp_path, expected, compress, flips):
    members = GZ if compress else PLAIN
    data = bytearray(b"".join(members))
    offsets = _offsets(members) + [len(data)]
    touched = set()
    for where, xor in flips:
        i = int(where * len(data))
        data[i] ^= xor
        touched.add(max(k for k, o in enumerate(offsets) if o <= i))
    path = tmp_path / f"flipped-{compress}"
    path.write_bytes(bytes(data))
    try:
        pages, errors = _read(path)
    except NotAWarcError:
        assert 0 in touched  # only a broken first record may make the whole file unreadable
        return
    got = {p.offset: _signature(p) for p in pages}
    for k, off in enumerate(offsets[:-1]):
        # A record is safe when neither it nor, for plain files, its predecessor's length field was hit.
        if k in touched or (not compress and (k - 1) in touched):
            continue
        if off in expected[compress]:
            assert got.get(off) == expected[compress][off], f"intact record at {off} lost"
    assert all(e.offset is not None for e in errors)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compress=st.booleans(), cut=st.floats(0.05, 1, exclude_max=True))
def test_truncation_keeps_everything_before_the_cut(tmp_path, expected, compress, cut):
    members = GZ if compress else PLAIN
    data = b"".join(members)
    n = int(cut * len(data))
    path = tmp_path / f"cut-{compress}"
    path.write_bytes(data[:n])
    pages, errors = _read(path)
    offsets = _offsets(members) + [len(data)]
    whole = {off for k, off in enumerate(offsets[:-1]) if offsets[k + 1] <= n}
    got = {p.offset: _signature(p) for p in pages}
    for off in whole & set(expected[compress]):
        assert got[off] == expected[compress][off]
    k = max(i for i, o in enumerate(offsets) if o <= n)
    tail = 0 if compress else 4  # a cut in a plain record's closing CRLFs loses nothing
    if offsets[k] < n < offsets[k + 1] - tail:
        assert offsets[k] in {e.offset for e in errors}, "the cut record must be reported"
    assert all(e.kind in {"truncated", "truncated_record", "corrupt"} for e in errors)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compress=st.booleans(), where=st.integers(1, len(PAGES) * 3), junk=st.binary(min_size=1, max_size=300))
def test_junk_between_records_is_reported_and_skipped(tmp_path, expected, compress, where, junk):
    members = list(GZ if compress else PLAIN)
    shift = len(junk)
    data = b"".join(members[:where]) + junk + b"".join(members[where:])
    path = tmp_path / f"junk-{compress}"
    path.write_bytes(data)
    pages, errors = _read(path)
    boundary = sum(len(m) for m in members[:where])
    got = {(p.offset if p.offset < boundary else p.offset - shift): _signature(p) for p in pages}
    assert got == expected[compress]
    if compress or not junk.strip(b"\r\n \t"):
        return
    assert errors and all(e.offset is not None for e in errors)


def test_errors_name_the_damaged_record(tmp_path):
    members = list(GZ)
    bad = bytearray(members[5])
    bad[len(bad) // 2] ^= 0x55
    members[5] = bytes(bad)
    path = tmp_path / "one-bad.wat.gz"
    path.write_bytes(b"".join(members))
    _, errors = _read(path)
    assert [(e.kind, e.offset) for e in errors] == [("corrupt", _offsets(members)[5])]


def test_truncated_gzip_reports_the_cut_record(tmp_path):
    path = tmp_path / "cut.wat.gz"
    offsets = _offsets(GZ)
    path.write_bytes(b"".join(GZ)[: offsets[7] + 40])  # into record 7's gzip data
    pages, errors = _read(path)
    assert [(e.kind, e.offset) for e in errors] == [("truncated_record", offsets[7])] or \
        [(e.kind, e.offset) for e in errors] == [("truncated", offsets[7])]
    assert all(p.offset < offsets[7] for p in pages)


def test_oversized_record_is_skipped_unread(tmp_path):
    path = tmp_path / "x.wat"
    path.write_bytes(b"".join(PLAIN))
    items = list(iter_records(str(path), max_record_bytes=2000))
    big = [i for i in items if isinstance(i, ReadError)]
    small = [i for i in items if isinstance(i, Record)]
    assert big and all(e.kind == "record_too_large" for e in big)
    assert all(len(r.payload) <= 2000 for r in small)


def test_not_a_warc_and_empty_files_raise(tmp_path):
    for name, data in [("text.wat", b"hello\n" * 100), ("empty.wat", b""), ("gz-text.wat.gz", gzip.compress(b"hello\n" * 100))]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(NotAWarcError):
            list(iter_records(str(p)))


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_records(str(tmp_path / "nope.wat.gz")))


def test_find_boundary_skips_false_gzip_magic(tmp_path):
    decoy = b"\x1f\x8b\x08\x00" + b"not a member" * 10
    path = tmp_path / "decoy.gz"
    path.write_bytes(decoy + GZ[1])
    with path.open("rb") as f:
        assert find_boundary(f, 0, compressed=True) == len(decoy)
        assert find_boundary(f, len(decoy) + 1, compressed=True) is None


def test_find_boundary_plain_wants_a_header_line(tmp_path):
    path = tmp_path / "p.wat"
    prefix = b"a WARC/1.0\r\n is text\x00"
    path.write_bytes(prefix + PLAIN[1])
    with path.open("rb") as f:
        assert find_boundary(f, 0, compressed=False) == len(prefix)
        assert find_boundary(f, len(prefix) + 1, compressed=False) is None


def test_single_page_generated_wat_reads_back(tmp_path):
    page = Page("https://a.example/p.html", [("x.jpg", "a cat on a mat"), ("y.png", None)])
    path = tmp_path / "one.wat"
    path.write_bytes(b"".join(frame_record(h, b) for h, b in wat_records([page])))
    (got,) = _read(path)[0]
    assert got.page_url == page.url and got.images == [("x.jpg", "a cat on a mat"), ("y.png", None)]
