"""Run files: the dedup shuffle's intermediate format, one file per writing task.

Why: a shuffle written as one file per (writer, destination) makes files grow with the square of
the input (every writer meets every destination). A run file instead holds all of one writer's
rows, as small Arrow tables ("segments") each tagged with the destination ("part") it goes to,
and an index saying where each segment lies. Files grow with the writers (linearly), and a reader
of part `p` fetches exactly its segments: one ranged read of the index slice for `p`, then one
ranged read per non-empty segment (on an object store: one GET each, no listing).

Layout (all integers little-endian int64):

    [segment] [segment] ... [index] [trailer]

- a segment is one Arrow IPC stream (schema, batches, end marker), buffers compressed with zstd,
  so segments of one file may have different schemas (an input file with extra columns);
- the writer appends segments in "rounds" (a round = one flush of the writer's memory), each
  round writing every part in order; the index is a `parts x rounds x 3` array
  (offset, length, rows), so part `p`'s entries are one contiguous slice of it;
- the trailer is (index offset, parts, rounds, MAGIC).

A writer streams (`RunWriter`, one round in memory at a time); the file appears under its final
name only when closed (fsio.atomic_open), so a killed writer leaves no run file.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import fsio

MAGIC = b"LPRUNv1\x00"
TRAILER = 32
_ENTRY = 3  # offset, length, rows
_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


@dataclass(frozen=True)
class RunInfo:
    """Where a run file's index lies: what a reader needs to fetch one part's index slice
    without reading the trailer first (the writer's manifest records it)."""

    path: str
    index_offset: int
    parts: int
    rounds: int

    def to_json(self) -> list:
        return [self.path, self.index_offset, self.parts, self.rounds]

    @classmethod
    def from_json(cls, v: list) -> RunInfo:
        return cls(str(v[0]), int(v[1]), int(v[2]), int(v[3]))


def encode(table: pa.Table) -> bytes:
    """One table as a compressed Arrow IPC stream."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=_OPTIONS) as w:
        w.write_table(table)
    return sink.getvalue()


def decode(data: bytes | memoryview) -> pa.Table:
    return pa.ipc.open_stream(pa.BufferReader(data)).read_all()


def decode_all(data: bytes) -> Iterator[pa.Table]:
    """Every stream of a byte string holding several IPC streams back to back (a spill file)."""
    reader = pa.BufferReader(data)
    while reader.tell() < len(data):
        yield pa.ipc.open_stream(reader).read_all()


def split_by_part(table: pa.Table, parts: np.ndarray, n_parts: int) -> list[pa.Table | None]:
    """`table`'s rows grouped by their part id (0 <= part < n_parts), keeping their order within a
    part: one `take` (none when already grouped), then zero-copy slices. None for a part without rows."""
    out: list[pa.Table | None] = [None] * n_parts
    if not len(table):
        return out
    if len(parts) > 1 and np.any(parts[1:] < parts[:-1]):
        table = table.take(pa.array(np.argsort(parts, kind="stable")))
    counts = np.bincount(parts, minlength=n_parts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for p in np.flatnonzero(counts):
        out[int(p)] = table.slice(int(starts[p]), int(counts[p]))
    return out


class RunWriter:
    """Streams rounds of part-tagged tables into one run file (see the module docstring).

        with RunWriter(path, n_parts) as w:
            w.write_round([...])
        w.info  # where its index lies

    The file appears under its final name when the block ends without an exception."""

    def __init__(self, path: str, n_parts: int):
        self.path = path
        self.n_parts = n_parts
        self.info: RunInfo | None = None
        self.bytes = 0
        self.rows = 0
        self._index: list[np.ndarray] = []  # one (n_parts, 3) array per round
        self._stack = contextlib.ExitStack()
        self._f = None

    @property
    def rounds(self) -> int:
        return len(self._index)

    def __enter__(self) -> RunWriter:
        self._f = self._stack.enter_context(fsio.atomic_open(self.path, "wb"))
        return self

    def write_round(self, tables: list[pa.Table | None]) -> None:
        """One round: `tables[p]` is part p's rows (None or empty: no segment)."""
        if len(tables) != self.n_parts:
            raise ValueError(f"a round has {self.n_parts} parts, got {len(tables)}")
        entry = np.zeros((self.n_parts, _ENTRY), dtype="<i8")
        entry[:, 0] = self.bytes
        for p, t in enumerate(tables):
            if t is None or not len(t):
                entry[p] = (self.bytes, 0, 0)
                continue
            data = encode(t)
            self._f.write(data)
            entry[p] = (self.bytes, len(data), len(t))
            self.bytes += len(data)
            self.rows += len(t)
        self._index.append(entry)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            rounds = len(self._index)
            index = np.stack(self._index, axis=1) if rounds else np.zeros((self.n_parts, 0, _ENTRY), "<i8")
            offset = self.bytes
            self._f.write(np.ascontiguousarray(index, dtype="<i8").tobytes())
            self._f.write(np.array([offset, self.n_parts, rounds], dtype="<i8").tobytes() + MAGIC)
            self.bytes = offset + index.nbytes + TRAILER
            self.info = RunInfo(self.path, offset, self.n_parts, rounds)
        self._stack.__exit__(exc_type, exc, tb)


def read_info(path: str) -> RunInfo:
    """A run file's RunInfo from its trailer (one small ranged read)."""
    fs, p = fsio.fs_and_path(path)
    size = int(fs.size(p))
    tail = fs.cat_file(p, start=size - TRAILER, end=size)
    if len(tail) != TRAILER or tail[-8:] != MAGIC:
        raise ValueError(f"{path}: not a run file (no trailer)")
    offset, parts, rounds = np.frombuffer(tail[:24], dtype="<i8")
    return RunInfo(path, int(offset), int(parts), int(rounds))


def part_entries(info: RunInfo, part: int) -> np.ndarray:
    """(rounds, 3) array of (offset, length, rows) of `part`'s segments: one ranged read."""
    if not 0 <= part < info.parts:
        raise ValueError(f"{info.path}: part {part} out of range (the file has {info.parts})")
    if info.rounds == 0:
        return np.zeros((0, _ENTRY), dtype="<i8")
    width = info.rounds * _ENTRY * 8
    start = info.index_offset + part * width
    fs, p = fsio.fs_and_path(info.path)
    data = fs.cat_file(p, start=start, end=start + width)
    return np.frombuffer(data, dtype="<i8").reshape(info.rounds, _ENTRY)


def read_part(info: RunInfo, part: int) -> Iterator[pa.Table]:
    """The tables of `part` in a run file, round by round (empty segments skipped): one ranged
    read for the index slice, one per segment."""
    entries = part_entries(info, part)
    fs, p = fsio.fs_and_path(info.path)
    for offset, length, _rows in entries:
        if length:
            yield decode(fs.cat_file(p, start=int(offset), end=int(offset + length)))


def part_rows(info: RunInfo, part: int) -> int:
    return int(part_entries(info, part)[:, 2].sum())
