"""URL lists, img2dataset's inputs: parquet, CSV, TSV, JSON lines and plain text (one URL a line),
plain or gzip, anywhere fsspec reads. The format is taken from the content, as for WAT/WARC files:

- parquet: the `PAR1` magic;
- JSON lines: the first line is a JSON object;
- TSV: the first line holds a tab; CSV: it holds several comma-separated fields; text: every line
  is one URL (a line of URLs that all hold a comma reads as CSV);
- a CSV or TSV whose first row holds a URL has no header (CC3M and CC12M's TSV): its columns are
  named by content, `url` (the one holding URLs), `caption` (the other one of two) or `colN`.

A file that is none of these (`describe` returns None) is left to the WARC reader, whose error
then names every format it tried. Nothing is held whole: a parquet list is read row group by row
group, the others as streams, in batches (`listread.py`).

A list of any size is cut into partitions (`ranges`): a parquet file into runs of whole row groups
(`partition_rows`), a plain text file into byte ranges (`partition_bytes`) that start at a record
boundary, a gzip file not at all (it cannot be entered in the middle). A CSV/TSV boundary is
chosen where the records that follow parse with the header's number of fields, so a newline
inside a quoted caption is not taken for one; and each range checks, when it ends, that its last
record ended exactly there: a boundary that was inside a quoted field fails the partition before
it with a message saying so, never a silently split or doubled row.
"""
from __future__ import annotations

import codecs
import csv
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .. import fsio

FORMATS = ("parquet", "csv", "tsv", "jsonl", "text")
HEAD_BYTES = 1 << 16
SAMPLE_LINES = 50
_URL = re.compile(r"^\s*https?://\S", re.IGNORECASE)
_NAME = re.compile(r"^\s*[A-Za-z_][\w .-]*\s*$")  # a column name, not a URL or other data
_BOUNDARY_WINDOW = 1 << 20
_BOUNDARY_RECORDS = 16


def looks_like_url(value: Any) -> bool:
    return isinstance(value, str) and bool(_URL.match(value))


@dataclass(frozen=True)
class ListLayout:
    """What `describe` found: the format and the columns a list has."""

    path: str
    format: str
    gzip: bool
    columns: tuple[str, ...]
    size: int
    header: bool = True  # CSV/TSV: the first row names the columns
    row_groups: tuple[int, ...] = ()  # parquet: rows per row group

    @property
    def delimiter(self) -> str:
        return "\t" if self.format == "tsv" else ","

    @property
    def rows(self) -> int | None:
        return sum(self.row_groups) if self.format == "parquet" else None

    def describe(self) -> str:
        extra = f", {len(self.row_groups)} row groups, {self.rows:,} rows" if self.format == "parquet" else ""
        return f"{self.format}{' (gzip)' if self.gzip else ''}{'' if self.header else ' without header'}{extra}"


@dataclass(frozen=True)
class Range:
    """One partition of a list: row groups [start, stop) of a parquet file, or bytes [start, stop)
    of a text file (stop None: to the end), starting at a record boundary."""

    start: int
    stop: int | None
    last: bool  # the range that ends the file

    def as_param(self) -> tuple[int, int | None, bool]:
        return (self.start, self.stop, self.last)


# --- telling formats apart ----------------------------------------------------------------------------


def _head(f: IO[bytes]) -> tuple[bytes, bool, bool]:
    """(first bytes of the content, gzip?, the whole content?)."""
    raw = f.read(HEAD_BYTES)
    if raw[:2] != b"\x1f\x8b":
        return raw, False, len(raw) < HEAD_BYTES
    d = zlib.decompressobj(31)
    try:
        out = d.decompress(raw, HEAD_BYTES)
    except zlib.error:
        return b"", True, False
    return out, True, d.eof and len(raw) < HEAD_BYTES and not d.unconsumed_tail


def _text_lines(data: bytes, complete: bool) -> list[str]:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    parts = data.split(b"\n")
    if not complete:
        parts = parts[:-1]  # a line cut by the end of the sample
    lines = [p.decode("utf-8", "replace").rstrip("\r") for p in parts]
    return [ln for ln in lines if ln.strip()][:SAMPLE_LINES]


def _csv_row(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def _named_by_content(first: list[str]) -> tuple[str, ...]:
    """Column names for a CSV/TSV without a header row, from its first row."""
    names = [f"col{i}" for i in range(len(first))]
    url_at = next((i for i, v in enumerate(first) if looks_like_url(v)), None)
    if url_at is not None:
        names[url_at] = "url"
        if len(first) == 2:
            names[1 - url_at] = "caption"
    return tuple(names)


def sniff(data: bytes, complete: bool) -> tuple[str, tuple[str, ...], bool] | None:
    """(format, columns, has a header) of a text list from its first bytes, or None."""
    if b"WARC/1." in data or b"\x00" in data:
        return None  # a WARC file (maybe damaged before its first record), or binary data: no text list holds NUL bytes
    lines = _text_lines(data, complete)
    if not lines:
        return None
    first = lines[0].lstrip("\ufeff")
    if first.lstrip().startswith("{"):
        keys: dict[str, None] = {}
        for ln in lines:
            try:
                obj = orjson.loads(ln)
            except orjson.JSONDecodeError:
                return None if ln is lines[0] else ("jsonl", tuple(keys), True)
            if not isinstance(obj, dict):
                return None
            keys.update(dict.fromkeys(obj))
        return "jsonl", tuple(keys), True
    if "\t" in first:
        row = _csv_row(first, "\t")
        header = not any(looks_like_url(v) for v in row)
        return "tsv", (tuple(row) if header else _named_by_content(row)), header
    rest = lines[1:]
    if _NAME.match(first) and len(first.split()) == 1 and rest and all(looks_like_url(ln) for ln in rest):
        return "csv", (first.strip(),), True  # one column with a header: "url", then URLs
    urls = sum(looks_like_url(ln) for ln in lines)
    if urls * 2 >= len(lines) and not all("," in ln for ln in lines):
        return "text", ("url",), False  # one URL a line (a URL may hold a space; a few lines may be bad)
    row = _csv_row(first, ",")
    if len(row) >= 2:
        header = not any(looks_like_url(v) for v in row)
        return "csv", (tuple(row) if header else _named_by_content(row)), header
    return None


def might_be_list(path: str) -> bool:
    """False for names that are crawl files (Common Crawl's own, *.warc / *.wat / *.arc, gzip or
    not): they are not opened to be told apart, which saves a request per file of a crawl."""
    name = path.rpartition("/")[2].lower()
    if "/crawl-data/CC-MAIN-" in path:
        return False
    return not re.search(r"\.(warc|wat|wet|arc)(\.gz)?$", name)


def describe(path: str) -> ListLayout | None:
    """The layout of a URL list, or None when `path` is not one (a WAT/WARC file, or nothing we
    read: the WARC reader then reports it). A file that cannot be opened is None too: reading
    it fails its partition with the real error."""
    if not might_be_list(path):
        return None
    try:
        identity = fsio.fingerprint_of(path)
    except Exception:  # noqa: BLE001 - unreadable: the partition reports it
        return None
    return _describe(path, identity)


@lru_cache(maxsize=1024)
def _describe(path: str, identity: str) -> ListLayout | None:
    fs, p = fsio.fs_and_path(path)
    try:
        with fs.open(p, "rb") as f:
            size = int(fs.size(p) or 0)
            if f.read(4) == b"PAR1":
                f.seek(0)
                md = pq.ParquetFile(f).metadata
                schema = md.schema.to_arrow_schema()
                return ListLayout(path, "parquet", False, tuple(schema.names), size,
                                  row_groups=tuple(md.row_group(i).num_rows for i in range(md.num_row_groups)))
            f.seek(0)
            data, gz, complete = _head(f)
    except Exception:  # noqa: BLE001
        return None
    found = sniff(data, complete)
    if found is None:
        return None
    fmt, columns, header = found
    return ListLayout(path, fmt, gz, columns, size, header=header)


def arrow_schema(layout: ListLayout) -> pa.Schema:
    """The list's columns with their types (text formats: strings; JSON lines: unknown, null)."""
    if layout.format == "parquet":
        return _parquet_schema(layout.path)
    t = pa.null() if layout.format == "jsonl" else pa.string()
    return pa.schema([pa.field(c, t) for c in layout.columns])


def _parquet_schema(path: str) -> pa.Schema:
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return pq.read_schema(f)


# --- partitions -----------------------------------------------------------------------------------


def ranges(layout: ListLayout, partition_rows: int, partition_bytes: int) -> list[Range]:
    """The partitions of a list (see the module docstring). Cached per file identity."""
    return list(_ranges(layout, partition_rows, partition_bytes))


@lru_cache(maxsize=1024)
def _ranges(layout: ListLayout, partition_rows: int, partition_bytes: int) -> tuple[Range, ...]:
    if layout.format == "parquet":
        out: list[tuple[int, int]] = []
        start, rows = 0, 0
        for i, n in enumerate(layout.row_groups):
            if i > start and rows + n > partition_rows:
                out.append((start, i))
                start, rows = i, 0
            rows += n
        if start < len(layout.row_groups) or not out:
            out.append((start, len(layout.row_groups)))
        return tuple(Range(a, b, i == len(out) - 1) for i, (a, b) in enumerate(out))
    if layout.gzip or not partition_bytes or layout.size <= partition_bytes:
        return (Range(0, None, True),)
    fs, p = fsio.fs_and_path(layout.path)
    starts = [0]
    try:
        with fs.open(p, "rb") as f:
            header_end = 0
            if layout.header and layout.format in ("csv", "tsv"):
                header_end = len(f.readline())  # a range holding only the header would be empty
            for nominal in range(partition_bytes, layout.size, partition_bytes):
                b = record_start(f, max(nominal, header_end + 1), layout)
                if b is not None and b > max(starts[-1], header_end) and b < layout.size:
                    starts.append(b)
    except (OSError, ValueError):  # a server without range requests: the file can only be read from its start
        return (Range(0, None, True),)
    bounds = starts + [None]
    return tuple(Range(a, b, b is None) for a, b in zip(bounds[:-1], bounds[1:]))  # type: ignore[arg-type]


def record_start(f: IO[bytes], offset: int, layout: ListLayout) -> int | None:
    """The first record boundary at or after `offset` (None: none before the end of the file).
    A line start for text and JSON lines; for CSV/TSV, the first line start from which the next
    records parse with the header's number of fields (a line start inside a quoted caption
    gives them another count). Whether it really is one is checked when the ranges are read."""
    f.seek(max(offset - 1, 0))
    window = f.read(_BOUNDARY_WINDOW)
    if not window:
        return None
    at_end = len(window) < _BOUNDARY_WINDOW
    starts = [m.end() for m in re.finditer(b"\n", window)]
    if offset == 0:
        starts.insert(0, 0)
    base = max(offset - 1, 0)
    if layout.format not in ("csv", "tsv"):
        return base + starts[0] if starts else None
    ncols = len(layout.columns)
    fallback = None
    for s in starts[:256]:
        counts, clean = scan_records(window[s:].decode("utf-8", "replace"), layout.delimiter, _BOUNDARY_RECORDS, at_end)
        if counts and all(n == ncols for n in counts):
            if clean:
                return base + s
            fallback = base + s if fallback is None else fallback
    if fallback is not None:
        return fallback
    return base + starts[0] if starts else None


def scan_records(text: str, delimiter: str, max_records: int, at_end: bool) -> tuple[list[int], bool]:
    """(fields per record, written as a CSV writer quotes?) of the first complete records of
    `text`, read as if it started a record. A writer quotes every field holding a quote, a
    delimiter or a line break, so from a true record start no unquoted field holds a quote and a
    quoted one ends at a delimiter or line end; from a line start inside a quoted field, the
    field's closing quote soon breaks that rule. (A list written without quoting, such as
    CC3M's TSV with quotes in its captions, breaks it everywhere: it has no line breaks inside
    fields either, so any line start is a record start there.)"""
    counts: list[int] = []
    clean = True
    i, n, fields = 0, len(text), 1
    while i < n and len(counts) < max_records:
        if text[i] == '"':  # a quoted field
            j = i + 1
            while True:
                j = text.find('"', j)
                if j == -1:
                    return counts, clean  # runs past the window: incomplete
                if j + 1 < n and text[j + 1] == '"':
                    j += 2
                    continue
                break
            i = j + 1
            if i < n and text[i] not in (delimiter, "\r", "\n"):
                clean = False
        k = i
        while k < n and text[k] not in (delimiter, "\n"):
            k += 1
        if '"' in text[i:k]:
            clean = False
        if k >= n:
            if at_end:
                counts.append(fields)
            return counts, clean
        if text[k] == delimiter:
            fields += 1
        else:
            counts.append(fields)
            fields = 1
        i = k + 1
    return counts, clean
