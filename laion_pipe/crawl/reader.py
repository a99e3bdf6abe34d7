"""One reader for WAT and WARC files, gzip or plain: the format is taken from the content.

Each record says what it is: a WAT is made of `metadata` records holding JSON, a WARC of
`response` records holding HTTP with HTML (its own `metadata` records hold `warc-fields`, not
JSON). So the reader dispatches record by record, and a file mixing both still works.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from .pages import BadRecord, PageImages
from .stream import ReadError, Record, iter_records
from .warc import is_html, page_from_html
from .wat import page_from_wat


def page_of(rec: Record, stats: Counter) -> PageImages | None:
    """The page a record describes, if any. Raises `BadRecord` for a damaged record."""
    if rec.is_response:
        stats["records.warc_response"] += 1
        if not rec.target_uri:
            raise BadRecord("missing_field", "response without WARC-Target-URI")
        if not is_html(rec.http_content_type, rec.payload):
            return None
        return page_from_html(rec.payload, rec.target_uri, rec.http_charset, rec.offset)
    ct = (rec.content_type or "").lower()
    if not ct.startswith("application/json"):
        return None  # a WARC's own metadata record (warc-fields)
    stats["records.wat"] += 1
    return page_from_wat(rec.payload, rec.target_uri, rec.offset)


def iter_pages(path: str, stats: Counter | None = None, max_record_bytes: int = 128 << 20) -> Iterator[PageImages | ReadError]:
    """Pages with their image links, in file order, and a `ReadError` for each damaged record.
    `stats` (if given) counts records by kind, pages found, and records that only the lenient
    reader could read (`records.read_by_warcio`, noted with the reason as a `lenient_reader`
    ReadError at the offset where it took over)."""
    stats = stats if stats is not None else Counter()
    for item in iter_records(path, max_record_bytes=max_record_bytes, stats=stats):
        if isinstance(item, ReadError):
            yield item
            continue
        try:
            page = page_of(item, stats)
        except BadRecord as e:
            yield ReadError(e.kind, str(e), item.offset)
            continue
        except Exception as e:  # a parser bug on hostile input must cost one record, not the file
            yield ReadError("unparsable", f"{type(e).__name__}: {e}", item.offset)
            continue
        if page is not None:
            stats["pages"] += 1
            yield page
