"""Filesystem helpers over fsspec: one place that knows how to write a file so no reader ever
sees half of it (write under a temporary name in the same folder, then rename into place).

On object stores a rename is a copy + delete, which is still atomic for readers: the final key
only appears once its whole content exists.
"""
from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from typing import IO

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

TMP_PREFIX = ".tmp-"


def fs_and_path(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Split a local path or fsspec URL into (filesystem, path inside it)."""
    fs, p = url_to_fs(path)
    return fs, p


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with '/'."""
    out = root.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def exists(path: str) -> bool:
    fs, p = fs_and_path(path)
    return fs.exists(p)


def makedirs(path: str) -> None:
    fs, p = fs_and_path(path)
    fs.makedirs(p, exist_ok=True)


def _tmp_name(p: str) -> str:
    head, _, name = p.rpartition("/")
    return f"{head}/{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}" if head else f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open `path` for writing; the file appears under its final name only if the block succeeds."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open only writes, got mode {mode!r}")
    fs, p = fs_and_path(path)
    parent = p.rpartition("/")[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = _tmp_name(p)
    try:
        with fs.open(tmp, mode) as f:
            yield f
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp, p)  # atomic on POSIX, unlike a copy
        else:
            fs.mv(tmp, p)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: str, obj: object) -> None:
    write_bytes_atomic(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS))


def read_json(path: str) -> object:
    fs, p = fs_and_path(path)
    with fs.open(p, "rb") as f:
        return orjson.loads(f.read())


def write_parquet_atomic(table: pa.Table, path: str, **kwargs) -> None:
    """Write a parquet file atomically (zstd by default: small and fast to read)."""
    kwargs.setdefault("compression", "zstd")
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    write_bytes_atomic(path, buf.getvalue())


def glob(pattern: str) -> list[str]:
    """Glob a local pattern or URL; returns full paths/URLs in sorted order, temporary files excluded."""
    fs, p = fs_and_path(pattern)
    found = sorted(fs.glob(p))
    out = []
    for f in found:
        if f.rpartition("/")[2].startswith(TMP_PREFIX):
            continue
        out.append(f if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(f))
    return out


def fingerprint_of(path: str) -> str:
    """A cheap identity of a file's content: size plus mtime/ETag, without reading it."""
    fs, p = fs_and_path(path)
    info = fs.info(p)
    parts = [str(info.get("size"))]
    for k in ("mtime", "ETag", "LastModified", "last_modified", "created"):
        if k in info and info[k] is not None:
            parts.append(f"{k}={info[k]}")
            break
    return "|".join(parts)
