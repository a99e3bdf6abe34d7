"""Blocklists the dedup stage applies: domains, URL-hash lists and lists of already-curated URLs.

Why each exists:
- a domain list removes whole sites (and their subdomains) on request or by policy;
- a URL-hash list is how removals are shared without republishing the links themselves (Re-LAION-5B
  published the hashes of the links it removed): we compare hashes of our URLs against it, and
  tell MD5 / SHA-1 / SHA-256 apart by the hex length, so any of these lists loads as-is;
- an already-curated list (URLs, or URL+text pairs, of an earlier run or of a published dataset
  such as LAION-5B's parquet files) makes a new crawl add only new pairs.

Domain and hash lists are small enough to hold in a worker (millions of entries); they are loaded
once per worker process and cached by file identity. Already-curated lists may be billions of URLs,
so they are never loaded whole: `iter_curated` streams them in batches and the dedup stage
hash-partitions them into the same buckets as the candidates.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import fsio

HASH_ALGOS: dict[int, str] = {32: "md5", 40: "sha1", 64: "sha256"}
"""hex length -> hashlib algorithm: a URL-hash list's algorithm is told by its entries' length."""

KEY_SEPARATOR = "\x00"
"""Joins url and text into one (url, text) key; a URL cannot contain NUL, so keys never collide."""

_HOST_RE = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)"


# ---------------------------------------------------------------- reading list files


def _lines(path: str) -> Iterator[str]:
    """Non-empty, non-comment lines of a text file (gzip/bz2/... inferred from the name)."""
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rt", encoding="utf-8", errors="replace", compression="infer") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line


def normalize_domain(entry: str) -> str | None:
    """`Example.COM.`, `*.example.com`, `.example.com` or `https://example.com/x` -> `example.com`;
    internationalised names -> their ASCII (punycode) form, as hosts appear in URLs."""
    d = entry.strip().lower()
    if "://" in d:
        d = d.split("://", 1)[1]
        d = d.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]
        if not d.startswith("["):
            d = d.split(":", 1)[0]
    d = d.lstrip("*").strip(".")
    if not d:
        return None
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return d


@functools.lru_cache(maxsize=8)
def _load_domains_cached(identities: tuple[tuple[str, str], ...]) -> frozenset[str]:
    out: set[str] = set()
    for path, _identity in identities:
        for line in _lines(path):
            d = normalize_domain(line.split()[0])
            if d:
                out.add(d)
    return frozenset(out)


def load_domains(paths: Iterable[str], identities: Iterable[str] | None = None) -> frozenset[str]:
    """All domains of the given files (one per line, `#` comments). `identities` (from
    `fsio.fingerprint_of`, computed once by the planner) key the per-worker cache."""
    paths = list(paths)
    ids = list(identities) if identities is not None else [fsio.fingerprint_of(p) for p in paths]
    return _load_domains_cached(tuple(zip(paths, ids)))


@dataclass(frozen=True)
class UrlHashList:
    """Digests to remove, grouped by algorithm (bytes, not hex: half the memory)."""

    digests: dict[str, frozenset[bytes]]

    def __len__(self) -> int:
        return sum(len(v) for v in self.digests.values())


@functools.lru_cache(maxsize=8)
def _load_url_hashes_cached(identities: tuple[tuple[str, str], ...]) -> UrlHashList:
    by_algo: dict[str, set[bytes]] = {}
    for path, _identity in identities:
        for n, line in enumerate(_lines(path), 1):
            h = line.replace(",", " ").split()[0].lower()
            algo = HASH_ALGOS.get(len(h))
            try:
                digest = bytes.fromhex(h)
            except ValueError:
                digest = b""
            if algo is None or not digest:
                raise ValueError(
                    f"{path}:{n}: {h[:80]!r} is not a hex MD5, SHA-1 or SHA-256 digest (32, 40 or 64 hex digits)"
                )
            by_algo.setdefault(algo, set()).add(digest)
    return UrlHashList({a: frozenset(s) for a, s in by_algo.items()})


def load_url_hashes(paths: Iterable[str], identities: Iterable[str] | None = None) -> UrlHashList:
    """URL-hash list files: one hex digest of a URL's UTF-8 bytes per line (a CSV whose first
    field is the digest works too). A malformed line is an error: a removal list that silently
    removes nothing is worse than a failed run."""
    paths = list(paths)
    ids = list(identities) if identities is not None else [fsio.fingerprint_of(p) for p in paths]
    return _load_url_hashes_cached(tuple(zip(paths, ids)))


def _pick_column(names: list[str], wanted: str) -> str | None:
    for n in names:
        if n.lower() == wanted:
            return n
    return None


def iter_curated(path: str, with_text: bool, batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """Stream an already-curated list as tables with a `url` (and `text`) column.

    Parquet files need a `url` or `URL` column (LAION-5B's metadata has `URL` and `TEXT`), and a
    `text`/`TEXT` column when matching (url, text) pairs. Any other file is read as one URL per
    line. Rows with a missing url (or text) are skipped: they cannot match anything."""
    if path.endswith(".parquet"):
        fs, p = fsio.fs_and_path(path)
        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            url_col = _pick_column(names, "url")
            text_col = _pick_column(names, "text")
            if url_col is None:
                raise ValueError(f"{path}: an already-curated parquet file needs a url or URL column, has {names}")
            if with_text and text_col is None:
                raise ValueError(f"{path}: dedup.key is url_text, so already-curated files need a text or TEXT column")
            cols = [url_col] + ([text_col] if with_text else [])
            for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
                t = pa.Table.from_batches([batch]).rename_columns(["url"] + (["text"] if with_text else []))
                t = t.cast(pa.schema([("url", pa.string())] + ([("text", pa.string())] if with_text else [])))
                valid = pc.is_valid(t["url"])
                if with_text:
                    valid = pc.and_(valid, pc.is_valid(t["text"]))
                yield t.filter(valid)
        return
    if with_text:
        raise ValueError(f"{path}: dedup.key is url_text, so already-curated lists must be parquet with a text column")
    buf: list[str] = []
    for line in _lines(path):
        buf.append(line)
        if len(buf) >= batch_rows:
            yield pa.table({"url": pa.array(buf, pa.string())})
            buf = []
    if buf:
        yield pa.table({"url": pa.array(buf, pa.string())})


# ---------------------------------------------------------------- matching (vectorised)


def url_hosts(urls: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lower-cased host of each URL ('' when there is none), without a trailing dot."""
    hosts = pc.struct_field(pc.extract_regex(urls, _HOST_RE), "host")
    hosts = pc.fill_null(hosts, "")
    return pc.utf8_rtrim(pc.utf8_lower(hosts), characters=".")


def _suffix_blocked(host: str, domains: frozenset[str]) -> bool:
    if not host:
        return False
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    if host in domains:
        return True
    i = host.find(".")
    while i != -1:
        if host[i + 1 :] in domains:
            return True
        i = host.find(".", i + 1)
    return False


def domain_mask(urls: pa.Array | pa.ChunkedArray, domains: frozenset[str]) -> np.ndarray:
    """True where the URL's host is a listed domain or a subdomain of one. Only the distinct
    hosts are checked in Python (a bucket has far fewer hosts than rows)."""
    n = len(urls)
    if not domains or n == 0:
        return np.zeros(n, dtype=bool)
    hosts = url_hosts(urls)
    uniq = pc.unique(hosts)
    bad = [h for h in uniq.to_pylist() if _suffix_blocked(h, domains)]
    if not bad:
        return np.zeros(n, dtype=bool)
    return pc.is_in(hosts, value_set=pa.array(bad, pa.string())).to_numpy(zero_copy_only=False)


def url_hash_mask(urls: pa.Array | pa.ChunkedArray, hashes: UrlHashList) -> np.ndarray:
    """True where a digest of the URL (its UTF-8 bytes, as written) is in the list."""
    n = len(urls)
    out = np.zeros(n, dtype=bool)
    if not len(hashes) or n == 0:
        return out
    values = urls.to_pylist()
    for algo, digests in hashes.digests.items():
        new = hashlib.new
        hits = np.fromiter(
            (u is not None and new(algo, u.encode("utf-8")).digest() in digests for u in values), dtype=bool, count=n
        )
        out |= hits
    return out


def pair_keys(url: pa.ChunkedArray | pa.Array, text: pa.ChunkedArray | pa.Array | None) -> pa.ChunkedArray | pa.Array:
    """The dedup key as one string column: the url, or url NUL text."""
    if text is None:
        return url
    return pc.binary_join_element_wise(url, text, KEY_SEPARATOR)


def curated_mask(keys: pa.ChunkedArray | pa.Array, curated_keys: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """True where a key is in the already-curated keys (of the same bucket)."""
    if len(keys) == 0 or len(curated_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    value_set = pc.unique(curated_keys)
    if isinstance(value_set, pa.ChunkedArray):
        value_set = value_set.combine_chunks()
    return pc.is_in(keys, value_set=value_set).to_numpy(zero_copy_only=False)
