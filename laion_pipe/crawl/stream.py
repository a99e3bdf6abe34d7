"""Stream the records of a WARC or WAT file, gzip or plain, and survive corruption.

fastwarc does the parsing (and detects gzip from the content). What it does not do is carry on
after damage: on a corrupt gzip member or a broken WARC header it raises and the rest of the
file would be lost, and on a file cut short it silently stops. This module wraps it so that one
bad record costs that record only:

- after an error it resynchronises on the next record boundary (the next gzip member that
  really decompresses to `WARC/`, or the next `WARC/1.x` line followed by a header line in a
  plain file) and goes on;
- a record shorter than its Content-Length, and bytes after the last record that hold no
  complete record, are reported as truncated;
- every problem is yielded as a `ReadError` with the byte offset of the record (in the file as
  stored, i.e. the compressed offset for .gz, which is what Common Crawl's index uses);
- a record fastwarc cannot parse but warcio can (WARC header lines ending in LF instead of CRLF)
  hands the rest of the file to warcio from that record on (`lenient.py`), noted as a
  `lenient_reader` ReadError saying why, so such files are read whole instead of failing.

Memory: records are read one at a time; a record larger than `max_record_bytes` is skipped
without being read. Nothing grows with the file's size.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from fastwarc.warc import ArchiveIterator, WarcHeader, WarcRecordType

from .. import fsio
from . import lenient

GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_MAGIC = b"WARC/1."
# A version line followed by a header line. Not anchored to a line start: after damage the
# byte before a record may be anything.
_PLAIN_SYNC = re.compile(rb"WARC/1\.[01]\r?\n[A-Za-z][A-Za-z0-9-]*:")
_SCAN_CHUNK = 1 << 20

WANTED = WarcRecordType.metadata | WarcRecordType.response
"""The record types that can hold image links: WAT JSON (metadata) and HTML (response)."""


class NotAWarcError(ValueError):
    """The input holds no WARC record at all: the partition fails with this message."""


@dataclass(slots=True)
class Record:
    """A WAT metadata record or a WARC response record, its payload read into memory.
    For a response, `payload` is the HTTP body and `http_*` come from its HTTP headers."""

    offset: int
    is_response: bool
    target_uri: str | None
    content_type: str | None
    payload: bytes
    http_content_type: str | None = None
    http_charset: str | None = None


@dataclass(slots=True)
class ReadError:
    """A record (or stretch of the file) that could not be read; `offset` is where it starts."""

    kind: str
    message: str
    offset: int | None


def is_gzip(head: bytes) -> bool:
    return head[:2] == b"\x1f\x8b"


def _is_warc_member(f: IO[bytes], pos: int) -> bool:
    """Does a gzip member starting at `pos` decompress to a WARC record header?"""
    f.seek(pos)
    data = f.read(1 << 16)
    try:
        out = zlib.decompressobj(31).decompress(data, 16)
    except zlib.error:
        return False
    if len(data) < 1 << 16 and out and WARC_MAGIC.startswith(out):
        return True  # a member cut short by the end of the file, so it can be reported
    return out.startswith(WARC_MAGIC)


def find_boundary(f: IO[bytes], pos: int, compressed: bool) -> int | None:
    """The first record boundary at or after `pos`, or None at end of file."""
    while True:
        f.seek(pos)
        chunk = f.read(_SCAN_CHUNK + 16)
        if not chunk:
            return None
        if compressed:
            i = chunk.find(GZIP_MAGIC)
            while i != -1 and i < _SCAN_CHUNK:
                cand = pos + i
                if len(chunk) > i + 3 and chunk[i + 3] & 0xE0 == 0 and _is_warc_member(f, cand):
                    return cand
                i = chunk.find(GZIP_MAGIC, i + 1)
        else:
            for m in _PLAIN_SYNC.finditer(chunk):
                if m.start() < _SCAN_CHUNK:
                    return pos + m.start()
        if len(chunk) <= _SCAN_CHUNK:
            return None
        pos += _SCAN_CHUNK


_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)")


def _end_of_record(f: IO[bytes], start: int, compressed: bool) -> int | None:
    """Where the record starting at `start` ends in the file; None when it runs past the end
    of the file (or its header cannot be read)."""
    f.seek(start)
    if compressed:
        d = zlib.decompressobj(31)
        pos = start
        try:
            while not d.eof:
                chunk = f.read(1 << 16)
                if not chunk:
                    return None
                d.decompress(chunk)
                pos += len(chunk)
        except zlib.error:
            return None
        return pos - len(d.unused_data)
    head = f.read(1 << 16)
    sep, sep_len = head.find(b"\r\n\r\n"), 4
    lf = head.find(b"\n\n")
    if lf != -1 and (sep == -1 or lf < sep):
        sep, sep_len = lf, 2  # header lines ending in LF (read by the lenient reader)
    m = _CONTENT_LENGTH.search(head, 0, sep) if sep != -1 else None
    if not m:
        return None
    end = start + sep + sep_len + int(m.group(1))
    f.seek(end - 1)
    return end if f.read(1) else None


def _has_data_after(f: IO[bytes], pos: int) -> bool:
    f.seek(pos)
    while chunk := f.read(1 << 16):
        if chunk.strip(b"\r\n \t\x00"):
            return True
    return False


def _skip_blank_lines(f: IO[bytes], pos: int) -> int:
    f.seek(pos)
    chunk = f.read(256)
    return pos + len(chunk) - len(chunk.lstrip(b"\r\n"))


def _header(rec, name: WarcHeader) -> str | None:
    v = rec.headers.get(name)
    return v if v else None


def iter_records(path: str, max_record_bytes: int = 128 << 20, stats=None) -> Iterator[Record | ReadError]:
    """Yield the metadata and response records of `path` (local path or fsspec URL), and a
    `ReadError` for every damaged part. Raises `NotAWarcError` when no record at all can be read,
    and whatever opening the file raises (missing file, no permission, network error).
    `stats` (a Counter), if given, counts the records read by the lenient reader."""
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        compressed = is_gzip(f.read(2))
        yield from _iter_file(f, compressed, max_record_bytes, stats)


def _fast_records(f: IO[bytes], start: int, compressed: bool, max_record_bytes: int, seg: lenient.Segment,
                  report) -> Iterator[Record | ReadError]:
    """fastwarc from `start` on. Stops at its first error (`seg.failure`), or before a record
    that it cannot parse but warcio can (`seg.switch_at`)."""
    f.seek(start)
    try:
        for rec in ArchiveIterator(f, parse_http=False):
            off = rec.stream_pos
            seg.last = off
            declared = rec.headers.get(WarcHeader.CONTENT_LENGTH)
            if not declared or not declared.strip().isdigit():
                # A header block fastwarc cannot parse: it reads it as an empty record. Either
                # the header is broken, or it is one only a lenient reader reads.
                why = lenient.probe(f, off, compressed)
                if why is not None:
                    seg.switch_at, seg.why = off, why
                    return
                yield from report("truncated_record", f"record header without a valid Content-Length ({declared!r})", off)
                seg.done = off
                continue
            wanted = rec.record_type & WANTED
            if not wanted or rec.content_length > max_record_bytes:
                if wanted:
                    yield from report("record_too_large", f"{rec.content_length} bytes > {max_record_bytes}", off)
                skipped = rec.reader.consume()  # what fastwarc would do anyway, but counted
                if skipped < rec.content_length:
                    yield from report("truncated_record", f"{skipped} of {rec.content_length} bytes", off)
                seg.done = off
                continue
            is_response = rec.record_type == WarcRecordType.response
            http_ct = http_cs = None
            if is_response:
                rec.parse_http()
                http_ct, http_cs = rec.http_content_type, rec.http_charset
            expected = rec.content_length
            payload = rec.reader.read()
            if len(payload) < expected:
                yield from report("truncated_record", f"{len(payload)} of {expected} bytes", off)
                if not is_response:
                    seg.done = off
                    continue  # half a JSON document is no use; half an HTML page still is
            yield Record(
                offset=off,
                is_response=is_response,
                target_uri=_header(rec, WarcHeader.WARC_TARGET_URI),
                content_type=_header(rec, WarcHeader.CONTENT_TYPE),
                payload=payload,
                http_content_type=http_ct,
                http_charset=http_cs,
            )
            seg.done = off
    except (OSError, ValueError, UnicodeError) as e:
        seg.failure = f"{type(e).__name__}: {e}"


def _iter_file(f: IO[bytes], compressed: bool, max_record_bytes: int, stats=None) -> Iterator[Record | ReadError]:
    start: int | None = 0
    seen_any = False
    reported: set[int] = set()  # one report per damaged place, however it shows
    resumed_after_stop = False  # the reader stopped without an error before the end of the data
    use_lenient = False  # once fastwarc met a record only warcio reads, warcio reads the rest

    def report(kind: str, message: str, offset: int) -> Iterator[ReadError]:
        if offset not in reported:
            reported.add(offset)
            yield ReadError(kind, message, offset)

    def switch(at: int, why: str) -> Iterator[ReadError]:
        nonlocal use_lenient
        use_lenient = True
        yield from report("lenient_reader", f"{why}: records from offset {at} on read with {lenient.NAME}", at)

    while start is not None:
        seg = lenient.Segment()
        if use_lenient:
            yield from lenient.records(f, start, max_record_bytes, seg, report, Record, stats)
        else:
            yield from _fast_records(f, start, compressed, max_record_bytes, seg, report)
        last, failure = seg.last, seg.failure
        seen_any = seen_any or last is not None
        if seg.switch_at is not None:
            yield from switch(seg.switch_at, seg.why)
            start, resumed_after_stop = seg.switch_at, False
            continue

        if resumed_after_stop and last is not None:
            yield from report("corrupt", "unreadable data before this record", start)
        resumed_after_stop = False
        fail_from = last + 1 if last is not None else start
        bad = find_boundary(f, fail_from, compressed)
        if failure is None:
            if bad is None:
                # fastwarc stops silently on a file cut inside a record header or a gzip trailer.
                if last is not None:
                    end = _end_of_record(f, last, compressed)
                    if end is None:
                        yield from report("truncated", "last record runs past the end of the file", last)
                    elif _has_data_after(f, end):
                        # the next record starts after this one's closing CRLFs: report it there
                        yield from report("truncated", "incomplete record at end of data", end if compressed else _skip_blank_lines(f, end))
                break
            if last is None and bad == start:
                # Restarted on a record boundary and nothing could be read: a record cut short,
                # or one that only the lenient reader can read.
                why = None if use_lenient else lenient.probe(f, start, compressed)
                if why is not None:
                    yield from switch(start, why)
                    continue
                yield from report("truncated", "incomplete record at end of data", start)
                start = find_boundary(f, start + 1, compressed)
            else:
                start, resumed_after_stop = bad, True  # data left after a silent stop: read on
            continue
        if not use_lenient:
            # The reader stopped on an error: where the unread part starts (the record it was
            # reading, else the end of the last one it finished) may be readable by warcio.
            if last is None or last != seg.done:
                resume = last if last is not None else start
            else:
                resume = _end_of_record(f, last, compressed)
                if resume is not None and not compressed:
                    resume = _skip_blank_lines(f, resume)  # the CRLFs that close a plain record
            why = lenient.probe(f, resume, compressed) if resume is not None else None
            if why is not None:
                yield from switch(resume, why)
                start = resume
                continue
        # The damage starts where the last good record ends (when that can be told).
        damage = _end_of_record(f, last, compressed) if last is not None else start
        if damage is not None and last is not None and not compressed:
            damage = _skip_blank_lines(f, damage)  # the damaged record starts after the CRLFs closing the last one
        if damage is None:
            damage = bad if bad is not None else fail_from
        yield from report("corrupt", failure, damage)
        if bad is None:
            break
        start = bad if bad > start else find_boundary(f, start + 1, compressed)

    if not seen_any:
        raise NotAWarcError("no WARC record could be read, and not a URL list either: this file is none of WARC, WAT, "
                            "parquet, CSV, TSV, JSON lines or text with one URL a line (gzip or plain)")
