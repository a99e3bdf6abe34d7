"""Blocklists the dedup stage applies: domains, URL-hash lists and lists of already-curated URLs.

Why each exists:
- a domain list removes whole sites (and their subdomains) on request or by policy;
- a URL-hash list is how removals are shared without republishing the links themselves (Re-LAION-5B
  published the hashes of the links it removed): we compare hashes of our URLs against it, and
  tell MD5 / SHA-1 / SHA-256 apart by the hex length, so any of these lists loads as-is;
- an already-curated list (URLs, or URL+text pairs, of an earlier run or of a published dataset
  such as LAION-5B's parquet files) makes a new crawl add only new pairs.

How each scales (the dedup stage never loads a list whole into one process, except domain lists;
select's `select.blocked_url_hashes`, small lists exported from the search page, are held whole
as sorted digests, `load_url_hashes`):
- already-curated lists (billions of URLs) are streamed in batches (`iter_curated`) and
  hash-partitioned into the same buckets as the candidates by the dedup stage;
- URL-hash lists (hundreds of millions of digests) are streamed (`iter_digests`, vectorised
  parsing) and partitioned by digest range; the dedup stage partitions the digests of the
  candidates' URLs the same way, so each matching task holds one range of the list (a join);
- domain lists are held per worker process as two 64-bit halves of a 128-bit MurmurHash3 per
  domain (`DomainList`, 16 bytes a domain: 160 MB for 10M domains), cached by file identity; a
  URL's host and each of its parent domains are looked up by the same hash.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from . import fsio

HASH_ALGOS: dict[int, str] = {32: "md5", 40: "sha1", 64: "sha256"}
"""hex length -> hashlib algorithm: a URL-hash list's algorithm is told by its entries' length."""
DIGEST_BYTES: dict[str, int] = {"md5": 16, "sha1": 20, "sha256": 32}

KEY_SEPARATOR = "\x00"
"""Joins url and text into one (url, text) key; a URL cannot contain NUL, so keys never collide."""

_HOST_RE = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)"
LINE_BLOCK_BYTES = 4 * 2**20
"""Bytes of a list file parsed at once: bounds a list reader's memory whatever the list's size."""


# ---------------------------------------------------------------- reading list files


def _line_blocks(f, block_bytes: int) -> Iterator[pa.Array]:
    read = pcsv.ReadOptions(column_names=["line"], block_size=block_bytes, use_threads=False)
    parse = pcsv.ParseOptions(delimiter="\x1f", quote_char=False, escape_char=False, double_quote=False,
                              newlines_in_values=False, ignore_empty_lines=False)
    convert = pcsv.ConvertOptions(column_types={"line": pa.string()}, strings_can_be_null=False,
                                  quoted_strings_can_be_null=False, check_utf8=False)
    try:
        reader = pcsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            return
        raise
    for batch in reader:
        yield batch.column(0)


def iter_lines(path: str, block_bytes: int = LINE_BLOCK_BYTES) -> Iterator[tuple[int, pa.Array]]:
    """A text file (gzip/bz2/... inferred from the name) as blocks of lines, each with the
    1-based number of its first line: (first line number, string array of the raw lines). Parsed
    by Arrow's CSV reader with no delimiter, quoting or empty-line skipping, so lines are
    counted exactly and memory stays at one block."""
    fs, p = fsio.fs_and_path(path)
    first = 1
    with fs.open(p, "rb", compression="infer") as f:
        for lines in _line_blocks(f, block_bytes):
            yield first, lines
            first += len(lines)


def _content_lines(lines: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Lines with their surrounding spaces removed, without the empty and `#` comment lines, and
    the index of each kept line in the block."""
    s = pc.utf8_trim_whitespace(lines)
    keep = pc.and_(pc.greater(pc.binary_length(s), 0), pc.invert(pc.starts_with(s, "#")))
    idx = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    return s.filter(keep), idx


def first_field(lines: pa.Array) -> pa.Array:
    """The first field of each line: up to the first comma or whitespace."""
    return pc.struct_field(pc.extract_regex(lines, r"^(?P<f>[^,\s]*)"), [0])


def _lines_py(lines: pa.Array) -> list[str]:
    """Python strings of lines that may hold invalid UTF-8 (replaced, as a text reader would)."""
    return [b.decode("utf-8", "replace") for b in lines.cast(pa.binary()).to_pylist()]


# ---------------------------------------------------------------- domain lists


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


def _normalize_block(fields: pa.Array) -> list[str]:
    """normalize_domain over a block: plain lower-case names in Arrow, the rest in Python."""
    low = pc.ascii_lower(fields)
    simple = pc.match_substring_regex(low, r"^[a-z0-9_.*-]+$")
    plain = pc.utf8_rtrim(pc.utf8_ltrim(low.filter(simple), characters="*."), characters=".")
    out = [d for d in plain.to_pylist() if d]
    for raw in _lines_py(fields.filter(pc.invert(simple))):
        d = normalize_domain(raw)
        if d:
            out.append(d)
    return out


def _hash128(values: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [mmh3.hash64(v, signed=False) for v in values]
    arr = np.array(pairs, dtype=np.uint64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


@dataclass(frozen=True)
class DomainList:
    """Domains as 128-bit MurmurHash3 values, sorted: 16 bytes a domain, looked up with numpy."""

    h1: np.ndarray  # uint64, sorted
    h2: np.ndarray  # uint64, aligned with h1

    def __len__(self) -> int:
        return len(self.h1)

    @classmethod
    def of(cls, domains: Iterable[str]) -> DomainList:
        a, b = _hash128(sorted(set(domains)))
        order = np.lexsort((b, a))
        return cls(a[order], b[order])

    def contains(self, names: list[str]) -> np.ndarray:
        """True for each name (an exact, already normalised domain) in the list."""
        if not names or not len(self.h1):
            return np.zeros(len(names), dtype=bool)
        a, b = _hash128(names)
        lo = np.searchsorted(self.h1, a, "left")
        hi = np.searchsorted(self.h1, a, "right")
        found = np.zeros(len(names), dtype=bool)
        one = hi - lo == 1
        found[one] = self.h2[lo[one]] == b[one]
        for i in np.flatnonzero(hi - lo > 1):  # the first 64 bits collide: compare the rest
            found[i] = bool(np.any(self.h2[lo[i] : hi[i]] == b[i]))
        return found

    def __contains__(self, name: str) -> bool:
        return bool(self.contains([name])[0])


@functools.lru_cache(maxsize=4)
def _load_domains_cached(identities: tuple[tuple[str, str], ...]) -> DomainList:
    names: list[str] = []
    for path, _identity in identities:
        for _first, lines in iter_lines(path):
            content, _ = _content_lines(lines)
            names += _normalize_block(first_field(content))
    return DomainList.of(names)


def load_domains(paths: Iterable[str], identities: Iterable[str] | None = None) -> DomainList:
    """All domains of the given files (one per line, `#` comments, words after the first ignored).
    `identities` (from `fsio.fingerprint_of`, computed once by the planner) key the per-worker cache."""
    paths = list(paths)
    ids = list(identities) if identities is not None else [fsio.fingerprint_of(p) for p in paths]
    return _load_domains_cached(tuple(zip(paths, ids)))


def url_hosts(urls: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lower-cased host of each URL ('' when there is none), without a trailing dot."""
    hosts = pc.struct_field(pc.extract_regex(urls, _HOST_RE), "host")
    hosts = pc.fill_null(hosts, "")
    return pc.utf8_rtrim(pc.utf8_lower(hosts), characters=".")


def _suffixes(host: str) -> list[str]:
    """The host and every parent domain of it, in the form a domain list holds."""
    if not host:
        return []
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return []
    out = [host]
    i = host.find(".")
    while i != -1:
        out.append(host[i + 1 :])
        i = host.find(".", i + 1)
    return out


def domain_mask(urls: pa.Array | pa.ChunkedArray, domains: DomainList | None) -> np.ndarray:
    """True where the URL's host is a listed domain or a subdomain of one. Only the distinct
    hosts are checked (a batch has far fewer hosts than rows), all their suffixes in one lookup."""
    n = len(urls)
    if domains is None or not len(domains) or n == 0:
        return np.zeros(n, dtype=bool)
    hosts = url_hosts(urls)
    uniq = pc.unique(hosts).to_pylist()
    owner, names = [], []
    for i, h in enumerate(uniq):
        s = _suffixes(h)
        names += s
        owner += [i] * len(s)
    hit = domains.contains(names)
    bad = sorted({uniq[owner[j]] for j in np.flatnonzero(hit)})
    if not bad:
        return np.zeros(n, dtype=bool)
    return pc.is_in(hosts, value_set=pa.array(bad, pa.string())).to_numpy(zero_copy_only=False)


# ---------------------------------------------------------------- URL-hash lists

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def hex_decode(fields: pa.Array, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Hex strings all `width` characters long -> ((n, width/2) uint8 digests, bad-row mask)."""
    fields = pa.concat_arrays([fields]) if fields.offset else fields
    n = len(fields)
    if n == 0:
        return np.zeros((0, width // 2), np.uint8), np.zeros(0, bool)
    offsets = np.frombuffer(fields.buffers()[1], dtype=np.int32, count=n + 1)
    data = np.frombuffer(fields.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(n, width)
    nib = _HEX[data]
    bad = (nib == 255).any(axis=1)
    return (nib[:, 0::2] << 4) | nib[:, 1::2], bad


def _digest_block(path: str, first: int, lines: pa.Array) -> dict[str, np.ndarray]:
    """One block of a URL-hash list -> {algorithm: (n, bytes) uint8 digests}. A malformed line is
    an error naming the file and line: a removal list that silently removes nothing is worse than a
    failed run."""
    content, where = _content_lines(lines)
    fields = first_field(content)
    widths = pc.binary_length(fields).to_numpy(zero_copy_only=False)
    out: dict[str, np.ndarray] = {}
    bad_rows = np.flatnonzero(~np.isin(widths, list(HASH_ALGOS)))
    for width, algo in HASH_ALGOS.items():
        sel = np.flatnonzero(widths == width)
        if not len(sel):
            continue
        digests, bad = hex_decode(fields.take(pa.array(sel)), width)
        bad_rows = np.concatenate([bad_rows, sel[bad]])
        out[algo] = digests
    if len(bad_rows):
        i = int(bad_rows.min())
        shown = fields[i].as_buffer().to_pybytes().decode("utf-8", "replace")[:80]
        raise ValueError(f"{path}:{first + int(where[i])}: {shown!r} is not a hex MD5, SHA-1 or SHA-256 digest "
                         "(32, 40 or 64 hex digits)")
    return out


def iter_digests(path: str, block_bytes: int = LINE_BLOCK_BYTES) -> Iterator[dict[str, np.ndarray]]:
    """Stream a URL-hash list file: one hex digest of a URL's UTF-8 bytes per line (a CSV whose
    first field is the digest works too), `#` comments. Yields, per block of the file,
    {algorithm: (n, bytes) uint8 array}; memory stays at one block whatever the list's size."""
    for first, lines in iter_lines(path, block_bytes):
        yield _digest_block(path, first, lines)


def check_digests(path: str, head_bytes: int = 1 << 16) -> None:
    """Parse the first `head_bytes` of a URL-hash list, so a wrong file fails before any work
    (the whole list is checked by the task that reads it)."""
    import io

    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb", compression="infer") as f:
        head = f.read(head_bytes)
    if len(head) == head_bytes:
        head = head[: head.rfind(b"\n") + 1]  # whole lines only
    for lines in _line_blocks(io.BytesIO(head), 1 << 20):
        _digest_block(path, 1, lines)


def url_digests(urls: list[str], algo: str) -> np.ndarray:
    """(n, bytes) uint8 digests of each URL's UTF-8 bytes."""
    new = hashlib.new
    k = DIGEST_BYTES[algo]
    if not urls:
        return np.zeros((0, k), np.uint8)
    blob = b"".join(new(algo, u.encode("utf-8")).digest() for u in urls)
    return np.frombuffer(blob, dtype=np.uint8).reshape(len(urls), k)


def digest_prefix(digests: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each digest as a big-endian uint64: digest ranges are ranges of it."""
    if not len(digests):
        return np.zeros(0, np.uint64)
    return np.ascontiguousarray(digests[:, :8]).view(">u8").ravel().astype(np.uint64)


def digest_array(digests: np.ndarray) -> pa.Array:
    """(n, k) uint8 digests as an Arrow fixed-size binary array (k bytes each)."""
    k = digests.shape[1]
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(k), len(digests), [None, pa.py_buffer(np.ascontiguousarray(digests).tobytes())])


def digests_of(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-size binary Arrow array -> (n, k) uint8."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
    k = arr.type.byte_width
    if not len(arr):
        return np.zeros((0, k), np.uint8)
    arr = pa.concat_arrays([arr]) if arr.offset else arr
    return np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=len(arr) * k).reshape(len(arr), k)


class SortedDigests:
    """A set of equal-width digests as a sorted numpy array: membership by binary search."""

    def __init__(self, digests: np.ndarray):
        k = digests.shape[1] if digests.ndim == 2 else 0
        self.k = k
        flat = np.ascontiguousarray(digests).view(f"S{k}").ravel() if k else np.zeros(0, "S1")
        self.values = np.unique(flat)

    def __len__(self) -> int:
        return len(self.values)

    def contains(self, digests: np.ndarray) -> np.ndarray:
        if not len(digests) or not len(self.values):
            return np.zeros(len(digests), dtype=bool)
        q = np.ascontiguousarray(digests).view(f"S{self.k}").ravel()
        i = np.minimum(np.searchsorted(self.values, q), len(self.values) - 1)
        return self.values[i] == q



@dataclass(frozen=True)
class UrlHashList:
    """URL-hash lists held whole in one process: what `select.blocked_url_hashes` applies (lists
    a person exports from the search page, small next to Re-LAION's). Sorted digests per
    algorithm, their bytes only (no Python object per digest). The dedup stage never builds one:
    it joins its lists by digest range."""

    digests: dict[str, SortedDigests]

    def __len__(self) -> int:
        return sum(len(v) for v in self.digests.values())


@functools.lru_cache(maxsize=8)
def _load_url_hashes_cached(identities: tuple[tuple[str, str], ...]) -> UrlHashList:
    by_algo: dict[str, list[np.ndarray]] = {}
    for path, _identity in identities:
        for block in iter_digests(path):
            for algo, d in block.items():
                by_algo.setdefault(algo, []).append(d)
    return UrlHashList({a: SortedDigests(np.concatenate(ds)) for a, ds in by_algo.items()})


def load_url_hashes(paths: Iterable[str], identities: Iterable[str] | None = None) -> UrlHashList:
    """URL-hash list files loaded whole (see `UrlHashList`; the format is `iter_digests`'s). A
    malformed line is a ValueError naming the file and line. `identities` (from
    `fsio.fingerprint_of`, computed once by the planner) key the per-worker cache."""
    paths = list(paths)
    ids = list(identities) if identities is not None else [fsio.fingerprint_of(p) for p in paths]
    return _load_url_hashes_cached(tuple(zip(paths, ids)))


def url_hash_mask(urls: pa.Array | pa.ChunkedArray, hashes: UrlHashList) -> np.ndarray:
    """True where a digest of the URL (its UTF-8 bytes, as written) is in the lists."""
    n = len(urls)
    out = np.zeros(n, dtype=bool)
    if not len(hashes) or n == 0:
        return out
    values = urls.to_pylist()
    present = np.fromiter((u is not None for u in values), dtype=bool, count=n)
    texts = [u for u in values if u is not None]
    for algo, digests in hashes.digests.items():
        out[present] |= digests.contains(url_digests(texts, algo))
    return out


# ---------------------------------------------------------------- already-curated lists


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
    for _first, lines in iter_lines(path):
        content, _ = _content_lines(lines)
        try:
            content.validate(full=True)
        except pa.ArrowInvalid:  # invalid UTF-8: replaced, as a text reader would
            content = pa.array(_lines_py(content), pa.string())
        for i in range(0, len(content), batch_rows):
            yield pa.table({"url": content.slice(i, batch_rows)})


# ---------------------------------------------------------------- matching (vectorised)


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
