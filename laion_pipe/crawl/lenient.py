"""The lenient reader: warcio, for the records fastwarc cannot parse.

fastwarc is fast and strict: WARC header lines must end in CRLF as the standard says. Files
written by other tools do not always follow it (a WAT of CC-MAIN-2023-06 republished with
LF-only header lines reads in fastwarc as header-less records, or as no record at all), while
warcio reads them. So when the fast reader meets a record it cannot parse, `probe` asks warcio
whether that very record is whole and readable; if it is, the rest of the file is read with
warcio (`records`), starting at that record, so nothing already read is read twice and nothing
after it is lost. If warcio cannot read it either, the record really is damaged and the fast
reader's own recovery (report it, resynchronise on the next record) applies.

warcio is several times slower than fastwarc, which is why it is only a fallback.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

NAME = "warcio"
_WANTED = ("metadata", "response")


def _warcio():
    """warcio's iterator and the errors it raises, imported on first need: most files never do."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    return ArchiveIterator, (ArchiveLoadFailed, OSError, ValueError, EOFError, UnicodeError, zlib.error)


@dataclass
class Segment:
    """What a reader did on a stretch of the file: `last` the offset of the last record it
    started, `done` of the last one it finished (yielded or skipped on purpose), `failure` the
    error it stopped on. `switch_at` / `why`: the fast reader met a record only warcio reads."""

    last: int | None = None
    done: int | None = None
    failure: str | None = None
    switch_at: int | None = None
    why: str = ""


def _header_bytes(f: IO[bytes], pos: int, compressed: bool) -> bytes:
    f.seek(pos)
    data = f.read(1 << 16)
    if compressed:
        try:
            data = zlib.decompressobj(31).decompress(data, 1 << 14)
        except zlib.error:
            return b""
    return data


def probe(f: IO[bytes], pos: int, compressed: bool) -> str | None:
    """Why warcio can read the whole record at `pos` where fastwarc could not, or None when it
    cannot either (a damaged record). The file position is restored, so a running fastwarc
    iterator over `f` is not disturbed."""
    ArchiveIterator, errors = _warcio()
    saved = f.tell()
    try:
        f.seek(pos)
        it = ArchiveIterator(f, no_record_parse=True)
        rec = next(it, None)
        if rec is None:
            return None
        declared = rec.rec_headers.get_header("Content-Length")
        if not declared or not declared.strip().isdigit():
            return None
        expected, got = int(declared), 0
        while chunk := rec.raw_stream.read(1 << 16):
            got += len(chunk)
        if got < expected:
            return None
        first_line = _header_bytes(f, pos, compressed).split(b"\n", 1)[0]
        if not first_line.endswith(b"\r"):
            return "WARC header lines end in LF, not CRLF"
        return "fastwarc cannot parse the record header"
    except errors:
        return None
    finally:
        f.seek(saved)


def _http_type(rec) -> tuple[str | None, str | None]:
    """(Content-Type, charset) of a response's HTTP headers, as fastwarc's parse_http gives them."""
    headers = rec.http_headers
    ct = headers.get_header("Content-Type") if headers is not None else None
    if not ct:
        return None, None
    mime, _, params = ct.partition(";")
    charset = None
    for p in params.split(";"):
        k, _, v = p.strip().partition("=")
        if k.strip().lower() == "charset" and v.strip():
            charset = v.strip().strip("\"'")
    return mime.strip() or None, charset


def records(
    f: IO[bytes],
    start: int,
    max_record_bytes: int,
    seg: Segment,
    report: Callable[[str, str, int], Iterator],
    make_record: Callable[..., object],
    stats=None,
) -> Iterator:
    """Metadata and response records from `start` on, read with warcio; the same items and the
    same reports as the fast reader. Stops at the first error, noted in `seg.failure`."""
    ArchiveIterator, errors = _warcio()
    f.seek(start)
    it = ArchiveIterator(f)
    try:
        for rec in it:
            off = it.offset  # where this record starts (warcio's get_record_offset() reads it to the end first)
            seg.last = off
            if rec.rec_type not in _WANTED:
                seg.done = off
                continue
            expected = rec.length or 0
            if expected > max_record_bytes:
                yield from report("record_too_large", f"{expected} bytes > {max_record_bytes}", off)
                seg.done = off
                continue
            is_response = rec.rec_type == "response"
            http_ct, http_cs = _http_type(rec) if is_response else (None, None)
            if is_response:
                payload = rec.content_stream().read()
            else:
                payload = rec.raw_stream.read()
                if len(payload) < expected:
                    yield from report("truncated_record", f"{len(payload)} of {expected} bytes", off)
                    seg.done = off
                    continue
            if stats is not None:
                stats[f"records.read_by_{NAME}"] += 1
            headers = rec.rec_headers
            yield make_record(
                offset=off,
                is_response=is_response,
                target_uri=headers.get_header("WARC-Target-URI") or None,
                content_type=headers.get_header("Content-Type") or None,
                payload=payload,
                http_content_type=http_ct,
                http_charset=http_cs,
            )
            seg.done = off
    except errors as e:
        seg.failure = f"{type(e).__name__}: {e}"
