"""Reading one range of a URL list (`urllist.Range`), in batches of rows: parquet row groups
through pyarrow, CSV/TSV through Python's csv module (quoted fields may hold delimiters, quotes
and line breaks), JSON lines through orjson, text line by line; plain or gzip.

Text is decoded as UTF-8 with invalid bytes replaced by U+FFFD and counted (`invalid_utf8()`), in
every format (a parquet binary column too), so one bad caption costs that caption, not the list.
A CSV/TSV range checks that its last record ends exactly at the range's end: a boundary that fell
inside a quoted field (a caption with a line break) raises `BoundaryError`, so its partition fails
with a message saying so instead of a row being split or doubled.
"""
from __future__ import annotations

import codecs
import csv
import io
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
import pyarrow.parquet as pq

from .. import fsio
from .urllist import ListLayout, Range

_SENTINEL = "\x00laion-pipe-end-of-range\x00"

csv.field_size_limit(min(2**31 - 1, 2**63 - 1))  # a 50 MB caption is a bad record, not a crash

_decode_errors = threading.local()


def _count_invalid(e: UnicodeDecodeError) -> tuple[str, int]:
    _decode_errors.n = getattr(_decode_errors, "n", 0) + 1
    return "\ufffd", e.end


codecs.register_error("laion_pipe_count_invalid", _count_invalid)
DECODE_ERRORS = "laion_pipe_count_invalid"
"""A codec error handler: invalid UTF-8 becomes U+FFFD, and `invalid_utf8()` counts it."""


def invalid_utf8(reset: bool = True) -> int:
    """Invalid UTF-8 sequences replaced on this thread since the last reset."""
    n = getattr(_decode_errors, "n", 0)
    if reset:
        _decode_errors.n = 0
    return n


def as_text(v: Any) -> Any:
    """Binary values (a parquet binary column) as text, invalid bytes replaced and counted."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", DECODE_ERRORS)
    return v


class _RangeReader(io.RawIOBase):
    """Bytes [start, stop) of an open file, as a stream."""

    def __init__(self, f: IO[bytes], start: int, stop: int | None):
        self.f, self.pos, self.stop = f, start, stop
        f.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        want = len(b) if self.stop is None else min(len(b), self.stop - self.pos)
        if want <= 0:
            return 0
        data = self.f.read(want)
        n = len(data)
        b[:n] = data
        self.pos += n
        return n


class BoundaryError(ValueError):
    """A CSV/TSV range boundary fell inside a quoted field: the partition fails with this."""


@dataclass
class BadRow:
    """A row that could not be read (noted in the manifest, not kept)."""

    kind: str
    message: str
    offset: int | None = None


@dataclass
class Batch:
    """Rows of a list as column lists (`columns[name][i]`), plus the rows that could not be read.
    JSON lines rows may hold keys beyond the sampled columns: `extra[i]` has them."""

    columns: dict[str, list[Any]]
    n: int
    bad: list[BadRow] = field(default_factory=list)
    extra: list[dict] | None = None


def read(path: str, layout: ListLayout, rng: Range, columns: list[str], batch_rows: int) -> Iterator[Batch]:
    """The rows of one range of a list, `batch_rows` at a time, as the named columns (None where
    a row lacks one). Text arrives decoded, invalid UTF-8 replaced (`invalid_utf8()` counts it)."""
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        if layout.format == "parquet":
            yield from _read_parquet(f, rng, columns, batch_rows)
            return
        raw: IO[bytes] = f
        if layout.gzip:
            import gzip

            raw = gzip.GzipFile(fileobj=f)
            stream: IO[bytes] = io.BufferedReader(raw, 1 << 20)  # type: ignore[arg-type]
        else:
            stream = io.BufferedReader(_RangeReader(f, rng.start, rng.stop), 1 << 20)
        if layout.format in ("csv", "tsv"):
            yield from _read_csv(stream, layout, rng, columns, batch_rows)
        elif layout.format == "jsonl":
            yield from _read_jsonl(stream, layout, rng, columns, batch_rows)
        else:
            yield from _read_text(stream, rng, batch_rows)


def _read_parquet(f: IO[bytes], rng: Range, columns: list[str], batch_rows: int) -> Iterator[Batch]:
    pf = pq.ParquetFile(f)
    groups = list(range(rng.start, rng.stop or pf.metadata.num_row_groups))
    if not groups:
        return
    for rb in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns, use_threads=False):
        yield Batch({c: rb.column(c).to_pylist() for c in columns}, rb.num_rows)


def _skip_bom(stream: IO[bytes], rng: Range) -> None:
    if rng.start == 0 and stream.peek(3)[:3] == codecs.BOM_UTF8:  # type: ignore[attr-defined]
        stream.read(3)


def _read_csv(stream: IO[bytes], layout: ListLayout, rng: Range, columns: list[str], batch_rows: int) -> Iterator[Batch]:
    _skip_bom(stream, rng)
    text = io.TextIOWrapper(stream, encoding="utf-8", errors=DECODE_ERRORS, newline="")
    reader = csv.reader(itertools.chain(text, ["\n", _SENTINEL]), delimiter=layout.delimiter)
    index = [layout.columns.index(c) for c in columns]
    ncols = len(layout.columns)
    cols: dict[str, list[Any]] = {c: [] for c in columns}
    appends = [(cols[c].append, i) for c, i in zip(columns, index)]
    bad: list[BadRow] = []
    n = 0
    first = rng.start == 0 and layout.header
    row_no = 0
    for rec in reader:
        if not rec:
            continue
        if rec == [_SENTINEL]:
            break
        if rec[-1].endswith(_SENTINEL):
            where = f"the record starting at row {row_no + 1} of the range from byte {rng.start}"
            if rng.last:
                bad.append(BadRow("truncated_record", f"{where}: a quoted field is not closed at the end of the file"))
                break
            raise BoundaryError(
                f"{where} runs past the range's end at byte {rng.stop}: that partition boundary fell inside a quoted "
                "field (a caption with a line break); set extract.lists.partition_bytes: 0 to read this file in one partition"
            )
        if first:
            first = False
            continue
        row_no += 1
        if len(rec) != ncols:
            bad.append(BadRow("bad_row", f"row {row_no} of the range from byte {rng.start}: {len(rec)} fields, the header has {ncols}"))
            continue
        for append, i in appends:
            append(rec[i])
        n += 1
        if n >= batch_rows:
            yield Batch(cols, n, bad)
            cols = {c: [] for c in columns}
            appends = [(cols[c].append, i) for c, i in zip(columns, index)]
            bad, n = [], 0
    if n or bad:
        yield Batch(cols, n, bad)


def _read_jsonl(stream: IO[bytes], layout: ListLayout, rng: Range, columns: list[str], batch_rows: int) -> Iterator[Batch]:
    _skip_bom(stream, rng)
    wanted = set(columns)
    cols: dict[str, list[Any]] = {c: [] for c in columns}
    extra: list[dict] = []
    bad: list[BadRow] = []
    n = 0
    offset = rng.start
    for line in stream:
        at = offset
        offset += len(line)
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:  # invalid UTF-8 inside a string: replaced, as in the other formats
                obj = orjson.loads(line.decode("utf-8", DECODE_ERRORS))
            except orjson.JSONDecodeError as e:
                bad.append(BadRow("bad_json", f"not a JSON object: {e}", None if layout.gzip else at))
                continue
        if not isinstance(obj, dict):
            bad.append(BadRow("bad_json", f"a JSON {type(obj).__name__}, not an object", None if layout.gzip else at))
            continue
        for c in columns:
            cols[c].append(obj.get(c))
        extra.append({k: v for k, v in obj.items() if k not in wanted})
        n += 1
        if n >= batch_rows:
            yield Batch(cols, n, bad, extra)
            cols, extra, bad, n = {c: [] for c in columns}, [], [], 0
    if n or bad:
        yield Batch(cols, n, bad, extra)


def _read_text(stream: IO[bytes], rng: Range, batch_rows: int) -> Iterator[Batch]:
    _skip_bom(stream, rng)
    urls: list[Any] = []
    for line in stream:
        url = line.decode("utf-8", DECODE_ERRORS).strip()
        if url:
            urls.append(url)
            if len(urls) >= batch_rows:
                yield Batch({"url": urls}, len(urls))
                urls = []
    if urls:
        yield Batch({"url": urls}, len(urls))
