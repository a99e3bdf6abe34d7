"""Turn what a user names as input into a list of files: local paths, globs, fsspec URLs, and
Common Crawl crawl ids such as `CC-MAIN-2023-14` (read from that crawl's `wat.paths.gz`).

The listing's location is configurable (`extract.crawl_base_url`): Common Crawl's HTTPS endpoint
by default, `s3://commoncrawl` on AWS, or any mirror, which is how the tests point it at a local
server. A listing is streamed, so `max_files` reads only the lines it needs.

Inputs are resolved when a run is planned, before any file is read: a listing that cannot be read
(no network, DNS, an HTTP error status, a wrong mirror) or a glob that matches nothing is a
`ConfigError` naming the URL and the cause in one line, which the CLI reports with exit code 2.
fsspec turns every HTTP failure into a bare `FileNotFoundError(url)`; the real cause (aiohttp's
response or connection error) is on its `__cause__` chain, and `describe_failure` reads it there.
"""
from __future__ import annotations

import gzip
import io
import os
import re
from functools import lru_cache

from .. import fsio
from ..config import ConfigError

CRAWL_ID = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")
DEFAULT_BASE = "https://data.commoncrawl.org"
_GLOB_CHARS = set("*?[")


def is_crawl_id(name: str) -> bool:
    return bool(CRAWL_ID.match(name))


def listing_url(crawl_id: str, base: str = DEFAULT_BASE, kind: str = "wat") -> str:
    """`{base}/crawl-data/{id}/{kind}.paths.gz`, the list of a crawl's files of one kind."""
    return f"{base.rstrip('/')}/crawl-data/{crawl_id}/{kind}.paths.gz"


def describe_failure(exc: BaseException) -> str:
    """The real cause of a failed read, in a few words: an HTTP status, a DNS or connection
    failure, a timeout, a missing file. Walks the `__cause__` / `__context__` chain, since
    fsspec wraps aiohttp's errors in `FileNotFoundError(url)`."""
    import asyncio
    import socket
    import ssl

    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        status = getattr(e, "status", None)
        if isinstance(status, int) and status >= 300 and hasattr(e, "request_info"):  # aiohttp.ClientResponseError
            reason = getattr(e, "message", "") or ""
            return f"HTTP {status}{' ' + reason if reason else ''}"
        if isinstance(e, socket.gaierror) or type(e).__name__ == "ClientConnectorDNSError":
            host = getattr(e, "host", None)
            os_error = getattr(e, "os_error", None)
            detail = (os_error.strerror if isinstance(os_error, OSError) else None) or getattr(e, "strerror", None) or str(e)
            return f"DNS lookup{' of ' + host if host else ''} failed ({detail})"
        if isinstance(e, ConnectionRefusedError) or isinstance(getattr(e, "os_error", None), ConnectionRefusedError):
            host, port = getattr(e, "host", None), getattr(e, "port", None)
            return f"connection refused{f' by {host}:{port}' if host else ''}"
        if isinstance(e, ssl.SSLError) or type(e).__name__.startswith("ClientConnectorCertificate"):
            return f"TLS error ({e})"
        if isinstance(e, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(e).__name__:
            return "timed out"
        if type(e).__name__ == "ClientConnectorError":  # any other connection failure
            os_error = getattr(e, "os_error", None)
            detail = os_error.strerror if isinstance(os_error, OSError) and os_error.strerror else str(e)
            return f"cannot connect to {getattr(e, 'host', '?')}:{getattr(e, 'port', '?')} ({detail})"
    first = chain[0]
    if isinstance(first, FileNotFoundError) and len(chain) == 1:
        return "no such file"
    if isinstance(first, (gzip.BadGzipFile, EOFError)):
        return f"not a complete gzip file ({first})"
    if isinstance(first, UnicodeDecodeError):
        return "not a UTF-8 text listing"
    return f"{type(first).__name__}: {first}" if str(first) else type(first).__name__


def crawl_files(crawl_id: str, base: str = DEFAULT_BASE, max_files: int | None = None, kind: str = "wat") -> list[str]:
    """The first `max_files` (all when None) file URLs of a crawl, as listed by Common Crawl.
    Raises `ConfigError` when the listing cannot be read, naming its URL and the cause.

    A published crawl's listing never changes, so it is read once per process: checking the
    inputs before a run and planning it then cost one download, not two."""
    return list(_crawl_files(crawl_id, base, max_files, kind))


@lru_cache(maxsize=64)
def _crawl_files(crawl_id: str, base: str, max_files: int | None, kind: str) -> tuple[str, ...]:
    if not is_crawl_id(crawl_id):
        raise ConfigError(f"not a crawl id: {crawl_id!r} (expected CC-MAIN-YYYY-WW)")
    url = listing_url(crawl_id, base, kind)
    out: list[str] = []
    try:
        fs, p = fsio.fs_and_path(url)
        with fs.open(p, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
            for line in io.TextIOWrapper(gz, encoding="utf-8"):
                rel = line.strip()
                if not rel:
                    continue
                out.append(f"{base.rstrip('/')}/{rel.lstrip('/')}")
                if max_files is not None and len(out) >= max_files:
                    break
    except Exception as e:  # noqa: BLE001 - whatever the filesystem raises, the user needs URL + cause
        raise ConfigError(f"{crawl_id}: cannot read the crawl's file list {url}: {describe_failure(e)}") from e
    if not out:
        raise ConfigError(f"{crawl_id}: {url} lists no files")
    return tuple(out)


def _has_protocol(path: str) -> bool:
    return "://" in path


def resolve_inputs(inputs: list[str], max_files: int | None = None, base: str = DEFAULT_BASE) -> list[str]:
    """Expand inputs into files, in the order given, each file once.

    A crawl id becomes its first `max_files` WAT files; a glob its sorted matches (none is a
    `ConfigError`: a typo must not make an empty run); a local directory its files; anything
    else is taken as a file, and whether it opens is found out when it is read."""
    files: list[str] = []
    for item in inputs:
        item = item.strip()
        if not item:
            continue
        if is_crawl_id(item):
            files.extend(crawl_files(item, base, max_files))
        elif _GLOB_CHARS & set(item):
            pattern = item if _has_protocol(item) else os.path.abspath(item)
            found = fsio.glob(pattern)
            if not found:
                raise ConfigError(f"input {item!r}: no file matches")
            files.extend(found)
        elif not _has_protocol(item) and os.path.isdir(item):
            files.extend(
                os.path.join(os.path.abspath(item), n)
                for n in sorted(os.listdir(item))
                if not n.startswith(".") and os.path.isfile(os.path.join(item, n))
            )
        else:
            files.append(item if _has_protocol(item) else os.path.abspath(item))
    seen: set[str] = set()
    return [f for f in files if not (f in seen or seen.add(f))]
