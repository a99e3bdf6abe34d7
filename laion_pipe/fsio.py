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


def is_local(path: str) -> bool:
    """A plain local path (no protocol): read with the OS's calls, without fsspec's overhead,
    which counts when a run directory holds hundreds of thousands of manifests."""
    return "://" not in path and "::" not in path and not path.startswith("~")


def read_json(path: str) -> object:
    if is_local(path):
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    fs, p = fs_and_path(path)
    with fs.open(p, "rb") as f:
        return orjson.loads(f.read())


def names_in(folder: str) -> list[str]:
    """Names of the entries directly in `folder` (none when it does not exist), temporary files
    excluded; unsorted."""
    if is_local(folder):
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
    else:
        fs, p = fs_and_path(folder)
        try:
            names = [e.rstrip("/").rpartition("/")[2] for e in fs.ls(p, detail=False)]
        except FileNotFoundError:
            return []
    return [n for n in names if not n.startswith(TMP_PREFIX)]


def files_under(folder: str) -> list[str]:
    """Paths relative to `folder` of every file below it (recursive; none when it does not
    exist), sorted. One `os.walk` locally, one listing on an object store."""
    if is_local(folder):
        found = []
        for root, _dirs, files in os.walk(folder):
            rel = os.path.relpath(root, folder)
            found += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files]
        return sorted(found)
    fs, p = fs_and_path(folder)
    if not fs.isdir(p):
        return []
    base = p.rstrip("/") + "/"
    return sorted(f[len(base):] for f in fs.find(p) if f.startswith(base))


def fingerprint_and_size(path: str) -> tuple[str, int]:
    """`fingerprint_of(path)` and the file's size, from one stat."""
    if is_local(path):
        st = os.stat(path)
        return f"{st.st_size}|mtime={st.st_mtime}", int(st.st_size)
    fs, p = fs_and_path(path)
    info = fs.info(p)
    return _identity(info), int(info.get("size") or 0)


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
    if is_local(path):
        return fingerprint_and_size(path)[0]
    fs, p = fs_and_path(path)
    return _identity(fs.info(p))


def _identity(info: dict) -> str:
    parts = [str(info.get("size"))]
    for k in ("mtime", "ETag", "LastModified", "last_modified", "created"):
        if k in info and info[k] is not None:
            parts.append(f"{k}={info[k]}")
            break
    return "|".join(parts)
