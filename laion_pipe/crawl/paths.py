"""Turn what a user names as input into a list of files: local paths, globs, fsspec URLs, and
Common Crawl crawl ids such as `CC-MAIN-2023-14` (read from that crawl's `wat.paths.gz`).

The listing's location is configurable (`extract.crawl_base_url`): Common Crawl's HTTPS endpoint
by default, `s3://commoncrawl` on AWS, or any mirror, which is how the tests point it at a local
server. A listing is streamed, so `max_files` reads only the lines it needs.
"""
from __future__ import annotations

import gzip
import io
import os
import re

from .. import fsio

CRAWL_ID = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")
DEFAULT_BASE = "https://data.commoncrawl.org"
_GLOB_CHARS = set("*?[")


def is_crawl_id(name: str) -> bool:
    return bool(CRAWL_ID.match(name))


def listing_url(crawl_id: str, base: str = DEFAULT_BASE, kind: str = "wat") -> str:
    """`{base}/crawl-data/{id}/{kind}.paths.gz`, the list of a crawl's files of one kind."""
    return f"{base.rstrip('/')}/crawl-data/{crawl_id}/{kind}.paths.gz"


def crawl_files(crawl_id: str, base: str = DEFAULT_BASE, max_files: int | None = None, kind: str = "wat") -> list[str]:
    """The first `max_files` (all when None) file URLs of a crawl, as listed by Common Crawl."""
    if not is_crawl_id(crawl_id):
        raise ValueError(f"not a crawl id: {crawl_id!r} (expected CC-MAIN-YYYY-WW)")
    url = listing_url(crawl_id, base, kind)
    fs, p = fsio.fs_and_path(url)
    out: list[str] = []
    with fs.open(p, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
        for line in io.TextIOWrapper(gz, encoding="utf-8"):
            rel = line.strip()
            if not rel:
                continue
            out.append(f"{base.rstrip('/')}/{rel.lstrip('/')}")
            if max_files is not None and len(out) >= max_files:
                break
    if not out:
        raise ValueError(f"{url} lists no files")
    return out


def _has_protocol(path: str) -> bool:
    return "://" in path


def resolve_inputs(inputs: list[str], max_files: int | None = None, base: str = DEFAULT_BASE) -> list[str]:
    """Expand inputs into files, in the order given, each file once.

    A crawl id becomes its first `max_files` WAT files; a glob its sorted matches (none is an
    error: a typo must not make an empty run); a local directory its files; anything else is
    taken as a file, and whether it opens is found out when it is read."""
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
                raise FileNotFoundError(f"input {item!r}: no file matches")
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
